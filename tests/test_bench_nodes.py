"""The nodes benchmark (bench/bench_nodes.py) in its quickest form: it runs, says what it measured, and
leaves nothing behind.

It starts its own throwaway PostgreSQL cluster and four cores on it (about
twenty seconds). No figure is judged: that is bench/run.py's table. Skipped
when no PostgreSQL server can run here, failed then under HIVE_REQUIRE_PG=1.
"""

import os
import sys

import pytest

from conftest import PYZ, ROOT, pg_missing_or_fail

sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_nodes  # noqa: E402
import pgcluster  # noqa: E402
from common import Children  # noqa: E402


@pytest.fixture
def clusters(monkeypatch):
    """Every cluster the benchmark makes (other test runs on this machine may make theirs meanwhile)."""
    made = []

    class Recorded(pgcluster.Cluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(bench_nodes.pgcluster, "Cluster", Recorded)
    return made


def leftovers(tmp, clusters):
    """Processes still running from the run's temp dir or from a cluster it made, and its clusters' dirs left."""
    assert len(clusters) == 1
    marks = [tmp.encode()] + [c.base.encode() for c in clusters]
    running = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue  # gone meanwhile
        if any(mark in argv for mark in marks):
            shown = argv.replace(b"\0", b" ").decode(errors="replace")
            running.append(f"{entry}: {shown}")
    return running, [c.base for c in clusters if os.path.exists(c.base)]


def test_the_nodes_benchmark_times_wakes_on_both_engines_and_the_drivers(sockdir, clusters):
    pg_missing_or_fail()
    tmp = str(sockdir)
    try:
        rows = bench_nodes.run(tmp, PYZ, 4, 40, agents=2)
    finally:
        Children.stop_all()
    size = "(n=40×3)"
    names = [r.name for r in rows]
    assert names[:4] == [f"wake {w} {p} (2 pollers each, n=4)" for w in ("same-node postgresql", "cross-node a→b")
                         for p in ("p50", "p95")]
    assert names[4:6] == [f"postgresql broker send+pop vs raw psycopg2, both with the wait callback {size}",
                          f"postgresql raw psycopg2: with the gevent wait callback vs blocking {size}"]
    assert all(r.value > 0 and r.baseline > 0 for r in rows)
    assert [r.has_target for r in rows[:6]] == [False, False, True, False, True, False]
    assert "the send itself was answered after" in rows[3].note
    stalls = rows[5].note
    assert "the hub's longest stall" in stalls and "psycopg2 " in stalls
    if len(rows) == 6:  # pip could not install psycopg 3 here: the row says so
        assert "psycopg 3 not measured" in stalls
    else:
        assert names[6:] == [f"postgresql raw psycopg 3 under gevent vs psycopg2 with the wait callback {size}",
                             f"postgresql raw psycopg 3 vs psycopg2, both blocking {size}"]
    assert leftovers(tmp, clusters) == ([], [])


def test_a_failing_run_stops_its_cores_and_its_cluster(sockdir, clusters, monkeypatch):
    pg_missing_or_fail()
    tmp = str(sockdir)

    def broken(self):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(bench_nodes.Target, "arm", broken)  # after the cluster and every core are up
    try:
        with pytest.raises(RuntimeError, match="broken on purpose"):
            bench_nodes.run(tmp, PYZ, 4, 40, agents=1)
        assert Children.procs == []
    finally:
        Children.stop_all()
    assert leftovers(tmp, clusters) == ([], [])

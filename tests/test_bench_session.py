"""The session benchmark (bench/bench_session.py) in its quickest form: it runs, and says what it measured.

Two timed rounds per target with the real claude CLI against the instant
mock (about ten seconds). No figure is judged: that is bench/run.py's table.
Skipped when no CLI is installed, unless HIVE_REQUIRE_CLAUDE=1.
"""

import os
import sys

import pytest

from conftest import PYZ, ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_session  # noqa: E402
from common import Children  # noqa: E402

if bench_session.missing():
    if os.environ.get("HIVE_REQUIRE_CLAUDE") == "1":
        raise RuntimeError(f"HIVE_REQUIRE_CLAUDE=1 but {bench_session.missing()}")
    pytest.skip(bench_session.missing(), allow_module_level=True)


def test_the_session_benchmark_times_every_mode_against_the_bare_cli(sockdir):
    try:
        rows = bench_session.run(str(sockdir), PYZ, 2)
    finally:
        Children.stop_all()
    modes = [m or "spawn" for m in bench_session.modes_of(PYZ)]
    assert [r.name for r in rows] == [f"send → first API request, {m} {p} (n=2)" for m in modes for p in ("p50", "p95")]
    assert all(r.value > 0 and r.baseline > 0 for r in rows)
    assert [r.has_target for r in rows] == [m == "session" and p == "p50" for m in modes for p in ("p50", "p95")]

"""The PostgreSQL test infrastructure itself: tests/pgcluster.py's server and tests/netns.py's partition.

The server tests run where Debian's PostgreSQL server binaries are installed
(skipped with the reason elsewhere, failed under HIVE_REQUIRE_PG=1). The
partition test needs root and iproute2 as well: without them it skips even
under HIVE_REQUIRE_PG=1; with them, a namespace that cannot be made fails it.
"""

import os
import queue
import select
import shutil
import signal
import subprocess
import threading
import time

import pytest

import pgcluster
from conftest import PYTHON, pg_missing_or_fail, wait_until
from netns import Netns

psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed (run tests/setup)")


@pytest.fixture
def cluster():
    """A cluster of this test's own (it restarts and kills it); removed afterwards."""
    pg_missing_or_fail()
    with pgcluster.Cluster() as c:
        yield c


def test_the_cluster_takes_connections_and_its_databases_are_separate(pg_cluster, pg_url):
    other = pg_cluster.create_database(f"t_other_{os.getpid()}")
    try:
        with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (v text)")
            cur.execute("INSERT INTO t VALUES ('here')")
        assert pg_cluster.psql("SELECT v FROM t", pg_url.rsplit("/", 1)[1]) == [("here",)]
        assert pg_cluster.psql("SELECT to_regclass('t') IS NULL", other) == [(True,)]
        # the unix socket reaches the same server
        with psycopg2.connect(pg_cluster.socket_url(other)) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database(), current_user")
            assert cur.fetchone() == (other, "postgres")
    finally:
        pg_cluster.drop_database(other)
    assert pg_cluster.psql("SELECT count(*) FROM pg_database WHERE datname = %s", params=(other,)) == [(0,)]


def test_db_url_gives_each_engine_a_fresh_database(db_url):
    if db_url.startswith("sqlite:///"):
        assert not os.path.exists(db_url[len("sqlite:///"):])
        return
    with psycopg2.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert cur.fetchone() == (0,)


def test_a_restart_keeps_data_and_port_and_leaves_no_process(cluster):
    cluster.psql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
    url, before = cluster.url(), cluster.pid
    children = pgcluster.children(before)
    assert children, "a running postmaster has its background processes"
    cluster.restart()
    assert cluster.url() == url and cluster.pid != before
    assert not [p for p in [before, *children] if pgcluster.alive(p)], "the old server's processes outlived stop()"
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT v FROM kept")
        assert cur.fetchall() == [(7,)]


def test_a_killed_server_recovers_every_commit_it_answered(cluster):
    cluster.psql("CREATE TABLE n (i int)")
    conn = psycopg2.connect(cluster.url())
    conn.autocommit = True
    with conn.cursor() as cur:
        for i in range(200):
            cur.execute("INSERT INTO n VALUES (%s)", (i,))
    before = [cluster.pid, *pgcluster.children(cluster.pid)]
    cluster.kill()  # right after the last commit: a commit only in shared memory would be lost here
    assert not [p for p in before if pgcluster.alive(p)], "kill() left processes of the server running"
    with pytest.raises(psycopg2.OperationalError):
        conn.cursor().execute("SELECT 1")
    conn.close()
    cluster.start()
    assert cluster.psql("SELECT count(*), max(i) FROM n") == [(200, 199)]
    assert "database system was not properly shut down" in cluster.log_tail(50)


def test_listen_notify_crosses_between_two_connections(pg_url):
    listener, sender = psycopg2.connect(pg_url), psycopg2.connect(pg_url)
    try:
        listener.autocommit = sender.autocommit = True
        listener.cursor().execute("LISTEN hive_changes")
        sender.cursor().execute("SELECT pg_notify('hive_changes', 'seq 42')")
        deadline = time.monotonic() + 10
        while not listener.notifies:
            left = deadline - time.monotonic()
            assert left > 0, "no NOTIFY reached the listening connection within 10s"
            select.select([listener], [], [], left)
            listener.poll()
        note = listener.notifies.pop(0)
        assert (note.channel, note.payload, note.pid) == ("hive_changes", "seq 42", sender.get_backend_pid())
    finally:
        listener.close()
        sender.close()


def test_a_start_that_fails_says_why_with_the_log():
    pg_missing_or_fail()
    c = pgcluster.Cluster(listen=("10.203.254.254",))  # an address no interface has
    try:
        with pytest.raises(pgcluster.ClusterError) as e:
            c.start()
        assert "did not start" in str(e.value) and "could not bind" in str(e.value)
        assert c.pid is None
    finally:
        c.close()


def test_missing_binaries_are_a_sentence_that_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    assert "no executable initdb in" in pgcluster.missing()
    monkeypatch.delenv("PG_BIN")
    monkeypatch.setattr(pgcluster.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pgcluster.shutil, "which", lambda name: None)
    assert "apt-get install postgresql" in pgcluster.missing()


def test_the_server_dies_with_the_process_that_started_it(tmp_path):
    """A test run killed outright leaves no server behind (setpriv's parent-death signal)."""
    pg_missing_or_fail()
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv here: a cluster started without it outlives a killed test run")
    here = os.path.dirname(os.path.abspath(__file__))
    starter = subprocess.Popen([PYTHON, "-c", f"import sys, time; sys.path.insert(0, {here!r}); import pgcluster\n"
                                "c = pgcluster.Cluster(); c.start(); print(c.pid, c.base, flush=True)\n"
                                "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    pid = base = None
    try:
        pid, base = starter.stdout.readline().split()
        pid = int(pid)
        starter.kill()
        starter.wait(10)
        wait_until(lambda: not pgcluster.alive(pid), 20, f"postmaster {pid} to exit after its starter died")
    finally:
        starter.kill()
        starter.wait(10)
        if pid is not None and pgcluster.alive(pid):
            os.kill(pid, signal.SIGQUIT)  # what the parent-death signal failed to send
        if base is not None:
            wait_until(lambda: not pgcluster.alive(pid), 20, f"postmaster {pid} to exit on SIGQUIT")
            shutil.rmtree(base, ignore_errors=True)


# --- a partition: a node in a network namespace, cut off from the server and healed --------------

CONNECT = r"""
import sys, time, psycopg2
t = time.monotonic()
try:
    conn = psycopg2.connect(sys.argv[1], connect_timeout=int(sys.argv[2]))
    conn.cursor().execute("SELECT 1")
    print("connected")
except psycopg2.OperationalError as e:
    print("failed after %.1fs: %s" % (time.monotonic() - t, str(e).strip()))
"""

# One connection held through the cut: each line on stdin is a query with how long to wait for it.
HELD = r"""
import sys, threading, psycopg2
conn = psycopg2.connect(sys.argv[1], connect_timeout=2)
conn.autocommit = True
print("connected", flush=True)
for line in sys.stdin:
    done, out = threading.Event(), []
    def run():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 41 + 1")
                out.append(cur.fetchone()[0])
        except Exception as e:
            out.append(repr(e))
        done.set()
    threading.Thread(target=run, daemon=True).start()
    print("answered %s" % out[0] if done.wait(float(line)) else "hung", flush=True)
    if not done.is_set():
        print("answered %s" % out[0] if done.wait(60) else "still hung", flush=True)
"""


def netns_or_skip():
    why = Netns.available()
    if why is None:
        return
    if os.environ.get("HIVE_REQUIRE_PG") == "1" and os.geteuid() == 0 and shutil.which("ip"):
        pytest.fail(f"HIVE_REQUIRE_PG=1 and root with iproute2, but {why}")
    pytest.skip(why)


class Lines:
    """A child's stdout, a line at a time with a deadline."""

    def __init__(self, proc):
        self.proc, self.lines = proc, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next(self, timeout, what):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from the child within {timeout}s, waiting for {what}") from None
        assert line is not None, f"the child exited ({self.proc.poll()}) before {what}: {self.proc.stderr.read()}"
        return line


def test_a_cut_hangs_connections_both_ways_and_a_heal_resumes_them(tmp_path):
    pg_missing_or_fail()
    netns_or_skip()
    ns = Netns("hivecutt", host_ip="10.203.7.1", ns_ip="10.203.7.2")
    held = None
    ns.create()
    try:
        with pgcluster.Cluster(listen=("127.0.0.1", ns.host_ip)) as c:
            url = c.url("postgres", host=ns.host_ip)

            def connect(timeout=2):
                done = subprocess.run(ns.wrap([PYTHON, "-c", CONNECT, url, str(timeout)]), capture_output=True,
                                      text=True, timeout=30)
                assert done.returncode == 0, done.stderr
                return done.stdout.strip()

            assert connect() == "connected"
            held = subprocess.Popen(ns.wrap([PYTHON, "-c", HELD, url]), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out = Lines(held)
            assert out.next(15, "the held connection") == "connected"
            held.stdin.write("10\n")
            held.stdin.flush()
            assert out.next(15, "a query before the cut") == "answered 42"

            ns.cut()
            held.stdin.write("2\n")
            held.stdin.flush()
            assert out.next(15, "a query during the cut") == "hung"
            # a silent drop: libpq's own connect_timeout ends it, not a reset or an unreachable host
            # (4s: a link that is merely down fails a connect with "No route to host" after 3s)
            answer = connect(timeout=4)
            assert answer.startswith("failed after") and "timeout expired" in answer, answer
            assert float(answer.split()[2].rstrip("s:")) >= 3.5, answer

            ns.heal()
            assert out.next(70, "the held query to finish after the heal") == "answered 42"
            assert connect() == "connected"
    finally:
        if held is not None:
            held.kill()
            held.wait(10)
        ns.delete()
    assert not os.path.exists("/run/netns/hivecutt")
    assert subprocess.run(["ip", "link", "show", "dev", ns.host_dev], capture_output=True).returncode != 0


def test_a_netns_removes_the_leftovers_of_a_crashed_run():
    netns_or_skip()
    first = Netns("hiveleft", host_ip="10.203.8.1", ns_ip="10.203.8.2").create()  # never deleted: a crash
    second = Netns("hiveleft", host_ip="10.203.8.1", ns_ip="10.203.8.2")
    try:
        second.create()
        inside = subprocess.run(second.wrap(["ip", "-o", "addr", "show"]), capture_output=True, text=True,
                                timeout=10).stdout
        assert "127.0.0.1" in inside and "10.203.8.2/24" in inside, inside
        assert first.host_dev == second.host_dev
    finally:
        second.delete()
        second.delete()  # idempotent
    assert not os.path.exists("/run/netns/hiveleft")

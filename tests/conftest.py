"""Shared fixtures: a real core daemon in a temp dir, and waiting on conditions with deadlines."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hyperhive import jsonline  # noqa: E402

PYTHON = sys.executable  # the test runner's interpreter: unit tiers and helper scripts
# The checkout's entry, for what runs in this process only (unit tiers import
# from the checkout). Every process a test starts runs the product instead:
ENTRY = os.path.join(ROOT, "hyperhive.py")
# hyperhive.pyz as ./build_zipapp.sh writes it, rebuilt for this run at session
# start (pytest_sessionstart), on an interpreter that has only the pins
# requirements.txt marks "# interpreter" (tests/setup makes it): whatever the
# pyz lacks or cannot find inside itself fails here as it would for a user.
PYZ = os.path.join(ROOT, "hyperhive.pyz")
PYZ_PYTHON = os.path.join(ROOT, "build", "runtime", "bin", "python")
FAKE_CLAUDE = os.path.join(ROOT, "tests", "fakeclaude.py")


def pyz_argv(*args):
    """The command line of the product: `python hyperhive.pyz ARGS…` on the runtime interpreter."""
    return [PYZ_PYTHON, PYZ, *args]


def pytest_sessionstart(session):
    """Build the pyz this run tests, from the sources this run sees."""
    if not os.path.exists(PYZ_PYTHON):
        pytest.exit(f"no runtime interpreter at {PYZ_PYTHON}: run tests/setup (or tests/run) first", 2)
    done = subprocess.run([os.path.join(ROOT, "build_zipapp.sh"), PYZ], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.exit(f"./build_zipapp.sh failed:\n{done.stdout}{done.stderr}", 2)

# The proof tiers (faults, fuzz, security, soak) run short in the suite and
# at the full counts under `tests/proof` (HIVE_PROOF=full).
PROOF_FULL = os.environ.get("HIVE_PROOF") == "full"


def proof_scale(short, full):
    """A count for a proof test: `full` under tests/proof, `short` in the everyday suite."""
    return full if PROOF_FULL else short


def refused(code, action, *args, **kwargs):
    """Run action, which must raise a HiveError with this code; returns its sentence."""
    import pytest as _pytest

    from hyperhive import wire

    with _pytest.raises(wire.HiveError) as e:
        action(*args, **kwargs)
    assert e.value.code == code, (e.value.code, str(e.value))
    return str(e.value)


def browser_missing():
    """Why the browser tier cannot run here (None when it can)."""
    import shutil

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if not (shutil.which("chromium") or os.path.exists("/usr/bin/chromium")):
        return "chromium is not installed (apt-get install chromium)"
    return None


def wait_until(predicate, timeout=15.0, what="the condition"):
    """Poll predicate until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def green_wait(predicate, what, timeout=15.0, step=0.005):
    """Wait for a condition while letting greenlets of this process run (gevent.sleep, not time.sleep)."""
    import gevent

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        gevent.sleep(step)


class Hive:
    """A real `hyperhive.pyz serve` process on a temp state dir."""

    def __init__(self, state_dir, claude=FAKE_CLAUDE, env=None, extra_args=(), backend="process",
                 run_dir=None, pyz=PYZ, wrapper=None, database=None, node=None, prefix=()):
        """`wrapper`: a test script to run instead of the pyz (it imports the core from the pyz);
        `database`/`node`: serve's --database and --node; `prefix`: argv run before the interpreter (a
        network namespace's `ip netns exec`)."""
        self.state_dir = str(state_dir)
        self.custom_run_dir = run_dir is not None
        self.run_dir = str(run_dir) if run_dir is not None else os.path.join(self.state_dir, "run")
        self.host_sock = os.path.join(self.run_dir, "host.sock")
        self.claude, self.pyz, self.wrapper = claude, pyz, wrapper
        self.env = dict(os.environ, **(env or {}))
        self.extra_args = list(extra_args)
        self.database, self.node, self.prefix = database, node, list(prefix)
        self.extra_args += ["--database", database] if database else []
        self.extra_args += ["--node", node] if node else []
        self.backend = backend
        self.proc = None
        self.starts = 0  # the log is appended across restarts: count the boots
        self.log_path = os.path.join(os.path.dirname(self.state_dir), os.path.basename(self.state_dir) + ".log")

    def start(self, wait=True):
        self.starts += 1
        log = open(self.log_path, "ab")
        argv = [*self.prefix, PYZ_PYTHON, self.wrapper or self.pyz, "serve", "--state-dir", self.state_dir,
                "--backend", self.backend]
        argv += ["--claude", self.claude] if self.claude else []  # None: the daemon's own default
        argv += ["--run-dir", self.run_dir] if self.custom_run_dir else []
        if "--dashboard-port" not in self.extra_args:
            argv += ["--dashboard-port", "0"]  # any free port: tests run beside each other and a real hive
        self.proc = subprocess.Popen(argv + self.extra_args,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if wait:
            wait_until(self._ready, 20, f"the core to answer on {self.host_sock} (log: {self.log_path})")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the core exited with {self.proc.returncode}:\n{self.log()}")
        # the host socket answers while boot still starts agents: ready is when boot says it is done
        with open(self.log_path, errors="replace") as f:
            booted = f.read().count("hive-c0re INFO serving ")
        if booted < self.starts:
            return False
        try:
            return "manager" in self.call("list")["agents"]
        except jsonline.Unreachable:
            return False

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    @property
    def url(self):
        """The dashboard's base URL, as the core logged it at its last start."""
        found = re.findall(r"dashboard on (http://\S+) ", self.log())
        assert found, f"the core logged no dashboard URL:\n{self.log()}"
        return found[-1]

    def login_url(self):
        return self.call("login_url")["url"]

    def session(self):
        """The operator's session, logged in once through a login URL as a browser is:
        {"Cookie": "hive_session=…", "X-Hive-Key": "…"} (the key comes in the redirect's fragment)."""
        if getattr(self, "_session", None) is None:
            import http.client
            import urllib.parse

            parts = urllib.parse.urlsplit(self.login_url())
            conn = http.client.HTTPConnection(parts.netloc, timeout=30)
            try:
                conn.request("GET", f"{parts.path}?{parts.query}")
                res = conn.getresponse()
                res.read()
                cookie = res.getheader("Set-Cookie").split(";")[0]
                key = urllib.parse.urlsplit(res.getheader("Location")).fragment.partition("hive-key=")[2]
            finally:
                conn.close()
            assert res.status == 303 and cookie.startswith("hive_session=") and key, (res.status, cookie)
            self._session = {"Cookie": cookie, "X-Hive-Key": key}
        return dict(self._session)

    def cookie(self):
        """The Cookie header of the operator's session (opens the pages' shells only)."""
        return self.session()["Cookie"]

    def dashboard(self, method, path, body=None):
        """One JSON request to the dashboard as the operator's browser makes it: (status, decoded answer)."""
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            **self.session(), "Origin": self.url, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def call(self, verb, /, timeout=120, **args):
        return jsonline.call(self.host_sock, verb, timeout=timeout, **args)

    def sock(self, name):
        if name == "manager":
            return os.path.join(self.run_dir, "manager", "manager.sock")
        return os.path.join(self.run_dir, "agents", name, "agent.sock")

    def agent_call(self, who, verb, /, timeout=60, **args):
        return jsonline.call(self.sock(who), verb, timeout=timeout, **args)

    def raw(self, path, data):
        """Send raw bytes on a socket and return the first answer line, decoded."""
        import socket

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading an oversized line to the end
        line = s.makefile("rb").readline()
        s.close()
        return json.loads(line)

    def claude_calls(self, name):
        """Every run of the fake claude for an agent, as it recorded them (calls.jsonl)."""
        path = os.path.join(self.home(name), "state", ".fakeclaude", "calls.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def spawn(self, *names, timeout=30):
        """Spawn agents and wait until each has booted (its harness persisted its model)."""
        for name in names:
            self.call("spawn", name=name)
        wait_until(lambda: all((self.row(n) or {}).get("active_model") for n in names), timeout,
                   f"{names} to boot and persist their model")

    def configure(self, name, change):
        """Change an agent's hive.json as the manager would: a commit in its proposed repo, applied once the
        operator approves it (the agent restarts on it). `change(config)` edits the dict in place."""
        repo = os.path.join(self.state_dir, "config", "proposed", name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="m",
                   GIT_AUTHOR_EMAIL="m@h", GIT_COMMITTER_NAME="m", GIT_COMMITTER_EMAIL="m@h")
        path = os.path.join(repo, "hive.json")
        with open(path) as f:
            config = json.load(f)
        change(config)
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
        subprocess.run(["git", "-C", repo, "commit", "-qam", f"configure {name}"], check=True, env=env)
        sha = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], check=True, env=env, capture_output=True,
                             text=True).stdout.strip()
        aid = self.agent_call("manager", "request_apply_commit", agent=name, commit_ref=sha,
                              description=f"configure {name}")["id"]
        approval = self.call("approve", id=aid)["approval"]
        assert approval["status"] == "approved", approval
        wait_until(lambda: (self.row(name) or {}).get("running"), 60, f"{name} to run its new config")

    def good_turns(self, name):
        """Every turn of an agent the fake claude finished well (done.jsonl): {time, pid, prompt}."""
        path = os.path.join(self.home(name), "state", ".fakeclaude", "done.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def db_rows(self, sql, *params):
        """Rows of a query on the core's database, read-only beside the running core (sqlite's ?
        placeholders; on PostgreSQL they become %s)."""
        if self.database and self.database.startswith("postgresql"):
            import psycopg2

            con = psycopg2.connect(self.database, connect_timeout=10)
            try:
                with con.cursor() as cur:
                    cur.execute(sql.replace("%", "%%").replace("?", "%s"), params)
                    return cur.fetchall()
            finally:
                con.close()
        import sqlite3

        con = sqlite3.connect(f"file:{self.state_dir}/hive.db?mode=ro", uri=True)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def log_of(self, name):
        return os.path.join(self.home(name), "harness.log")

    def home(self, name):
        return os.path.join(self.state_dir, "agents", name)

    def harness_pid(self, name):
        try:
            with open(os.path.join(self.home(name), "harness.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError):
            return None

    def row(self, name):
        rows = {r["name"]: r for r in self.call("agent_status")["agent_statuses"]}
        return rows.get(name)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        return self.proc.returncode

    def kill9(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


def kill_harnesses(state_dir):
    """Kill every harness a test left behind (the core adopts, so a kill -9'd core leaves them)."""
    agents = os.path.join(state_dir, "agents")
    if not os.path.isdir(agents):
        return
    for name in os.listdir(agents):
        try:
            with open(os.path.join(agents, name, "harness.pid")) as f:
                pid = int(f.read().split()[0])
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def sockdir():
    """A short temp dir for unix sockets (their paths are capped at 108 bytes)."""
    from fakecore import remove_tree, short_tmpdir

    path = short_tmpdir()
    yield path
    remove_tree(path)


@contextlib.contextmanager
def running(h):
    """A Hive started for the block; stopped (and every harness killed) after it."""
    h.start()
    try:
        yield h
    finally:
        put_down(h)


def put_down(h):
    """Stop a Hive's core (killed if it does not stop: never left running) and kill every harness it left."""
    try:
        if h.proc is not None and h.proc.poll() is None:
            h.stop()
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait(10)
        kill_harnesses(h.state_dir)


@pytest.fixture
def hive(tmp_path):
    """A started hive with the fake claude; stopped (and every harness killed) afterwards."""
    with running(Hive(tmp_path / "state", env={"ANTHROPIC_API_KEY": "test-key"},
                      extra_args=["--pass-env", "ANTHROPIC_API_KEY"])) as h:
        yield h


# --- PostgreSQL (issue 17) ------------------------------------------------------------------------
# One real server for the whole run (tests/pgcluster.py), a fresh database per test on it, and
# `db_url` to run a test on both engines. Skipped with the reason where no server binaries are
# installed, unless HIVE_REQUIRE_PG=1 (CI sets it), which makes that a failure.

def pg_missing_or_fail():
    """Skip (or, under HIVE_REQUIRE_PG=1, fail) when no PostgreSQL server can run here."""
    import pgcluster

    why = pgcluster.missing()
    if why:
        if os.environ.get("HIVE_REQUIRE_PG") == "1":
            pytest.fail(f"HIVE_REQUIRE_PG=1, but {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def pg_cluster():
    """A PostgreSQL server started for the whole run (a pgcluster.Cluster on 127.0.0.1); stopped at its end."""
    import pgcluster

    pg_missing_or_fail()
    cluster = pgcluster.Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster, request):
    """The TCP URL of a fresh database for this test on the run's server; dropped after it (FORCE)."""
    import uuid
    import warnings

    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())[:40].strip("_")
    name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    yield pg_cluster.url(name)
    try:
        pg_cluster.drop_database(name)
    except Exception as e:  # noqa: BLE001 - the server goes at the run's end anyway; say why it stayed
        warnings.warn(f"could not drop test database {name}: {e}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A database URL of each engine: a fresh sqlite file, and a fresh database on the run's server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/hive.db"
    else:
        yield request.getfixturevalue("pg_url")

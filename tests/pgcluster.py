"""A throwaway PostgreSQL server for the tests: one cluster in a temp dir, started by the suite itself.

Owns: the cluster's temp dir (data, socket dir, log), its postmaster and every
process it started, and the unprivileged user it runs as when the suite runs
as root (`nobody`, else a system user `hivepg` made with useradd). The server
binaries are Debian's (`apt-get install postgresql`): `PG_BIN`, else the newest
`/usr/lib/postgresql/*/bin`, else `initdb` on PATH; `missing()` says why there
are none. SQL from the tests goes through psycopg2 (the pinned client).

The cluster is unsafe on purpose and fast: trust authentication for anyone who
reaches an address it listens on (only 127.0.0.1 unless told otherwise), fsync
off (safe against a killed server, not a crashed machine). Nothing here may
point at a real database.
"""

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

DEFAULT_USER = "nobody"  # exists on every Debian; else we make CREATED_USER
CREATED_USER = "hivepg"
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")  # a database name we quote without care
START_SECONDS = 30  # a cold start with crash recovery on a busy 2-core CI box stays well inside
STOP_SECONDS = 30
TAIL_LINES = 30


class ClusterError(RuntimeError):
    """The cluster could not do what was asked; the sentence says what, and ends with the log's tail."""


def _version_key(path):
    """Sort /usr/lib/postgresql/15/bin after /usr/lib/postgresql/9.6/bin: by the numbers in the version."""
    version = os.path.basename(os.path.dirname(path))
    return [int(n) for n in re.findall(r"\d+", version)] or [0]


def find_bin():
    """The directory of the server binaries (initdb, postgres), or None."""
    env = os.environ.get("PG_BIN")
    if env:
        return env  # told: a wrong PG_BIN is an error at start, not a silent fallback
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.access(os.path.join(d, "initdb"), os.X_OK)]
    if found:
        return max(found, key=_version_key)
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def missing():
    """Why no cluster can run here (None when one can)."""
    where = find_bin()
    if where is None:
        return ("no PostgreSQL server binaries: none in /usr/lib/postgresql/*/bin and no initdb on PATH "
                "(apt-get install postgresql, or set PG_BIN to the directory holding initdb and postgres)")
    for tool in ("initdb", "postgres"):
        if not os.access(os.path.join(where, tool), os.X_OK):
            told = "PG_BIN names" if os.environ.get("PG_BIN") else "the newest server directory is"
            return (f"no executable {tool} in {where} ({told} that; set PG_BIN to the directory "
                    f"holding initdb and postgres)")
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        return "running as root, and there is no setpriv to run postgres unprivileged (apt-get install util-linux)"
    return None


def free_port(host="127.0.0.1"):
    """A TCP port nothing listens on now (a race with other processes; start() retries a taken one)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_user():
    """(uid, gid, name) postgres runs as: ours when we are not root (postgres refuses root)."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid(), None
    for name in (DEFAULT_USER, CREATED_USER):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid, name
    done = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", CREATED_USER],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise ClusterError(f"postgres cannot run as root, there is no user {DEFAULT_USER}, and "
                           f"`useradd --system {CREATED_USER}` failed: {done.stderr.strip()} "
                           f"(make an unprivileged user and run as it, or run the tests as non-root)")
    pw = pwd.getpwnam(CREATED_USER)
    return pw.pw_uid, pw.pw_gid, CREATED_USER


def _as_user(argv, user):
    """argv run as the server's user. setpriv (not runuser, which forks and waits) execs, so a Popen's
    pid is the program's, and it sets a parent-death signal after dropping privileges: if the test
    process dies, postgres gets SIGQUIT (immediate shutdown) instead of running on.
    PR_SET_PDEATHSIG fires when the *thread* that started it exits: start clusters from the main
    thread."""
    uid, gid, name = user
    if shutil.which("setpriv"):
        ids = [f"--reuid={uid}", f"--regid={gid}", "--init-groups"] if name else []
        return ["setpriv", *ids, "--pdeathsig", "QUIT", *argv]
    if name:
        raise ClusterError("running as root, and there is no setpriv to run postgres unprivileged "
                           "(apt-get install util-linux)")
    return list(argv)  # not root, no setpriv: a killed test run leaves this server running


def _stat(pid):
    """(state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def alive(pid):
    """Whether a process runs (a zombie waiting for its reaper does not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children(parent):
    """The pids of a process's children."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and (st := _stat(e)) is not None and st[1] == parent]


def _connect(dsn, timeout=5):
    import psycopg2  # lazily: conftest imports this module in every test run

    return psycopg2.connect(dsn, connect_timeout=max(1, int(timeout)))


class Cluster:
    """One PostgreSQL cluster in a temp dir: `start()`, `stop()`, `restart()`, `kill()`, and URLs to it.

    `listen`: the addresses it listens on (each must exist on this machine at start; an address of a
    `tests/netns.Netns` exists once its `create()` ran). The port is picked free at the first start
    and kept across restarts, so a URL handed out stays good.
    """

    def __init__(self, listen=("127.0.0.1",), bin_dir=None, base=None):
        self.bin_dir = bin_dir or find_bin()
        if self.bin_dir is None:
            raise ClusterError(missing())
        self.listen = list(listen)
        self.user = server_user()  # before the temp dir: a failure here leaves nothing behind
        self.base = base or tempfile.mkdtemp(prefix="hivepg-", dir="/tmp")  # short: a socket path lives here
        self.data = os.path.join(self.base, "data")
        self.sockdir = os.path.join(self.base, "sock")
        self.log_path = os.path.join(self.base, "postgres.log")
        self.port = None
        self.proc = None
        self.initialized = False

    # --- life -----------------------------------------------------------------------------------

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    @property
    def pid(self):
        """The postmaster's pid while it runs, else None."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def _tool(self, name):
        return os.path.join(self.bin_dir, name)

    def _initdb(self):
        uid, gid, _ = self.user
        os.makedirs(self.sockdir, exist_ok=True)
        for path in (self.base, self.sockdir):
            os.chown(path, uid, gid)
        os.chmod(self.base, 0o755)  # the server's user must reach its data dir under it
        argv = [self._tool("initdb"), "-D", self.data, "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                "--locale=C", "--no-sync"]
        try:
            done = subprocess.run(_as_user(argv, self.user), capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"initdb -D {self.data} did not finish in 120s: {e.stderr or ''}") from None
        if done.returncode != 0:
            raise ClusterError(f"initdb -D {self.data} as uid {uid} failed ({done.returncode}):\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
        # fsync off loses nothing when processes die (the OS keeps what they wrote), only when the
        # machine does. synchronous_commit stays on: off, a commit is answered before its WAL leaves
        # shared memory, so kill() would lose commits the client saw succeed, and a crash test on
        # this cluster would prove nothing. With fsync off it costs a write(), not a flush.
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n# tests/pgcluster.py: a throwaway cluster, fast and unsafe\n"
                    "fsync = off\nsynchronous_commit = on\nfull_page_writes = off\n"
                    "max_connections = 200\nshared_buffers = 32MB\n"
                    f"unix_socket_directories = '{self.sockdir}'\n"
                    "log_destination = 'stderr'\nlogging_collector = off\n"
                    "log_line_prefix = '%m [%p] '\n")
        # anyone who reaches a listening address is trusted: only the addresses the test asked for
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
                    "host all all 0.0.0.0/0 trust\n")
        self.initialized = True

    def start(self):
        """Start the server (making the cluster at the first start) and wait until it takes a connection."""
        if self.pid is not None:
            raise ClusterError(f"the cluster in {self.base} already runs (postmaster {self.pid})")
        if not self.initialized:
            self._initdb()
        fixed = self.port is not None  # a restart keeps its port: a taken one is an error then
        for _attempt in range(5):
            if not fixed:
                self.port = free_port()
            if self._start_once():
                return self
            if fixed or "could not bind" not in self._this_start_log():
                break
        raise ClusterError(f"postgres in {self.base} did not start on port {self.port} "
                           f"(listen {','.join(self.listen)}): {self._why_not()}")

    def _start_once(self):
        """One try at starting: True once it takes a connection, False if it exited."""
        with open(self.log_path, "a") as log:
            log.write(f"=== tests/pgcluster.py: start on port {self.port}\n")
            self._log_mark = log.tell()
            argv = [self._tool("postgres"), "-D", self.data, "-p", str(self.port),
                    "-c", f"listen_addresses={','.join(self.listen)}"]
            # its own session: a ^C to the test run reaches the test, which stops the server
            self.proc = subprocess.Popen(_as_user(argv, self.user), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                _connect(self.url("postgres"), timeout=2).close()
                return True
            except Exception as e:  # noqa: BLE001 - not up yet; kept for the sentence at the deadline
                last = e
            time.sleep(0.05)  # a short poll on the condition, bounded by the deadline
        self._kill_all()
        raise ClusterError(f"postgres in {self.base} did not take a connection on port {self.port} within "
                           f"{START_SECONDS}s (last error: {str(last).strip()}); killed it. Log:\n{self.log_tail()}")

    def _this_start_log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(getattr(self, "_log_mark", 0))
                return f.read()
        except OSError:
            return ""

    def _why_not(self):
        code = self.proc.returncode if self.proc is not None else None
        return f"the postmaster exited with {code}. Log:\n{self.log_tail()}"

    def stop(self, mode="fast"):
        """Shut the server down: smart (wait for clients), fast (end them), immediate (no checkpoint)."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}.get(mode)
        if sig is None:
            raise ValueError(f"stop mode {mode!r}: use smart, fast or immediate")
        if self.pid is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self._kill_all()
            raise ClusterError(f"postgres in {self.base} did not stop ({mode}) within {STOP_SECONDS}s; "
                               f"killed it. Log:\n{self.log_tail()}") from None

    def restart(self, mode="fast"):
        """Stop and start again on the same port and data."""
        self.stop(mode)
        return self.start()

    def kill(self):
        """Crash the server: SIGKILL to the postmaster and every process it started, at once, as a
        crash of its machine would. (A killed postmaster alone leaves its backends running until they
        notice, serving the connections they have.) start() then runs crash recovery."""
        if self.pid is None:
            raise ClusterError(f"kill(): the cluster in {self.base} is not running")
        self._kill_all()

    def _kill_all(self):
        # Each child of the postmaster calls setsid(), so there is no process group to kill: stop the
        # postmaster (it forks no more), kill its children by pid, then it.
        pid = self.proc.pid
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass  # exited on its own; its children (if any) are still found by their parent pid below
        kids = children(pid)
        for child in kids:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited between the listing and the kill: what we wanted
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=STOP_SECONDS)
        deadline = time.monotonic() + STOP_SECONDS
        while (left := [c for c in kids if alive(c)]):
            if time.monotonic() > deadline:
                raise ClusterError(f"processes {left} of the cluster in {self.base} still run {STOP_SECONDS}s "
                                   f"after SIGKILL. Log:\n{self.log_tail()}")
            time.sleep(0.02)

    def close(self):
        """Stop the server (killing it if it will not stop) and remove its temp dir."""
        try:
            if self.pid is not None:
                try:
                    self.stop("immediate")
                except ClusterError:
                    self._kill_all()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def add_listen(self, address):
        """Listen on one more address too (restarting a running server, on the same port)."""
        if address in self.listen:
            return
        self.listen.append(address)
        if self.pid is not None:
            self.restart()

    # --- use -------------------------------------------------------------------------------------

    def url(self, dbname="postgres", host=None):
        """A TCP URL to a database, on `host` (default: the first address it listens on)."""
        if self.port is None:
            raise ClusterError("url(): the cluster has no port before its first start()")
        return f"postgresql://postgres@{host or self.listen[0]}:{self.port}/{dbname}"

    def socket_url(self, dbname="postgres"):
        """A URL to a database over the unix socket."""
        if self.port is None:
            raise ClusterError("socket_url(): the cluster has no port before its first start()")
        return f"postgresql://postgres@/{dbname}?host={self.sockdir}&port={self.port}"

    def psql(self, sql, db="postgres", params=None):
        """Run SQL (autocommit) on a database; the rows it answers, or None for a statement without rows."""
        try:
            conn = _connect(self.url(db))
        except Exception as e:
            raise ClusterError(f"cannot connect to {self.url(db)} to run {sql!r}: {str(e).strip()}. "
                               f"Log:\n{self.log_tail()}") from e
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def create_database(self, name):
        """A fresh, empty database."""
        if not NAME.match(name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and _ (at most 63)")
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name):
        """Drop a database, ending its sessions (FORCE); no error if it is gone already."""
        if not NAME.match(name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and _ (at most 63)")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_tail(self, lines=TAIL_LINES):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return f"(no log at {self.log_path}: {e})"

"""Shared helpers of the benchmarks: paths, the result row, statistics, child processes, the wire client.

Owns: where the checkout and the pyz are, the `Row` every benchmark returns
(figure, same-run baseline, ratio, target, met), percentiles, the registry
that kills every child process we started (also on Ctrl-C), a tiny JSON-line
client that is the same for the core and for the baselines, what /proc says
of a process (resident memory, CPU time), the benchmarks' fake claude, and
the running core daemon fixture the benchmarks share.
"""

import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
PYTHON = sys.executable  # run.py is started with .venv/bin/python: every child uses the same interpreter
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the in-process broker benchmark imports hyperhive from the checkout


# -- a result -------------------------------------------------------------------

class Row:
    """One line of the table. `lower_is_better` decides which way the ratio target points."""

    def __init__(self, name, value, baseline, unit, max_ratio=None, min_ratio=None, max_value=None, note="",
                 show_ratio=True):
        self.name, self.value, self.baseline, self.unit = name, value, baseline, unit
        self.max_ratio, self.min_ratio, self.max_value, self.note = max_ratio, min_ratio, max_value, note
        # False where the baseline idles near zero (CPU of an idle server): any ratio to it is noise
        self.show_ratio = show_ratio

    @property
    def ratio(self):
        return self.value / self.baseline if self.baseline else float("inf")

    @property
    def has_target(self):
        return any(t is not None for t in (self.max_ratio, self.min_ratio, self.max_value))

    @property
    def target(self):
        parts = []
        if self.max_ratio is not None:
            parts.append(f"≤ {self.max_ratio:g}×")
        if self.min_ratio is not None:
            parts.append(f"≥ {self.min_ratio:g}×")
        if self.max_value is not None:
            parts.append(f"≤ {fmt(self.max_value, self.unit)}")
        return " and ".join(parts) or "–"

    @property
    def met(self):
        return ((self.max_ratio is None or self.ratio <= self.max_ratio)
                and (self.min_ratio is None or self.ratio >= self.min_ratio)
                and (self.max_value is None or self.value <= self.max_value))

    def shown_ratio(self):
        """The ratio as the table prints it: "–" where it means nothing (a zero baseline, or a row
        that says its ratio is noise)."""
        return f"{self.ratio:.2f}×" if self.show_ratio and math.isfinite(self.ratio) else "–"

    def as_dict(self):
        ratio = round(self.ratio, 3) if self.show_ratio and math.isfinite(self.ratio) else None  # JSON has no inf
        return {"benchmark": self.name, "value": self.value, "baseline": self.baseline, "unit": self.unit,
                "ratio": ratio, "target": self.target, "met": self.met, "note": self.note}


def fmt(value, unit):
    if unit == "s":  # times are kept in seconds, shown in ms
        return f"{value * 1000:.2f} ms"
    if unit == "msg/s":
        return f"{value:,.0f} msg/s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "%":
        return f"{value:.2f} %"
    return f"{value:g} {unit}"


def table(rows):
    head = ("benchmark", "figure", "baseline", "ratio", "target", "met")
    cells = [(r.name, fmt(r.value, r.unit), fmt(r.baseline, r.unit), r.shown_ratio(), r.target,
              ("yes" if r.met else "NO") if r.has_target else "–") for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    line = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()
    out = [line(head), line(["-" * w for w in widths])] + [line(c) for c in cells]
    out += [f"  note: {r.name}: {r.note}" for r in rows if r.note]
    return "\n".join(out)


# -- statistics ---------------------------------------------------------------------

def percentile(samples, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def median(samples):
    return percentile(samples, 50)


# -- child processes ------------------------------------------------------------------

class Children:
    """Every process a benchmark starts, so that all of them end however the run ends.

    Children get their own session: Ctrl-C reaches only us, and we stop them
    in order (SIGTERM, a grace period, then SIGKILL), by pid.
    """

    procs = []

    @classmethod
    def popen(cls, argv, **kw):
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        cls.procs.append(proc)
        return proc

    @classmethod
    def stop(cls, proc, grace=10.0):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in cls.procs:
            cls.procs.remove(proc)

    @classmethod
    def stop_all(cls):
        for proc in reversed(list(cls.procs)):
            cls.stop(proc, grace=5.0)


def on_sigterm_raise():
    """Make SIGINT and SIGTERM raise KeyboardInterrupt so `finally` blocks clean up.

    SIGINT is set explicitly: a shell starting us in the background leaves it ignored.
    """
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# -- the wire (one client for the core and the baselines alike) --------------------------

def connect(path, timeout=30.0):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def read_line(sock):
    """Read one newline-terminated line (the servers answer one line and close, or stream)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection after {len(buf)} bytes")
        buf += chunk
    return json.loads(buf)


def call(path, cmd, timeout=30.0, **args):
    """One request on one connection; returns the answer dict, raising on ok=false."""
    sock = connect(path, timeout)
    try:
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        answer = read_line(sock)
    finally:
        sock.close()
    if not answer.get("ok"):
        raise RuntimeError(f"{cmd} on {path}: {answer.get('error')}")
    return answer


def wait_for(predicate, timeout, what, proc=None, log=None):
    """Poll predicate (bounded) until true; explain with the log's tail if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.02)
    tail = ""
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = "\n" + "".join(f.readlines()[-20:])
    state = f" (it exited with {proc.returncode})" if proc is not None and proc.poll() is not None else ""
    raise RuntimeError(f"{what} did not happen within {timeout:g}s{state}{tail}")


# -- what /proc says of a process ----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid):
    """Resident memory (VmRSS) of pid, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS: process {pid} has exited")


def cpu_seconds(pid):
    """CPU time pid has used, in seconds: user + system, its own (every thread's) and that of the
    children it has waited for (a harness's `claude auth status` counts as the harness's)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is stat(5)'s field 3, the state
    return sum(int(ticks) for ticks in fields[11:15]) / CLOCK_TICKS  # utime, stime, cutime, cstime


def session_claudes(parents):
    """{parent pid: pid} of the live session claudes (`--input-format stream-json`) whose parent is in `parents`."""
    parents, found = set(parents), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid not in parents:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if b"--input-format" in argv and b"stream-json" in argv:
            found[ppid] = int(entry)
    return found


# -- the benchmarks' claude ------------------------------------------------------------------

def instant_claude(tmp):
    """An executable `claude` (bench/instant_claude.py) for a core to hand its harnesses.

    A wrapper on our interpreter rather than the script's `env python3`
    shebang: that may find a slow shim first (pyenv's costs ~100 ms a start),
    which the turn benchmark would time as the harness's overhead.
    """
    path = os.path.join(tmp, "claude")
    script = os.path.join(BENCH, "instant_claude.py")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec {shlex.quote(PYTHON)} -I -S {shlex.quote(script)} "$@"\n')
    os.chmod(path, 0o755)
    return path


# -- the harness's claude modes ----------------------------------------------------------------

MODES = ("session", "spawn")  # `serve --claude-mode`: one long-lived claude per agent (the default), one per turn


def mode_args(mode):
    """`serve` options for a claude mode; None is the pyz's own default (for a pyz without the option)."""
    return [] if mode is None else ["--claude-mode", mode]


def modes_of(pyz):
    """The claude modes this pyz's `serve` offers; (None,) for one that predates `--claude-mode`."""
    done = subprocess.run([PYTHON, pyz, "serve", "--help"], capture_output=True, text=True, timeout=60)
    return MODES if "--claude-mode" in done.stdout + done.stderr else (None,)


# -- the pyz ---------------------------------------------------------------------------

def ensure_pyz(tmp, requested=None):
    """The pyz to benchmark: built if missing; rebuilt into tmp if older than the sources.

    A stale pyz would time code that no longer exists, and the checkout's
    copy belongs to whoever builds it, so a fresh one goes into our temp dir.
    """
    if requested:
        return requested, ""
    pyz = os.path.join(ROOT, "hyperhive.pyz")
    if not os.path.exists(pyz):
        subprocess.run([os.path.join(ROOT, "build_zipapp.sh")], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHON=PYTHON))
        return pyz, "built hyperhive.pyz"
    built = os.path.getmtime(pyz)
    stale = any(os.path.getmtime(os.path.join(d, f)) > built
                for d, _, files in os.walk(os.path.join(ROOT, "hyperhive")) for f in files
                if not f.endswith(".pyc"))
    if not stale:
        return pyz, ""
    fresh = os.path.join(tmp, "hyperhive.pyz")
    subprocess.run([os.path.join(ROOT, "build_zipapp.sh"), fresh], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHON=PYTHON))
    return fresh, "hyperhive.pyz is older than the sources; benchmarked a fresh build in the temp dir"


# -- the real core daemon ------------------------------------------------------------------

class Core:
    """A real `hyperhive.pyz serve` (process backend) with `agents` idle agents: the product, as users run it.

    The core launches a harness per agent, and a harness long-polls its own
    socket. By default we kill every agent's harness so the benchmark is the
    only reader of those queues. With `keep_harnesses` they stay: the idle
    and turn benchmarks measure them, running `claude` (give them one that
    says it is logged in, e.g. `instant_claude(tmp)`: under `/bin/true` a
    harness never gets its login JSON and parks, polling for a login,
    instead of long-polling for messages). `label` names the state dir in
    tmp, so a second hive of the same run starts empty. `env` is added to
    the core's environment, `extra_args` to its `serve` command line;
    `claude_mode` ("session", "spawn") is passed as `--claude-mode` (None:
    the pyz's default, for a pyz without the option).
    """

    def __init__(self, tmp, pyz, agents, keep_harnesses=False, claude="/bin/true", label="core", env=None,
                 extra_args=(), claude_mode=None):
        self.pyz = pyz
        self.state = os.path.join(tmp, label)
        self.log = os.path.join(tmp, f"{label}.log")
        self.host = os.path.join(self.state, "run", "host.sock")
        self.names = [f"b{i:02d}" for i in range(agents)]
        self.keep_harnesses, self.claude = keep_harnesses, claude
        self.env, self.extra_args = dict(os.environ, **(env or {})), list(extra_args) + mode_args(claude_mode)
        self.claude_mode = claude_mode
        self.proc = None

    def socket(self, name):
        return os.path.join(self.state, "run", "agents", name, "agent.sock")

    def __enter__(self):
        with open(self.log, "ab") as log:
            self.proc = Children.popen(
                [PYTHON, self.pyz, "serve", "--state-dir", self.state, "--backend", "process",
                 "--claude", self.claude, "--log-level", "warning", "--dashboard-port", "0", *self.extra_args],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: call(self.host, "list", timeout=2), 30, "the core answering on host.sock",
                     self.proc, self.log)
            for name in self.names:
                call(self.host, "spawn", timeout=60, name=name)
                if not self.keep_harnesses:
                    call(self.host, "kill", timeout=60, name=name)
            if not self.keep_harnesses:
                self._flush()
        except BaseException:
            self.__exit__()  # a half-built hive still has processes to end
            raise
        return self

    def _flush(self):
        """Leave every queue empty and no stale long-poll behind.

        A harness killed mid-recv leaves the core holding that recv open; it
        would pop the next message for a client that is gone. One message
        per agent lets any such recv finish; then we drain what is left.
        """
        for name in self.names:
            call(self.host, "send", to=name, body="flush")
        time.sleep(0.3)
        for name in self.names:
            while call(self.socket(name), "recv", wait_seconds=0, max=32)["messages"]:
                pass

    def wait_serving(self, timeout):
        """Until every agent (the manager too) reports running and its harness has logged that it serves.

        `running` alone is true from the harness's fork; "serving" is logged
        once its turn loop and page are up. What boot work is left after it
        (the login probe, the first recv) shows as CPU, which the caller
        waits out.
        """
        def serving():
            # the logs first: reading them costs the booting hive nothing, a status call costs the core
            if not all(self._logged(name, " serving (state ") for name in ["manager"] + self.names):
                return False
            return all(r["running"] for r in call(self.host, "agent_status", timeout=10)["agent_statuses"])

        wait_for(serving, timeout, f"all {len(self.names)} harnesses serving", self.proc, self.log)

    def _logged(self, name, text):
        try:
            with open(os.path.join(self.state, "agents", name, "harness.log"), errors="replace") as f:
                return text in f.read()
        except FileNotFoundError:
            return False

    def harness_pid(self, name):
        """The live harness pid of an agent (by its pidfile), or None."""
        try:
            with open(os.path.join(self.state, "agents", name, "harness.pid")) as f:
                pid = int(f.read().split()[0])
            with open(f"/proc/{pid}/environ", "rb") as f:
                ours = self.state.encode() in f.read()  # the pid was not reused by someone else
        except (OSError, ValueError, IndexError):
            return None
        return pid if ours else None

    def harness_pids(self):
        """{agent: pid} of every live harness of this hive, the manager's included."""
        agents = os.path.join(self.state, "agents")
        pids = {name: self.harness_pid(name) for name in (os.listdir(agents) if os.path.isdir(agents) else ())}
        return {name: pid for name, pid in pids.items() if pid is not None}

    def __exit__(self, *exc):
        if self.proc is not None:
            Children.stop(self.proc, grace=30.0)  # the core stops the manager's harness itself
        self._kill_leftover_harnesses()

    def _kill_leftover_harnesses(self):
        """If the core died without stopping its harnesses, end them by their pidfiles."""
        for pid in self.harness_pids().values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)

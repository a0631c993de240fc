"""What a hive costs while it has nothing to do: resident memory and CPU.

Owns two measurements on a live hive (a common.Core with keep_harnesses:
every agent's harness up, logged in through the instant fake claude, parked
in its long-poll recv) beside idle_baseline.py, the same stack (gevent,
bottle, peewee, a pywsgi and a StreamServer) serving with no hyperhive code.
In session mode (`--claude-mode session`, the default) both wait until
every harness has started its long-lived claude (instant_claude.py, idle
on its stdin), so each harness holds its pipes and its process watch as in
production; those claudes are not hyperhive's and are not counted in the
figures, only reported beside them.

- rss: VmRSS of the core daemon and of one idle harness (the median of the
  hive's harnesses; its claude child not included), each read once it has
  settled; baseline: the bare server's. Targets: core <= 3x, harness <= 2x.
- cpu: CPU time of the core and every harness over one window, as percent
  of one core; the baseline's over the same window beside it. It idles near
  zero, so the target is absolute: <= 2 % of one core for the whole hive.
"""

import collections
import http.client
import math
import os
import subprocess
import tempfile
import time

from common import (BENCH, CLOCK_TICKS, PYTHON, Children, Row, connect, cpu_seconds, median, read_line, rss_mib,
                    session_claudes, wait_for)

READ_EVERY = 0.5
RSS_STABLE_READS = 3  # three reads 0.5 s apart within RSS_TOLERANCE: the memory has settled
RSS_TOLERANCE = 0.01
RSS_DEADLINE = 30.0
CPU_SETTLED = 10.0  # percent of one core over CPU_SETTLE_SPAN: 5x the target, far below a boot's burst
CPU_SETTLE_SPAN = 2.0  # the core's status watch runs every 2 s: a shorter span sees it or not
CPU_DEADLINE = 60.0
CLAUDES_DEADLINE = 60.0  # a harness starts its session claude at its engine's tick (every 2 s) once logged in
CORE_MAX_RATIO, HARNESS_MAX_RATIO, HIVE_MAX_PERCENT = 3.0, 2.0, 2.0


class Baseline:
    """idle_baseline.py as a child, served one request on each server (an idle server has served)."""

    def __init__(self, tmp):
        self.dir = tempfile.mkdtemp(prefix="idle-baseline-", dir=tmp)  # its own: one per measurement
        self.proc = Children.popen([PYTHON, os.path.join(BENCH, "idle_baseline.py"), self.dir],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)

    def __enter__(self):
        try:
            said = self.proc.stdout.readline().split()
            if said[:1] != [b"port"]:
                raise RuntimeError(f"the idle baseline server did not start (it said {said!r})")
            conn = http.client.HTTPConnection("127.0.0.1", int(said[1]), timeout=10)
            try:
                conn.request("GET", "/")
                if conn.getresponse().status != 200:
                    raise RuntimeError("the idle baseline's route did not answer 200")
            finally:
                conn.close()
            sock = connect(os.path.join(self.dir, "idle.sock"), timeout=10)
            try:
                sock.sendall(b'{"cmd":"ping"}\n')
                read_line(sock)
            finally:
                sock.close()
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def pid(self):
        return self.proc.pid

    def __exit__(self, *exc):
        Children.stop(self.proc)


def settled_rss(pids):
    """{pid: MiB} once every pid's last RSS_STABLE_READS reads agree, and whether they did in time."""
    reads = {pid: [] for pid in pids}
    deadline = time.monotonic() + RSS_DEADLINE
    while True:
        for pid, seen in reads.items():
            seen.append(rss_mib(pid))
            del seen[:-RSS_STABLE_READS]
        steady = all(len(seen) == RSS_STABLE_READS and max(seen) - min(seen) <= RSS_TOLERANCE * max(seen)
                     for seen in reads.values())
        if steady or time.monotonic() > deadline:
            return {pid: seen[-1] for pid, seen in reads.items()}, steady
        time.sleep(READ_EVERY)


def hive_pids(core):
    """The core's pid, every live harness's, and (in session mode) each harness's live claude's.

    A hive missing a harness, or a session-mode harness without its claude, is not the hive we mean to time."""
    harnesses = core.harness_pids()
    missing = sorted(set(core.names + ["manager"]) - set(harnesses))
    if missing:
        raise RuntimeError(f"no live harness for {', '.join(missing)}; see their harness.log")
    claudes = {}
    if core.claude_mode == "session":
        def all_up():
            claudes.clear()
            claudes.update(session_claudes(harnesses.values()))
            return len(claudes) == len(harnesses)

        wait_for(all_up, CLAUDES_DEADLINE, f"a session claude under each of the {len(harnesses)} harnesses",
                 core.proc, core.log)
    return core.proc.pid, harnesses, claudes


def claudes_said(claudes):
    return (f"each harness in session mode with its live claude (instant_claude.py, idle on stdin; "
            f"{len(claudes)} of them)" if claudes else "each harness in spawn mode (no claude between turns)")


def settle_cpu(pids):
    """Wait (bounded) until the hive's CPU over the last CPU_SETTLE_SPAN is at most CPU_SETTLED percent.

    Returns the seconds it took, or None if it never got there (then it is measured anyway, and says so).
    """
    started = time.monotonic()
    samples = collections.deque()  # (when, the hive's CPU seconds so far), the last CPU_SETTLE_SPAN of them
    while time.monotonic() - started < CPU_DEADLINE:
        now = (time.monotonic(), sum(cpu_seconds(pid) for pid in pids))
        samples.append(now)
        while now[0] - samples[0][0] > CPU_SETTLE_SPAN + READ_EVERY / 2:
            samples.popleft()
        span = now[0] - samples[0][0]
        if span >= CPU_SETTLE_SPAN - READ_EVERY / 2 and (now[1] - samples[0][1]) / span * 100 <= CPU_SETTLED:
            return now[0] - started
        time.sleep(READ_EVERY)
    return None


def run_rss(core, tmp):
    """Rows for the core's and one harness's resident memory; `core` is a live, serving common.Core."""
    core_pid, harnesses, claudes = hive_pids(core)
    with Baseline(tmp) as base:
        rss, steady = settled_rss([core_pid, base.pid, *harnesses.values()])
    ours = sorted(rss[pid] for pid in harnesses.values())
    theirs = sorted(rss_mib(pid) for pid in claudes.values())
    beside = f"; its claude child is not counted (median {median(theirs):.1f} MiB)" if theirs else ""
    unsettled = "" if steady else f"; not every process's RSS held within 1 % for 1 s in {RSS_DEADLINE:g} s"
    n = len(core.names)
    return [
        Row(f"idle RSS: core daemon ({n} agents)", rss[core_pid], rss[base.pid], "MiB",
            max_ratio=CORE_MAX_RATIO,
            note=f"VmRSS with every harness up and long-polling, {claudes_said(claudes)}; baseline: "
                 f"idle_baseline.py, the same stack with no hyperhive code{unsettled}"),
        Row("idle RSS: one harness (median)", median(ours), rss[base.pid], "MiB", max_ratio=HARNESS_MAX_RATIO,
            note=f"median over the hive's {len(ours)} harnesses (the manager's included): "
                 f"min {ours[0]:.1f}, max {ours[-1]:.1f} MiB{beside}"),
    ]


def run_cpu(core, tmp, window):
    """The hive's CPU over `window` seconds as percent of one core, beside the baseline's in the same window."""
    core_pid, harnesses, claudes = hive_pids(core)
    pids = [core_pid, *harnesses.values()]
    settled = settle_cpu(pids)
    with Baseline(tmp) as base:
        before = {pid: cpu_seconds(pid) for pid in pids + [base.pid] + list(claudes.values())}
        t0 = time.monotonic()
        time.sleep(window)  # the measurement itself: a fixed window of doing nothing
        elapsed = time.monotonic() - t0
        used = {pid: cpu_seconds(pid) - before[pid] for pid in before}
    hive = sum(used[pid] for pid in pids) / elapsed * 100
    by_core = used[core_pid] / elapsed * 100
    by_claudes = sum(used[pid] for pid in claudes.values()) / elapsed * 100
    beside = f"; the {len(claudes)} idle claudes beside them {by_claudes:.2f} %, not counted" if claudes else ""
    # each process's delta is off by less than a tick, uniformly: the sum's spread grows as its square root
    rounding = math.sqrt(len(pids) / 6) / CLOCK_TICKS / elapsed * 100
    if settled is None:
        waited = f"it had not fallen to {CPU_SETTLED:g} % within {CPU_DEADLINE:g} s of serving; measured anyway"
    else:
        waited = f"measured once it stayed under {CPU_SETTLED:g} % for {CPU_SETTLE_SPAN:g} s ({settled:.1f} s)"
    return [Row(f"idle CPU: core + {len(harnesses)} harnesses ({window:g} s, % of one core)", hive,
                used[base.pid] / elapsed * 100, "%", max_value=HIVE_MAX_PERCENT, show_ratio=False,
                note=f"{claudes_said(claudes)}; the core alone {by_core:.2f} %{beside}; utime+stime (+ waited-for children) from /proc/PID/stat, "
                     f"whose {1000 / CLOCK_TICKS:g} ms ticks round each of the {len(pids)} processes: "
                     f"±{rounding:.2f} % (1σ) over this window; {waited}; "
                     f"baseline: idle_baseline.py over the same window")]

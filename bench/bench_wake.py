"""Wake latency: operator `send` on host.sock → the recipient's parked long-poll `recv` answers.

Owns the measurement against the real core (with `agents` idle long-pollers
held open, one per agent socket) and against the bare gevent baseline of
wake_baseline.py holding the same number of pollers. Rounds alternate
between the two servers so drift of the machine hits both alike.
"""

import json
import os
import select
import subprocess
import time

from common import PYTHON, BENCH, Children, Row, connect, percentile

GAP = 0.002  # an idle hive between sends: we time a wake, not a burst


class Poller:
    """One parked `recv` (wait_seconds=180) on one recipient's socket."""

    def __init__(self, path):
        self.path, self.sock = path, None

    def arm(self):
        self.sock = connect(self.path, timeout=None)
        self.sock.sendall(b'{"cmd":"recv","wait_seconds":180,"max":1}\n')

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Target:
    """A server under test: its host socket and one armed poller per recipient."""

    def __init__(self, host, sockets):
        self.host = host
        self.pollers = [Poller(path) for path in sockets]
        self.answered = None  # seconds from the last round's send until the send itself was answered

    def arm(self):
        for p in self.pollers:
            p.arm()
        time.sleep(0.5)  # let the server park every recv before the first send

    def close(self):
        for p in self.pollers:
            p.close()

    def round(self, k, name, token):
        """Send token to recipient k; return seconds until poller k has its whole answer."""
        poller = self.pollers[k]
        t0 = time.perf_counter()
        host = connect(self.host, timeout=10)
        try:
            host.sendall(json.dumps({"cmd": "send", "to": name, "body": token}).encode() + b"\n")
            hfd, pfd = host.fileno(), poller.sock.fileno()
            bufs = {hfd: b"", pfd: b""}
            woke = None
            poll = select.poll()
            for fd in bufs:
                poll.register(fd, select.POLLIN)
            deadline = t0 + 10
            while any(not b.endswith(b"\n") for b in bufs.values()):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"no answer to send/recv for {name} within 10s")
                for fd, _ in poll.poll(1000):
                    sock = host if fd == hfd else poller.sock
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise RuntimeError(f"{name}: a server closed a connection without answering")
                    bufs[fd] += chunk
                    if fd == pfd and bufs[fd].endswith(b"\n"):
                        woke = time.perf_counter()
                        poll.unregister(fd)
                    elif bufs[fd].endswith(b"\n"):
                        self.answered = time.perf_counter() - t0
                        poll.unregister(fd)
        finally:
            host.close()
        got, sent = json.loads(bufs[pfd]), json.loads(bufs[hfd])
        if not sent.get("ok"):
            raise RuntimeError(f"send to {name} failed: {sent.get('error')}")
        bodies = [m["body"] for m in got.get("messages", [])]
        if bodies != [token]:
            raise RuntimeError(f"the poller of {name} got {bodies!r}, expected [{token!r}]")
        poller.close()
        poller.arm()  # re-park it for its next turn
        return woke - t0


def run(core, tmp, rounds):
    """Rows for p50 and p99; `core` is a running common.Core."""
    base_dir = os.path.join(tmp, "baseline")
    base = Children.popen([PYTHON, os.path.join(BENCH, "wake_baseline.py"), base_dir, *core.names],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        if base.stdout.readline().strip() != b"ready":
            raise RuntimeError("the wake baseline server did not start")
        targets = {
            "core": Target(core.host, [core.socket(n) for n in core.names]),
            "base": Target(os.path.join(base_dir, "host.sock"),
                           [os.path.join(base_dir, "agents", f"{n}.sock") for n in core.names]),
        }
        times = {"core": [], "base": []}
        try:
            for t in targets.values():
                t.arm()
            n = len(core.names)
            for i in range(n + rounds):  # the first n rounds (one per poller) warm up, unmeasured
                k = i % n
                for key, t in targets.items():
                    elapsed = t.round(k, core.names[k], f"wake-{key}-{i}")
                    if i >= n:
                        times[key].append(elapsed)
                    time.sleep(GAP)
        finally:
            for t in targets.values():
                t.close()
    finally:
        Children.stop(base)
    label = f"wake latency {{}} ({len(core.names)} pollers, n={rounds})"
    slow = sum(t > 0.005 for t in times["core"])
    note = (f"{slow} of {rounds} core wakes took > 5 ms (worst {max(times['core']) * 1000:.1f} ms); "
            f"baseline worst {max(times['base']) * 1000:.1f} ms")
    return [
        Row(label.format("p50"), percentile(times["core"], 50), percentile(times["base"], 50), "s", max_ratio=1.5),
        Row(label.format("p99"), percentile(times["core"], 99), percentile(times["base"], 99), "s",
            max_ratio=1.5, max_value=0.005, note=note),
    ]

"""Session latency: operator send → the first Messages API request of the turn it wakes, with the real claude CLI.

Owns the measurement of issue 16 item 8. The real Claude Code CLI (pinned in
tests/node) runs fully offline against an instant mock of the Messages API
(tests/mockapi.py through ANTHROPIC_BASE_URL), which records the monotonic
time every agent-conversation request arrives (the ones with a `tools` list:
the CLI's side requests, titles and the like, are not a turn's first
request). Three targets, their rounds interleaved so drift of the machine
hits all alike:

  baseline  the bare long-lived CLI: one `claude --print --input-format
            stream-json --output-format stream-json --verbose` process; a round
            writes one user line to its stdin and waits for its `result`.
  session   a hive (`hyperhive.pyz serve`, process backend) with
            `--claude-mode session`: one long-lived claude per agent; a round
            is the operator's `send` on host.sock to an idle agent, then its
            turn's end (turn_end, the message acked).
  spawn     the same hive with `--claude-mode spawn`: one `claude --print`
            per turn, the hive's behaviour before issue 16.

Each round times send (or the line written) → the mock's first request of
that turn. Target: session p50 ≤ 1.5× the baseline's p50; spawn is shown
beside it, without a target. A pyz whose `serve` has no `--claude-mode`
runs its only mode (the per-turn spawn) and the session row is left out.
"""

import json
import os
import queue
import re
import sqlite3
import subprocess
import sys
import threading
import time

from common import ROOT, Children, Core, Row, call, mode_args, modes_of, percentile, wait_for

sys.path.insert(0, os.path.join(ROOT, "tests"))
from mockapi import MockAnthropic, is_side_request, text  # noqa: E402

CLAUDE = os.environ.get("HIVE_TEST_CLAUDE") or os.path.join(ROOT, "tests", "node", "node_modules", ".bin", "claude")
MODEL = "haiku"  # the harness's default model: the mock answers any
KEY = "sk-ant-bench-not-a-real-key"
WARMUP = 2  # the first turns boot the CLI, connect MCP and fill caches: not timed
BOOT_TIMEOUT = 120.0  # a hive's first turn waits for the harness's login probe and a CLI boot
TURN_TIMEOUT = 60.0
MAX_RATIO = 1.5
AGENT = "b00"  # common.Core's first agent


def missing():
    """Why this benchmark cannot run here (None when it can)."""
    if not os.access(CLAUDE, os.X_OK):
        return f"no claude CLI at {CLAUDE} (run tests/setup, or set HIVE_TEST_CLAUDE)"
    return None


# -- the mock API ----------------------------------------------------------------------------------

WHO = re.compile(r"You are \*\*([a-z][a-z0-9-]*)\*\*")  # our system prompt names the agent


def agent_of(request):
    system = request.get("system") or []
    joined = system if isinstance(system, str) else "\n".join(b.get("text", "") for b in system)
    found = WHO.search(joined)
    return found.group(1) if found else None


class TimedMock(MockAnthropic):
    """The instant mock, answering every turn with one line of text and noting when each main request came.

    `agent`: count only that agent's requests (a hive's manager may have turns of its own)."""

    def __init__(self, agent=None):
        super().__init__(lambda request: text("ok"))
        self.agent = agent
        self.arrivals = []  # monotonic arrival of every agent-conversation request, in order
        self.cond = threading.Condition()

    def _record(self, request):
        at = time.monotonic()
        if is_side_request(request) or (self.agent and agent_of(request) != self.agent):
            return  # not kept at all: a long run must not hold every conversation in memory
        with self.cond:
            self.arrivals.append(at)
            self.cond.notify_all()

    def first_after(self, count, timeout):
        """The arrival time of main request number `count` (0-based), waiting for it up to `timeout`."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.arrivals) > count, timeout):
                raise RuntimeError(f"no Messages API request came within {timeout:g}s")
            return self.arrivals[count]


# -- the targets ---------------------------------------------------------------------------------

class Bare:
    """The baseline: the bare long-lived CLI, fed one stream-json user line per round."""

    name = "baseline"

    def __init__(self, tmp, mock):
        self.mock = mock
        home = os.path.join(tmp, "bare-claude")
        os.makedirs(home, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
        env.update({"HOME": home, "ANTHROPIC_BASE_URL": mock.base_url, "ANTHROPIC_API_KEY": KEY,
                    "MCP_CONNECTION_NONBLOCKING": "0", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                    "DISABLE_AUTOUPDATER": "1"})
        self.stderr = open(os.path.join(tmp, "bare-claude.log"), "ab")
        self.proc = Children.popen(
            [CLAUDE, "--print", "--input-format", "stream-json", "--output-format", "stream-json", "--verbose",
             "--model", MODEL], cwd=home, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for raw in self.proc.stdout:
            self.lines.put(raw)
        self.lines.put(None)

    def round(self, i, timeout):
        count = len(self.mock.arrivals)
        line = {"type": "user", "message": {"role": "user", "content": f"bench round {i}"}}
        t0 = time.monotonic()
        self.proc.stdin.write(json.dumps(line).encode() + b"\n")
        self.proc.stdin.flush()
        first = self.mock.first_after(count, timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                raw = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"the bare claude gave no result within {timeout:g}s") from None
            if raw is None:
                raise RuntimeError(f"the bare claude exited with {self.proc.wait()}")
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if obj.get("type") == "result":
                if obj.get("is_error"):
                    raise RuntimeError(f"the bare claude's turn failed: {obj.get('result')}")
                return first - t0

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        Children.stop(self.proc)
        self.stderr.close()


class Hived:
    """A hive of one agent on the real CLI in one claude mode; a round is the operator's send to it."""

    def __init__(self, tmp, pyz, mode, mock):
        self.mock, self.mode = mock, mode
        self.name = mode or "spawn"
        self.core = Core(tmp, pyz, 1, keep_harnesses=True, claude=CLAUDE, label=f"session-{self.name}",
                         env={"ANTHROPIC_BASE_URL": mock.base_url, "ANTHROPIC_API_KEY": KEY},
                         extra_args=mode_args(mode) + ["--pass-env", "ANTHROPIC_BASE_URL",
                                                       "--pass-env", "ANTHROPIC_API_KEY"])
        self.core.__enter__()
        self.agent = self.core.names[0]
        state = os.path.join(self.core.state, "agents", self.agent, "state")
        self.log = os.path.join(self.core.state, "agents", self.agent, "harness.log")
        self.hive_db = self.events_db = None
        try:
            self.hive_db = sqlite3.connect(os.path.join(self.core.state, "hive.db"), timeout=10)
            events = os.path.join(state, "hyperhive-events.sqlite")
            wait_for(lambda: os.path.exists(events), BOOT_TIMEOUT, f"{self.agent}'s event log", self.core.proc,
                     self.log)
            self.events_db = sqlite3.connect(events, timeout=10)
            self.ends = self._turn_ends()
        except BaseException:
            self.close()  # a half-built hive still has processes to end
            raise

    def _turn_ends(self):
        try:
            return self.events_db.execute("SELECT count(*) FROM event WHERE kind = 'turn_end'").fetchone()[0]
        except sqlite3.OperationalError:  # the harness has not made its table yet
            return 0

    def round(self, i, timeout):
        count = len(self.mock.arrivals)
        t0 = time.monotonic()
        mid = call(self.core.host, "send", to=self.agent, body=f"bench round {i}")["id"]
        first = self.mock.first_after(count, timeout)
        # turn_end comes after the ack: once it is there, the harness is off to its next recv
        wait_for(lambda: self._turn_ends() > self.ends, timeout, f"{self.agent}'s turn {i} ({self.name}) ending",
                 self.core.proc, self.log)
        self.ends = self._turn_ends()
        acked = self.hive_db.execute("SELECT acked_at FROM message WHERE id = ?", (mid,)).fetchone()[0]
        if acked is None:
            raise RuntimeError(f"{self.agent}'s turn {i} ({self.name}) ended without an ack; see {self.log}")
        return first - t0

    def close(self):
        for db in (self.hive_db, self.events_db):
            if db is not None:
                db.close()
        self.core.__exit__()


# -- the benchmark --------------------------------------------------------------------------------

def run(tmp, pyz, rounds):
    """Rows for p50 and p95 of each mode the pyz has, against the bare CLI measured in the same run."""
    why = missing()
    if why:
        raise RuntimeError(why)
    mocks, targets = [], []
    try:
        for agent, build in [(None, lambda m: Bare(tmp, m))] + [(AGENT, lambda m, mode=mode: Hived(tmp, pyz, mode, m))
                                                                for mode in modes_of(pyz)]:
            mock = TimedMock(agent)
            mock.start()
            mocks.append(mock)
            targets.append(build(mock))
        times = {t.name: [] for t in targets}
        for i in range(WARMUP + rounds):
            for t in targets:
                elapsed = t.round(i, BOOT_TIMEOUT if i < WARMUP else TURN_TIMEOUT)
                if i >= WARMUP:
                    times[t.name].append(elapsed)
    finally:
        for t in reversed(targets):
            t.close()
        for mock in mocks:
            mock.stop()
    base = times.pop("baseline")
    b50, b95 = percentile(base, 50), percentile(base, 95)
    rows = []
    for name, samples in times.items():
        p50, p95 = percentile(samples, 50), percentile(samples, 95)
        label = f"send → first API request, {name} {{}} (n={rounds})"
        target = {"max_ratio": MAX_RATIO} if name == "session" else {}
        rows += [Row(label.format("p50"), p50, b50, "s", **target),
                 Row(label.format("p95"), p95, b95, "s",
                     note=f"worst {max(samples) * 1000:.1f} ms against the bare CLI's {max(base) * 1000:.1f} ms"
                          + ("" if name == "session" else "; one claude --print per turn, no target")
                          + ("" if "session" in times else "; this pyz has no --claude-mode: "
                             "only its per-turn spawn ran"))]
    return rows

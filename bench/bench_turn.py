"""Harness overhead per turn: what a harness adds around one claude run, timed from the core's side.

Owns the measurement on a live hive (a common.Core with keep_harnesses whose
claude is instant_claude.py): the operator sends one message to an idle
agent at t0 (unix time); instant_claude writes when it started and when it
had flushed its result line; the core's database has when the harness acked
the turn (message.acked_at). Per turn:

  wake → claude started   start − t0 (this includes the core's wake of the
                          parked recv, which the wake row times on its own)
  claude exit → ack       acked_at − exit

Baseline: the same instant_claude run by a plain Python loop
(subprocess.Popen, its stdout read to the end, wait): spawn → started, and
exit → reaped. Turns and bare runs alternate so drift of the machine hits
both alike. Target: the two halves' sum <= 100 ms at p50.
"""

import json
import os
import sqlite3
import subprocess
import time

from common import Children, Row, call, percentile, wait_for

RECORD = ".instant-claude.jsonl"  # what instant_claude.py appends to in its working directory
WARMUP = 3  # the first turns start claude's session and fill the harness's caches: not timed
TURN_TIMEOUT = 30.0
MAX_OVERHEAD = 0.100


def records(directory):
    try:
        with open(os.path.join(directory, RECORD)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class Agent:
    """One idle agent of the hive: send it a message, wait out its turn, read the times of it."""

    def __init__(self, core, name):
        self.core, self.name = core, name
        self.state = os.path.join(core.state, "agents", name, "state")
        self.hive_db = sqlite3.connect(os.path.join(core.state, "hive.db"), timeout=10)
        self.events_db = sqlite3.connect(os.path.join(self.state, "hyperhive-events.sqlite"), timeout=10)
        self.turns = self._count_turn_ends()

    def close(self):
        self.hive_db.close()
        self.events_db.close()

    def _count_turn_ends(self):
        return self.events_db.execute("SELECT count(*) FROM event WHERE kind = 'turn_end'").fetchone()[0]

    def turn(self, i):
        """One turn; returns (t0, started, exited, acked) in unix seconds."""
        runs = len(records(self.state))
        t0 = time.time()
        mid = call(self.core.host, "send", to=self.name, body=f"bench turn {i}")["id"]
        # the harness emits turn_end after its ack: once it is there, the harness is off to its next recv
        wait_for(lambda: self._count_turn_ends() > self.turns, TURN_TIMEOUT, f"{self.name}'s turn {i} ending",
                 self.core.proc, os.path.join(self.core.state, "agents", self.name, "harness.log"))
        self.turns += 1
        acked = self.hive_db.execute("SELECT acked_at FROM message WHERE id = ?", (mid,)).fetchone()[0]
        if acked is None:
            last = self.events_db.execute("SELECT data FROM event WHERE kind = 'turn_end' "
                                          "ORDER BY seq DESC LIMIT 1").fetchone()[0]
            raise RuntimeError(f"{self.name}'s turn {i} ended without an ack: {last}")
        new = records(self.state)[runs:]
        if len(new) != 1:
            raise RuntimeError(f"{self.name}'s turn {i} ran claude {len(new)} times, expected once")
        return t0, new[0]["start"], new[0]["exit"], acked / 1000


def bare_run(claude, directory, i):
    """instant_claude from a plain loop, as the harness runs it; returns (t0, started, exited, reaped)."""
    runs = len(records(directory))
    argv = [claude, "--print", "--output-format", "stream-json", "--verbose", "--model", "haiku",
            "--", f"bench turn {i}"]
    t0 = time.time()
    proc = Children.popen(argv, cwd=directory, env=dict(os.environ), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _line in proc.stdout:  # the harness reads every line as it comes; so does the baseline
            pass
        proc.wait(TURN_TIMEOUT)
        reaped = time.time()
    finally:
        proc.stdout.close()
        proc.stderr.close()
        Children.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{claude} exited {proc.returncode} in the bare loop")
    new = records(directory)[runs:]
    if len(new) != 1:
        raise RuntimeError(f"the bare run {i} of {claude} left {len(new)} records, expected one")
    return t0, new[0]["start"], new[0]["exit"], reaped


def run(core, tmp, claude, rounds):
    """Rows for both halves and their sum at p50; `core` is a live, serving common.Core running `claude`."""
    agent = Agent(core, core.names[0])
    bare_dir = os.path.join(tmp, "bare-claude")
    os.makedirs(bare_dir, exist_ok=True)
    ours, bare = [], []
    try:
        for i in range(WARMUP + rounds):
            turn = agent.turn(i)
            spawn = bare_run(claude, bare_dir, i)
            if i >= WARMUP:
                ours.append(turn)
                bare.append(spawn)
    finally:
        agent.close()
    wake = [started - t0 for t0, started, _, _ in ours]
    ack = [acked - exited for _, _, exited, acked in ours]
    b_wake = [started - t0 for t0, started, _, _ in bare]
    b_reap = [reaped - exited for _, _, exited, reaped in bare]
    total = [w + a for w, a in zip(wake, ack)]
    b_total = [w + r for w, r in zip(b_wake, b_reap)]
    trip = percentile([acked - t0 for t0, _, _, acked in ours], 50)
    b_trip = percentile([reaped - t0 for t0, _, _, reaped in bare], 50)
    label = f"turn overhead: {{}} (p50, n={rounds})"
    return [
        Row(label.format("wake → claude started"), percentile(wake, 50), percentile(b_wake, 50), "s",
            note="operator send → instant_claude's first instruction: the core's wake, the harness's recv, "
                 "turn_start and Popen, and claude's own interpreter start-up (which the baseline's "
                 "spawn → started has too)"),
        Row(label.format("claude exit → ack"), percentile(ack, 50), percentile(b_reap, 50), "s",
            note="claude's result flushed → the core's acked_at (1 ms resolution): the harness's end of the pipe, "
                 "reaping, its turn_stat row and two loose-end calls, then ack_turn; baseline: exit → reaped"),
        Row(label.format("sum of both"), percentile(total, 50), percentile(b_total, 50), "s",
            max_value=MAX_OVERHEAD,
            note=f"round trip send → ack p50 {trip * 1000:.1f} ms against a bare spawn → reaped "
                 f"{b_trip * 1000:.1f} ms ({trip / b_trip:.2f}×); worst sum {max(total) * 1000:.1f} ms"),
    ]

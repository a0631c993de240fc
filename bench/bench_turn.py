"""Harness overhead per turn: what a harness adds around one claude turn, timed from the core's side.

Owns the measurement on live hives whose claude is instant_claude.py: the
operator sends one message to an idle agent at t0 (unix time);
instant_claude writes when its turn started and when it had flushed its
result line (.instant-claude.jsonl); the core's database has when the
harness acked the turn (message.acked_at, 1 ms resolution). Per turn, in
each claude mode of the harness:

session (the default: one long-lived claude per agent, a turn is a user
line on its stdin), on the 50-agent live hive (`--claude-mode session`):

  send → claude read the line   start − t0: the core's wake of the parked
                                recv, the harness's recv and turn_start,
                                its write of the user line, claude's read
  claude's result → ack         acked_at − exit: the harness's read of the
                                result line, its turn_stat row, loose ends,
                                then ack_turn

  Baseline: the same instant_claude kept running by a plain Python loop
  (write a user line, read lines up to the result): line written → read,
  and result flushed → read by the loop. Each is one pipe hop, tens of
  microseconds (the second may even come out a few below zero: the loop
  may read the line before claude's flush returns and it reads the clock),
  so the figures are the harness's and the core's own time nearly whole,
  and these rows show no ratio.

spawn (`--claude-mode spawn`: one claude per turn), on a second hive of one
agent started here, when the pyz has the option:

  send → claude started         start − t0 (the wake, recv, turn_start,
                                Popen and claude's own interpreter start-up,
                                which the baseline has too)
  claude exit → ack             acked_at − exit: the end of the pipe,
                                reaping, turn_stat, loose ends, ack_turn

  Baseline: the same instant_claude spawned from a plain loop (Popen, its
  stdout read to the end, wait): spawn → started, and exit → reaped.

Turns of both hives and both bare loops alternate, so drift of the machine
hits all alike. Target, per mode: the two halves' sum <= 100 ms at p50.
"""

import json
import os
import sqlite3
import subprocess
import time

from common import Children, Core, Row, call, percentile, wait_for

RECORD = ".instant-claude.jsonl"  # what instant_claude.py appends to in its working directory
WARMUP = 3  # the first turns start claude's session and fill the harness's caches: not timed
TURN_TIMEOUT = 30.0
RECORD_TIMEOUT = 5.0  # a session's claude writes its record just after the result line the harness acts on
BOOT_TIMEOUT = 120.0
MAX_OVERHEAD = 0.100


def records(directory):
    try:
        with open(os.path.join(directory, RECORD)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def user_line(i):
    return (json.dumps({"type": "user", "message": {"role": "user", "content": f"bench turn {i}"}}) + "\n").encode()


class Agent:
    """One idle agent of a hive in one claude mode: send it a message, wait out its turn, read the times of it."""

    def __init__(self, core, name, mode):
        self.core, self.name, self.mode = core, name, mode
        self.state = os.path.join(core.state, "agents", name, "state")
        self.log = os.path.join(core.state, "agents", name, "harness.log")
        self.hive_db = sqlite3.connect(os.path.join(core.state, "hive.db"), timeout=10)
        self.events_db = sqlite3.connect(os.path.join(self.state, "hyperhive-events.sqlite"), timeout=10)
        self.turns = self._count_turn_ends()

    def close(self):
        self.hive_db.close()
        self.events_db.close()

    def _count_turn_ends(self):
        return self.events_db.execute("SELECT count(*) FROM event WHERE kind = 'turn_end'").fetchone()[0]

    def turn(self, i):
        """One turn; returns (t0, started, exited, acked, claude's pid) in unix seconds."""
        runs = len(records(self.state))
        t0 = time.time()
        mid = call(self.core.host, "send", to=self.name, body=f"bench turn {i}")["id"]
        # the harness emits turn_end after its ack: once it is there, the harness is off to its next recv
        wait_for(lambda: self._count_turn_ends() > self.turns, TURN_TIMEOUT, f"{self.name}'s turn {i} ending",
                 self.core.proc, self.log)
        self.turns += 1
        acked = self.hive_db.execute("SELECT acked_at FROM message WHERE id = ?", (mid,)).fetchone()[0]
        if acked is None:
            last = self.events_db.execute("SELECT data FROM event WHERE kind = 'turn_end' "
                                          "ORDER BY seq DESC LIMIT 1").fetchone()[0]
            raise RuntimeError(f"{self.name}'s turn {i} ({self.mode}) ended without an ack: {last}")
        wait_for(lambda: len(records(self.state)) > runs, RECORD_TIMEOUT, f"{self.name}'s claude recording turn {i}")
        new = records(self.state)[runs:]
        if len(new) != 1:
            raise RuntimeError(f"{self.name}'s turn {i} ({self.mode}) ran claude {len(new)} times, expected once")
        if (new[0].get("mode") == "session") != (self.mode == "session"):
            raise RuntimeError(f"{self.name}'s turn {i} ran claude as a {new[0].get('mode') or 'spawn'}, "
                               f"expected a {self.mode}; see {self.log}")
        return t0, new[0]["start"], new[0]["exit"], acked / 1000, new[0]["pid"]


class BareSession:
    """The session baseline: instant_claude kept running, fed one user line per round by a plain loop."""

    def __init__(self, claude, directory):
        self.dir = directory
        argv = [claude, "--print", "--output-format", "stream-json", "--verbose", "--model", "haiku",
                "--input-format", "stream-json", "--permission-prompt-tool", "stdio"]
        self.proc = Children.popen(argv, cwd=directory, env=dict(os.environ, HOME=directory),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def round(self, i):
        """Returns (t0, started, exited, read) in unix seconds: line written, read, result flushed, result read."""
        runs = len(records(self.dir))
        line = user_line(i)
        t0 = time.time()
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        while True:
            raw = self.proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"the bare session exited {self.proc.wait(TURN_TIMEOUT)} in round {i}")
            if raw.startswith(b'{"type": "result"'):
                read = time.time()
                break
        wait_for(lambda: len(records(self.dir)) > runs, RECORD_TIMEOUT, f"the bare session recording round {i}")
        new = records(self.dir)[runs:]
        if len(new) != 1:
            raise RuntimeError(f"the bare session's round {i} left {len(new)} records, expected one")
        return t0, new[0]["start"], new[0]["exit"], read

    def close(self):
        """EOF on its stdin; returns its exit code (instant_claude exits 0 at EOF, as the CLI does)."""
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            self.proc.stdout.close()
            Children.stop(self.proc)
        return self.proc.returncode


def bare_spawn(claude, directory, i):
    """instant_claude from a plain loop, as the spawn engine runs it; returns (t0, started, exited, reaped)."""
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


def rows(mode, ours, bare, rounds, halves, pids=None, show_ratio=True):
    """The two halves and their sum at p50 for one mode; `halves` names them and says what each holds."""
    wake = [started - t0 for t0, started, _, _ in ours]
    end = [acked - exited for _, _, exited, acked in ours]
    b_wake = [started - t0 for t0, started, _, _ in bare]
    b_end = [done - exited for _, _, exited, done in bare]
    total = [w + a for w, a in zip(wake, end)]
    b_total = [w + r for w, r in zip(b_wake, b_end)]
    trip = percentile([acked - t0 for t0, _, _, acked in ours], 50)
    b_trip = percentile([done - t0 for t0, _, _, done in bare], 50)
    label = f"turn overhead, {mode}: {{}} (p50, n={rounds})"
    (first, first_note), (second, second_note), bare_trip = halves
    processes = "" if pids is None else (
        "; one claude process ran every timed turn" if len(pids) == 1 else
        f"; {len(pids)} claude processes ran the timed turns (the harness replaced it in between)")
    return [
        Row(label.format(first), percentile(wake, 50), percentile(b_wake, 50), "s", note=first_note,
            show_ratio=show_ratio),
        Row(label.format(second), percentile(end, 50), percentile(b_end, 50), "s", note=second_note,
            show_ratio=show_ratio),
        Row(label.format("sum of both"), percentile(total, 50), percentile(b_total, 50), "s",
            max_value=MAX_OVERHEAD, show_ratio=show_ratio,
            note=f"round trip send → ack p50 {trip * 1000:.1f} ms against the bare {bare_trip} "
                 f"{b_trip * 1000:.1f} ms; worst sum {max(total) * 1000:.1f} ms{processes}"),
    ]


SESSION = (
    ("send → claude read the line",
     "operator send → instant_claude read the harness's user line: the core's wake of the parked recv (the wake "
     "row times it alone), the harness's recv, turn_start and the line's write; baseline: a plain loop's write → "
     "the same read"),
    ("claude's result → ack",
     "result line flushed → the core's acked_at (1 ms resolution): the harness's read of it, its turn_stat row and "
     "loose ends, then ack_turn; baseline: flushed → the plain loop read it"),
    "line written → result read")
SPAWN = (
    ("send → claude started",
     "operator send → instant_claude's first instruction: the core's wake, the harness's recv, turn_start and "
     "Popen, and claude's own interpreter start-up (which the baseline's spawn → started has too)"),
    ("claude exit → ack",
     "result flushed → the core's acked_at (1 ms resolution): the harness's end of the pipe, reaping, its "
     "turn_stat row and loose ends, then ack_turn; baseline: exit → reaped"),
    "spawn → reaped")


def run(core, tmp, claude, rounds, pyz, mode, spawn_hive=True):
    """Rows of each claude mode the pyz has, beside their baselines.

    `core` is a live, serving common.Core running `claude` in `mode` ("session", or None for a pyz that only
    spawns); with `spawn_hive` and a session-mode `core`, a one-agent hive with `--claude-mode spawn` is
    started beside it for the spawn rows."""
    bare_dir = os.path.join(tmp, "bare-claude")
    os.makedirs(bare_dir, exist_ok=True)
    hives = []  # (mode, Agent, bare round, our samples, bare samples)
    spawn = None
    bare = None
    try:
        if mode == "session":
            session_dir = os.path.join(bare_dir, "session")
            os.makedirs(session_dir, exist_ok=True)
            bare = BareSession(claude, session_dir)
            hives.append(("session", Agent(core, core.names[0], "session"), bare.round, [], []))
            if spawn_hive:
                spawn = Core(tmp, pyz, 1, keep_harnesses=True, claude=claude, label="live-spawn",
                             extra_args=["--claude-mode", "spawn"])
                spawn.__enter__()
                spawn.wait_serving(BOOT_TIMEOUT)
        else:
            spawn = core
        if spawn is not None:
            spawn_dir = os.path.join(bare_dir, "spawn")
            os.makedirs(spawn_dir, exist_ok=True)
            hives.append(("spawn", Agent(spawn, spawn.names[0], "spawn"),
                          lambda i: bare_spawn(claude, spawn_dir, i), [], []))
        for i in range(WARMUP + rounds):
            for _, agent, bare_round, ours, theirs in hives:
                turn = agent.turn(i)
                base = bare_round(i)
                if i >= WARMUP:
                    ours.append(turn)
                    theirs.append(base)
    finally:
        for _, agent, *_ in hives:
            agent.close()
        if spawn is not None and spawn is not core:
            spawn.__exit__()
        code = bare.close() if bare is not None else 0
    if code != 0:
        raise RuntimeError(f"the bare session exited {code} at EOF, expected 0")
    out = []
    for name, _, _, ours, theirs in hives:
        pids = {t[4] for t in ours} if name == "session" else None
        session = name == "session"  # its baseline is a pipe hop: a ratio to it says nothing
        out += rows(name, [t[:4] for t in ours], theirs, rounds, SESSION if session else SPAWN, pids,
                    show_ratio=not session)
    return out

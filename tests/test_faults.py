"""The fault suite: what a hive loses when its processes die or its disk fails. Nothing.

Real processes with the fake claude, bounded loops, unix sockets only:

- `kill -9` of a harness at random points of its turns while messages stream
  in: every message is handled by a good turn, every second sighting carries
  the redelivery banner, no message is acked before a good turn saw it.
- `kill -9` of the core under several senders: every send answered ok is in
  the database afterwards.
- the core killed and restarted under its harnesses' long-polls: they
  reconnect by themselves and every message sent before and after is handled.
- a full disk and a read-only state dir: a clear error, no corruption, and
  service again once space (or write access) returns.

Counts are short in the everyday suite and the issue's under `tests/proof`.
"""

import os
import random
import re
import signal
import sqlite3
import threading
import time

import pytest
from conftest import Hive, proof_scale, running, wait_until

from hyperhive import jsonline, wire

TOKEN = re.compile(r"\btoken (t\w+)")
SLEEP = re.compile(r"^FAKE: sleep ([0-9.]+)$", re.M)


def poll(find, timeout, what):
    """find() until it returns something, checking every 5 ms: a kill point is chosen from when it appeared."""
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def alive(pid):
    """Whether pid runs (a zombie is a process that ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def sightings(prompt):
    """(token, shown as redelivered) for each message in a wake prompt."""
    for block in prompt.split("\n\n---\n\n"):
        found = TOKEN.search(block)
        if found:
            yield found.group(1), block.startswith(wire.REDELIVERED_BANNER)


def unacked(hive, name):
    return hive.db_rows("select count(*) from message where recipient=? and acked_at is null", name)[0][0]


class Stream:
    """A thread sending numbered messages to one agent, keeping its backlog short.

    `body(i, token)` makes each message; the backlog cap keeps a long run from
    queueing more than the agent can drain at the end.
    """

    def __init__(self, hive, to, body, backlog=3):
        self.hive, self.to, self.body, self.backlog = hive, to, body, backlog
        self.sent = {}  # token -> message id
        self.stop = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self.stop.is_set():
            try:
                if unacked(self.hive, self.to) < self.backlog:
                    token = f"t{i:05d}"
                    self.sent[token] = self.hive.call("send", to=self.to, body=self.body(i, token))["id"]
                    i += 1
            except Exception as e:  # surfaced by finish(): a thread's exception is otherwise lost
                self.errors.append(repr(e))
                return
            self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.errors, self.errors


# -- kill -9 of a harness mid-turn ------------------------------------------------------------

def test_harness_kill9_mid_turn_loses_nothing_flags_redeliveries_and_acks_only_good_turns(hive):
    kills = proof_scale(6, 100)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    hive.spawn("a")

    def body(i, token):
        # some turns are short, some long; every seventh fails its first try
        lines = [f"FAKE: sleep {(0.05, 0.2, 0.5)[i % 3]}"]
        if i % 7 == 3:
            lines.append(f"FAKE: fail-once {token}")
        return "\n".join(lines + [f"token {token}"])

    mid_turn = 0
    with Stream(hive, "a", body) as stream:
        for k in range(kills):
            # one of the next few turns, so good turns run between the kills and they fall on many messages
            target = len(hive.claude_calls("a")) + rng.randint(1, 3)
            turn = poll(lambda: (lambda calls: calls[-1] if len(calls) >= target else None)(hive.claude_calls("a")),
                        60, f"a turn to start before kill {k + 1}")
            # The kill point, by construction inside this turn: claude logged the call before it
            # connects its MCP server, and its turn lasts at least that and the sleep it was told.
            at = turn["time"] + rng.uniform(0.0, sum(map(float, SLEEP.findall(turn["prompt"]))))
            time.sleep(max(0.0, at - time.time()))
            pid = hive.harness_pid("a")
            running = alive(turn["pid"])  # a spawned claude exits when its turn ends; a session's lives on
            os.kill(pid, signal.SIGKILL)
            # mid-turn: no good turn of that claude had this prompt (a session's claude runs many turns)
            mid_turn += running and not any(t["pid"] == turn["pid"] and t["prompt"] == turn["prompt"]
                                            for t in hive.good_turns("a"))
            wait_until(lambda: hive.row("a")["failed"], 30, f"the core to see kill {k + 1}")
            hive.call("start", scope={"agent_names": ["a"]})
    sent = stream.sent
    # a kill can only miss its turn when this process ran late by more than the turn lasted
    assert mid_turn >= kills - max(1, kills // 10), f"only {mid_turn} of {kills} kills landed mid-turn (seed {seed})"
    wait_until(lambda: unacked(hive, "a") == 0, proof_scale(90, 600), "every message to be acked")

    acked = dict(hive.db_rows("select id, acked_at from message where recipient='a' and acked_at is not null"))
    redelivered = {mid for (mid,) in hive.db_rows("select id from message where recipient='a' and redelivered")}
    finished = {}  # token -> when the first good turn that had it ended
    for turn in hive.good_turns("a"):
        for token, _ in sightings(turn["prompt"]):
            finished.setdefault(token, turn["time"])
    seen = {}  # token -> [shown as redelivered, …] in the order claude was started with it
    for call in hive.claude_calls("a"):
        for token, flagged in sightings(call["prompt"]):
            seen.setdefault(token, []).append(flagged)

    for token, mid in sent.items():
        assert mid in acked, f"message {token} was never acked (seed {seed})"
        assert token in finished, f"message {token} was acked but no good turn had it (seed {seed})"
        # acked_at is whole milliseconds: allow the truncation
        assert finished[token] <= acked[mid] / 1000 + 0.002, f"{token} was acked before its good turn ended"
        tries = seen[token]
        assert all(tries[1:]), f"{token} came again without the banner: {tries} (seed {seed})"
        if len(tries) > 1:
            assert mid in redelivered, f"{token} was delivered {len(tries)} times but not flagged in the database"
    redone = sum(len(t) > 1 for t in seen.values())
    print(f"\nharness kill -9: {kills} kills ({mid_turn} mid-turn), {len(sent)} messages, {redone} delivered again "
          f"(all flagged), {len(hive.good_turns('a'))} good turns, seed {seed}")


# -- kill -9 of the core mid-send -------------------------------------------------------------

def test_core_kill9_mid_send_keeps_every_send_answered_ok(tmp_path):
    kills, senders = proof_scale(3, 20), 4
    h = Hive(tmp_path / "state", extra_args=["--pass-env", "ANTHROPIC_API_KEY"],
             env={"ANTHROPIC_API_KEY": "test-key"})
    answered, refused, stop = {}, [], threading.Event()
    lock = threading.Lock()

    def send(n):
        i = 0
        while not stop.is_set():
            text = f"s{n}-{i}"
            i += 1
            try:
                mid = jsonline.call(h.host_sock, "send", timeout=10, to="sink", body=text)["id"]
            except (wire.HiveError, OSError) as e:  # the core is down or died under us: not a promise
                refused.append(type(e).__name__)
                stop.wait(0.02)
                continue
            with lock:
                answered[text] = mid

    with running(h):
        h.spawn("sink")
        h.call("set_paused", name="sink", paused=True)  # its queue only grows: the database is the witness
        threads = [threading.Thread(target=send, args=(n,), daemon=True) for n in range(senders)]
        for t in threads:
            t.start()
        try:
            for k in range(kills):
                floor = len(answered) + 20
                wait_until(lambda: len(answered) >= floor, 60, f"sends to flow before kill {k + 1}")
                h.kill9()
                h.start()
            floor = len(answered) + 20
            wait_until(lambda: len(answered) >= floor, 60, "sends to flow after the last restart")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        stored = dict(h.db_rows("select body, id from message where recipient='sink'"))
    missing = {text: mid for text, mid in answered.items() if stored.get(text) != mid}
    assert not missing, f"{len(missing)} sends answered ok are not in the database: {sorted(missing)[:10]}"
    assert h.starts == kills + 1
    print(f"\ncore kill -9: {kills} kills under {senders} senders, {len(answered)} sends answered ok "
          f"(all stored), {len(refused)} refused while the core was down")


# -- the core restarted under long-polls --------------------------------------------------------

def test_harnesses_reconnect_on_their_own_after_the_core_restarts_under_their_long_polls(tmp_path):
    h = Hive(tmp_path / "state", extra_args=["--pass-env", "ANTHROPIC_API_KEY"],
             env={"ANTHROPIC_API_KEY": "test-key"})
    names = ("a", "b")
    with running(h):
        h.spawn(*names)
        pids = {n: h.harness_pid(n) for n in names}
        # each harness has had a turn, so it is in its loop's long-poll now
        for n in names:
            h.call("send", to=n, body=f"token t{n}0")
        wait_until(lambda: all(h.good_turns(n) for n in names), 30, "a first turn each")
        wait_until(lambda: all(unacked(h, n) == 0 for n in names), 30, "the first turns to be acked")
        # a burst right before the kill: some are popped by the dying core's long-poll answers
        before = [h.call("send", to=n, body=f"token t{n}{i}")["id"] for i in range(1, 6) for n in names]
        h.kill9()
        h.start()
        after = [h.call("send", to=n, body=f"token t{n}{i}")["id"] for i in range(6, 9) for n in names]
        wait_until(lambda: all(unacked(h, n) == 0 for n in names), 90, "every message to be acked")
        assert {n: h.harness_pid(n) for n in names} == pids  # reconnected, not restarted
        for n in names:
            handled = {tok for turn in h.good_turns(n) for tok, _ in sightings(turn["prompt"])}
            assert handled >= {f"t{n}{i}" for i in range(9)}, (n, sorted(handled))
            with open(h.log_of(n), errors="replace") as f:
                said = f.read()
            # A harness mid-turn for the whole outage never saw the core down (a restart takes a moment);
            # one that did must have said it got through again, after it last failed to.
            if "core unreachable" in said:
                assert said.rfind("core reachable again") > said.rfind("core unreachable"), said[-2000:]
        acked = {mid for (mid,) in h.db_rows("select id from message where acked_at is not null")}
        assert set(before + after) <= acked


# -- a full disk and a read-only state dir ------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs for the state dir: small enough to fill in a moment."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the disk tests need root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount, name="filler"):
    """Write until the disk refuses: then not one more page fits."""
    import errno

    with open(mount / name, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e


def databases(state_dir):
    return [os.path.join(d, f) for d, _, files in os.walk(state_dir) for f in files if f.endswith((".db", ".sqlite"))]


def assert_intact(h):
    """Every sqlite file of the hive passes its integrity check."""
    found = databases(h.state_dir)
    assert any(p.endswith("hive.db") for p in found) and len(found) >= 2, found  # the core's and a harness's
    for path in found:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert con.execute("pragma integrity_check").fetchall() == [("ok",)], path
        finally:
            con.close()


def disk_hive(mount):
    return Hive(mount / "state", extra_args=["--pass-env", "ANTHROPIC_API_KEY"],
                env={"ANTHROPIC_API_KEY": "test-key"})


def handled(h, name):
    return {tok for turn in h.good_turns(name) for tok, _ in sightings(turn["prompt"])}


def test_a_full_disk_is_refused_clearly_corrupts_nothing_and_service_returns_with_space(small_disk):
    h = disk_hive(small_disk)
    with running(h):
        h.spawn("a")
        kept = [h.call("send", to="a", body="token tbefore")["id"]]
        wait_until(lambda: "tbefore" in handled(h, "a"), 30, "a turn before the disk fills")
        pid = h.harness_pid("a")
        fill(small_disk)
        # sqlite reuses the pages its write-ahead log already holds: sends go on until those are used
        refusal = None
        for i in range(5000):
            try:
                kept.append(h.call("send", to="a", body=f"token tfull{i}\n" + "x" * 4096)["id"])
            except wire.HiveError as e:
                refusal = e
                break
        assert refusal is not None, "5000 sends of 4 KiB fitted on a full disk"
        assert refusal.code == "unavailable" and "state disk is full" in str(refusal), refusal
        assert "a" in h.call("list")["agents"]  # reads still answer
        assert h.harness_pid("a") == pid and h.row("a")["running"]  # the harness waits; it does not die
        os.unlink(small_disk / "filler")
        kept.append(h.call("send", to="a", body="token tafter")["id"])
        wait_until(lambda: "tafter" in handled(h, "a"), 120, "the turns once space is back")
        wait_until(lambda: unacked(h, "a") == 0, 30, "every kept message to be acked")
        assert h.harness_pid("a") == pid
        stored = {mid for (mid,) in h.db_rows("select id from message where recipient='a'")}
        assert set(kept) <= stored
        assert handled(h, "a") >= {"tbefore", "tafter"} | {f"tfull{n}" for n in range(len(kept) - 2)}
    assert "request failed" not in h.log()  # no internal error: every refusal named the disk
    assert_intact(h)


def read_only(path):
    """Bind path over itself read-only (what a fs remounted read-only after errors looks like to new opens)."""
    import subprocess

    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)


def writable(path):
    import subprocess

    subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_state_dir_fails_turns_clearly_loses_nothing_and_recovers(small_disk):
    h = disk_hive(small_disk)
    state = os.path.join(h.home("a"), "state")
    with running(h):
        h.spawn("a")
        h.call("send", to="a", body="token tbefore")
        wait_until(lambda: "tbefore" in handled(h, "a"), 30, "a turn before the state dir turns read-only")
        pid, calls = h.harness_pid("a"), len(h.claude_calls("a"))
        read_only(state)
        try:
            mid = h.call("send", to="a", body="token tduring")["id"]
            # claude cannot write in its home: the turn fails, the message is requeued, the harness lives
            wait_until(lambda: "turn failed (claude exited" in open(h.log_of("a"), errors="replace").read(),
                       30, "the failed turn")
            wait_until(lambda: h.db_rows("select redelivered, acked_at from message where id=?", mid) == [(1, None)],
                       30, "the message requeued, flagged, unacked")
            assert h.harness_pid("a") == pid and h.row("a")["running"]
        finally:
            writable(state)
        wait_until(lambda: "tduring" in handled(h, "a"), 60, "the turn once the state dir is writable")
        wait_until(lambda: unacked(h, "a") == 0, 30, "the message to be acked")
        assert len(h.claude_calls("a")) > calls and h.harness_pid("a") == pid
    assert "request failed" not in h.log()
    assert_intact(h)
    # a core started on a read-only state dir says so and stops, rather than half-starting
    read_only(h.state_dir)
    try:
        h.start(wait=False)
        assert h.proc.wait(timeout=60) != 0
        assert "Read-only file system" in h.log().split("hive-c0re INFO serving ")[-1]
    finally:
        writable(h.state_dir)

"""The turn loop, in process and fast: no claude, no core, no real sleeping.

A FakeClient stands in for the core (records every `call(verb, **args)`,
answers from a script), a FakeRunner for claude (returns scripted
`claude.Outcome`s naming the conversation as claude's init line does,
records each prompt and the session it resumed), the Bus and the Session
are real over a tmp dir, and `sleep` records instead of sleeping.

Proves: boot requeues in-flight messages and notes how many; step()
long-polls recv for 180 s; the wake prompt carries sender, body, the unread
hint and the redelivery banner; only a turn that ended well is acked; a
cancelled turn's messages are handled as cancelled, not requeued;
prompt-too-long compacts and retries exactly once on the same conversation;
every turn resumes the conversation claude named, across a restart of the
loop, and only "new session" or a lost transcript starts a fresh one; a
paused loop never calls recv. CoreClient backs off exponentially (capped) against a socket
nobody serves, says so through notify, and returns once a real server
appears. claude.Reading.classify reads the real CLI's result lines, and
Invocation.argv is shaped so the variadic flags cannot swallow the prompt.
"""

import json
import os

import pytest

from fakecore import FakeCore, ok, refuse
from hyperhive import wire
from hyperhive.harness import claude, turnloop
from hyperhive.harness.bus import Bus
from hyperhive.harness.claude import Outcome
from hyperhive.harness.session import Session
from hyperhive.schema import agent_db, open_agent

SID = "6b0f1e2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"  # the conversation claude names in its init line


# -- fakes --------------------------------------------------------------------------

class FakeClient:
    """The core as the loop sees it: `call(verb, **args)` recorded, answered from a script.

    `script` maps a verb to one answer (a dict) or a list of answers used in
    order (the last one repeats).
    """

    def __init__(self, script=None):
        self.script = {"requeue_inflight": {"requeued": 0}, "recv": {"messages": [], "unread": 0},
                       "ack_turn": {"acked": 1}, **(script or {})}
        self.calls = []
        self.tried, self.tried_args, self.tried_script = [], [], {}

    def call(self, verb, timeout=30.0, **args):
        self.calls.append((verb, args))
        answer = self.script[verb]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        return dict(answer)

    def try_call(self, verb, timeout=5.0, **args):
        """The no-retry call: answered from `tried_script`, None (the core said nothing) otherwise."""
        self.tried.append(verb)
        self.tried_args.append((verb, args))
        answer = self.tried_script.get(verb)
        return dict(answer) if answer is not None else None

    def verbs(self):
        return [verb for verb, _ in self.calls]


class FakeRunner:
    """claude as the loop sees it: `runner(prompt, resume) -> Outcome`, scripted.

    Like the real CLI, a run names its conversation (the one it resumed, else
    `fresh`) and keeps its transcript under `home` when there is one."""

    def __init__(self, *outcomes, fresh=SID, home=None):
        self.outcomes = list(outcomes)
        self.runs = []
        self.fresh, self.home = fresh, home

    def __call__(self, prompt, resume):
        self.runs.append((prompt, resume))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        outcome = Outcome(outcome.kind, outcome.reason, outcome.result, outcome.session_id or resume or self.fresh)
        if self.home is not None:
            keep_transcript(Session(self.home), outcome.session_id)
        return outcome

    def resumed(self):
        return [resume for _, resume in self.runs]


def keep_transcript(session, session_id):
    """What claude leaves for a conversation it ran: its transcript file, where it keeps them."""
    path = session.transcripts(session_id)[0]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write("{}\n")


class FakeCompact:
    def __init__(self, outcome=None):
        self.outcome = outcome or Outcome("ok")
        self.count = 0

    def __call__(self):
        self.count += 1
        return self.outcome


class Sleeps(list):
    """An injected sleep: records the delay, and may run a hook on each call."""

    def __init__(self, hook=None):
        super().__init__()
        self.hook = hook

    def __call__(self, seconds):
        self.append(seconds)
        if self.hook:
            self.hook(len(self))


def message(id=1, sender="alice", body="hello there", redelivered=False):
    return {"id": id, "from": sender, "body": body, "sent_at": "2026-01-01T00:00:00.000Z",
            "redelivered": redelivered, "file_refs": []}


def inbox(*messages, unread=0):
    return {"messages": list(messages), "unread": unread}


@pytest.fixture
def bus(tmp_path):
    open_agent(os.path.join(tmp_path, "events.sqlite"))
    yield Bus(str(tmp_path))
    agent_db.close()


def make_loop(bus, client=None, runner=None, compact=None, paused=lambda: False, sleep=None):
    return turnloop.TurnLoop(client or FakeClient(), bus, runner or FakeRunner(Outcome("ok"), home=bus.state_dir),
                             compact or FakeCompact(), Session(bus.state_dir), paused=paused,
                             sleep=Sleeps() if sleep is None else sleep)


def events(bus, kind):
    return [e for e in bus.history(limit=1000) if e["kind"] == kind]


# -- boot and recv ------------------------------------------------------------------------

def test_boot_requeues_in_flight_messages_and_notes_how_many(bus):
    client = FakeClient({"requeue_inflight": {"requeued": 2}})
    assert make_loop(bus, client).boot() == 2
    assert client.verbs() == ["requeue_inflight"]
    [note] = events(bus, "note")
    assert note["text"].startswith("2 message(s) were in flight") and "redelivered" in note["text"]


def test_boot_with_nothing_in_flight_notes_nothing(bus):
    client = FakeClient({"requeue_inflight": {"requeued": 0}})
    assert make_loop(bus, client).boot() == 0
    assert events(bus, "note") == []


def test_run_boots_before_the_first_recv(bus):
    client = FakeClient()
    loop = make_loop(bus, client)
    original = client.call

    def stop_after_first_recv(verb, **args):
        if verb == "recv":
            loop.stopping = True
        return original(verb, **args)

    client.call = stop_after_first_recv
    loop.run()
    assert client.verbs() == ["requeue_inflight", "recv"]


def test_step_long_polls_recv_for_180_seconds(bus):
    client = FakeClient()
    runner = FakeRunner(Outcome("ok"))
    assert make_loop(bus, client, runner).step() is None  # nothing came: idle
    assert client.calls == [("recv", {"wait_seconds": 180, "max": 1})]
    assert turnloop.RECV_WAIT == 180
    assert runner.runs == []


def test_messages_popped_while_stopping_are_not_run_nor_acked(bus):
    client = FakeClient({"recv": inbox(message())})
    runner = FakeRunner(Outcome("ok"))
    loop = make_loop(bus, client, runner)
    loop.stopping = True
    assert loop.step() is None
    assert runner.runs == [] and "ack_turn" not in client.verbs()


# -- the wake prompt ---------------------------------------------------------------------

def test_wake_prompt_has_sender_body_and_unread_hint():
    prompt = turnloop.wake_prompt([message(sender="bob", body="deploy the thing")], unread=3)
    assert prompt.startswith("from: bob\n\ndeploy the thing")
    assert "3 more unread messages waiting" in prompt and "call recv with max: 3" in prompt
    assert wire.REDELIVERED_BANNER not in prompt


def test_wake_prompt_unread_hint_is_singular_and_capped():
    assert "1 more unread message waiting" in turnloop.wake_prompt([message()], unread=1)
    many = turnloop.wake_prompt([message()], unread=500)
    assert f"call recv with max: {wire.RECV_MAX_BATCH} to read them" in many
    assert "unread" not in turnloop.wake_prompt([message()], unread=0)


def test_wake_prompt_carries_the_redelivery_banner_when_flagged():
    prompt = turnloop.wake_prompt([message(redelivered=True)], unread=0)
    assert prompt.startswith(wire.REDELIVERED_BANNER + "\nfrom: alice\n\nhello there")


def test_step_runs_the_wake_prompt_of_what_recv_answered(bus):
    client = FakeClient({"recv": inbox(message(id=7, sender="bob", body="hi", redelivered=True), unread=2)})
    runner = FakeRunner(Outcome("ok"))
    make_loop(bus, client, runner).step()
    [(prompt, _)] = runner.runs
    assert prompt == turnloop.wake_prompt([message(id=7, sender="bob", body="hi", redelivered=True)], 2)
    [start] = events(bus, "turn_start")
    assert (start["from"], start["body"], start["unread"], start["redelivered"], start["ids"]) == \
        ("bob", "hi", 2, True, [7])


# -- ending a turn ------------------------------------------------------------------------

def test_a_good_turn_is_acked_once(bus):
    client = FakeClient({"recv": inbox(message())})
    outcome = make_loop(bus, client).step()
    assert outcome.ok
    assert client.verbs() == ["recv", "ack_turn"]
    [end] = events(bus, "turn_end")
    assert end["ok"] is True and end["note"] is None
    states = [e["state"] for e in events(bus, "turn_state_changed")]
    assert states == ["thinking", "idle"] and bus.turn_state == "idle"


@pytest.mark.parametrize("kind, verb", [("ok", "ack_turn"), ("failed", "requeue_inflight"),
                                        ("cancelled", "cancel_turn")])
def test_a_turn_is_in_progress_until_the_core_knows_how_it_ended(bus, kind, verb):
    """A graceful stop waits for `in_turn`: one that came between claude's exit and the ack, with the loop
    already out of its turn, would cut the ack and run a finished turn's messages again at the next start."""
    client = FakeClient({"recv": inbox(message()), "cancel_turn": {"cancelled": 1}})
    loop = make_loop(bus, client, FakeRunner(Outcome(kind, None if kind == "ok" else "no")))
    seen = []
    answer = client.call

    def call(v, timeout=30.0, **args):
        if v == verb:
            seen.append(loop.in_turn)
        return answer(v, timeout, **args)

    client.call = call
    loop.step()
    assert seen == [True] and loop.in_turn is False


def test_a_failed_turn_is_not_acked_and_says_why(bus):
    client = FakeClient({"recv": inbox(message())})
    runner = FakeRunner(Outcome("failed", "claude exited with code 1 without a result line"))
    outcome = make_loop(bus, client, runner).step()
    assert not outcome.ok
    assert "ack_turn" not in client.verbs()
    [end] = events(bus, "turn_end")
    assert end["ok"] is False and end["note"] == "claude exited with code 1 without a result line"
    assert bus.turn_state == "idle"


@pytest.mark.parametrize("kind", ["failed", "prompt_too_long"])
def test_a_turn_that_did_not_end_well_requeues_its_messages_at_once(bus, kind):
    # left in flight, they would be acked by the next good turn without ever being handled
    client = FakeClient({"recv": inbox(message()), "requeue_inflight": {"requeued": 1}})
    make_loop(bus, client, FakeRunner(Outcome(kind, "no"))).step()
    assert client.verbs()[:2] == ["recv", "requeue_inflight"] and "ack_turn" not in client.verbs()
    assert any("come again in 2 seconds" in e["text"] for e in events(bus, "note"))


def test_a_cancelled_turn_marks_its_messages_handled_as_cancelled_and_retries_nothing(bus):
    client = FakeClient({"recv": inbox(message(id=4), message(id=5)), "cancel_turn": {"cancelled": [4, 5]}})
    loop = make_loop(bus, client, FakeRunner(Outcome("cancelled", "the turn was cancelled")))
    loop.batch = 2
    outcome = loop.step()
    assert outcome.kind == "cancelled"
    assert client.verbs() == ["recv", "cancel_turn"], "not requeued, not acked as done: cancelled"
    assert loop.sleep == [] and loop.failures == 0, "a cancel is the operator's stop, not a failure to back off from"
    [end] = events(bus, "turn_end")
    assert (end["outcome"], end["ids"]) == ("cancelled", [4, 5])
    assert any("#4, #5 are marked handled as cancelled" in e["text"] for e in events(bus, "note"))


def test_failures_in_a_row_back_off_doubling_to_a_cap_and_a_good_turn_resets_it(bus):
    client = FakeClient({"recv": inbox(message())})
    sleeps = Sleeps()
    runner = FakeRunner(*[Outcome("failed", "no")] * 10, Outcome("ok"), Outcome("failed", "no"))
    loop = make_loop(bus, client, runner, sleep=sleeps)
    waited = []
    for _ in range(12):
        before = sum(sleeps)
        loop.step()
        waited.append(sum(sleeps) - before)
    assert waited[:10] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert waited[10:] == [0, 2]  # the good turn waits for nothing and starts the count again
    assert max(sleeps) <= 1.0  # in slices: a stop is noticed within a second


def test_the_operator_hears_once_per_streak_when_turns_keep_failing(bus):
    client = FakeClient({"recv": inbox(message(id=9))})
    client.tried_script["send"] = {"id": 1}
    loop = make_loop(bus, client, FakeRunner(*[Outcome("failed", "rate limited")] * 7, Outcome("ok"),
                                              Outcome("failed", "again")))
    for _ in range(turnloop.STUCK_AFTER - 1):
        loop.step()
    assert "send" not in client.tried
    loop.step()
    [(verb, args)] = [(v, a) for v, a in client.tried_args if v == "send"]
    assert args["to"] == "operator" and "#9" in args["body"] and "rate limited" in args["body"]
    loop.step(), loop.step(), loop.step(), loop.step()  # two more failures, a good turn, a new failure
    assert client.tried.count("send") == 1


def test_a_full_disk_mid_step_is_waited_out_and_the_messages_requeued(bus):
    import sqlite3

    client = FakeClient({"recv": inbox(message())})
    real_emit, disk_full = bus.emit, [True]

    def emit(kind, **data):
        if kind == "turn_start" and disk_full:
            disk_full.clear()  # space comes back after the first failure
            raise sqlite3.OperationalError("database or disk is full")
        return real_emit(kind, **data)

    def good_turn_then_stop(prompt, resume):
        loop.stopping = True
        return Outcome("ok")
    bus.emit = emit
    loop = make_loop(bus, client, good_turn_then_stop)
    loop.run()  # the first step hits the full disk; the loop lives on and its second step is a good turn
    # requeued before the next recv, so the good turn's ack cannot take the broken step's messages
    assert client.verbs() == ["requeue_inflight", "recv", "requeue_inflight", "recv", "ack_turn"]  # boot first
    assert sum(loop.sleep) == turnloop.RETRY_BACKOFF[0]


def test_a_full_disk_at_boot_is_waited_out_too(bus):
    refusals = [wire.storage_failure(OSError(28, "No space left on device"))]  # the core's answer
    client = FakeClient({"recv": inbox(message())})
    answer = client.call

    def call(verb, timeout=30.0, **args):
        if verb == "requeue_inflight" and refusals:
            client.calls.append((verb, args))
            raise refusals.pop()
        return answer(verb, timeout, **args)
    client.call = call

    def good_turn_then_stop(prompt, cont):
        loop.stopping = True
        return Outcome("ok")
    loop = make_loop(bus, client, good_turn_then_stop)
    loop.run()  # the boot's requeue is refused; the loop waits, boots again, and runs the turn
    assert client.verbs() == ["requeue_inflight", "requeue_inflight", "requeue_inflight", "recv", "ack_turn"]
    assert sum(loop.sleep) == turnloop.RETRY_BACKOFF[0]


def test_a_bug_mid_step_still_ends_the_loop_with_its_traceback(bus):
    client = FakeClient({"recv": inbox(message())})

    def broken(prompt, resume):
        raise KeyError("a bug")
    with pytest.raises(KeyError):
        make_loop(bus, client, broken).run()


def test_a_stop_cuts_the_backoff_short(bus):
    client = FakeClient({"recv": inbox(message())})
    loop = make_loop(bus, client, FakeRunner(Outcome("failed", "no")))
    loop.failures = 8  # the next wait would be 5 minutes
    loop.sleep = Sleeps(hook=lambda count: setattr(loop, "stopping", True))
    loop.step()
    assert loop.sleep == [1.0] and client.verbs() == ["recv", "requeue_inflight"]


def test_prompt_too_long_compacts_once_and_retries_once_on_the_same_conversation(bus):
    client = FakeClient({"recv": inbox(message())})
    runner = FakeRunner(Outcome("prompt_too_long", "Prompt is too long"), Outcome("ok"), home=bus.state_dir)
    compact = FakeCompact()
    outcome = make_loop(bus, client, runner, compact).step()
    assert outcome.ok and compact.count == 1
    assert runner.resumed() == [None, SID]
    assert runner.runs[0][0] == runner.runs[1][0]  # the same prompt again
    assert client.verbs().count("ack_turn") == 1
    states = [e["state"] for e in events(bus, "turn_state_changed")]
    assert states == ["thinking", "compacting", "thinking", "idle"]


def test_prompt_too_long_twice_is_a_failure_without_a_third_run(bus):
    client = FakeClient({"recv": inbox(message())})
    runner = FakeRunner(Outcome("prompt_too_long", "Prompt is too long"))
    compact = FakeCompact()
    outcome = make_loop(bus, client, runner, compact).step()
    assert not outcome.ok
    assert len(runner.runs) == 2 and compact.count == 1
    assert "ack_turn" not in client.verbs()
    [end] = events(bus, "turn_end")
    assert end["ok"] is False and end["note"]


def test_a_failed_compaction_is_a_failure_without_a_retry(bus):
    client = FakeClient({"recv": inbox(message())})
    runner = FakeRunner(Outcome("prompt_too_long", "Prompt is too long"), Outcome("ok"))
    compact = FakeCompact(Outcome("failed", "compaction failed: Error during compaction: API Error: 400"))
    outcome = make_loop(bus, client, runner, compact).step()
    assert outcome.kind == "failed" and outcome.reason == "compaction failed: Error during compaction: API Error: 400"
    assert len(runner.runs) == 1
    assert "ack_turn" not in client.verbs()


# -- the conversation ---------------------------------------------------------------------

OTHER = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def test_every_turn_resumes_the_conversation_claude_named_even_after_a_restart(bus):
    client = FakeClient({"recv": inbox(message())})
    runner = FakeRunner(Outcome("failed", "no"), Outcome("ok"), home=bus.state_dir)
    loop = make_loop(bus, client, runner)
    loop.step()  # failed, but claude named its conversation: the retry goes on with it
    loop.step()
    assert runner.resumed() == [None, SID]
    restarted = make_loop(bus, client, runner)  # a new harness on the same state dir: a restart, a crash
    restarted.step()
    assert runner.resumed()[-1] == SID, "the conversation survives the harness"
    assert Session(bus.state_dir).current() == SID


def test_new_session_starts_a_fresh_conversation_and_keeps_that_one(bus):
    client = FakeClient({"recv": inbox(message())})
    runner = FakeRunner(Outcome("ok"), Outcome("ok"), Outcome("ok", session_id=OTHER), Outcome("ok"),
                        home=bus.state_dir)
    loop = make_loop(bus, client, runner)
    loop.step(), loop.step()
    loop.new_session = True
    loop.step()  # the operator asked for a fresh conversation: claude names a new one
    loop.step()
    assert runner.resumed() == [None, SID, None, OTHER]


def test_a_conversation_whose_transcript_is_gone_starts_fresh_and_says_so(bus):
    client = FakeClient({"recv": inbox(message())})
    Session(bus.state_dir).save(OTHER)  # kept, but claude has no transcript of it
    runner = FakeRunner(Outcome("ok"), home=bus.state_dir)
    make_loop(bus, client, runner).step()
    assert runner.resumed() == [None]
    assert any(f"the conversation {OTHER} is gone" in e["text"] for e in events(bus, "note"))
    assert Session(bus.state_dir).current() == SID


def test_claude_saying_no_conversation_found_runs_the_turn_fresh_once(bus):
    client = FakeClient({"recv": inbox(message())})
    session = Session(bus.state_dir)
    session.save(OTHER)
    keep_transcript(session, OTHER)  # there, but claude says otherwise (a transcript kept elsewhere)
    gone = Outcome("failed", "claude ended the turn with error_during_execution (exit 1)",
                   {"subtype": "error_during_execution", "is_error": True,
                    "errors": [f"No conversation found with session ID: {OTHER}"]})
    runner = FakeRunner(gone, Outcome("ok"), home=bus.state_dir)
    outcome = make_loop(bus, client, runner).step()
    assert outcome.ok and runner.resumed() == [OTHER, None]
    assert client.verbs() == ["recv", "ack_turn"]
    assert session.current() == SID


@pytest.mark.parametrize("text", ["../../etc/passwd", "--dangerously-skip-permissions", "x" * 36, ""])
def test_a_session_file_the_agent_scribbled_on_is_not_resumed(bus, text):
    os.makedirs(os.path.join(bus.state_dir, ".hyperhive"), exist_ok=True)
    with open(os.path.join(bus.state_dir, ".hyperhive", "session"), "w") as f:
        f.write(text)
    assert Session(bus.state_dir).current() is None
    runner = FakeRunner(Outcome("ok"), home=bus.state_dir)
    make_loop(bus, FakeClient({"recv": inbox(message())}), runner).step()
    assert runner.resumed() == [None]


# -- pause ------------------------------------------------------------------------------

def test_paused_loop_does_not_recv_and_sleeps(bus):
    paused = [True]
    client = FakeClient({"recv": inbox(message())})
    runner = FakeRunner(Outcome("ok"))
    sleeps = Sleeps()
    loop = make_loop(bus, client, runner, paused=lambda: paused[0], sleep=sleeps)
    assert loop.step() is None
    assert loop.step() is None
    assert client.calls == [] and runner.runs == []
    assert bus.turn_state == "paused" and sleeps == [1.0, 1.0]
    assert [e["state"] for e in events(bus, "turn_state_changed")] == ["paused"]  # once, not per step
    paused[0] = False
    assert loop.step().ok
    assert client.verbs() == ["recv", "ack_turn"]
    assert [e["state"] for e in events(bus, "turn_state_changed")] == ["paused", "idle", "thinking", "idle"]


def test_pause_marker_is_the_core_s_file(tmp_path):
    marker = tmp_path / "paused"
    paused = turnloop.pause_marker(str(marker))
    assert not paused()
    marker.write_text("1\n")
    assert paused()
    assert not turnloop.pause_marker(None)()


# -- CoreClient against real unix sockets -------------------------------------------------

def test_core_client_backs_off_capped_then_returns_when_a_core_appears(sockdir):
    path = sockdir / "hive.sock"
    cores, notes = [], []

    def appear_after_six_tries(count):
        if count == 6:  # the sixth failed try: the core comes up before the seventh
            cores.append(FakeCore(path))

    sleeps = Sleeps(appear_after_six_tries)
    client = turnloop.CoreClient(str(path), sleep=sleeps, notify=notes.append, backoff=(0.5, 4.0))
    try:
        answer = client.call("whoami")
        assert answer["ok"] and answer["name"] == "alice"
        assert sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
        assert [r["cmd"] for r in cores[0].requests] == ["whoami"]
    finally:
        for core in cores:
            core.stop()
    unreachable = [n for n in notes if n.startswith("core unreachable")]
    assert len(unreachable) == 6
    assert "retrying whoami in 0.5s" in unreachable[0] and "retrying whoami in 4s" in unreachable[-1]
    assert str(path) in unreachable[0]
    assert notes[-1].startswith("core reachable again")


def test_core_client_retries_a_stale_socket_nobody_listens_on(sockdir):
    import socket

    path = sockdir / "hive.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # bound, never listening: what a crashed core leaves
    stale.close()
    cores, notes = [], []

    def replace_stale(count):
        if count == 2:
            os.unlink(path)
            cores.append(FakeCore(path, {"recv": ok(messages=[], unread=0), "requeue_inflight": ok(requeued=0)}))

    sleeps = Sleeps(replace_stale)
    client = turnloop.CoreClient(str(path), sleep=sleeps, notify=notes.append, backoff=(1.0, 30.0))
    try:
        assert client.call("recv", wait_seconds=0, max=1)["messages"] == []
    finally:
        for core in cores:
            core.stop()
    assert sleeps == [1.0, 2.0]
    assert "connection refused" in notes[0]
    # a lost core may have popped for the recv it never answered: requeued before asking again
    assert [r["cmd"] for r in cores[0].requests] == ["requeue_inflight", "recv"]


def test_core_client_does_not_retry_a_refusal(sockdir):
    core = FakeCore(sockdir / "hive.sock", {"ack_turn": refuse("nothing to ack", "conflict")})
    sleeps = Sleeps()
    try:
        client = turnloop.CoreClient(core.path, sleep=sleeps)
        with pytest.raises(wire.HiveError, match="nothing to ack"):
            client.call("ack_turn")
    finally:
        core.stop()
    assert sleeps == [] and len(core.requests) == 1


# -- claude.Reading.classify ----------------------------------------------------------------

def classify(result, code, too_long=False, cancelled=False, lines=(), compacting=False):
    """Reading.classify on what the stdout pump saw (`lines`, then the result line), without starting a process."""
    reading = claude.Reading(claude.COMPACT if compacting else "a wake prompt")
    reading.too_long, reading.cancelled = too_long, cancelled
    for line in list(lines) + ([result] if result else []):
        reading.read(line)
    return reading.classify(code)


def result_line(**fields):
    return {"type": "result", "subtype": "success", "is_error": False, "duration_ms": 1200, "num_turns": 1,
            "result": "done", "session_id": "s-1", "total_cost_usd": 0.001,
            "usage": {"input_tokens": 3, "output_tokens": 4}, **fields}


def test_classify_success():
    outcome = classify(result_line(), 0)
    assert outcome.kind == "ok" and outcome.ok and outcome.reason == ""


def test_classify_prompt_too_long_as_the_real_cli_prints_it():
    # claude 2.1.197: subtype stays "success"; is_error and terminal_reason say what happened
    line = result_line(is_error=True, result="Prompt is too long", terminal_reason="prompt_too_long")
    assert classify(line, 1).kind == "prompt_too_long"
    # terminal_reason alone is enough, whatever the text says
    line = result_line(is_error=True, result="API Error: 400", terminal_reason="prompt_too_long")
    assert classify(line, 1).kind == "prompt_too_long"


def test_classify_too_long_from_the_text_or_stderr_of_older_clis():
    assert classify(result_line(is_error=True, result="Prompt is too long"), 1).kind == "prompt_too_long"
    assert classify(None, 1, too_long=True).kind == "prompt_too_long"


def test_classify_an_error_result_is_a_failure_naming_it():
    outcome = classify(result_line(is_error=True, subtype="error_max_turns", result=""), 1)
    assert outcome.kind == "failed" and "error_max_turns" in outcome.reason and "exit 1" in outcome.reason
    assert classify(result_line(is_error=True, result="rate limited"), 0).kind == "failed"


def test_classify_no_result_line_and_a_nonzero_exit_is_a_failure_naming_the_code():
    outcome = classify(None, 3)
    assert outcome.kind == "failed" and not outcome.ok
    assert "code 3" in outcome.reason and "without a result line" in outcome.reason
    assert classify(None, 0).kind == "failed"  # exit 0 but nothing said: not a good turn


def test_classify_cancelled_wins():
    assert classify(result_line(), 0, cancelled=True).kind == "cancelled"


def test_classify_a_clean_success_is_ok_whatever_stderr_said():
    assert classify(result_line(), 0, too_long=True).kind == "ok"


def test_classify_names_the_conversation_from_the_init_line():
    init = {"type": "system", "subtype": "init", "session_id": SID, "cwd": "/state"}
    assert classify(result_line(session_id=SID), 0, lines=[init]).session_id == SID


# claude 2.1.197 against an API that refuses the key (measured): ten of these over three minutes, then the result
API_RETRY_401 = {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10, "retry_delay_ms": 559.8,
                 "error_status": 401, "error": "authentication_failed", "session_id": SID}
REFUSED_RESULT = result_line(is_error=True, api_error_status=401, result="Invalid API key · Fix external API key",
                             terminal_reason="completed")


def test_classify_a_refused_login_as_an_auth_failure_from_its_first_retry():
    outcome = classify(None, -2, lines=[API_RETRY_401])  # the run was stopped at the first retry
    assert outcome.kind == "auth_failed" and "401 authentication_failed" in outcome.reason
    assert classify(REFUSED_RESULT, 1).kind == "auth_failed"
    assert classify(result_line(is_error=True, result="Not logged in · Please run /login"), 1).kind == "auth_failed"
    overloaded = dict(API_RETRY_401, error_status=529, error="overloaded")
    assert classify(result_line(), 0, lines=[overloaded]).kind == "ok", "other retries are claude's own business"


def test_classify_a_compaction_by_what_claude_said_about_it():
    # claude 2.1.197: a failed /compact ends is_error false, its text the error (measured)
    failed = [{"type": "system", "subtype": "status", "status": "compacting"},
              {"type": "system", "subtype": "status", "status": None, "compact_result": "failed",
               "compact_error": "Error during compaction: API Error: 400 compaction exploded"}]
    said = result_line(result="Error during compaction: API Error: 400 compaction exploded", num_turns=0)
    outcome = classify(said, 0, lines=failed, compacting=True)
    assert outcome.kind == "failed"
    assert outcome.reason == "compaction failed: Error during compaction: API Error: 400 compaction exploded"
    done = [{"type": "system", "subtype": "status", "compact_result": "success"},
            {"type": "system", "subtype": "compact_boundary", "compact_metadata": {"trigger": "manual"}}]
    assert classify(result_line(result=""), 0, lines=done, compacting=True).kind == "ok"
    assert classify(result_line(result=""), 0, lines=done[1:], compacting=True).kind == "ok"
    silent = classify(result_line(result="Compaction failed · try again"), 0, compacting=True)
    assert silent.kind == "failed" and "Compaction failed · try again" in silent.reason


# -- Invocation.argv ---------------------------------------------------------------------

@pytest.fixture
def invocation(tmp_path):
    return claude.Invocation("/usr/bin/claude", "agent", "alice", str(tmp_path), "/run/hive/alice.sock")


def test_argv_joins_allowed_tools_with_equals_and_puts_the_prompt_after_a_double_dash(invocation):
    prompt = "--help me, I start with dashes"
    argv = invocation.argv("haiku", prompt)
    assert argv[0] == "/usr/bin/claude"
    [tools] = [a for a in argv if a.startswith("--allowedTools")]
    assert tools.startswith("--allowedTools=")
    listed = tools.split("=", 1)[1].split(",")
    assert "mcp__hyperhive__send" in listed and "Bash" in listed
    assert argv[-2:] == ["--", prompt] and argv.count("--") == 1
    for flag, value in (("--model", "haiku"), ("--output-format", "stream-json"),
                        ("--mcp-config", invocation.mcp_config), ("--settings", invocation.settings)):
        assert argv[argv.index(flag) + 1] == value
    assert "--print" in argv and "--verbose" in argv
    assert not [a for a in argv if a.startswith(("--continue", "--resume"))]


def test_the_system_prompt_names_the_agent_and_the_operators_pronouns_when_given(tmp_path, monkeypatch):
    monkeypatch.delenv(wire.PRONOUNS_ENV, raising=False)
    plain = claude.Invocation("/usr/bin/claude", "agent", "alice", str(tmp_path), "/run/a.sock").system_prompt
    assert "**alice**" in plain and "pronouns" not in plain
    monkeypatch.setenv(wire.PRONOUNS_ENV, "she/her")
    told = claude.Invocation("/usr/bin/claude", "agent", "alice", str(tmp_path), "/run/a.sock").system_prompt
    assert told == plain + "\n\nThe operator's pronouns are she/her; refer to the operator with them."


def test_argv_resumes_a_session_by_id_in_one_word_before_the_double_dash(invocation):
    argv = invocation.argv("sonnet", "hi", resume=SID)
    assert argv.count(f"--resume={SID}") == 1, "one word: an id can never be read as a flag of its own"
    assert argv.index(f"--resume={SID}") < argv.index("--") == len(argv) - 2
    assert "--continue" not in argv


# -- turn statistics ---------------------------------------------------------------------

class StreamingRunner(FakeRunner):
    """A runner that shows the bus claude's stream-json on the way, as Run does."""

    def __init__(self, bus, clock, outcome, lines):
        super().__init__(outcome)
        self.bus, self.clock, self.lines = bus, clock, lines

    def __call__(self, prompt, resume):
        for line in self.lines:
            self.bus.observe(line)
        self.clock[0] += 2.5
        return super().__call__(prompt, resume)


def tool_use(name):
    return {"type": "tool_use", "id": name, "name": name, "input": {}}


def test_each_turn_writes_one_stat_row(tmp_path):
    from hyperhive.schema import TurnStat

    open_agent(os.path.join(tmp_path, "events.sqlite"))
    clock = [1_800_000_000.0]
    bus = Bus(str(tmp_path), clock=lambda: clock[0])
    try:
        usage = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 300,
                 "cache_creation_input_tokens": 7}
        lines = [{"type": "assistant", "message": {"content": [tool_use("mcp__hyperhive__send"), tool_use("Bash")],
                                                   "usage": dict(usage, input_tokens=4)}},
                 {"type": "assistant", "message": {"content": [tool_use("mcp__hyperhive__send")], "usage": usage}},
                 {"type": "result", "usage": {"input_tokens": 14, "output_tokens": 9,
                                              "cache_read_input_tokens": 600, "cache_creation_input_tokens": 7}}]
        runner = StreamingRunner(bus, clock, Outcome("ok"), lines)
        client = FakeClient({"recv": inbox(message(sender="bob"))})
        client.tried_script = {"get_loose_ends": {"loose_ends": [{"id": 1}, {"id": 2}]},
                               "count_pending_reminders": {"count": 4}}
        make_loop(bus, client=client, runner=runner).step()
        failing = StreamingRunner(bus, clock, Outcome("failed", "claude exited with code 1"), [])
        make_loop(bus, client=FakeClient({"recv": inbox(message(sender="operator"))}), runner=failing).step()
        good, bad = TurnStat.select().order_by(TurnStat.id)
        assert (good.wake_from, good.result_kind, good.duration_ms, good.model) == ("bob", "ok", 2500, "haiku")
        assert good.started_at == 1_800_000_000_000 and good.ended_at == 1_800_000_002_500
        assert (good.ctx_input_tokens, good.ctx_output_tokens, good.ctx_cache_read_tokens,
                good.ctx_cache_creation_tokens) == (10, 5, 300, 7), "ctx is the last inference's"
        assert (good.cost_input_tokens, good.cost_output_tokens, good.cost_cache_read_tokens,
                good.cost_cache_creation_tokens) == (14, 9, 600, 7), "cost is the result line's"
        assert good.tool_call_count == 3
        assert json.loads(good.tools) == {"mcp__hyperhive__send": 2, "Bash": 1}
        assert (bad.result_kind, bad.note, bad.tool_call_count, bad.cost_input_tokens) == (
            "failed", "claude exited with code 1", 0, None)
        # what was left open after the turn, as the core said; unknown (null) when it said nothing
        assert (good.open_loose_ends, good.pending_reminders) == (2, 4)
        assert (bad.open_loose_ends, bad.pending_reminders) == (None, None)
        assert client.tried == ["get_loose_ends", "count_pending_reminders"]
    finally:
        agent_db.close()


def test_a_stat_row_that_cannot_be_written_does_not_break_the_turn(bus, caplog):
    from hyperhive.schema import TurnStat

    agent_db.execute_sql(f"DROP TABLE {TurnStat._meta.table_name}")
    client = FakeClient({"recv": inbox(message())})
    outcome = make_loop(bus, client=client).step()
    assert outcome.ok and "ack_turn" in client.verbs()
    assert events(bus, "turn_end")[-1]["ok"] is True
    assert "could not record the turn's statistics" in caplog.text


class RefusingClient(FakeClient):
    """A core that refuses the next recv with `error`, then answers as FakeClient does."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def call(self, verb, timeout=30.0, **args):
        if verb == "recv" and self.error is not None:
            self.calls.append((verb, args))
            error, self.error = self.error, None
            raise error
        return super().call(verb, timeout, **args)


@pytest.mark.parametrize("code", ["conflict", "unavailable"])
def test_a_recv_refused_for_another_client_on_the_socket_is_polled_again_later(bus, code):
    """Another recv took over, or something else in the container holds every connection: the
    harness waits a little, requeues what a cut-off recv may have popped, and polls again."""
    client = RefusingClient(wire.HiveError("taken over, or at the cap", code))
    sleeps = Sleeps()
    loop = make_loop(bus, client, sleep=sleeps)
    assert loop.step() is None and sleeps == [turnloop.RECV_REFUSED_SECONDS]
    assert loop.step() is None
    assert client.verbs() == ["recv", "requeue_inflight", "recv"]


@pytest.mark.parametrize("error", [wire.HiveError("a bug of ours", "bad_argument"),
                                   wire.HiveError(wire.STORAGE_FAILURE + "is full, so this was not done",
                                                  "unavailable")])
def test_a_recv_refused_for_any_other_reason_is_not_waited_out_here(bus, error):
    with pytest.raises(wire.HiveError):
        make_loop(bus, RefusingClient(error)).step()

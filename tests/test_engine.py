"""The harness's engines (harness/engine.py): a session's claude across turns, its deaths, its recycling, and the
hang watchdog in both modes.

The process tier runs the built pyz's core and harnesses with the fake claude
(tests/fakeclaude.py), whose stream-json input mode lives like the real CLI's:
a turn per user line, control requests on stdin. The unit tier steps the
watchdog and the idle recycling with a clock, on a real fake-claude process.
"""

import json
import os
import signal
import time

import gevent
import gevent.event
import pytest

from conftest import FAKE_CLAUDE, Hive, running, wait_until
from fakes import Clock
from hyperhive import wire
from hyperhive.harness import engine as engines
from hyperhive.harness.bus import Bus
from hyperhive.harness.claude import Invocation, Reading
from hyperhive.harness.session import Session
from hyperhive.schema import open_agent


def hive_with(tmp_path, *args):
    return running(Hive(tmp_path / "state", env={"ANTHROPIC_API_KEY": "test-key"},
                        extra_args=["--pass-env", "ANTHROPIC_API_KEY", *args]))


def inbox_bodies(hive):
    return [m["body"] for m in hive.call("inbox", limit=50)["messages"]]


def claude_process(hive, name):
    return hive.dashboard("GET", f"/agent/{name}/api/state")[1]["claude_process"]


def turn(hive, word):
    """A turn that says `word` to the operator; its record in the fake claude's calls."""
    calls = len(hive.claude_calls("a"))
    hive.call("send", to="a", body=f"FAKE: send operator {word}")
    wait_until(lambda: word in inbox_bodies(hive), 30, f"the turn that says {word}")
    return hive.claude_calls("a")[calls]


# -- the process tier --------------------------------------------------------------------------

def test_a_session_is_replaced_after_its_turns_and_goes_on_with_the_same_conversation(tmp_path):
    with hive_with(tmp_path, "--recycle-turns", "2") as hive:
        hive.spawn("a")
        one, two, three = turn(hive, "one"), turn(hive, "two"), turn(hive, "three")
        assert one["pid"] == two["pid"] != three["pid"], "replaced after two turns, not before"
        assert one["session_id"] == two["session_id"] == three["session_id"]
        assert [p.split("\n\n", 1)[1] for p in three["history"]] == ["FAKE: send operator one",
                                                                      "FAKE: send operator two"]
        info = wait_until(lambda: claude_process(hive, "a"), 10, "the page's view of claude")
        assert info["recycled"] == 1 and info["pid"] == three["pid"] and info["turns"] == 1


def test_a_claude_that_dies_between_turns_starts_again_and_one_that_dies_mid_turn_fails_only_that_turn(tmp_path):
    with hive_with(tmp_path) as hive:
        hive.spawn("a")
        first = turn(hive, "one")
        os.kill(first["pid"], signal.SIGKILL)
        restarted = wait_until(lambda: (claude_process(hive, "a")["pid"] or first["pid"]) != first["pid"]
                               and claude_process(hive, "a")["pid"], 30, "a new claude between turns")
        events = hive.dashboard("GET", "/agent/a/events/history")[1]["events"]
        assert any("exited between turns (code -9); starting it again in 2 seconds" in (e.get("text") or "")
                   for e in events)
        mid = hive.call("send", to="a", body="FAKE: exit-once dies\nFAKE: send operator after-the-death")["id"]
        wait_until(lambda: "after-the-death" in inbox_bodies(hive), 30, "the turn to run again and finish")
        calls = hive.claude_calls("a")
        died, again = calls[-2:]
        assert died["pid"] == restarted and again["pid"] != restarted, "the next try runs on a new claude"
        assert again["prompt"].startswith(wire.REDELIVERED_BANNER)
        assert again["session_id"] == first["session_id"]
        assert hive.db_rows("select redelivered from message where id=?", mid) == [(1,)]
        assert inbox_bodies(hive).count("after-the-death") == 1


@pytest.mark.parametrize("mode", ["session", "spawn"])
def test_a_turn_silent_past_the_watchdog_is_ended_requeued_and_told_once(tmp_path, mode):
    with hive_with(tmp_path, "--claude-mode", mode, "--hang-seconds", "2") as hive:
        hive.spawn("a")
        # deaf to the interrupt: the session's claude is killed after the grace, the spawned one on its SIGINT
        mid = hive.call("send", to="a", body="FAKE: hang-once stuck 120\nFAKE: send operator unstuck")["id"]
        wait_until(lambda: "unstuck" in inbox_bodies(hive), 60, "the requeued turn to run again")
        assert hive.db_rows("select redelivered from message where id=?", mid) == [(1,)]
        told = [b for b in inbox_bodies(hive) if b.startswith("[helper event] turn_hung")]
        assert len(told) == 1 and "said nothing for 2 seconds" in told[0]
        first, again = hive.claude_calls("a")[-2:]
        assert (first["pid"] != again["pid"]) and again["prompt"].startswith(wire.REDELIVERED_BANNER)


def test_a_turn_waiting_on_the_operator_is_not_hung(tmp_path):
    clock = Clock(1000.0)
    dog = engines.Watchdog(60)
    quiet = engines.SessionTurn(None, None, None, clock)
    clock.t += 61
    assert dog.hung(quiet, clock())
    quiet.waiting = 1
    assert not dog.hung(quiet, clock()), "an approval the operator has not decided is not a hang"
    quiet.waiting, quiet.last_life = 0, clock()
    assert not dog.hung(quiet, clock() + 59)


def test_a_tool_that_runs_long_and_silent_is_not_a_hang_until_its_own_limit_is_past():
    clock = Clock(1000.0)
    dog = engines.Watchdog(60)
    reading = Reading("build it")
    building = engines.SessionTurn(None, None, reading, clock)
    reading.read({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "make -j2", "timeout": 600000}}]}})
    assert not dog.hung(building, clock() + 61), "a build says nothing until it ends"
    assert dog.hung(building, clock() + 60 + engines.TOOL_SECONDS + 1), "but not for ever"
    reading.read({"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "built"}]}})
    assert dog.hung(building, clock() + 61), "once the tool answered, the usual limit again"


def test_the_engine_limits_come_from_the_environment_and_a_bad_one_is_named(caplog):
    limits = engines.Limits.from_env({engines.HANG_ENV: "45", engines.RECYCLE_TURNS_ENV: "7",
                                      engines.RECYCLE_RSS_ENV: "lots", engines.RECYCLE_IDLE_ENV: "5"})
    assert (limits.hang_seconds, limits.recycle_turns) == (45.0, 7)
    assert (limits.recycle_rss_mb, limits.recycle_idle_seconds) == (2048, 21600.0), "bad ones keep the default"
    assert "HIVE_RECYCLE_RSS_MB='lots'" in caplog.text and "HIVE_RECYCLE_IDLE='5'" in caplog.text
    assert engines.mode_from_env({engines.MODE_ENV: "spawn"}) == "spawn"
    assert engines.mode_from_env({engines.MODE_ENV: "bogus"}) == "session"


# -- tool calls the policy sends to the operator ----------------------------------------------------

def bash_verdicts(hive, name):
    path = os.path.join(hive.home(name), "state", ".fakeclaude", "bash.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def pending_tool_uses(hive):
    return [a for a in hive.call("pending")["approvals"] if a["kind"] == "tool_use"]


def test_a_call_the_policy_asks_about_waits_for_the_operator_and_a_denial_reaches_claude_with_its_reason(tmp_path):
    with hive_with(tmp_path, "--hang-seconds", "2") as hive:
        hive.spawn("a")
        hive.configure("a", lambda c: c.update(permissions={"ask": ["Bash(git push:*)"], "deny": ["Bash(rm -rf:*)"]}))
        hive.call("send", to="a", body="FAKE: bash echo plain\nFAKE: bash rm -rf /tmp/nothing\n"
                                       "FAKE: bash git push origin main || echo pushed\nFAKE: send operator after-push")
        [asked] = wait_until(lambda: pending_tool_uses(hive), 30, "the operator to be asked")
        assert (asked["agent"], asked["tool"], asked["rule"]) == ("a", "Bash", "Bash(git push:*)")
        assert asked["input"]["command"] == "git push origin main || echo pushed"
        # past the watchdog's 2 s while the operator thinks: waiting on the operator is not a hang
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert "after-push" not in inbox_bodies(hive), "the turn went on without the operator"
            time.sleep(0.2)
        assert not [b for b in inbox_bodies(hive) if "turn_hung" in b]
        assert hive.call("approve", id=asked["id"])["approval"]["status"] == "approved"
        wait_until(lambda: "after-push" in inbox_bodies(hive), 30, "the turn to go on once allowed")
        plain, removed, pushed = bash_verdicts(hive, "a")
        assert plain["verdict"]["behavior"] == "allow", "a call no rule names runs as before"
        assert removed["verdict"] == {"behavior": "deny", "message":
                                      "this agent's permission policy denies it (Bash(rm -rf:*))"}
        assert pushed["verdict"]["behavior"] == "allow"

        hive.call("send", to="a", body="FAKE: bash git push --force\nFAKE: send operator after-deny")
        [asked] = wait_until(lambda: pending_tool_uses(hive), 30, "the operator to be asked again")
        assert hive.call("deny", id=asked["id"], reason="not on main")["approval"]["status"] == "denied"
        wait_until(lambda: "after-deny" in inbox_bodies(hive), 30, "the turn to go on once denied")
        assert bash_verdicts(hive, "a")[-1]["verdict"] == {"behavior": "deny", "message":
                                                           "the operator denied this call: not on main"}


# -- the unit tier: a session engine stepped with a clock, its processes recording fakes ------------------

class FakeProcess:
    """engine.Process as the engine drives it, with no process: started, stopped, alive."""

    started = []

    def __init__(self, argv, invocation, resume, model, clock):
        self.argv, self.resumed, self.model = argv, resume, model
        self.pid = 1000 + len(FakeProcess.started)
        self.session_id, self.turns, self.last_used = None, 0, clock()
        self.started_unix = time.time()
        self.stopped = False
        self.exited = gevent.event.AsyncResult()
        self.written = []
        FakeProcess.started.append(self)

    conversation = engines.Process.conversation

    def alive(self):
        return not self.stopped

    def pump(self, on_line, on_stderr):
        pass

    def stop(self):
        self.die(0)

    def die(self, code):
        self.stopped = True
        self.exited.set(code)

    def write(self, line):
        self.written.append(line)

    def rss(self):
        return None


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "Process", FakeProcess)
    FakeProcess.started = []
    state = tmp_path / "state"
    state.mkdir()
    open_agent(str(state / "events.sqlite"))
    bus = Bus(str(state))
    invocation = Invocation(FAKE_CLAUDE, "agent", "alice", str(state), str(tmp_path / "none.sock"))
    clock = Clock(1000.0)
    limits = engines.Limits(recycle_idle_seconds=600.0)
    eng = engines.SessionEngine(invocation, bus, lambda: "haiku", Session(str(state)), limits=limits, clock=clock)
    yield eng, clock
    eng.close()


def test_a_long_idle_session_is_replaced_and_nothing_starts_before_the_login(engine):
    eng, clock = engine
    eng.tick(clock(), ready=lambda: False)
    assert eng.proc is None, "no claude before its login is there"
    eng.tick(clock(), ready=lambda: True)
    first = eng.proc
    assert eng.info()["pid"] == first.pid and eng.info()["turns"] == 0
    assert "--input-format" in first.argv and not [a for a in first.argv if a.startswith("--resume")]
    clock.t += 599
    eng.tick(clock(), ready=lambda: True)
    assert eng.proc is first, "not idle long enough"
    clock.t += 2
    eng.tick(clock(), ready=lambda: True)
    assert first.stopped and eng.proc is not first and eng.recycled == 1


def test_a_claude_dead_between_turns_starts_again_after_a_backoff_that_doubles(engine):
    eng, clock = engine
    eng.tick(clock(), ready=lambda: True)
    for delay in (2, 4, 8):
        eng.proc.die(-9)
        eng.tick(clock(), ready=lambda: True)
        assert eng.proc is None
        clock.t += delay - 0.5
        eng.tick(clock(), ready=lambda: True)
        assert eng.proc is None, f"not before its {delay} s"
        clock.t += 0.5
        eng.tick(clock(), ready=lambda: True)
        assert eng.proc is not None and not eng.proc.stopped


def test_a_turn_cancelled_while_its_claude_still_starts_is_cancelled_and_writes_nothing(engine):
    eng, clock = engine
    starting = gevent.event.Event()
    ready = eng._ready

    def slow_ready(resume):  # the process is being replaced: the page already shows the turn thinking
        starting.wait()
        return ready(resume)
    eng._ready = slow_ready
    turn = gevent.spawn(eng.run, "FAKE: say never", None)
    gevent.sleep(0)
    assert eng.current is not None, "the operator can cancel the turn from its first moment"
    eng.current.cancel()
    starting.set()
    outcome = turn.get(timeout=30)
    assert outcome.kind == "cancelled" and eng.current is None
    [started] = FakeProcess.started
    assert started.written == [], "no line was written for it"

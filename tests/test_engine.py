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
from hyperhive.harness.claude import Invocation
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


def test_the_engine_limits_come_from_the_environment_and_a_bad_one_is_named(caplog):
    limits = engines.Limits.from_env({engines.HANG_ENV: "45", engines.RECYCLE_TURNS_ENV: "7",
                                      engines.RECYCLE_RSS_ENV: "lots", engines.RECYCLE_IDLE_ENV: "5"})
    assert (limits.hang_seconds, limits.recycle_turns) == (45.0, 7)
    assert (limits.recycle_rss_mb, limits.recycle_idle_seconds) == (2048, 21600.0), "bad ones keep the default"
    assert "HIVE_RECYCLE_RSS_MB='lots'" in caplog.text and "HIVE_RECYCLE_IDLE='5'" in caplog.text
    assert engines.mode_from_env({engines.MODE_ENV: "spawn"}) == "spawn"
    assert engines.mode_from_env({engines.MODE_ENV: "bogus"}) == "session"


# -- the unit tier: a session engine on a real fake-claude process, stepped with a clock ------------------

@pytest.fixture
def engine(tmp_path):
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
    first = eng.proc.pid
    assert eng.info()["pid"] == first and eng.info()["turns"] == 0
    clock.t += 599
    eng.tick(clock(), ready=lambda: True)
    assert eng.proc.pid == first, "not idle long enough"
    clock.t += 2
    eng.tick(clock(), ready=lambda: True)
    assert eng.proc.pid != first and eng.recycled == 1
    gone = time.monotonic() + 10
    while os.path.exists(f"/proc/{first}") and open(f"/proc/{first}/stat").read().split()[2] != "Z":
        assert time.monotonic() < gone, "the replaced claude did not exit"
        gevent.sleep(0.05)


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


def test_a_turn_cancelled_while_its_claude_still_starts_is_cancelled_and_writes_nothing(engine, tmp_path):
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
    calls = tmp_path / "state" / ".fakeclaude" / "calls.jsonl"
    assert not calls.exists() or "say never" not in calls.read_text(), "no line was written for it"

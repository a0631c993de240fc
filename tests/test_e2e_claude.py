"""End to end with the real Claude Code CLI, offline against tests/mockapi.py.

A real core on the process backend runs real harnesses, which run the pinned
`claude` (npm @anthropic-ai/claude-code), which talks to our mock of the
Messages API and calls our MCP server over stdio. The mock's brain plays
each agent's model: `a` forwards the operator's ping to `b` with
mcp__hyperhive__send, `b` answers the operator. Then a harness is killed
with SIGKILL mid-turn and the restarted one finishes the redelivered turn.

Skipped when no CLI is installed, unless HIVE_REQUIRE_CLAUDE=1 (CI sets it).
"""

import contextlib
import os
import re
import signal
import threading

import pytest

from conftest import ROOT, Hive, kill_harnesses, put_down, wait_until
from hyperhive import wire
from mockapi import MockAnthropic, last_user_text, text, tool_result_text, tool_results, tool_use

CLAUDE = os.environ.get("HIVE_TEST_CLAUDE") or os.path.join(ROOT, "tests", "node", "node_modules", ".bin", "claude")
if not os.path.exists(CLAUDE):
    if os.environ.get("HIVE_REQUIRE_CLAUDE") == "1":
        raise RuntimeError(f"HIVE_REQUIRE_CLAUDE=1 but there is no claude at {CLAUDE}; run npm ci --prefix tests/node")
    pytest.skip("no Claude Code CLI: set HIVE_TEST_CLAUDE or run `npm ci --prefix tests/node`",
                allow_module_level=True)

SEND = "mcp__hyperhive__send"
WHO = re.compile(r"You are \*\*([a-z][a-z0-9-]*)\*\*")


def agent_of(request):
    """Which agent's model is asked: our system prompt names it."""
    system = request.get("system") or []
    joined = system if isinstance(system, str) else "\n".join(b.get("text", "") for b in system)
    found = WHO.search(joined)
    return found.group(1) if found else None


class Brain:
    """The scripted model. Each agent's first inference of a turn decides; after a tool result it wraps up."""

    def __init__(self):
        self.seen = []  # (agent, last user text) of every main request
        self.hold = threading.Event()  # released when the test is done with a held turn
        self.held = threading.Event()  # set while a turn is being held

    def __call__(self, request):
        who = agent_of(request)
        prompt = last_user_text(request)
        self.seen.append((who, prompt))
        if tool_results(request):
            return text("done: " + " | ".join(tool_result_text(r) for r in tool_results(request))[:300])
        if who == "a" and "ping" in prompt:
            return tool_use(SEND, {"to": "b", "body": "a asks: what is six times seven?"})
        if who == "b" and "six times seven" in prompt:
            return tool_use(SEND, {"to": "operator", "body": "b answers: 42"})
        if who == "a" and "push it" in prompt:
            return tool_use("Bash", {"command": "git push origin main || echo pushed-or-not",
                                     "description": "push the branch"})
        if who == "a" and "force it" in prompt:
            return tool_use("Bash", {"command": "git push --force", "description": "force the push"})
        if who == "a" and "hang here" in prompt:
            if wire.REDELIVERED_BANNER in prompt:
                return tool_use(SEND, {"to": "operator", "body": "a finished the turn that hung"})
            self.held.set()
            self.hold.wait(120)  # the API says nothing: the watchdog must end the turn
            return text("too late")
        if who == "a" and "hold this turn" in prompt:
            if wire.REDELIVERED_BANNER in prompt:
                return tool_use(SEND, {"to": "operator", "body": "a finished the redelivered turn"})
            self.held.set()
            self.hold.wait(120)  # until the harness running this turn is killed
            return text("too late")
        return text("nothing to do")


@contextlib.contextmanager
def real_hive(tmp_path, *args):
    """A hive of the real claude against a fresh mock with the scripted Brain; serve gets `args` too."""
    brain = Brain()
    mock = MockAnthropic(brain)
    url = mock.start()
    hive = Hive(tmp_path / "state", claude=CLAUDE,
                env={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-test-not-a-real-key"},
                extra_args=["--pass-env", "ANTHROPIC_BASE_URL", "--pass-env", "ANTHROPIC_API_KEY", *args])
    hive.start()
    try:
        yield hive, brain, mock
    finally:
        brain.hold.set()
        try:
            hive.stop()
        finally:
            kill_harnesses(hive.state_dir)
            mock.stop()
    assert mock.unknown == [] and mock.brain_errors == []


@pytest.fixture
def e2e(tmp_path):
    with real_hive(tmp_path) as parts:
        yield parts


def inbox(hive):
    return [(m["from"], m["body"]) for m in hive.call("inbox", limit=50)["messages"]]


def test_ping_travels_operator_to_a_to_b_to_operator(e2e):
    hive, brain, mock = e2e
    for name in ("a", "b"):
        hive.call("spawn", name=name)
    hive.call("send", to="a", body="ping")
    wait_until(lambda: ("b", "b answers: 42") in inbox(hive), 90, "b's answer in the operator's inbox")
    # the model saw our wake prompt and tools, and the MCP send really reached b
    a_prompts = [p for who, p in brain.seen if who == "a"]
    assert a_prompts[0].startswith("from: operator\n\nping")
    assert any(p.startswith("from: a\n\na asks: what is six times seven?") for who, p in brain.seen if who == "b")
    tools = {t["name"] for t in mock.requests[0]["tools"]}
    assert {"mcp__hyperhive__send", "mcp__hyperhive__recv", "mcp__hyperhive__whoami"} <= tools
    # both turns ended well: nothing left unacked
    wait_until(lambda: not [m for m in hive.agent_call("a", "recent", limit=10)["messages"]
                            if m["to"] == "a" and m["acked_at"] is None], 30, "a's message to be acked")


def test_ping_crosses_two_nodes_of_one_postgresql_hive(tmp_path, pg_url):
    """a runs on node n1, b on node n2: the operator's ping (sent on n2) wakes a through n1, a's MCP send
    wakes b through the database's notice, and b's answer is read on n1."""
    brain = Brain()
    mock = MockAnthropic(brain)
    url = mock.start()
    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-test-not-a-real-key"}
    args = ["--pass-env", "ANTHROPIC_BASE_URL", "--pass-env", "ANTHROPIC_API_KEY"]
    nodes = [Hive(tmp_path / name, claude=CLAUDE, env=env, extra_args=args, database=pg_url, node=name)
             for name in ("n1", "n2")]
    try:
        for h in nodes:
            h.start()
        n1, n2 = nodes
        n1.call("spawn", name="a")
        n2.call("spawn", name="b")
        n2.call("send", to="a", body="ping")
        wait_until(lambda: ("b", "b answers: 42") in inbox(n1), 120, "b's answer, read on n1")
        assert any(p.startswith("from: a\n\na asks: what is six times seven?") for who, p in brain.seen if who == "b")
        # each agent ran on its own node only
        assert os.path.isdir(n1.home("a")) and not os.path.exists(n1.home("b"))
        assert os.path.isdir(n2.home("b")) and not os.path.exists(n2.home("a"))
        wait_until(lambda: n1.db_rows("SELECT sender, recipient, acked_at IS NOT NULL FROM message ORDER BY id")[:2]
                   == [("operator", "a", True), ("a", "b", True)], 30, "both turns acked")
    finally:
        brain.hold.set()
        for h in nodes:
            put_down(h)
        mock.stop()
    assert mock.unknown == [] and mock.brain_errors == []


def test_kill_9_mid_turn_redelivers_and_completes(e2e):
    hive, brain, mock = e2e
    hive.call("spawn", name="a")
    hive.call("send", to="a", body="hold this turn")
    assert brain.held.wait(90), "the first attempt never reached the model"
    os.killpg(hive.harness_pid("a"), signal.SIGKILL)
    brain.hold.set()
    wait_until(lambda: hive.row("a")["failed"], 20, "the core to see the killed harness")
    hive.call("start", scope={"agent_names": ["a"]})
    wait_until(lambda: ("a", "a finished the redelivered turn") in inbox(hive), 90,
               "the restarted harness to finish the redelivered turn")
    redelivered = [p for who, p in brain.seen if who == "a" and wire.REDELIVERED_BANNER in p]
    assert redelivered and redelivered[0].startswith(wire.REDELIVERED_BANNER + "\nfrom: operator\n\nhold this turn")
    assert inbox(hive).count(("a", "a finished the redelivered turn")) == 1, "one ping, one pong"
    assert ("a", "too late") not in inbox(hive), "the killed turn's claude did not go on acting"


# -- the session: one long-lived claude per agent --------------------------------------------------

def claude_process(hive, name):
    return hive.dashboard("GET", f"/agent/{name}/api/state")[1]["claude_process"]


def turn_done(hive, name, body, what):
    """Send `body` and wait until the turn it woke was acked; returns the message id."""
    mid = hive.call("send", to=name, body=body)["id"]
    wait_until(lambda: hive.db_rows("select acked_at from message where id=?", mid)[0][0], 90, what)
    return mid


def mcp_servers(pid):
    """The hive's MCP servers claude `pid` runs (its children running `<role> mcp`)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return []
    found = []
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mcp" in argv and any(a.endswith(b"hyperhive.pyz") for a in argv):
            found.append(child)
    return found


def test_a_session_runs_every_turn_on_one_claude_and_switches_its_model_in_place(e2e):
    hive, brain, mock = e2e
    hive.call("spawn", name="a")
    turn_done(hive, "a", "first turn", "the first turn")
    pid = claude_process(hive, "a")["pid"]
    assert pid and claude_process(hive, "a")["mode"] == "session"
    [server] = mcp_servers(pid)
    turn_done(hive, "a", "second turn", "the second turn")
    assert claude_process(hive, "a")["pid"] == pid, "the second turn ran on the same claude"
    assert mcp_servers(pid) == [server], "and on the same MCP server"
    status, _ = hive.dashboard("POST", "/agent/a/api/model", {"model": "claude-sonnet-4-5"})
    assert status == 200
    turn_done(hive, "a", "third turn, on another model", "the turn on the new model")
    [asked] = [r for r in mock.requests if r.get("tools") and "third turn" in last_user_text(r)]
    assert asked["model"] == "claude-sonnet-4-5", "the next request goes out on the new model"
    info = claude_process(hive, "a")
    assert info["pid"] == pid and info["turns"] == 3, "switched without a new process"


def test_cancel_interrupts_the_turn_and_the_session_lives_on(e2e):
    hive, brain, mock = e2e
    hive.call("spawn", name="a")
    turn_done(hive, "a", "warm up", "the first turn")
    pid = claude_process(hive, "a")["pid"]
    mid = hive.call("send", to="a", body="hold this turn")["id"]
    assert brain.held.wait(90), "the turn never reached the model"
    status, _ = hive.dashboard("POST", "/agent/a/api/cancel", {})
    assert status == 200
    wait_until(lambda: hive.db_rows("select cancelled_at from message where id=?", mid)[0][0], 30,
               "the message to be handled as cancelled")
    events = hive.dashboard("GET", "/agent/a/events/history")[1]["events"]
    [ended] = [e for e in events if e["kind"] == "turn_end" and mid in (e.get("ids") or [])]
    assert ended["outcome"] == "cancelled"
    assert claude_process(hive, "a")["pid"] == pid, "an interrupt ends the turn, not the process"
    brain.hold.set()
    turn_done(hive, "a", "after the cancel", "a turn after the cancel")
    assert claude_process(hive, "a")["pid"] == pid


def test_new_session_starts_a_fresh_claude_without_the_conversation(e2e):
    hive, brain, mock = e2e
    hive.call("spawn", name="a")
    turn_done(hive, "a", "remember the word MANGO", "the first turn")
    pid = claude_process(hive, "a")["pid"]
    assert hive.dashboard("POST", "/agent/a/api/new-session", {})[0] == 200
    turn_done(hive, "a", "what was the word? (new session)", "the turn in the new session")
    asked = conversation(mock, "(new session)")
    assert asked and "MANGO" not in asked, "a new session is sent nothing of the old conversation"
    assert claude_process(hive, "a")["pid"] != pid


@pytest.fixture
def hangs(tmp_path):
    with real_hive(tmp_path, "--hang-seconds", "4") as parts:
        yield parts


def test_a_turn_the_api_never_answers_is_ended_as_hung_and_runs_again(hangs):
    hive, brain, mock = hangs
    hive.call("spawn", name="a")
    mid = hive.call("send", to="a", body="hang here")["id"]
    assert brain.held.wait(90), "the turn never reached the model"
    wait_until(lambda: ("a", "a finished the turn that hung") in inbox(hive), 90,
               "the requeued turn to run again and finish")
    assert hive.db_rows("select redelivered from message where id=?", mid) == [(1,)]
    told = [body for sender, body in inbox(hive) if sender == "a" and "turn_hung" in body]
    assert len(told) == 1 and "said nothing for 4 seconds" in told[0], "the operator is told once"
    events = hive.dashboard("GET", "/agent/a/events/history")[1]["events"]
    hung = [e for e in events if e["kind"] == "turn_end" and mid in (e.get("ids") or []) and not e["ok"]]
    assert hung and "hung" in hung[0]["note"]


# -- the conversation across restarts --------------------------------------------------------------

def test_after_a_restart_and_a_crash_the_model_is_sent_the_earlier_conversation(e2e):
    hive, brain, mock = e2e
    hive.call("spawn", name="a")
    hive.call("send", to="a", body="remember the word PINEAPPLE")
    wait_until(lambda: any("PINEAPPLE" in p for who, p in brain.seen if who == "a"), 90, "the first turn")
    wait_until(lambda: not unacked(hive, "a"), 30, "the first turn to be acked")
    hive.call("restart", name="a")
    hive.call("send", to="a", body="what was the word? (after a restart)")
    asked = wait_until(lambda: conversation(mock, "after a restart"), 90, "the turn after the restart")
    assert "remember the word PINEAPPLE" in asked, "the model is sent the conversation from before the restart"
    wait_until(lambda: not unacked(hive, "a"), 30, "that turn to be acked")
    os.killpg(hive.harness_pid("a"), signal.SIGKILL)
    wait_until(lambda: not hive.row("a")["running"], 30, "the core to see the killed harness")
    if not hive.row("a")["running"]:
        try:
            hive.call("start", scope={"agent_names": ["a"]})
        except wire.HiveError as e:  # the core may have restarted it on its own meanwhile
            assert e.code == "conflict", e
    hive.call("send", to="a", body="and now? (after a crash)")
    asked = wait_until(lambda: conversation(mock, "after a crash"), 90, "the turn after the crash")
    assert "remember the word PINEAPPLE" in asked and "after a restart" in asked


def conversation(mock, marker):
    """All user text of the newest main request whose last prompt has the marker, or None."""
    for request in reversed(mock.requests):
        if request.get("tools") and marker in last_user_text(request):
            return "\n".join(str(m.get("content")) for m in request["messages"] if m.get("role") == "user")
    return None


def unacked(hive, name):
    return hive.db_rows("select count(*) from message where recipient=? and acked_at is null", name)[0][0]


# -- a key the API refuses ------------------------------------------------------------------------

@pytest.fixture
def keyed(tmp_path):
    brain = Brain()
    mock = MockAnthropic(brain)
    accepted = threading.Event()
    mock.accept_key = lambda key: accepted.is_set()
    url = mock.start()
    hive = Hive(tmp_path / "state", claude=CLAUDE,
                env={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-revoked", "HIVE_LOGIN_RECHECK": "1"},
                extra_args=[arg for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "HIVE_LOGIN_RECHECK")
                            for arg in ("--pass-env", name)])
    hive.start()
    try:
        yield hive, brain, mock, accepted
    finally:
        try:
            hive.stop()
        finally:
            kill_harnesses(hive.state_dir)
            mock.stop()


def test_a_refused_key_parks_the_agent_as_needing_a_login_until_the_api_takes_it_again(keyed):
    hive, brain, mock, accepted = keyed
    hive.call("spawn", name="a")
    hive.call("send", to="a", body="ping")
    row = wait_until(lambda: (r := hive.row("a")) and r["needs_login"] and r, 60, "a's row to say needs login")
    assert row["claude_missing"] is None

    def a_turns():
        return [body for path, body in mock.refused if path == "/v1/messages" and agent_of(body or {}) == "a"]

    def checks():
        return [path for path, _ in mock.refused].count("/v1/models")

    turns, checked = a_turns(), checks()
    wait_until(lambda: checks() >= checked + 3, 30, "three more checks of the key")
    assert a_turns() == turns, "parked: no turn is spent on a refused key"
    assert 1 <= len(turns) <= 2, f"the turn ended at claude's first retry, not after ten ({len(turns)} requests)"
    page = hive.dashboard("GET", "/agent/a/api/state")[1]
    assert page["status"] == "needs_login_idle"
    accepted.set()  # the key works again (re-enabled, or the quota is back)
    wait_until(lambda: hive.row("a")["needs_login"] is False, 60, "a's row to clear by itself")
    wait_until(lambda: not unacked(hive, "a"), 90, "the waiting ping to be handled")
    assert any(who == "a" and "from: operator\n\nping" in p for who, p in brain.seen)
    told = [m["body"] for m in hive.call("inbox", limit=100)["messages"] if ": a's claude" in m["body"]]
    assert [t.split(":")[0] for t in told] == ["[helper event] logged_in", "[helper event] needs_login"], told
    heard = [m["body"] for m in hive.agent_call("manager", "recent", limit=100)["messages"]
             if m["to"] == "manager" and ": a's claude" in m["body"]]
    assert sorted(t.split(":")[0] for t in heard) == ["[helper event] logged_in", "[helper event] needs_login"]


# -- tool calls the operator approves ---------------------------------------------------------------

def test_a_bash_call_the_policy_asks_about_waits_for_the_operator_and_a_deny_reaches_the_model(e2e):
    hive, brain, mock = e2e
    hive.call("spawn", name="a")
    hive.configure("a", lambda c: c.update(permissions={"ask": ["Bash(git push:*)"]}))
    pushed = hive.call("send", to="a", body="push it")["id"]
    [asked] = wait_until(lambda: [a for a in hive.call("pending")["approvals"] if a["kind"] == "tool_use"], 90,
                         "claude's Bash call to reach the operator")
    assert asked["tool"] == "Bash" and asked["input"]["command"] == "git push origin main || echo pushed-or-not"
    assert not hive.db_rows("select acked_at from message where id=?", pushed)[0][0], "the turn waits"
    assert hive.call("approve", id=asked["id"])["approval"]["status"] == "approved"
    wait_until(lambda: hive.db_rows("select acked_at from message where id=?", pushed)[0][0], 90,
               "the allowed turn to end")
    ran = [tool_result_text(r) for req in mock.requests if req.get("tools") for r in tool_results(req)]
    assert any("pushed-or-not" in t for t in ran), f"the command ran once allowed: {ran}"

    forced = hive.call("send", to="a", body="force it")["id"]
    [asked] = wait_until(lambda: [a for a in hive.call("pending")["approvals"] if a["kind"] == "tool_use"], 90,
                         "the second call to reach the operator")
    assert hive.call("deny", id=asked["id"], reason="never force main")["approval"]["status"] == "denied"
    wait_until(lambda: hive.db_rows("select acked_at from message where id=?", forced)[0][0], 90,
               "the denied turn to end")
    denied = [r for req in mock.requests if req.get("tools") for r in tool_results(req)
              if "never force main" in tool_result_text(r)]
    assert denied and denied[0].get("is_error"), "the model is told of the denial and its reason"


def test_in_spawn_mode_an_ask_rule_denies_without_asking_and_claude_enforces_it(tmp_path):
    with real_hive(tmp_path, "--claude-mode", "spawn") as (hive, brain, mock):
        hive.call("spawn", name="a")
        hive.configure("a", lambda c: c.update(permissions={"ask": ["Bash(git push:*)"]}))
        mid = hive.call("send", to="a", body="push it")["id"]
        wait_until(lambda: hive.db_rows("select acked_at from message where id=?", mid)[0][0], 90, "the turn to end")
        results = [tool_result_text(r) for req in mock.requests if req.get("tools") for r in tool_results(req)]
        assert any("Permission to use Bash with command git push origin main" in t and "denied" in t
                   for t in results), results
        assert not [a for a in hive.call("pending")["approvals"] if a["kind"] == "tool_use"], \
            "nothing can wait on the operator in spawn mode"
        events = hive.dashboard("GET", "/agent/a/events/history")[1]["events"]
        assert any("the policy's ask rules (Bash(git push:*)) deny instead" in (e.get("text") or "") for e in events)

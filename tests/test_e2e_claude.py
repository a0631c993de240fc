"""End to end with the real Claude Code CLI, offline against tests/mockapi.py.

A real core on the process backend runs real harnesses, which run the pinned
`claude` (npm @anthropic-ai/claude-code), which talks to our mock of the
Messages API and calls our MCP server over stdio. The mock's brain plays
each agent's model: `a` forwards the operator's ping to `b` with
mcp__hyperhive__send, `b` answers the operator. Then a harness is killed
with SIGKILL mid-turn and the restarted one finishes the redelivered turn.

Skipped when no CLI is installed, unless HIVE_REQUIRE_CLAUDE=1 (CI sets it).
"""

import os
import re
import signal
import threading

import pytest

from conftest import ROOT, Hive, kill_harnesses, wait_until
from hyperhive import wire
from mockapi import MockAnthropic, last_user_text, text, tool_results, tool_use

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
            return text("done")
        if who == "a" and "ping" in prompt:
            return tool_use(SEND, {"to": "b", "body": "a asks: what is six times seven?"})
        if who == "b" and "six times seven" in prompt:
            return tool_use(SEND, {"to": "operator", "body": "b answers: 42"})
        if who == "a" and "hold this turn" in prompt:
            if wire.REDELIVERED_BANNER in prompt:
                return tool_use(SEND, {"to": "operator", "body": "a finished the redelivered turn"})
            self.held.set()
            self.hold.wait(120)  # until the harness running this turn is killed
            return text("too late")
        return text("nothing to do")


@pytest.fixture
def e2e(tmp_path):
    brain = Brain()
    mock = MockAnthropic(brain)
    url = mock.start()
    hive = Hive(tmp_path / "state", claude=CLAUDE,
                env={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-test-not-a-real-key"},
                extra_args=["--pass-env", "ANTHROPIC_BASE_URL", "--pass-env", "ANTHROPIC_API_KEY"])
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

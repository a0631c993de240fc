"""The harness's side of tool permissions (harness/permits.py): claude's grants shaped by the policy, and the
answer to each can_use_tool request — the policy's, the operator's, or the hive's ask for AskUserQuestion.

The core is a FakeClient answering from a script; the policy is the real one.
"""

import pytest

from hyperhive import permissions, wire
from hyperhive.harness import permits
from hyperhive.harness.claude import Invocation

DEFAULT = ["Bash", "Read", "mcp__hyperhive__send", "mcp__notes", "mcp__docs__read_*"]


def policy(**rules):
    return permissions.Policy.parse(rules)


class FakeClient:
    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def call(self, verb, timeout=30.0, **args):
        self.calls.append((verb, args))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Notes:
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)


class Turn:
    def __init__(self):
        self.waiting, self.over, self.seen = 0, False, []


def request(tool, **tool_input):
    return {"subtype": "can_use_tool", "tool_name": tool, "input": tool_input, "tool_use_id": "toolu_1"}


def test_a_tool_an_ask_rule_names_leaves_the_grants_in_a_session_and_is_denied_outright_in_spawn_mode():
    rules = policy(allow=["WebFetch(domain:example.org)"], ask=["Bash(git push:*)"], deny=["Bash(rm -rf:*)"])
    allowed, denied = permits.grants(DEFAULT, rules, "session")
    assert "Bash" not in allowed and "Read" in allowed and "WebFetch(domain:example.org)" in allowed
    assert denied == ["Bash(rm -rf:*)"]
    allowed, denied = permits.grants(DEFAULT, rules, "spawn")
    assert "Bash" in allowed, "spawn mode: no call can wait on the operator, so nothing leaves the grants"
    assert denied == ["Bash(rm -rf:*)", "Bash(git push:*)"]
    assert permits.grants(DEFAULT, policy(), "session") == (DEFAULT, [])


def test_the_command_line_carries_both_lists(tmp_path):
    inv = Invocation("/bin/claude", "agent", "alice", str(tmp_path), "/run/a.sock", mode="session",
                     policy=policy(ask=["Bash(git push:*)"], deny=["Bash(rm -rf:*)"]))
    argv = inv.session_argv("haiku")
    [allowed] = [a for a in argv if a.startswith("--allowedTools=")]
    [denied] = [a for a in argv if a.startswith("--disallowedTools=")]
    assert "Bash" not in allowed.split("=", 1)[1].split(",") and denied == "--disallowedTools=Bash(rm -rf:*)"
    assert argv[argv.index("--permission-prompt-tool") + 1] == "stdio"
    assert argv[argv.index("--input-format") + 1] == "stream-json"
    plain = Invocation("/bin/claude", "agent", "alice", str(tmp_path), "/run/a.sock")
    assert not [a for a in plain.argv("haiku", "hi") if a.startswith("--disallowedTools")]


def test_the_policy_decides_before_the_default_grants():
    decide = permits.Permits(policy(deny=["Read(/etc/*)"], allow=["WebSearch"]), DEFAULT, FakeClient(), Notes())
    assert decide(None, request("Read", file_path="/etc/shadow")) == {
        "behavior": "deny", "message": "this agent's permission policy denies it (Read(/etc/*))"}
    assert decide(None, request("Read", file_path="/state/x"))["behavior"] == "allow"
    assert decide(None, request("mcp__notes__write", text="x"))["behavior"] == "allow", "a whole server's grant"
    assert decide(None, request("mcp__docs__read_page"))["behavior"] == "allow", "a granted pattern"
    assert decide(None, request("WebSearch", query="x"))["behavior"] == "allow", "an allow rule grants"
    refused = decide(None, request("mcp__docs__delete"))
    assert refused["behavior"] == "deny" and "not granted to this agent" in refused["message"]
    assert decide(None, request("Bash", command="ls"))["updatedInput"] == {"command": "ls"}


def test_an_ask_waits_through_long_polls_and_the_turn_counts_as_waiting_meanwhile():
    turn = Turn()
    pending = {"approval": {"id": 7, "status": "pending"}}
    client = FakeClient(pending, pending, {"approval": {"id": 7, "status": "approved"}})
    seen = []
    original = client.call

    def call(verb, timeout=30.0, **args):
        seen.append(turn.waiting)
        return original(verb, timeout, **args)
    client.call = call
    notes = Notes()
    decide = permits.Permits(policy(ask=["Bash(git push:*)"]), DEFAULT, client, notes)
    verdict = decide(turn, request("Bash", command="git push origin main"))
    assert verdict == {"behavior": "allow", "updatedInput": {"command": "git push origin main"}}
    assert seen == [1, 1, 1] and turn.waiting == 0, "waiting while asked, not after"
    verb, args = client.calls[0]
    assert verb == "ask_tool_use" and args == {"tool": "Bash", "input": {"command": "git push origin main"},
                                               "tool_use_id": "toolu_1", "rule": "Bash(git push:*)",
                                               "wait_seconds": permits.ASK_WAIT}
    assert len(client.calls) == 3, "asked again after each long poll that ended undecided"
    assert notes.notes[0].startswith("waiting for the operator to allow Bash: git push origin main (approval #7")


@pytest.mark.parametrize("answer, message", [
    ({"approval": {"id": 7, "status": "denied", "note": "not today"}}, "the operator denied this call: not today"),
    ({"approval": {"id": 7, "status": "cancelled", "note": "the turn ended"}},
     "the approval was cancelled: the turn ended"),
    (wire.HiveError("approval input is 20000 bytes; the limit is 16384"),
     "the operator could not be asked (approval input is 20000 bytes; the limit is 16384)"),
])
def test_what_is_not_an_allow_reaches_claude_as_a_denial_with_its_reason(answer, message):
    decide = permits.Permits(policy(ask=["Bash"]), DEFAULT, FakeClient(answer), Notes())
    assert decide(Turn(), request("Bash", command="make")) == {"behavior": "deny", "message": message}


def test_ask_user_question_goes_to_the_operator_as_the_hive_s_ask():
    client = FakeClient({"id": 12})
    notes = Notes()
    decide = permits.Permits(policy(), DEFAULT, client, notes)
    verdict = decide(None, request("AskUserQuestion", questions=[{
        "question": "Which color?", "header": "Color", "multiSelect": False,
        "options": [{"label": "red", "description": "warm"}, {"label": "blue", "description": "cold"},
                    {"label": "red", "description": "again"}]}]))
    assert client.calls == [("ask", {"question": "Which color?", "to": "operator", "options": ["red", "blue"]})]
    assert verdict["behavior"] == "deny" and "question #12" in verdict["message"]
    assert "comes as a message" in verdict["message"]
    assert decide(None, request("AskUserQuestion", questions=[]))["behavior"] == "deny"

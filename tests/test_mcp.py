"""The MCP stdio server as a real child process, against a fake core socket."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from fakecore import REPO, WAIT, FakeCore, McpClient, ok, refuse, wait_until
from hyperhive import verbs, wire
from hyperhive.harness import mcp, tools

SUPPORTED = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"]


@pytest.fixture
def core(sockdir):
    fake = FakeCore(sockdir / "hive.sock")
    yield fake
    fake.stop()


@pytest.fixture
def server(core):
    client = McpClient(core.path)
    client.initialize()
    yield client
    client.kill()


def text_of(reply):
    result = reply["result"]
    assert [c["type"] for c in result["content"]] == ["text"]
    return result["content"][0]["text"]


# -- initialize ------------------------------------------------------------------------

@pytest.mark.parametrize("version", SUPPORTED)
def test_initialize_answers_a_supported_version(core, version):
    client = McpClient(core.path)
    try:
        result = client.initialize(version)["result"]
        assert result == {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "hyperhive", "version": mcp.SERVER_VERSION},
        }
    finally:
        client.kill()


@pytest.mark.parametrize("version", ["1999-01-01", None, 7])
def test_initialize_answers_our_newest_for_an_unknown_version(core, version):
    client = McpClient(core.path)
    try:
        assert client.initialize(version)["result"]["protocolVersion"] == "2025-11-25"
    finally:
        client.kill()


def test_ping(server):
    assert server.request("ping")["result"] == {}


def test_notifications_and_answers_get_no_answer(server):
    server.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}})
    server.send({"jsonrpc": "2.0", "method": "notifications/whatever"})
    server.send({"jsonrpc": "2.0", "id": 99, "result": {}})  # an answer to nothing we asked
    # the next line out is the ping's answer: nothing was said about the notifications
    assert server.request("ping")["result"] == {}


# -- tools/list -------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["agent", "manager"])
def test_tools_list_shapes(core, role):
    client = McpClient(core.path, role=role)
    try:
        client.initialize()
        tools = client.request("tools/list")["result"]["tools"]
    finally:
        client.kill()
    names = [t["name"] for t in tools]
    assert names[:len(COMMON_TOOLS)] == COMMON_TOOLS
    assert names[len(COMMON_TOOLS):] == ([] if role == "agent" else MANAGER_TOOLS)
    for tool in tools:
        assert set(tool) == {"name", "description", "inputSchema"}
        assert len(tool["description"]) > 40
        schema = tool["inputSchema"]
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])
        for prop in schema["properties"].values():
            assert prop["type"] in ("string", "integer", "array", "boolean") and prop["description"]
            if prop["type"] == "array":
                assert prop["items"]["type"] == "string" and prop["maxItems"] == wire.MAX_OPTIONS
    by_name = {t["name"]: t["inputSchema"] for t in tools}
    assert by_name["send"]["required"] == ["to", "body"]
    recv = by_name["recv"]["properties"]
    assert (recv["max"]["minimum"], recv["max"]["maximum"], recv["max"]["default"]) == (1, 32, 1)
    assert (recv["wait_seconds"]["minimum"], recv["wait_seconds"]["maximum"]) == (0, 180)
    assert by_name["whoami"]["properties"] == {}
    assert "operator" in tools[0]["description"] and "manager" in tools[0]["description"]
    assert by_name["ask"]["required"] == ["question"] and by_name["answer"]["required"] == ["id", "answer"]
    ask = {t["name"]: t["description"] for t in tools}["ask"]
    # the model must learn that the answer comes later, in its inbox, and not to wait for it
    assert "[question_answered]" in ask and "inbox" in ask and "Do not wait" in ask


COMMON_TOOLS = ["send", "recv", "recent", "whoami", "ask", "answer", "remind", "get_loose_ends", "cancel_loose_end",
                "set_status"]
MANAGER_TOOLS = ["request_apply_commit", "request_init_config", "request_spawn", "update", "agent_status",
                 "start", "stop", "restart", "rebuild", "kill"]


def test_allowed_tools_names_every_tool_of_the_role():
    common = [f"mcp__hyperhive__{t}" for t in COMMON_TOOLS]
    assert tools.allowed_tools("agent") == common
    assert tools.allowed_tools("manager") == common + [f"mcp__hyperhive__{t}" for t in MANAGER_TOOLS]
    assert tools.allowed_tools("nobody") == []


def test_every_tools_arguments_are_its_verbs_arguments_in_wire():
    for tool in tools.TOOLS:
        for role in tool.roles:
            args = verbs.SURFACE_ARGS.get((role, tool.verb), verbs.VERBS[tool.verb][0])
            assert set(tool.input_schema["properties"]) <= {a.name for a in args}, (role, tool.name)
            assert {a.name for a in args if a.required} <= set(tool.input_schema["required"]), (role, tool.name)


def test_request_spawn_says_what_the_agent_starts_on(core):
    core.answers["request_spawn"] = ok(id=8)
    client = McpClient(core.path, role="manager")
    try:
        client.initialize()
        listed = {t["name"]: t for t in client.request("tools/list")["result"]["tools"]}["request_spawn"]
        # the model must learn that its committed edits are what starts, and a later commit is not
        text = listed["description"]
        assert "exactly that commit" in text and "a commit made after it is not part of this spawn" in text
        assert listed["inputSchema"]["required"] == ["name", "description"]
        assert "approval 8" in text_of(client.call("request_spawn", {"name": "c", "description": "why",
                                                                     "commit_ref": "abcdef0"}))
        client.call("request_spawn", {"name": "d", "description": "why"})
    finally:
        client.kill()
    assert [r for r in core.requests if r["cmd"] == "request_spawn"] == [
        {"cmd": "request_spawn", "name": "c", "description": "why", "commit_ref": "abcdef0"},
        {"cmd": "request_spawn", "name": "d", "description": "why"}]


def test_manager_tools_map_to_manager_verbs_with_their_arguments(core):
    core.answers["request_apply_commit"] = ok(id=7)
    core.answers["stop"] = ok()
    core.answers["agent_status"] = ok(agent_statuses=[{
        "name": "a", "state": "running", "running": True, "failed": False, "needs_update": True, "needs_login": False,
        "paused": False, "parent": "operator", "deployed_sha": "abcdef012345", "active_model": "sonnet",
        "status_text": "busy", "status_set_at": None, "url": None, "pending_reminders": 0}, {
        "name": "b", "state": "failed", "running": False, "failed": True, "needs_update": False, "needs_login": False,
        "paused": False, "parent": "operator", "deployed_sha": None, "active_model": None,
        "status_text": None, "status_set_at": None, "url": None, "pending_reminders": 0,
        "restart": {"deaths": 2, "reason": "exit code 1", "next_at": "2026-01-01T00:00:04.000Z"}}])
    client = McpClient(core.path, role="manager")
    try:
        client.initialize()
        answer = text_of(client.call("request_apply_commit",
                                     {"agent": "a", "commit_ref": "abcdef0", "description": "why"}))
        assert "approval 7" in answer and "[helper event]" in answer
        assert text_of(client.call("stop", {"name": "a"})) == "stop: a done"
        status = text_of(client.call("agent_status"))
        assert status == ("a: running, model sonnet, config abcdef012345, needs update, status: busy\n"
                          "b: failed, being started again after 2 death(s) in a row (exit code 1)")
    finally:
        client.kill()
    sent = [(r["cmd"], {k: v for k, v in r.items() if k != "cmd"}) for r in core.requests]
    assert ("request_apply_commit", {"agent": "a", "commit_ref": "abcdef0", "description": "why"}) in sent
    assert ("stop", {"name": "a"}) in sent
    for wire_verb in MANAGER_TOOLS:
        assert wire_verb in verbs.MANAGER_VERBS


# -- tools/call ---------------------------------------------------------------------------

def test_send(server, core):
    core.answers["send"] = ok(id=42)
    reply = server.call("send", {"to": "bob", "body": "hello, bob"})
    assert core.raw == [b'{"cmd":"send","to":"bob","body":"hello, bob"}\n']
    assert reply["result"]["isError"] is False
    assert text_of(reply) == "sent to bob (message id 42)"


def test_recv_defaults_and_empty(server, core):
    reply = server.call("recv", {})
    assert core.requests == [{"cmd": "recv"}], "what the model gave, no more: the core fills in its defaults"
    assert text_of(reply) == "(empty)"
    server.call("recv")  # arguments may be left out when nothing is required
    assert core.requests[-1] == {"cmd": "recv"}


def message(id, sender, body, redelivered=False):
    return {"id": id, "from": sender, "body": body, "sent_at": "2025-01-01T00:00:00Z",
            "redelivered": redelivered, "file_refs": []}


def test_recv_one_message(server, core):
    core.answers["recv"] = ok(messages=[message(3, "bob", "line one\nline two")])
    reply = server.call("recv", {"max": 5, "wait_seconds": 2})
    assert core.requests == [{"cmd": "recv", "max": 5, "wait_seconds": 2}]
    assert text_of(reply) == "from: bob\n\nline one\nline two"


def test_recv_redelivered_banner(server, core):
    core.answers["recv"] = ok(messages=[message(3, "operator", "hi", redelivered=True)])
    assert text_of(server.call("recv")) == (
        "[redelivered: a turn that had this message did not finish — it may already be handled]\nfrom: operator\n\nhi")


def test_recv_several_messages(server, core):
    core.answers["recv"] = ok(messages=[message(1, "bob", "one"), message(2, "manager", "two", True),
                                        message(3, "operator", "three")])
    assert text_of(server.call("recv", {"max": 32})) == (
        "popped 3 messages\n\n"
        "from: bob\n\none\n---\n"
        "[redelivered: a turn that had this message did not finish — it may already be handled]\nfrom: manager\n\ntwo\n---\n"
        "from: operator\n\nthree")


def test_recent_reads_the_conversation_back_with_cut_bodies_said(server, core):
    core.answers["recent"] = ok(messages=[
        {"id": 9, "from": "alice", "to": "bob", "sent_at": "2026-12-04T10:00:00Z", "body": "done"},
        {"id": 8, "from": "bob", "to": "alice", "sent_at": "2026-12-04T09:00:00Z", "body": "x" * 10,
         "body_chars": 40000}], warnings=["the listing stops after the newest 2 messages"])
    text = text_of(server.call("recent", {"limit": 5}))
    assert core.requests == [{"cmd": "recent", "limit": 5}]
    assert text == ("2 messages, newest first\n\n"
                    "message 9 from alice to bob at 2026-12-04T10:00:00Z\n\ndone\n---\n"
                    "message 8 from bob to alice at 2026-12-04T09:00:00Z\n\nxxxxxxxxxx\n"
                    "[cut: the body has 40000 characters]\n(warning: the listing stops after the newest 2 messages)")
    core.answers["recent"] = ok(messages=[])
    assert text_of(server.call("recent", {})) == "(no messages yet)"


def test_whoami(server, core):
    core.answers["whoami"] = ok(name="alice", role="agent", hyperhive_rev="abcdef012345", pronouns="she")
    reply = server.call("whoami", {})
    assert core.requests == [{"cmd": "whoami"}]
    assert text_of(reply) == "name: alice\nrole: agent\nhyperhive_rev: abcdef012345"


def test_ask_sends_only_what_was_given_and_says_the_answer_comes_later(server, core):
    core.answers["ask"] = ok(id=7, question={"id": 7})
    reply = server.call("ask", {"question": "which branch?", "to": "bob", "options": ["main", "dev"]})
    assert core.requests == [{"cmd": "ask", "question": "which branch?", "to": "bob", "options": ["main", "dev"]}]
    text = text_of(reply)
    assert text.startswith("question 7 is with bob.") and "[question_answered]" in text and "do not wait" in text
    text = text_of(server.call("ask", {"question": "ship it?", "ttl_seconds": 600}))
    assert core.requests[-1] == {"cmd": "ask", "question": "ship it?", "ttl_seconds": 600}
    assert "is with the operator" in text and "within 10 minutes, ttl-watchdog closes it" in text


@pytest.mark.parametrize("arguments, fragment", [
    ({"question": "q", "options": "yes,no"}, "'options' must be a list"),
    ({"question": "q", "options": ["yes", 3]}, "'options': choice 2 must be a string"),
    ({"question": "q", "options": [""]}, "choice 1 is empty"),
    ({"question": "q", "options": ["x"] * 11}, "the limit is 10"),
    ({"question": "q", "options": ["x" * 101]}, "a choice is at most 100"),
    ({"question": "q", "ttl_seconds": 0}, "between 1 and 604800"),
])
def test_ask_arguments_are_checked_before_the_core_hears_of_them(server, core, arguments, fragment):
    reply = server.call("ask", arguments)
    assert reply["error"]["code"] == mcp.INVALID_PARAMS and fragment in reply["error"]["message"]
    assert core.requests == []


def test_answer(server, core):
    core.answers["answer"] = ok(question={"id": 7, "asker": "bob", "answer": "main"})
    reply = server.call("answer", {"id": 7, "answer": "main"})
    assert core.raw == [b'{"cmd":"answer","id":7,"answer":"main"}\n']
    assert text_of(reply) == "answered question 7; bob gets your answer in its inbox."
    sentence = "question 7 is already closed: bob answered it 'main' at 2026-01-01T00:00:00.000Z"
    core.answers["answer"] = refuse(sentence, "conflict")
    reply = server.call("answer", {"id": 7, "answer": "dev"})
    assert reply["result"]["isError"] is True and text_of(reply) == sentence


def test_manager_role_speaks_the_same_tools(core):
    client = McpClient(core.path, role="manager")
    try:
        client.initialize()
        assert text_of(client.call("whoami")).startswith("name: alice")
    finally:
        client.kill()


def test_core_refusal_is_a_tool_error_with_the_sentence(server, core):
    sentence = "there is no agent named 'bobb'; known: alice, bob"
    core.answers["send"] = refuse(sentence, "not_found")
    reply = server.call("send", {"to": "bobb", "body": "hi"})
    assert "error" not in reply
    assert reply["result"]["isError"] is True
    assert text_of(reply) == sentence


def test_core_down_is_a_tool_error_naming_the_socket(sockdir):
    path = sockdir / "nobody-home.sock"
    client = McpClient(path)
    try:
        client.initialize()
        reply = client.call("whoami")
        assert reply["result"]["isError"] is True
        assert str(path) in text_of(reply)
        assert client.request("ping")["result"] == {}  # and it keeps serving
    finally:
        client.kill()


def test_socket_flag_wins_over_the_environment(core, sockdir):
    client = McpClient(sockdir / "wrong.sock", extra_args=["--socket", core.path])
    try:
        client.initialize()
        assert client.call("whoami")["result"]["isError"] is False
    finally:
        client.kill()


def test_recv_is_answered_concurrently_with_other_requests(server, core):
    release = threading.Event()

    def slow_recv(request):
        release.wait(WAIT)
        return ok(messages=[message(1, "bob", "late")])

    core.answers["recv"] = slow_recv
    server.send({"jsonrpc": "2.0", "id": "slow", "method": "tools/call",
                 "params": {"name": "recv", "arguments": {"wait_seconds": 60}}})
    core.wait_requests(1)
    server.send({"jsonrpc": "2.0", "id": "fast", "method": "ping"})
    assert server.read() == {"jsonrpc": "2.0", "id": "fast", "result": {}}
    release.set()
    reply = server.read()
    assert reply["id"] == "slow" and text_of(reply) == "from: bob\n\nlate"


def test_recv_socket_timeout_covers_the_wait(monkeypatch):
    seen = []
    monkeypatch.setattr(mcp.jsonline, "call", lambda path, verb, timeout, **args: seen.append(
        (path, verb, timeout, args)) or ok(messages=[]))
    read_fd, write_fd = os.pipe()
    try:
        srv = mcp.Server("agent", "/x.sock", write_fd)
        srv.serve([json.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": p}).encode()
                   for n, p in enumerate([{"name": "recv", "arguments": {"wait_seconds": 120}},
                                          {"name": "whoami"}])])
    finally:
        os.close(write_fd)
        os.close(read_fd)
    assert sorted(seen, key=lambda s: s[1]) == [
        ("/x.sock", "recv", 150.0, {"wait_seconds": 120}),
        ("/x.sock", "whoami", 30.0, {})]


# -- protocol errors ------------------------------------------------------------------------

@pytest.mark.parametrize("name, arguments, complaint", [
    ("nope", {}, "unknown tool 'nope'"),
    (None, {}, "unknown tool None"),
    ("send", {"to": "bob"}, "missing argument 'body'"),
    ("send", {"to": "bob", "body": 5}, "'body' must be a string"),
    ("send", {"to": "bob", "body": ""}, "'body' must not be empty"),
    ("send", {"to": "bob", "body": "x", "cc": "eve"}, "unknown argument 'cc'"),
    ("send", ["bob", "x"], "arguments must be an object"),
    ("recv", {"max": "3"}, "'max' must be a number, got a string"),
    ("recv", {"max": True}, "'max' must be a number, got a boolean"),
    ("send", {"to": "Bob", "body": "x"}, "is not valid: use 1-31 characters"),
    ("ask", {"question": "q?", "ttl_seconds": 0}, "'ttl_seconds' must be between 1 and 604800, got 0"),
    ("whoami", {"name": "x"}, "unknown argument 'name'"),
])
def test_bad_calls_are_invalid_params(server, core, name, arguments, complaint):
    reply = server.call(name, arguments)
    assert reply["error"]["code"] == -32602
    assert complaint in reply["error"]["message"]
    assert core.requests == []


def test_integral_float_counts_as_an_integer(server, core):
    server.call("recv", {"max": 4.0})
    assert core.raw == [b'{"cmd":"recv","max":4}\n']


def test_malformed_json_line_then_keeps_working(server):
    server.send_raw(b'{"jsonrpc": "2.0", "id": 1, "method": \n')
    reply = server.read()
    assert reply["id"] is None and reply["error"]["code"] == -32700
    server.send_raw(b"\xff\xfe not utf-8\n")
    assert server.read()["error"]["code"] == -32700
    server.send_raw(b"\n   \n")  # blank lines are nobody's request
    assert server.request("ping")["result"] == {}


@pytest.mark.parametrize("line, expected_id", [
    (b'[1, 2]', None),
    (b'"hello"', None),
    (b'{"id": 4, "method": "ping"}', 4),  # no "jsonrpc": "2.0"
    (b'{"jsonrpc": "2.0", "id": 5, "method": 6}', 5),
    (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}', None),
    (b'{"jsonrpc": "2.0", "id": 8}', 8),
])
def test_invalid_requests(server, line, expected_id):
    server.send_raw(line + b"\n")
    reply = server.read()
    assert reply["id"] == expected_id and reply["error"]["code"] == -32600
    assert server.request("ping")["result"] == {}


def test_unknown_method(server):
    reply = server.request("resources/list")
    assert reply["error"]["code"] == -32601 and "resources/list" in reply["error"]["message"]


def test_params_must_be_an_object(server):
    server.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1]})
    assert server.read()["error"]["code"] == -32602


# -- lifecycle -----------------------------------------------------------------------------------

def test_eof_exits_zero_after_answering(server, core):
    server.send({"jsonrpc": "2.0", "id": "last", "method": "tools/call", "params": {"name": "whoami"}})
    server.close_stdin()
    assert server.wait() == 0
    assert json.loads(server.stdout.rest())["id"] == "last"
    assert server.stderr.rest() == b""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_exits_zero_quietly(server, signum):
    server.proc.send_signal(signum)
    assert server.wait() == 0
    assert server.stderr.rest() == b""


def test_sigint_during_a_long_recv(server, core):
    release = threading.Event()
    core.answers["recv"] = lambda request: release.wait(WAIT) and ok(messages=[])
    server.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                 "params": {"name": "recv", "arguments": {"wait_seconds": 180}}})
    core.wait_requests(1)
    server.proc.send_signal(signal.SIGINT)
    try:
        assert server.wait() == 0
        assert server.stderr.rest() == b""
    finally:
        release.set()


def test_sigint_ends_it_even_when_started_with_sigint_ignored(core):
    # what a shell does to a background job: SIGINT ignored, and Python keeps what it inherits
    client = McpClient(core.path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        client.initialize()
        client.proc.send_signal(signal.SIGINT)
        assert client.wait() == 0
        assert client.stderr.rest() == b""
    finally:
        client.kill()


def alive(pid):
    """Whether pid runs (a zombie waiting for whoever reaps orphans here counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_it_ends_when_claude_dies_even_with_stdin_still_open(core):
    client = McpClient(core.path, parent=True)
    try:
        client.initialize()
        assert alive(client.pid) and client.pid != client.proc.pid
        client.proc.kill()  # claude dies; its stdin pipe stays open in this test
        wait_until(lambda: not alive(client.pid), WAIT, "the orphaned MCP server to end")
    finally:
        client.kill()


def test_an_orphan_does_not_run_what_its_dead_claude_asked(monkeypatch):
    seen = []
    monkeypatch.setattr(mcp.jsonline, "call", lambda path, verb, timeout, **args: seen.append(verb) or ok(id=1))
    read_fd, write_fd = os.pipe()
    send = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "send", "arguments": {"to": "operator", "body": "pong"}}}
    try:
        for parent in (os.getpid() + 10 ** 6, os.getppid()):  # a parent we do not have, then ours
            mcp.Server("agent", "/x.sock", write_fd, parent=parent).serve([json.dumps(send).encode()])
    finally:
        os.close(write_fd)
        os.close(read_fd)
    assert seen == ["send"]  # only the server whose claude lives sent it


def test_no_socket_is_a_usage_error(sockdir):
    client = McpClient(None)
    try:
        assert client.wait() == 2
        assert b"HIVE_SOCKET" in client.stderr.rest()
    finally:
        client.kill()


def test_bad_argv_is_a_usage_error(core):
    client = McpClient(core.path, extra_args=["--bogus"])
    try:
        assert client.wait() == 2
        assert b"Usage:" in client.stderr.rest()
    finally:
        client.kill()


def test_cold_start_imports_only_the_light_modules():
    # a whole run (start, serve, EOF), then the list of every module it loaded
    probe = ("import json, sys; from hyperhive.harness import mcp; "
             "rc = mcp.main(['agent', 'mcp', '--socket', '/nowhere.sock']); "
             "print(json.dumps(sorted(sys.modules)), file=sys.stderr); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, stdin=subprocess.DEVNULL,
                         capture_output=True, check=True, timeout=WAIT)
    loaded = json.loads(run.stderr)
    ours = {m for m in loaded if m.split(".")[0] == "hyperhive"}
    assert ours == {"hyperhive", "hyperhive.wire", "hyperhive.verbs", "hyperhive.jsonline", "hyperhive.harness",
                    "hyperhive.harness.mcp", "hyperhive.harness.tools"}
    third_party = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names) - {"hyperhive"}
    # site may load setuptools' distutils hack from a .pth file: the venv's doing, not ours
    assert third_party - {"_distutils_hack", "__main__"} == {"docopt"}

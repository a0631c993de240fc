"""The fake claude CLI, driving the real MCP server against a fake core."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fakecore import MCP_CMD, WAIT, FakeCore, LineReader, ok, refuse, remove_tree, short_tmpdir, wait_until

FAKECLAUDE = Path(__file__).resolve().parent / "fakeclaude.py"
ALL_TOOLS = "mcp__hyperhive__send,mcp__hyperhive__recv,mcp__hyperhive__whoami"


@pytest.fixture
def hive():
    root = short_tmpdir()
    core = FakeCore(root / "agent.sock")
    state = root / "state"
    state.mkdir()
    config = root / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"hyperhive": {
        "command": MCP_CMD[0], "args": MCP_CMD[1:] + ["agent", "mcp"],
        "env": {"HIVE_SOCKET": core.path}}}}))
    yield core, state, config
    core.stop()
    remove_tree(root)


def argv(config, prompt, allowed=ALL_TOOLS, cont=False, model="claude-test-1"):
    return [sys.executable, str(FAKECLAUDE), "--print", "--output-format", "stream-json", "--verbose",
            "--model", model, "--mcp-config", str(config), f"--allowedTools={allowed}",
            "--settings", "/nonexistent/settings.json", "--append-system-prompt", "you are a test",
            *(["--continue"] if cont else []), "--", prompt]


def fake_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    env.update({"HIVE_AGENT": "alice", "MCP_CONNECTION_NONBLOCKING": "0"}, **extra)
    return env


def run(state, args, env=None):
    done = subprocess.run(args, cwd=state, env=env or fake_env(), capture_output=True, timeout=WAIT * 3)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return done.returncode, lines, done.stderr.decode()


def turn(hive, prompt, **kw):
    core, state, config = hive
    return run(state, argv(config, prompt, **kw))


def calls(state):
    return [json.loads(line) for line in (state / ".fakeclaude" / "calls.jsonl").read_text().splitlines()]


def tool_results(lines):
    return [block for line in lines if line["type"] == "user"
            for block in line["message"]["content"] if block["type"] == "tool_result"]


def tool_uses(lines):
    return [block for line in lines if line["type"] == "assistant"
            for block in line["message"]["content"] if block["type"] == "tool_use"]


def result_texts(lines):
    return [r["content"][0]["text"] if isinstance(r["content"], list) else r["content"]
            for r in tool_results(lines)]


# -- auth --------------------------------------------------------------------------------------

def test_auth_status_logged_in():
    done = subprocess.run([sys.executable, str(FAKECLAUDE), "auth", "status"], capture_output=True,
                          env=dict(os.environ, ANTHROPIC_API_KEY="sk-test"), timeout=WAIT)
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"loggedIn": True, "authMethod": "api_key", "apiProvider": "firstParty"}


def test_auth_status_logged_out():
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    done = subprocess.run([sys.executable, str(FAKECLAUDE), "auth", "status"], capture_output=True,
                          env=env, timeout=WAIT)
    assert done.returncode == 1
    assert json.loads(done.stdout)["loggedIn"] is False


# -- turns ---------------------------------------------------------------------------------------

def test_plain_prompt_is_a_text_reply(hive):
    core, state, config = hive
    rc, lines, stderr = turn(hive, "hello there")
    assert rc == 0, stderr
    assert [line["type"] for line in lines] == ["system", "assistant", "result"]
    init, reply, result = lines
    assert init["subtype"] == "init" and init["model"] == "claude-test-1"
    assert init["mcp_servers"] == [{"name": "hyperhive", "status": "connected"}]
    assert set(ALL_TOOLS.split(",")) <= set(init["tools"])
    assert reply["message"]["content"][0]["type"] == "text"
    assert reply["message"]["model"] == "claude-test-1"
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["session_id"] == init["session_id"]
    assert set(result["usage"]) == {"input_tokens", "output_tokens", "cache_read_input_tokens",
                                    "cache_creation_input_tokens"}
    assert result["num_turns"] == 1 and result["total_cost_usd"] == 0
    assert core.requests == []
    # the MCP server took its SIGINT quietly
    assert (state / ".fakeclaude" / "mcp-stderr.log").read_text() == ""


def test_send_goes_through_the_mcp_server_to_the_core(hive):
    core, state, config = hive
    core.answers["send"] = ok(id=17)
    rc, lines, stderr = turn(hive, "Wake up.\nFAKE: send bob hello there, bob\nThanks.")
    assert rc == 0, stderr
    assert [line["type"] for line in lines] == ["system", "assistant", "user", "assistant", "result"]
    use, = tool_uses(lines)
    assert (use["name"], use["input"]) == ("mcp__hyperhive__send", {"to": "bob", "body": "hello there, bob"})
    res, = tool_results(lines)
    assert res["tool_use_id"] == use["id"] and res["is_error"] is False
    assert res["content"] == [{"type": "text", "text": "sent to bob (message id 17)"}]
    assert core.raw == [b'{"cmd":"send","to":"bob","body":"hello there, bob"}\n']
    assert lines[-1]["num_turns"] == 2


def test_recv_and_whoami_in_prompt_order(hive):
    core, state, config = hive
    core.answers["recv"] = ok(messages=[{"id": 1, "from": "operator", "body": "hi", "redelivered": True,
                                          "sent_at": "2025-01-01T00:00:00Z", "file_refs": []}])
    rc, lines, stderr = turn(hive, "FAKE: whoami\n  FAKE: recv 4 0\nFAKE: recv\nFAKE: say all done")
    assert rc == 0, stderr
    assert [u["name"] for u in tool_uses(lines)] == ["mcp__hyperhive__whoami", "mcp__hyperhive__recv",
                                                     "mcp__hyperhive__recv"]
    # an argument the call left out is the core's to default: only what was given goes on
    assert core.requests == [{"cmd": "whoami"}, {"cmd": "recv", "max": 4, "wait_seconds": 0}, {"cmd": "recv"}]
    texts = result_texts(lines)
    assert texts[0] == "name: alice\nrole: agent\nhyperhive_rev: 0123456789ab"
    assert texts[1].startswith("[redelivered: a turn that had this message did not finish")
    assert lines[-1]["result"] == "all done"


def test_generic_call_directive(hive):
    core, state, config = hive
    rc, lines, stderr = turn(hive, 'FAKE: call recv {"max": 99}')
    assert rc == 0, stderr
    res, = tool_results(lines)
    assert res["is_error"] is True and res["content"].startswith("MCP error -32602:")
    assert core.requests == []


def test_tool_not_granted_is_refused(hive):
    core, state, config = hive
    rc, lines, stderr = turn(hive, "FAKE: whoami\nFAKE: send bob hi", allowed="mcp__hyperhive__send")
    assert rc == 0, stderr
    denied, sent = tool_results(lines)
    assert denied["is_error"] is True
    assert denied["content"] == ("Claude requested permissions to use mcp__hyperhive__whoami, "
                                 "but you haven't granted it yet.")
    assert sent["is_error"] is False
    assert core.requests == [{"cmd": "send", "to": "bob", "body": "hi"}]
    assert [d["tool_name"] for d in lines[-1]["permission_denials"]] == ["mcp__hyperhive__whoami"]


def test_server_wide_grant(hive):
    rc, lines, stderr = turn(hive, "FAKE: whoami", allowed="mcp__hyperhive")
    assert tool_results(lines)[0]["is_error"] is False


def test_core_refusal_reaches_the_model(hive):
    core, state, config = hive
    core.answers["send"] = refuse("there is no agent named 'bobb'", "not_found")
    rc, lines, stderr = turn(hive, "FAKE: send bobb hi")
    assert rc == 0
    res, = tool_results(lines)
    assert res["is_error"] is True and res["content"][0]["text"] == "there is no agent named 'bobb'"


def test_a_task_runs_a_sub_agent_framed_as_the_real_cli_prints_it(hive):
    """The shapes claude 2.1.197 prints for a foreground Agent (Task) call: read from its bundled
    source (its `task_started` / `task_progress` / `task_notification` system lines, and a sub-agent's
    assistant/user lines with `parent_tool_use_id`, `subagent_type`, `task_description`)."""
    core, state, config = hive
    rc, lines, stderr = turn(hive, "FAKE: task Explore look around\nFAKE: whoami\nFAKE: say found it\n"
                             "FAKE: task-end\nFAKE: say main done", allowed=ALL_TOOLS + ",Task")
    assert rc == 0, stderr
    assert [(line["type"], line.get("subtype")) for line in lines] == [
        ("system", "init"), ("assistant", None), ("system", "task_started"), ("assistant", None),
        ("system", "task_progress"), ("user", None), ("assistant", None), ("system", "task_notification"),
        ("user", None), ("assistant", None), ("result", "success")]
    call, started, sub_use, progress, sub_result, sub_say, done, result = lines[1:9]
    [agent] = call["message"]["content"]
    assert (agent["type"], agent["name"]) == ("tool_use", "Agent")
    assert agent["input"] == {"description": "look around", "prompt": "look around (the sub-agent's prompt)",
                              "subagent_type": "Explore"}
    assert call["parent_tool_use_id"] is None and "Agent" in lines[0]["tools"]
    assert set(started) == {"type", "subtype", "task_id", "tool_use_id", "description", "subagent_type",
                            "task_type", "prompt", "uuid", "session_id"}
    assert (started["tool_use_id"], started["description"], started["subagent_type"], started["task_type"]) == \
        (agent["id"], "look around", "Explore", "local_agent")
    for sub in (sub_use, sub_result, sub_say):
        assert sub["parent_tool_use_id"] == agent["id"]
        assert (sub["subagent_type"], sub["task_description"]) == ("Explore", "look around")
    assert sub_use["message"]["content"][0]["name"] == "mcp__hyperhive__whoami"
    assert sub_result["message"]["content"][0]["tool_use_id"] == sub_use["message"]["content"][0]["id"]
    assert sub_say["message"]["content"] == [{"type": "text", "text": "found it"}]
    assert (progress["tool_use_id"], progress["last_tool_name"]) == (agent["id"], "mcp__hyperhive__whoami")
    assert set(done) == {"type", "subtype", "task_id", "tool_use_id", "status", "output_file", "summary", "usage",
                         "uuid", "session_id"}
    assert (done["task_id"], done["tool_use_id"], done["status"], done["summary"]) == \
        (started["task_id"], agent["id"], "completed", "look around")
    assert set(done["usage"]) == {"total_tokens", "tool_uses", "duration_ms"} and done["usage"]["tool_uses"] == 1
    assert result["parent_tool_use_id"] is None
    assert result["message"]["content"][0] == {"type": "tool_result", "tool_use_id": agent["id"],
                                               "content": [{"type": "text", "text": "found it"}], "is_error": False}
    assert lines[-2]["message"]["content"][0]["text"] == "main done" and lines[-2]["parent_tool_use_id"] is None
    assert core.requests == [{"cmd": "whoami"}]


def test_a_task_left_open_is_completed_and_one_not_granted_is_refused(hive):
    rc, lines, stderr = turn(hive, "FAKE: task general-purpose tidy up", allowed=ALL_TOOLS + ",Task")
    assert rc == 0, stderr
    assert [line.get("subtype") for line in lines if line["type"] == "system"] == [
        "init", "task_started", "task_notification"]
    rc, lines, stderr = turn(hive, "FAKE: task Explore look around\nFAKE: whoami")
    assert rc == 0, stderr
    refused = tool_results(lines)[0]
    assert refused["is_error"] is True and "permissions to use Agent" in refused["content"]
    assert not [line for line in lines if line.get("subtype") == "task_started" or line.get("parent_tool_use_id")]


def test_broken_mcp_config_means_no_tools(hive):
    core, state, config = hive
    config.write_text(json.dumps({"mcpServers": {"hyperhive": {"command": "/nonexistent/mcp"}}}))
    rc, lines, stderr = turn(hive, "FAKE: whoami")
    assert rc == 0
    assert lines[0]["mcp_servers"] == [{"name": "hyperhive", "status": "failed"}]
    assert "No such tool available: mcp__hyperhive__whoami" in tool_results(lines)[0]["content"]


def test_missing_mcp_config_is_an_error(hive):
    core, state, config = hive
    config.unlink()
    rc, lines, stderr = turn(hive, "hi")
    assert rc == 1 and "Invalid MCP configuration" in stderr and lines == []


def test_fail(hive):
    rc, lines, stderr = turn(hive, "FAKE: fail")
    assert rc == 1
    assert lines[-1]["type"] == "result"
    assert (lines[-1]["subtype"], lines[-1]["is_error"]) == ("error_during_execution", True)


def test_fail_once_fails_the_first_time_and_done_records_only_good_turns(hive):
    _, state, _ = hive
    assert turn(hive, "FAKE: fail-once k1\ntoken one")[0] == 1
    assert turn(hive, "FAKE: fail-once k1\ntoken one")[0] == 0  # the key was seen
    assert turn(hive, "FAKE: fail-once k2\ntoken two")[0] == 1  # another key fails once too
    done = [json.loads(line) for line in (state / ".fakeclaude" / "done.jsonl").read_text().splitlines()]
    assert [d["prompt"] for d in done] == ["FAKE: fail-once k1\ntoken one"]
    assert len(calls(state)) == 3


def test_unknown_directive_fails_the_turn(hive):
    rc, lines, stderr = turn(hive, "FAKE: dance")
    assert rc == 1 and "unknown directive" in lines[-1]["result"]


def test_stderr_directive(hive):
    rc, lines, stderr = turn(hive, "FAKE: stderr something odd happened")
    assert rc == 0 and "something odd happened\n" in stderr


def test_too_long_then_compact_then_retry(hive):
    core, state, config = hive
    rc, lines, _ = turn(hive, "FAKE: too-long")
    assert rc == 1
    assert lines[-1]["is_error"] is True and lines[-1]["result"] == "Prompt is too long"
    rc, lines, _ = turn(hive, "/compact", cont=True)
    assert rc == 0 and lines[-1]["is_error"] is False
    assert any(line.get("subtype") == "compact_boundary" for line in lines)
    assert (state / ".fakeclaude" / "compacted").exists()
    rc, lines, _ = turn(hive, "FAKE: too-long", cont=True)
    assert rc == 0 and lines[-1]["is_error"] is False
    rc, lines, _ = turn(hive, "FAKE: too-long", cont=True)  # the room compaction bought is used up
    assert rc == 1
    assert [c["prompt"] for c in calls(state)] == ["FAKE: too-long", "/compact", "FAKE: too-long",
                                                   "FAKE: too-long"]


def test_continue_keeps_the_session(hive):
    core, state, config = hive
    first = turn(hive, "one")[1][0]["session_id"]
    assert turn(hive, "two", cont=True)[1][0]["session_id"] == first
    assert turn(hive, "three")[1][0]["session_id"] != first


def test_calls_log(hive):
    core, state, config = hive
    turn(hive, "FAKE: whoami", cont=True, model="claude-other")
    record, = calls(state)
    assert record["prompt"] == "FAKE: whoami"
    assert record["model"] == "claude-other"
    assert record["continue"] is True
    assert record["allowed_tools"] == [ALL_TOOLS]
    assert record["mcp_config"] == [str(config)]
    assert record["append_system_prompt"] == "you are a test"
    assert record["settings"] == "/nonexistent/settings.json"
    assert record["env"] == {"HIVE_AGENT": "alice", "MCP_CONNECTION_NONBLOCKING": "0"}
    assert record["argv"][-2:] == ["--", "FAKE: whoami"]
    assert record["cwd"] == str(state)


def test_prompt_swallowed_by_a_variadic_flag(hive):
    core, state, config = hive
    args = [sys.executable, str(FAKECLAUDE), "--print", "--output-format", "stream-json", "--verbose",
            "--allowedTools", "mcp__hyperhive__send", "hello"]
    rc, lines, stderr = run(state, args)
    assert rc == 1 and "Input must be provided" in stderr


def test_stream_json_needs_verbose(hive):
    core, state, config = hive
    rc, lines, stderr = run(state, [sys.executable, str(FAKECLAUDE), "--print", "--output-format",
                                    "stream-json", "--", "hi"])
    assert rc == 1 and "requires --verbose" in stderr


def test_unknown_flags_are_tolerated(hive):
    core, state, config = hive
    args = argv(config, "hi")
    args[2:2] = ["--strict-mcp-config", "--permission-mode=default", "--include-partial-messages"]
    rc, lines, stderr = run(state, args)
    assert rc == 0, stderr
    assert lines[-1]["subtype"] == "success"


def _children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _gone(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killed_mid_turn_leaves_no_mcp_server(hive, signum):
    core, state, config = hive
    proc = subprocess.Popen(argv(config, "FAKE: send bob first\nFAKE: sleep 60\nFAKE: send bob never"),
                            cwd=state, env=fake_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = LineReader(proc.stdout)
    try:
        assert json.loads(out.read())["subtype"] == "init"
        core.wait_requests(1)
        mcp_pids = _children(proc.pid)
        assert len(mcp_pids) == 1
        proc.send_signal(signum)
        assert proc.wait(WAIT) == (128 + signum if signum == signal.SIGTERM else -signum)
        # SIGTERM: the fake interrupts its server; SIGKILL: the server sees stdin's EOF
        wait_until(lambda: _gone(mcp_pids[0]), what="the MCP server exiting")
        assert core.requests == [{"cmd": "send", "to": "bob", "body": "first"}]
        assert (state / ".fakeclaude" / "mcp-stderr.log").read_text() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        proc.stdout.close()
        proc.stderr.close()


def test_lazy_mcp_starts_the_server_only_for_a_turn_that_uses_a_tool(hive):
    core, state, config = hive
    rc, lines, _ = run(state, argv(config, "plain"), fake_env(FAKE_CLAUDE_MCP="lazy"))
    assert rc == 0 and lines[0]["mcp_servers"] == [{"name": "hyperhive", "status": "pending"}]
    assert core.requests == []  # no server, so nothing reached the core
    rc, lines, _ = run(state, argv(config, "FAKE: whoami"), fake_env(FAKE_CLAUDE_MCP="lazy"))
    assert rc == 0 and [r["cmd"] for r in core.requests] == ["whoami"]

"""Proves tests/mockapi.py against itself and against the real Claude Code CLI.

The first tests talk HTTP to the mock directly and always run. The rest run
the pinned CLI (``HIVE_TEST_CLAUDE``, else ``tests/node/node_modules/.bin/claude``
from ``npm ci --prefix tests/node``) fully offline against the mock, with a
throwaway stdio MCP server providing ``mcp__hyperhive__echo``; they skip when
no CLI is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from mockapi import (
    MockAnthropic,
    has_tool,
    is_compact_request,
    is_side_request,
    last_user_text,
    prompt_too_long,
    text,
    tool_result_text,
    tool_results,
    tool_use,
)

ECHO = "mcp__hyperhive__echo"
CLI_TIMEOUT = 60  # seconds; a turn takes about one


# --- the mock on its own ------------------------------------------------------


def post(base_url: str, path: str, body: dict | bytes) -> tuple[int, str, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def sse_events(payload: bytes) -> list[tuple[str, dict]]:
    events = []
    for chunk in payload.decode().strip().split("\n\n"):
        event_line, data_line = chunk.split("\n")
        events.append((event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return events


MAIN = {"model": "m", "max_tokens": 10, "tools": [{"name": "t", "input_schema": {}}],
        "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


def test_streamed_tool_use_has_the_full_event_sequence():
    with MockAnthropic(lambda r: tool_use("t", {"a": [1, 2]}, text_before="let me")) as mock:
        status, ctype, payload = post(mock.base_url, "/v1/messages?beta=true", {**MAIN, "stream": True})
    assert (status, ctype) == (200, "text/event-stream")
    events = sse_events(payload)
    assert [e for e, _ in events if e != "content_block_delta"] == [
        "message_start", "ping",
        "content_block_start", "content_block_stop",
        "content_block_start", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert all(e == d["type"] for e, d in events)
    deltas = [d["delta"] for e, d in events if e == "content_block_delta"]
    assert "".join(d["text"] for d in deltas if d["type"] == "text_delta") == "let me"
    assert json.loads("".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")) == {
        "a": [1, 2]
    }
    starts = [d["content_block"] for e, d in events if e == "content_block_start"]
    assert starts[1]["type"] == "tool_use" and starts[1]["id"].startswith("toolu_")
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "tool_use"
    assert set(final["usage"]) >= {
        "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"
    }  # fmt: skip
    assert mock.requests == [{**MAIN, "stream": True}]


def test_plain_json_reply_and_prompt_caching_usage():
    with MockAnthropic(lambda r: text("hello")) as mock:
        first = json.loads(post(mock.base_url, "/v1/messages", MAIN)[2])
        second = json.loads(post(mock.base_url, "/v1/messages", MAIN)[2])
    assert first["content"] == [{"type": "text", "text": "hello"}]
    assert first["stop_reason"] == "end_turn"
    # The same system+tools prefix is written to the cache once, then read from it.
    assert first["usage"]["cache_creation_input_tokens"] > 0 == first["usage"]["cache_read_input_tokens"]
    assert second["usage"]["cache_read_input_tokens"] == first["usage"]["cache_creation_input_tokens"]


def test_side_requests_go_to_the_brain_only_when_asked():
    compact = {**MAIN, "messages": [{"role": "user", "content": "Please create a detailed summary of the "
                                     "conversation so far."}]}  # fmt: skip
    with MockAnthropic(lambda r: text("brain")) as mock:
        untooled = json.loads(post(mock.base_url, "/v1/messages", {**MAIN, "tools": []})[2])
        summary = json.loads(post(mock.base_url, "/v1/messages", compact)[2])
    assert untooled["content"] == [{"type": "text", "text": "OK"}]
    assert summary["content"][0]["text"].startswith("<summary>")
    with MockAnthropic(lambda r: text("brain"), side_requests_to_brain=True) as mock:
        untooled = json.loads(post(mock.base_url, "/v1/messages", {**MAIN, "tools": []})[2])
    assert untooled["content"] == [{"type": "text", "text": "brain"}]


def test_unknown_routes_bad_bodies_and_brain_failures_are_recorded():
    def brain(request):
        raise RuntimeError("boom")

    with MockAnthropic(brain) as mock:
        status, _, failed = post(mock.base_url, "/v1/messages", MAIN)
        missing = post(mock.base_url, "/v1/nope", {})
        garbled = post(mock.base_url, "/v1/messages", b"not json")
        count = json.loads(post(mock.base_url, "/v1/messages/count_tokens", MAIN)[2])
        with urllib.request.urlopen(urllib.request.Request(mock.base_url + "/", method="HEAD")) as warmup:
            assert warmup.status == 200
    assert status == 400 and "boom" in json.loads(failed)["error"]["message"]
    assert "RuntimeError: boom" in mock.brain_errors[0]
    assert missing[0] == 404 and json.loads(missing[2])["type"] == "error"
    assert garbled[0] == 400
    assert mock.unknown == [("POST", "/v1/nope"), ("POST", "/v1/messages")]
    assert count["input_tokens"] > 0


# --- the real CLI against the mock ----------------------------------------------


def find_claude() -> str | None:
    candidates = [os.environ.get("HIVE_TEST_CLAUDE"), Path(__file__).parent / "node/node_modules/.bin/claude"]
    return next((str(c) for c in candidates if c and os.access(c, os.X_OK)), None)


CLAUDE = find_claude()
needs_claude = pytest.mark.skipif(
    CLAUDE is None,
    reason="no Claude Code CLI: set HIVE_TEST_CLAUDE or run `npm ci --prefix tests/node`",
)

# Newline-delimited JSON-RPC 2.0 over stdio, logging what it receives.
MCP_SERVER = r"""
import json, signal, sys

log_path = sys.argv[1]

def log(entry):
    with open(log_path, "a") as f:
        f.write(json.dumps(entry) + "\n")

def on_sigint(signum, frame):
    log({"signal": "SIGINT"})
    sys.exit(0)

signal.signal(signal.SIGINT, on_sigint)

ECHO = {"name": "echo", "description": "Echo the text back.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                        "required": ["text"]}}

def result(msg):
    method = msg["method"]
    if method == "initialize":
        return {"protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}}, "serverInfo": {"name": "echo", "version": "0"}}
    if method == "tools/list":
        return {"tools": [ECHO]}
    if method == "tools/call":
        return {"content": [{"type": "text", "text": "echo: " + msg["params"]["arguments"]["text"]}]}
    if method == "ping":
        return {}
    return None

for line in sys.stdin:
    msg = json.loads(line)
    log(msg)
    if "id" not in msg:
        continue  # a notification
    answer = result(msg)
    reply = ({"jsonrpc": "2.0", "id": msg["id"], "result": answer} if answer is not None else
             {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32601, "message": "no such method"}})
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
log({"eof": True})
"""


@dataclass
class Turn:
    returncode: int
    lines: list[dict]
    stderr: str

    @property
    def result(self) -> dict:
        assert self.lines and self.lines[-1]["type"] == "result", self.stderr
        return self.lines[-1]


class Agent:
    """One agent's state: HOME, cwd and MCP config, reused across turns."""

    def __init__(self, root: Path, base_url: str):
        self.home, self.cwd = root / "home", root / "cwd"
        self.home.mkdir()
        self.cwd.mkdir()
        server = root / "mcp_server.py"
        server.write_text(MCP_SERVER)
        self.mcp_log = root / "mcp.log"
        self.mcp_config = root / "mcp.json"
        hyperhive = {"command": sys.executable, "args": [str(server), str(self.mcp_log)]}
        self.mcp_config.write_text(json.dumps({"mcpServers": {"hyperhive": hyperhive}}))
        # Built from scratch so nothing of the caller's (API keys, a parent
        # Claude Code's variables) leaks in.
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": "sk-ant-test-not-a-real-key",
            "MCP_CONNECTION_NONBLOCKING": "0",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }

    def run(self, prompt: str, *flags: str) -> Turn:
        argv = [CLAUDE, "--print", "--output-format", "stream-json", "--verbose", "--model", "haiku",
                "--mcp-config", self.mcp_config, f"--allowedTools={ECHO}", *flags, "--", prompt]  # fmt: skip
        done = subprocess.run(
            argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=CLI_TIMEOUT,
        )  # fmt: skip
        return Turn(done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr)

    def mcp_messages(self) -> list[dict]:
        return [json.loads(line) for line in self.mcp_log.read_text().splitlines()]


@pytest.fixture
def agent_with(tmp_path):
    mocks = []

    def make(brain) -> tuple[Agent, MockAnthropic]:
        mock = MockAnthropic(brain)
        mocks.append(mock)
        return Agent(tmp_path, mock.start()), mock

    yield make
    for mock in mocks:
        mock.stop()
        assert mock.unknown == [] and mock.brain_errors == []


def echo_brain(request):
    if results := tool_results(request):
        return text("the tool said " + tool_result_text(results[0]))
    return tool_use(ECHO, {"text": last_user_text(request)}, text_before="Echoing.")


@needs_claude
def test_cli_calls_the_mcp_tool_and_gets_its_result(agent_with):
    agent, mock = agent_with(echo_brain)
    turn = agent.run("ping the hive")

    assert turn.returncode == 0, turn.stderr
    first, second = mock.requests
    assert has_tool(first, ECHO) and not is_side_request(first)
    assert last_user_text(first) == "ping the hive"
    calls = [m for m in agent.mcp_messages() if m.get("method") == "tools/call"]
    assert [c["params"]["arguments"] for c in calls] == [{"text": "ping the hive"}]
    assert agent.mcp_messages()[-1] == {"signal": "SIGINT"}  # how the CLI stops its MCP servers
    [result_block] = tool_results(second)
    assert tool_result_text(result_block) == "echo: ping the hive"
    tool_use_id = second["messages"][-2]["content"][-1]["id"]
    assert result_block["tool_use_id"] == tool_use_id

    assert [(line["type"], line.get("subtype")) for line in turn.lines] == [
        ("system", "init"),
        ("assistant", None),  # the text block
        ("assistant", None),  # the tool_use block
        ("user", None),  # the tool_result
        ("assistant", None),
        ("result", "success"),
    ]
    assert turn.lines[0]["mcp_servers"] == [{"name": "hyperhive", "status": "connected"}]
    assert turn.result["is_error"] is False
    assert turn.result["result"] == "the tool said echo: ping the hive"
    assert turn.result["usage"]["input_tokens"] > 0 and turn.result["usage"]["output_tokens"] > 0


@needs_claude
def test_continue_resumes_the_conversation(agent_with):
    agent, mock = agent_with(lambda r: text("noted: " + last_user_text(r)))
    first = agent.run("remember alpha")
    second = agent.run("what did I say?", "--continue")

    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert second.result["session_id"] == first.result["session_id"]
    resumed = mock.requests[-1]
    assert last_user_text(resumed) == "what did I say?"
    history = json.dumps(resumed["messages"])
    assert "remember alpha" in history and "noted: remember alpha" in history
    assert second.result["result"] == "noted: what did I say?"


def assert_prompt_too_long(turn: Turn, text: str) -> None:
    # What the harness sees: exit 1, and a result line whose subtype still says success.
    assert turn.returncode == 1
    assert turn.result["subtype"] == "success"
    assert turn.result["is_error"] is True
    assert turn.result["api_error_status"] == 400
    assert turn.result["terminal_reason"] == "prompt_too_long"
    assert turn.result["result"] == text


@needs_claude
def test_prompt_too_long_on_a_fresh_conversation(agent_with):
    agent, mock = agent_with(lambda r: prompt_too_long())
    turn = agent.run("hello")

    assert len(mock.requests) == 1  # nothing to compact, so no retry
    said = turn.result["result"]
    assert said.startswith("Prompt is too long · the request is ~250000 tokens (limit 200000)")
    assert_prompt_too_long(turn, said)


@needs_claude
def test_prompt_too_long_mid_conversation_compacts_once_then_fails(agent_with):
    def brain(request):
        if "second" in last_user_text(request):
            return prompt_too_long()
        return echo_brain(request)

    agent, mock = agent_with(brain)
    # With fewer API round trips than this the CLI finds nothing to compact
    # ("compact_error": "too_few_groups") and fails at once without a request.
    assert agent.run("first").returncode == 0
    turn = agent.run("second", "--continue")

    # The CLI compacts by itself (a summary request, answered by the mock),
    # retries once on the compacted history, and gives up.
    kinds = ["compact" if is_compact_request(r) else last_user_text(r) for r in mock.requests]
    assert kinds == ["first", "echo: first", "second", "compact", "second"]
    lines = [(line["type"], line.get("subtype"), line.get("status")) for line in turn.lines]
    assert ("system", "status", "compacting") in lines and ("system", "compact_boundary", None) in lines
    assert_prompt_too_long(turn, "Prompt is too long")

"""A local stand-in for the Anthropic Messages API, for end-to-end tests.

Owns: an HTTP server that the real Claude Code CLI talks to through
``ANTHROPIC_BASE_URL``, so a test can script what "the model" says. A test
supplies a *brain*, ``brain(request: dict) -> Reply``, called once for every
``POST /v1/messages``; the server turns the Reply into either a streamed (SSE)
or a plain JSON Messages response, with usage and tool_use ids filled in.

Side requests -- calls without a ``tools`` list (titles, topic checks; the
agent conversation always carries tools) and the CLI's own compaction
requests -- get a canned text unless ``side_requests_to_brain`` is set.
``accept_key(key)`` decides which keys (``x-api-key``, or a bearer token)
the API takes: a refused one gets the real API's 401 on every route,
``GET /v1/models`` included (the free call a harness checks a key with).
Anything not understood is answered 404 with an Anthropic-shaped error,
printed to stderr and recorded in ``unknown``. Stdlib only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

# The CLI's compaction prompt asks for this; it arrives with the full tool list.
COMPACT_MARKER = "create a detailed summary of the conversation"
REMINDER_PREFIX = "<system-reminder>"


@dataclass
class Reply:
    """What the assistant says: content blocks, or an API error."""

    content: list[dict] = field(default_factory=list)
    error: tuple[int, str, str] | None = None  # (http status, error type, message)
    usage: dict | None = None  # overrides the estimated usage, key by key

    @property
    def stop_reason(self) -> str:
        uses_tool = any(b["type"] == "tool_use" for b in self.content)
        return "tool_use" if uses_tool else "end_turn"


Brain = Callable[[dict], Reply]


def text(s: str) -> Reply:
    return Reply(content=[{"type": "text", "text": s}])


def tool_use(name: str, input: dict, text_before: str | None = None) -> Reply:
    # The id is assigned when the reply is served, so one Reply may be reused.
    blocks = [{"type": "text", "text": text_before}] if text_before else []
    blocks.append({"type": "tool_use", "name": name, "input": input})
    return Reply(content=blocks)


def api_error(status: int, error_type: str, message: str) -> Reply:
    return Reply(error=(status, error_type, message))


def prompt_too_long(tokens: int = 250000, maximum: int = 200000) -> Reply:
    return api_error(
        400, "invalid_request_error", f"prompt is too long: {tokens} tokens > {maximum} maximum"
    )


# --- helpers for brains -------------------------------------------------------


def is_compact_request(request: dict) -> bool:
    """True for the summary request the CLI sends when it compacts the conversation."""
    return COMPACT_MARKER in last_user_text(request)


def is_side_request(request: dict) -> bool:
    """True for the CLI's auxiliary calls, as opposed to the agent's own turns."""
    return not request.get("tools") or is_compact_request(request)


def side_reply(request: dict) -> Reply:
    """What MockAnthropic says to a side request when the brain has not opted in."""
    if is_compact_request(request):
        return text("<summary>Mock summary of the conversation so far.</summary>")
    return text("OK")


def has_tool(request: dict, name: str) -> bool:
    return any(t.get("name") == name for t in request.get("tools") or [])


def _last_user_blocks(request: dict) -> list[dict]:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            return [{"type": "text", "text": content}] if isinstance(content, str) else content
    return []


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(_block_text(b.get("text", b.get("content", ""))) for b in content or [])


def tool_results(request: dict) -> list[dict]:
    """The tool_result blocks of the last user turn, as sent (content may be str or blocks)."""
    return [b for b in _last_user_blocks(request) if b.get("type") == "tool_result"]


def tool_result_text(block: dict) -> str:
    return _block_text(block.get("content"))


def last_user_text(request: dict, *, reminders: bool = False) -> str:
    """All text of the last user turn, tool_result contents included, one block per line.

    The CLI prepends ``<system-reminder>`` blocks (agent list, skills, date) to
    the prompt; they are left out unless ``reminders`` is set, so a brain can
    compare against the prompt it expects.
    """
    parts = []
    for block in _last_user_blocks(request):
        if block.get("type") == "text":
            if reminders or not block["text"].lstrip().startswith(REMINDER_PREFIX):
                parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(tool_result_text(block))
    return "\n".join(parts)


# --- the server ---------------------------------------------------------------


def _estimate_tokens(obj: Any) -> int:
    # About four characters per token, like English prose; never zero.
    return max(1, len(json.dumps(obj, separators=(",", ":"))) // 4)


def _chunks(s: str, n: int = 3) -> list[str]:
    # Several deltas per block, so the client's delta assembly is exercised.
    size = max(1, -(-len(s) // n))
    return [s[i : i + size] for i in range(0, len(s), size)] or [""]


class MockAnthropic:
    def __init__(self, brain: Brain, *, side_requests_to_brain: bool = False):
        self.brain = brain
        self.side_requests_to_brain = side_requests_to_brain
        self.requests: list[dict] = []
        self.refused: list[tuple[str, dict | None]] = []  # (route, JSON body) of every request whose key was refused
        self.model_checks = 0  # GET /v1/models answered
        self.accept_key: Callable[[str | None], bool] = lambda key: True
        self.unknown: list[tuple[str, str]] = []
        self.brain_errors: list[str] = []  # tracebacks of brains that raised
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._cached_prefixes: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"mock": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> MockAnthropic:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # Called from handler threads.

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            n = next(self._ids)
        return f"{prefix}_mock{n:08d}"

    def _record(self, request: dict) -> None:
        with self._lock:
            self.requests.append(request)

    def _record_unknown(self, method: str, path: str, why: str) -> None:
        with self._lock:
            self.unknown.append((method, path))
        print(f"mockapi: {why}: {method} {path}", file=sys.stderr, flush=True)

    def _answer(self, request: dict) -> Reply:
        if is_side_request(request) and not self.side_requests_to_brain:
            return side_reply(request)
        try:
            reply = self.brain(request)
            if not isinstance(reply, Reply):
                raise TypeError(f"brain returned {type(reply).__name__}, not Reply")
            return reply
        except Exception:
            tb = traceback.format_exc()
            with self._lock:
                self.brain_errors.append(tb)
            print(f"mockapi: brain raised\n{tb}", file=sys.stderr, flush=True)
            # 400, not 500: the CLI retries 5xx with backoff, which would bury the bug.
            return api_error(400, "invalid_request_error", "mock brain raised: " + tb.splitlines()[-1])

    def _usage(self, request: dict, reply: Reply) -> dict:
        # Shaped like the real API with prompt caching: system+tools are written
        # to the cache the first time they are seen and read from it afterwards.
        prefix = {"system": request.get("system"), "tools": request.get("tools")}
        prefix_tokens = _estimate_tokens(prefix)
        key = hashlib.sha256(json.dumps(prefix, sort_keys=True).encode()).hexdigest()
        with self._lock:
            seen = key in self._cached_prefixes
            self._cached_prefixes.add(key)
        usage = {
            "input_tokens": _estimate_tokens(request.get("messages") or []),
            "cache_creation_input_tokens": 0 if seen else prefix_tokens,
            "cache_read_input_tokens": prefix_tokens if seen else 0,
            "output_tokens": _estimate_tokens(reply.content),
        }
        usage.update(reply.usage or {})
        return usage

    def respond(self, request: dict) -> tuple[int, dict | list[bytes]]:
        """Status and either a JSON body or the SSE events for one /v1/messages request."""
        reply = self._answer(request)
        if reply.error:
            status, error_type, message = reply.error
            return status, _error_body(error_type, message)
        content = [
            {**b, "id": self._next_id("toolu")} if b["type"] == "tool_use" else dict(b)
            for b in reply.content
        ]
        usage = self._usage(request, reply)
        message = {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": request.get("model", "mock"),
            "content": content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if not request.get("stream"):
            return 200, message
        return 200, _sse_events(message)


def _sse_events(message: dict) -> list[bytes]:
    usage = message["usage"]
    # The real API reports output tokens only at the end.
    opening = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    events = [{"type": "message_start", "message": opening}, {"type": "ping"}]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"])]
        else:
            start = {**block, "input": {}}
            json_text = json.dumps(block["input"])
            deltas = [{"type": "input_json_delta", "partial_json": c} for c in _chunks(json_text)]
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": usage,
        }
    )
    events.append({"type": "message_stop"})
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


def _error_body(error_type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type, "message": message}}


class _Handler(BaseHTTPRequestHandler):
    mock: MockAnthropic
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API; every reply has a length

    def log_message(self, format: str, *args: Any) -> None:
        pass  # per-request access logs would drown test output; unknowns are logged

    def _read_json(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError(f"body is a {type(body).__name__}, not an object")
        except ValueError as e:  # JSONDecodeError included
            self.mock._record_unknown(self.command, self.path, f"bad JSON body ({e})")
            self._send_json(400, _error_body("invalid_request_error", f"mock: bad JSON body: {e}"))
            return None
        return body

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("request-id", self.mock._next_id("req"))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_json(self, status: int, body: dict) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _unknown(self) -> None:
        # Drain any body so the keep-alive connection stays in sync.
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.mock._record_unknown(self.command, self.path, "unknown request")
        self._send_json(404, _error_body("not_found_error", f"mock: no route {self.command} {self.path}"))

    def _key_refused(self, path: str) -> bool:
        """Answer 401 as the real API does when the request's key is not one the mock takes."""
        key = self.headers.get("x-api-key")
        auth = self.headers.get("authorization") or ""
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:]
        if self.mock.accept_key(key):
            return False
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self.mock._lock:
            self.mock.refused.append((path, body))
        self._send_json(401, _error_body("authentication_error", "invalid x-api-key"))
        return True

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/v1/") and self._key_refused(path):
            return
        if path == "/v1/messages":
            request = self._read_json()
            if request is None:
                return
            self.mock._record(request)
            status, body = self.mock.respond(request)
            if isinstance(body, list):
                self._send(status, "text/event-stream", b"".join(body))
            else:
                self._send_json(status, body)
        elif path == "/v1/messages/count_tokens":
            request = self._read_json()
            if request is not None:
                tokens = _estimate_tokens([request.get(k) for k in ("system", "tools", "messages")])
                self._send_json(200, {"input_tokens": tokens})
        else:
            self._unknown()

    def do_HEAD(self) -> None:
        # The CLI warms up its connection with "HEAD /" and ignores the answer.
        if self.path == "/":
            self._send(200, "text/plain", b"")
        else:
            self._unknown()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path != "/v1/models":
            return self._unknown()
        if self._key_refused(path):
            return
        with self.mock._lock:
            self.mock.model_checks += 1
        self._send_json(200, {"data": [{"type": "model", "id": "claude-mock-1", "display_name": "Mock",
                                        "created_at": "2026-01-01T00:00:00Z"}],
                              "has_more": False, "first_id": "claude-mock-1", "last_id": "claude-mock-1"})

    def do_PUT(self) -> None:
        self._unknown()

    do_DELETE = do_PATCH = do_PUT

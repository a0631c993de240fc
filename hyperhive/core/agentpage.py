"""An agent's page as the operator gets it: its harness's data, passed on bounded, cleaned and rendered by the core.

Owns the proxy from the dashboard to an agent's `web.sock` and what it does
to what comes back. A harness is the agent's to replace, and its answers
are shown on the dashboard's origin, so:

- only JSON and event streams pass (the page shell and its assets are the
  core's own files);
- every field whose name ends in `html`, anywhere, is dropped, and the core
  renders the prose itself from the text (`Presenter`, through `renderer`:
  off the loop, time-limited, cached): a harness can put no markup on a page;
- what is read is bounded: a JSON answer past MAX_JSON bytes, or an event
  past MAX_EVENT, is refused with a sentence, never held whole in memory;
- the request passed on carries the core's page secret for that agent and
  nothing of the operator's: no cookie, no session key (`?key=` is taken off
  the query string);
- an event stream ends once the operator's session does.
"""

import collections
import http.client
import json
import logging
import os
import stat
import urllib.parse

import bottle
from gevent import socket  # cooperative even where the stdlib's is not patched (the route tests)

from hyperhive import states, web, wire
from hyperhive.core import renderer
from hyperhive.core.auth import KEY_PARAM, WEB_SOCKET

log = logging.getLogger(__name__)

PROXY_TIMEOUT = 30.0
STREAM_TIMEOUT = 3 * web.KEEPALIVE_SECONDS  # a page stream silent this long is a dead harness
MAX_JSON = 8 * 1024 * 1024  # one JSON answer of a harness (a page of history is well under this)
MAX_EVENT = 2 * 1024 * 1024  # one event of its stream
# What a browser may pass to an agent's page, and what the page may pass back.
REQUEST_HEADERS = ("Content-Type", "Accept", "Last-Event-ID", "If-None-Match")
RESPONSE_HEADERS = ("Cache-Control", "ETag", "X-Accel-Buffering")
KINDS = ("application/json", "text/event-stream")
SAFETY = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
          "X-Frame-Options": "DENY"}
PROSE_INPUT = {"send": "body", "ask": "question", "answer": "answer"}  # tool -> its prose argument
TOOL_NAMES_KEPT = 4096


# -- what a harness says, made safe -------------------------------------------------------------

def cleaned(value, depth=0):
    """A copy of decoded JSON without any field whose name ends in `html` (what a page would insert)."""
    if depth > 64:  # JSON nests no deeper than what we ever send; anything deeper is nobody's data
        return None
    if isinstance(value, dict):
        return {k: cleaned(v, depth + 1) for k, v in value.items()
                if not (isinstance(k, str) and k.lower().endswith("html"))}
    if isinstance(value, list):
        return [cleaned(v, depth + 1) for v in value]
    return value


def short_tool_name(name):
    """`mcp__hyperhive__send` -> `send` (any MCP server prefix)."""
    return str(name or "").rsplit("__", 1)[-1]


def _result_text(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n\n".join(str(c.get("text") or "") for c in content if isinstance(c, dict) and c.get("type") == "text")
    return ""


class Presenter:
    """Events and messages as the page gets them: cleaned, with `*_html` the core rendered from their text.

    One per answer or stream: which tool a tool_use id called is remembered
    (bounded) as assistant lines pass, so a later `recv` result is rendered."""

    def __init__(self, render=None, tools_kept=TOOL_NAMES_KEPT):
        self.render = render or renderer.render
        self.tool_names = collections.OrderedDict()
        self.tools_kept = tools_kept

    def message(self, message):
        message = cleaned(message)
        if isinstance(message, dict) and isinstance(message.get("body"), str):
            message["body_html"] = self.render(message["body"])
        return message

    def event(self, event):
        event = cleaned(event)
        if not isinstance(event, dict):
            return event
        kind = event.get("kind")
        if kind == "turn_start" and isinstance(event.get("body"), str):
            event["body_html"] = self.render(event["body"])
        elif kind == "stream" and isinstance(event.get("line"), dict):
            self._line(event["line"])
        return event

    def _line(self, line):
        message = line.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            return
        for block in content:
            if not isinstance(block, dict):
                continue
            if line.get("type") == "assistant":
                self._assistant_block(block)
            elif line.get("type") == "user" and block.get("type") == "tool_result":
                if short_tool_name(self.tool_names.get(block.get("tool_use_id"))) == "recv":
                    block["html"] = self.render(_result_text(block.get("content")))

    def _assistant_block(self, block):
        if block.get("type") == "text":
            block["html"] = self.render(block.get("text") if isinstance(block.get("text"), str) else "")
        elif block.get("type") == "tool_use":
            name = block.get("name")
            self._remember(block.get("id"), name)
            field = PROSE_INPUT.get(short_tool_name(name))
            args = block.get("input") if isinstance(block.get("input"), dict) else {}
            if field and isinstance(args.get(field), str):
                block["input_html"] = self.render(args[field])

    def _remember(self, tool_use_id, name):
        if isinstance(tool_use_id, str) and tool_use_id:
            self.tool_names[tool_use_id] = name
            self.tool_names.move_to_end(tool_use_id)
            while len(self.tool_names) > self.tools_kept:
                self.tool_names.popitem(last=False)

    def answer(self, path, data):
        """A JSON answer of the page's route `path`, presented."""
        if not isinstance(data, dict):
            return cleaned(data)
        if path == "api/state":
            data = dict(data, inbox=data.get("inbox"))
            inbox = data["inbox"] if isinstance(data["inbox"], list) else []
            data = cleaned(data)
            data["inbox"] = [self.message(m) for m in inbox]
            return data
        if path == "events/history" and isinstance(data.get("events"), list):
            events = data["events"]
            data = cleaned(data)
            data["events"] = [self.event(e) for e in events]
            return data
        return cleaned(data)


# -- the proxy ----------------------------------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: how the core reaches an agent's page."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        # The path is in a directory the agent writes: open what is there without following a
        # link, check it is a socket, and connect to that very inode, so a link swapped in after
        # the check (to another agent's page, to host.sock) is never what the core reaches.
        fd = os.open(self.path, os.O_PATH | os.O_NOFOLLOW)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise ConnectionRefusedError(f"{self.path} is not a socket")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)


class PageDown(wire.HiveError):
    """An agent's page that is not up, and why: its answer carries the agent's `state` and `transient`,
    so the page can offer to start it (docs/web.md)."""

    def __init__(self, sentence, state=None, transient=None):
        super().__init__(sentence, "unavailable")
        self.fields = {"state": state, "transient": transient}


def down(name, state=None, transient=None):
    """Why `name`'s page does not answer, from its row as the core last saw it."""
    if transient:
        return PageDown(f"{name} is {transient}; its page answers once its harness is up (this page "
                        "connects by itself)", state, transient)
    if state in (states.STOPPED, states.FAILED):
        why = " (it stopped when it should be running: its log says why)" if state == states.FAILED else ""
        return PageDown(f"{name}'s harness is not running{why} — start it: the Start button here or on the "
                        f"dashboard, or `hyperhive start {name}` on the hive's host", state, transient)
    return PageDown(f"{name}'s page is not up yet: its harness is still starting (this page connects by "
                    "itself once it is)", state, transient)


def target_of(path, query_string):
    """The path and query passed on: the operator's session key is never among them."""
    query = [(k, v) for k, v in urllib.parse.parse_qsl(query_string, keep_blank_values=True) if k != KEY_PARAM]
    target = "/" + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
    return urllib.parse.quote(target, safe="/?&=%:@!$'()*+,;~-._")


def proxy(name, path, sock_dir, secret, live=lambda: True, down=down):
    """Answer the current request with agent `name`'s page's answer to it; `live()` says the session still is.

    `down(name)` is the PageDown to answer when nothing listens on the page's socket."""
    request = bottle.request
    headers = {h: request.get_header(h) for h in REQUEST_HEADERS if request.get_header(h)}
    headers["X-Hive-Secret"] = secret  # the core's for this agent; never the operator's cookie or key
    body = request.body.read() if request.method == "POST" else None
    streaming = "text/event-stream" in request.get_header("Accept", "")
    page = os.path.join(sock_dir, WEB_SOCKET)
    conn = UnixHTTPConnection(page, STREAM_TIMEOUT if streaming else PROXY_TIMEOUT)
    try:
        conn.request(request.method, target_of(path, request.query_string), body=body, headers=headers)
        upstream = conn.getresponse()
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        raise down(name) from None
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise wire.HiveError(f"{name}'s page did not answer: {e}", "unavailable") from None
    kind = (upstream.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if kind not in KINDS:
        conn.close()
        raise wire.HiveError(f"{name}'s page answered /{path} with {kind or 'no content type'}; only JSON and "
                             "event streams are passed on from a harness (its pages come from the core)",
                             "unavailable")
    passed = {h: upstream.getheader(h) for h in RESPONSE_HEADERS if upstream.getheader(h)}
    passed.update(SAFETY)
    if kind == "application/json":
        try:
            data = upstream.read(MAX_JSON + 1)
        except (OSError, http.client.HTTPException) as e:
            raise wire.HiveError(f"{name}'s page broke off its answer: {e}", "unavailable") from None
        finally:
            conn.close()
        if len(data) > MAX_JSON:
            raise wire.HiveError(f"{name}'s page answered /{path} with more than {MAX_JSON} bytes; refused "
                                 "(a page answers far less: its harness is broken or hostile)", "unavailable")
        try:
            decoded = json.loads(data)
        except ValueError:
            raise wire.HiveError(f"{name}'s page answered /{path} with JSON that does not parse", "unavailable") \
                from None
        passed["Content-Type"] = "application/json"
        return bottle.HTTPResponse(web.dumps(Presenter().answer(path, decoded)), upstream.status, passed)
    bottle.response.status = upstream.status
    for key, value in dict(passed, **web.SSE_HEADERS).items():
        bottle.response.set_header(key, value)
    return relay(name, conn, upstream, live)


def relay(name, conn, upstream, live):
    """The page's event stream, one SSE message at a time: each event presented, anything else dropped."""
    present = Presenter()
    try:
        event_id, data, size = None, [], 0
        while live():
            line = upstream.readline(MAX_EVENT + 1)
            if not line:
                return
            if not line.endswith(b"\n") or size + len(line) > MAX_EVENT:
                log.warning("%s's page sent an event over %d bytes; its stream is closed (the page reconnects)",
                            name, MAX_EVENT)
                return
            text = line.decode(errors="replace").rstrip("\r\n")
            if text == "":
                if data:
                    yield _message(present, event_id, "\n".join(data))
                elif event_id is None:
                    yield b"\n"
                event_id, data, size = None, [], 0
            elif text.startswith(":") or text.startswith("retry:"):
                yield (text + "\n").encode()  # a keepalive, hello or reconnect delay: nothing to show
            elif text.startswith("id:"):
                event_id = text[3:].strip()
            elif text.startswith("data:"):
                data.append(text[5:].lstrip(" "))
                size += len(line)
            # any other field (event:, anything new) is not passed on
    except (OSError, http.client.HTTPException) as e:
        log.info("%s's page stream ended: %s", name, e)
    finally:
        conn.close()


def _message(present, event_id, data):
    try:
        event = json.loads(data)
    except ValueError:
        return b""  # not one of our events: nothing of it is shown
    head = f"id: {event_id}\n" if event_id and event_id.isdigit() and len(event_id) <= 18 else ""
    return f"{head}data: {web.dumps(present.event(event))}\n\n".encode()

"""The agent's web page, in process: every route called as WSGI, plus one real unix socket.

A FakeCore (tests/fakecore.py) stands in for the core on a real unix
socket, the Bus is real over a tmp sqlite file, and the TurnLoop is real
with a scripted client and runner, so the controls act on the loop the
harness runs. Waits are on conditions with deadlines (gevent-friendly:
a spawned greenlet runs while the test waits).

Proves: every request needs this agent's secret (403 without, 503 while
web.secret is missing, and the page picks the file up once written); the
snapshot's shape, its `seq` read first, its inbox with rendered bodies and
an inbox_error when the core is down; history pages and their bad params;
markdown added to events for the page and never stored; the SSE stream
(hello, live events, keepalives, Last-Event-ID replay without duplicates or
gaps, a lagging client dropped, the subscriber removed when the client
goes); send, loose ends, stats; file previews in the agent's reach (and
sentences for `..`, links out, outside paths and missing files); the controls (cancel a running turn,
compact refused during a turn and holding off the next turn while it runs,
new session armed then consumed, model persisted with model_changed); and
the listener on web.sock (mode 0600, stale socket replaced, removed on stop).
"""

import http.client
import io
import json
import os
import socket
import stat

import gevent
import gevent.event
import gevent.lock
import pytest

from conftest import green_wait
from fakecore import FakeCore, ok, refuse
from fakes import IdleEngine
from hyperhive import resources, web
from hyperhive.harness import turnloop, webui
from hyperhive.harness.bus import Bus
from hyperhive.harness.claude import Outcome
from hyperhive.harness.session import Session
from hyperhive.schema import TurnStat, agent_db, open_agent

SECRET = "ab" * 32
WAIT = 10.0
NOW = 1_768_048_200  # 2026-01-10 12:30 UTC


# -- fakes and helpers ------------------------------------------------------------------

class Client:
    """The core as the turn loop sees it, scripted; `recv` answers from a list (the last repeats)."""

    def __init__(self, recvs=None):
        self.recvs = list(recvs or [{"messages": [], "unread": 0}])
        self.calls = []

    def call(self, verb, timeout=30.0, **args):
        self.calls.append(verb)
        if verb == "recv":
            return dict(self.recvs.pop(0) if len(self.recvs) > 1 else self.recvs[0])
        return {"requeue_inflight": {"requeued": 0}, "ack_turn": {"acked": 1}, "cancel_turn": {"cancelled": [1]}}[verb]

    def try_call(self, verb, timeout=5.0, **args):
        """The loop's no-retry call (what is left open after a turn): the core says nothing here."""
        self.calls.append(verb)
        return None


class Runner:
    """claude for the loop: records (prompt, resumed session); `block` makes a turn wait for cancel()."""

    def __init__(self, harness, block=False):
        self.harness, self.block = harness, block
        self.runs = []

    def __call__(self, prompt, resume):
        self.runs.append((prompt, resume))
        if not self.block:
            return Outcome("ok")
        run = self.harness.current = FakeRun()
        try:
            return run.wait()
        finally:
            self.harness.current = None


class FakeRun:
    def __init__(self):
        self.cancelled = gevent.event.Event()

    def cancel(self):
        self.cancelled.set()

    def wait(self):
        assert self.cancelled.wait(WAIT), "the test never cancelled the turn"
        return Outcome("cancelled", "the turn was cancelled")


class FakeHarness:
    """What webui needs of an AgentRuntime (harness/main.py): name, role, socket, bus, loop, current, compact()."""

    def __init__(self, bus, socket_path, recvs=None, block=False):
        self.name, self.role, self.socket, self.bus = "alice", "agent", str(socket_path), bus
        self.state_dir, self.shared_dir = bus.state_dir, None
        self.current = None
        self.compaction = lambda: Outcome("ok")
        self.engine = IdleEngine()
        self.runner = Runner(self, block)
        self.client = Client(recvs)
        self.loop = turnloop.TurnLoop(self.client, bus, self.runner, self.compact, Session(bus.state_dir),
                                      sleep=lambda s: None, turn_lock=gevent.lock.Semaphore())

    def compact(self):
        return self.compaction()


def message(id=1, sender="operator", body="hello"):
    return {"id": id, "from": sender, "body": body, "sent_at": "2026-01-01T00:00:00.000Z",
            "redelivered": False, "file_refs": []}


def listed(id, sender, to, body):
    return dict(message(id, sender, body), to=to, delivered_at=None, acked_at=None)


class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)

    def error(self):
        """The one error shape; returns its sentence."""
        data = self.json()
        assert set(data) == {"version", "ok", "error", "code"} and data["ok"] is False, data
        return data["error"]


def environ(method, path, body=None, form=None, secret=SECRET, headers=None, raw=None):
    path, _, query = path.partition("?")
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "localhost",
           "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
           "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0),
           "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False}
    data = None
    if raw is not None:
        data, env["CONTENT_TYPE"] = raw, "application/json"
    elif body is not None:
        data, env["CONTENT_TYPE"] = json.dumps(body).encode(), "application/json"
    elif form is not None:
        from urllib.parse import urlencode

        data, env["CONTENT_TYPE"] = urlencode(form).encode(), "application/x-www-form-urlencoded"
    if data is not None:
        env["wsgi.input"], env["CONTENT_LENGTH"] = io.BytesIO(data), str(len(data))
    if secret is not None:
        env["HTTP_X_HIVE_SECRET"] = secret
    for key, value in (headers or {}).items():
        env["HTTP_" + key.upper().replace("-", "_")] = value
    return env


def start(app, *args, **kwargs):
    """Call the app; (status, headers, body iterator)."""
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = int(status.split()[0]), {k.lower(): v for k, v in headers}

    chunks = app(environ(*args, **kwargs), start_response)
    return seen["status"], seen["headers"], chunks


def call(app, *args, **kwargs):
    status, headers, chunks = start(app, *args, **kwargs)
    try:
        body = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return Reply(status, headers, body)


def get(app, path, **kwargs):
    return call(app, "GET", path, **kwargs)


def post(app, path, body=None, **kwargs):
    if body is None and "form" not in kwargs and "raw" not in kwargs:
        body = {}
    return call(app, "POST", path, body=body, **kwargs)


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture
def core(sockdir):
    fake = FakeCore(sockdir / "agent.sock", {
        "inbox": ok(messages=[listed(2, "alice", "operator", "**done**"),
                               listed(1, "operator", "alice", "please <b>do</b> it")]),
        "operator_msg": ok(id=42),
        "get_loose_ends": ok(loose_ends=[{"kind": "question", "id": 7, "summary": "which branch?"}]),
    })
    (sockdir / "web.secret").write_text(SECRET + "\n")
    yield fake
    fake.stop()


@pytest.fixture
def bus(tmp_path):
    open_agent(os.path.join(tmp_path, "events.sqlite"))
    yield Bus(str(tmp_path), clock=lambda: NOW)
    agent_db.close()


@pytest.fixture
def harness(bus, core):
    return FakeHarness(bus, core.path)


@pytest.fixture
def app(harness, sockdir):
    return webui.make_app(harness, str(sockdir / "web.secret"), clock=lambda: NOW)


def notes(bus):
    return [e["text"] for e in bus.history(limit=2000) if e["kind"] == "note"]


# -- who may ask --------------------------------------------------------------------------

@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x", "é" * 4])
def test_a_request_without_this_agent_s_secret_is_refused(app, secret):
    for method, path in (("GET", "/api/state"), ("GET", "/events/stream"), ("POST", "/api/cancel"),
                         ("GET", "/no/such/route")):
        reply = call(app, method, path, secret=secret)
        assert reply.status == 403
        assert reply.error() == "this page answers only the hive's core (the request lacks this agent's secret)"


def test_an_unknown_route_with_the_secret_is_the_404_shape(app):
    reply = get(app, "/no/such/route")
    assert reply.status == 404 and "/no/such/route" in reply.error()


def test_without_web_secret_everything_is_503_until_the_core_writes_it(harness, sockdir):
    os.unlink(sockdir / "web.secret")
    app = webui.make_app(harness, str(sockdir / "web.secret"))
    reply = get(app, "/api/state")
    assert reply.status == 503
    assert reply.error() == ("this agent's page has no web.secret yet; the core writes it when it starts the agent")
    (sockdir / "web.secret").write_text(SECRET)
    assert get(app, "/api/state").status == 200
    assert get(app, "/api/state", secret="wrong").status == 403


# -- pages -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/stats", "/static/agent.js"])
def test_the_harness_serves_no_page_only_data(app, path):
    """The page and its assets come from the core's own files; a harness answers JSON and events."""
    reply = get(app, path)
    assert reply.status == 404 and reply.headers["content-type"] == "application/json"


# -- /api/state -------------------------------------------------------------------------------

def test_state_has_the_documented_shape(app, bus, core):
    bus.note("one")
    reply = get(app, "/api/state")
    assert reply.status == 200 and reply.headers["cache-control"] == "no-store"
    state = reply.json()
    assert list(state) == ["seq", "name", "role", "rev", "status", "turn_state", "turn_state_since", "model",
                           "models", "ctx", "cost", "new_session_armed", "session_id", "claude_process", "inbox",
                           "status_text", "status_set_at"]
    assert state["claude_process"] == IdleEngine().info()
    assert state["seq"] == bus.seq == 1
    assert (state["name"], state["role"], state["rev"], state["status"]) == \
        ("alice", "agent", resources.revision(), "online")
    assert (state["turn_state"], state["turn_state_since"]) == ("idle", NOW)
    assert state["model"] == "haiku" and state["models"] == ["haiku", "sonnet", "opus"]
    assert state["ctx"] is None and state["cost"] is None and state["new_session_armed"] is False
    assert [m["id"] for m in state["inbox"]] == [2, 1]
    assert not [m for m in state["inbox"] if "body_html" in m], "data only: the core renders what the page shows"
    assert {"to", "delivered_at", "acked_at"} <= set(state["inbox"][0])
    assert [r for r in core.requests if r["cmd"] == "inbox"] == [{"cmd": "inbox", "limit": 30}]


def test_state_seq_is_read_before_the_rest(app, bus):
    model = bus.model

    def model_with_an_event_meanwhile():
        bus.note("emitted while the snapshot is assembled")
        return model()

    bus.model = model_with_an_event_meanwhile
    state = get(app, "/api/state").json()
    assert state["seq"] == 0 and bus.seq == 1  # the page will apply event 1 from the stream


def test_state_lists_a_custom_model_and_the_usage(app, bus):
    bus.set_model("claude-opus-4-5[1m]")
    bus.observe({"type": "assistant", "message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": 7}}})
    bus.observe({"type": "result", "usage": {"input_tokens": 1, "output_tokens": 2}})
    state = get(app, "/api/state").json()
    assert state["models"] == ["haiku", "sonnet", "opus", "claude-opus-4-5[1m]"]
    assert state["ctx"] == 12 and state["cost"]["total"] == 3


def test_after_a_harness_restart_the_state_carries_the_last_turns_usage(tmp_path, core, sockdir):
    """The badges on a cold load of a restarted harness's page: the last turn's numbers, not blanks."""
    def snapshot():
        bus = Bus(str(tmp_path), clock=lambda: NOW)
        app = webui.make_app(FakeHarness(bus, core.path), str(sockdir / "web.secret"), clock=lambda: NOW)
        return bus, get(app, "/api/state").json()

    open_agent(os.path.join(tmp_path, "events.sqlite"))
    try:
        bus, state = snapshot()
        assert state["ctx"] is None and state["cost"] is None  # no turn ever: nothing to show
        bus.begin_turn("operator")
        bus.observe({"type": "assistant", "message": {"usage": {"input_tokens": 5, "cache_read_input_tokens": 700}}})
        bus.observe({"type": "result", "usage": {"input_tokens": 1, "output_tokens": 2,
                                                 "cache_read_input_tokens": 30, "cache_creation_input_tokens": 4}})
        bus.end_turn(Outcome("ok"))
        live = get(webui.make_app(FakeHarness(bus, core.path), str(sockdir / "web.secret")), "/api/state").json()
    finally:
        agent_db.close()

    open_agent(os.path.join(tmp_path, "events.sqlite"))  # the harness starts again on the same file
    try:
        _bus, state = snapshot()
    finally:
        agent_db.close()
    assert (state["ctx"], state["cost"]) == (live["ctx"], live["cost"]) == (705, {
        "input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 4,
        "total": 37})


def test_state_loads_without_an_inbox_when_the_core_is_down(app, core):
    core.stop()
    reply = get(app, "/api/state")
    assert reply.status == 200
    state = reply.json()
    assert state["inbox"] == [] and "inbox_error" in state
    assert state["inbox_error"].startswith("the inbox could not be loaded: the hive's core is not answering")


def test_state_shows_a_core_refusal_as_the_inbox_error(app, core):
    core.answers["inbox"] = refuse("inbox: 'limit' must be between 1 and 20, got 30")
    state = get(app, "/api/state").json()
    assert state["inbox"] == [] and "must be between 1 and 20" in state["inbox_error"]


# -- /events/history and presentation ----------------------------------------------------

def test_history_pages(app, bus):
    for i in range(6):
        bus.note(f"n{i}")

    def seqs(query=""):
        data = get(app, "/events/history" + query).json()
        assert data["seq"] == 6
        return [e["seq"] for e in data["events"]]

    assert seqs() == [1, 2, 3, 4, 5, 6]
    assert seqs("?after=3") == [4, 5, 6]
    assert seqs("?before=3") == [1, 2]
    assert seqs("?limit=2") == [5, 6]  # the newest
    assert seqs("?after=1&limit=2") == [2, 3]  # the oldest after
    assert seqs("?after=1&before=4") == [2, 3]
    assert seqs("?before=5&limit=2") == [3, 4]
    assert seqs("?limit=0") == [6]  # clamped to 1
    assert seqs("?limit=999999") == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("query, sentence", [
    ("after=x", "after must be a whole number of 0 or more, got 'x'"),
    ("before=-1", "before must be a whole number of 0 or more, got '-1'"),
    ("limit=1.5", "limit must be a whole number of 0 or more, got '1.5'"),
])
def test_history_bad_numbers_are_sentences(app, query, sentence):
    reply = get(app, "/events/history?" + query)
    assert reply.status == 400 and reply.error() == sentence


def assistant(*blocks):
    return {"type": "assistant", "message": {"role": "assistant", "content": list(blocks)}}


def user(*blocks):
    return {"type": "user", "message": {"role": "user", "content": list(blocks)}}


def emit_a_turn(bus):
    bus.emit("turn_start", **{"from": "bob", "body": "*hi* <script>x</script>", "unread": 0,
                              "redelivered": False, "ids": [1]})
    bus.emit("stream", line=assistant(
        {"type": "text", "text": "I will **reply**"},
        {"type": "tool_use", "id": "t1", "name": "mcp__hyperhive__send", "input": {"to": "bob", "body": "_ok_"}},
        {"type": "tool_use", "id": "t2", "name": "mcp__hyperhive__recv", "input": {}},
        {"type": "tool_use", "id": "t3", "name": "mcp__other__ask", "input": {"question": "why?"}},
        {"type": "tool_use", "id": "t4", "name": "Bash", "input": {"command": "ls"},
         "input_html": "<img src=x onerror=alert(1)>"}))
    bus.emit("stream", line=user(
        {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "from: bob\n\n**yo**"}]},
        {"type": "tool_result", "tool_use_id": "t4", "content": "file **a**", "html": "<script>x</script>"}))
    bus.note("plain")


def check_as_stored(bus, events):
    """The harness passes its events on as it stored them: it renders nothing (the core does)."""
    assert events == bus.history()
    assert '"body_html"' not in json.dumps(events)


def test_history_events_are_the_stored_data(app, bus):
    emit_a_turn(bus)
    check_as_stored(bus, get(app, "/events/history").json()["events"])


# -- /events/stream -------------------------------------------------------------------------

class Stream:
    """A WSGI body read chunk by chunk, as the server would, and closed as the server does."""

    def __init__(self, body):
        self.body, self.chunks = body, iter(body)

    def __next__(self):
        return next(self.chunks)

    def close(self):
        self.body.close()


def open_stream(app, last_event_id=None):
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    status, head, body = start(app, "GET", "/events/stream", headers=headers)
    assert status == 200 and head["content-type"] == "text/event-stream; charset=utf-8"
    assert head["cache-control"] == "no-store"
    return Stream(body)


def frame(chunk):
    """(id, data) of one SSE message."""
    text = chunk.decode()
    head, data = text.split("\n", 1)
    assert head.startswith("id: ") and data.startswith("data: ") and text.endswith("\n\n"), text
    return int(head[4:]), json.loads(data[6:])


def test_stream_says_hello_then_sends_events_and_unsubscribes_on_close(app, bus):
    before = len(bus.fanout._subscribers)
    chunks = open_stream(app)
    assert next(chunks) == web.SSE_HELLO.encode()
    assert len(bus.fanout._subscribers) == before + 1  # subscribed before the page reads its snapshot
    emit_a_turn(bus)
    got = [frame(next(chunks)) for _ in range(4)]
    assert [seq for seq, _ in got] == [1, 2, 3, 4]
    check_as_stored(bus, [data for _, data in got])
    chunks.close()
    assert len(bus.fanout._subscribers) == before


def test_stream_sends_keepalives_while_nothing_happens(app, bus, monkeypatch):
    monkeypatch.setattr(web, "KEEPALIVE_SECONDS", 0)
    chunks = open_stream(app)
    next(chunks)
    assert next(chunks) == web.SSE_KEEPALIVE.encode()
    bus.note("now")
    assert frame(next(chunks))[0] == 1
    chunks.close()


def test_reconnect_replays_after_last_event_id_without_duplicates_or_gaps(app, bus):
    for i in range(5):
        bus.note(f"n{i}")
    chunks = open_stream(app, last_event_id=2)
    assert next(chunks) == web.SSE_HELLO.encode()
    bus.note("n5")  # queued live AND in the history the replay reads next
    bus.note("n6")
    got = [frame(next(chunks)) for _ in range(5)]
    bus.note("n7")
    got.append(frame(next(chunks)))
    assert [seq for seq, _ in got] == [3, 4, 5, 6, 7, 8]
    assert [data["text"] for _, data in got] == ["n2", "n3", "n4", "n5", "n6", "n7"]
    chunks.close()
    assert not bus.fanout._subscribers


def test_a_client_that_falls_too_far_behind_is_dropped(app, bus, monkeypatch):
    monkeypatch.setattr(bus.fanout, "queue_size", 3)
    chunks = open_stream(app)
    next(chunks)
    for i in range(4):  # the fourth does not fit
        bus.note(f"n{i}")
    assert not bus.fanout._subscribers
    with pytest.raises(StopIteration):
        next(chunks)
    bus.note("after")  # the bus goes on without it
    chunks.close()


# -- /send and /api/loose-ends ------------------------------------------------------------

def test_send_relays_to_the_core(app, core):
    reply = post(app, "/send", {"body": "please **deploy**"})
    assert reply.status == 200 and reply.json() == {"ok": True, "id": 42}
    assert core.requests[-1] == {"cmd": "operator_msg", "body": "please **deploy**"}
    assert post(app, "/send", form={"body": "from a form"}).json()["ok"] is True
    assert core.requests[-1]["body"] == "from a form"


@pytest.mark.parametrize("body", [{}, {"body": "   "}, {"body": None}])
def test_send_needs_a_body(app, core, body):
    reply = post(app, "/send", body)
    assert reply.status == 400 and reply.error() == "'body' is required"
    assert core.requests == []


def test_send_passes_core_refusals_through_with_their_code(app, core):
    core.answers["operator_msg"] = refuse("operator_msg: 'body' is 600000 characters; the limit is 524288")
    reply = post(app, "/send", {"body": "x"})
    assert reply.status == 400 and "the limit is 524288" in reply.error()
    core.answers["operator_msg"] = refuse("the agent is being destroyed", "conflict")
    assert post(app, "/send", {"body": "x"}).status == 409


def test_send_with_the_core_down_is_503(app, core):
    core.stop()
    reply = post(app, "/send", {"body": "x"})
    assert reply.status == 503
    assert reply.error().startswith("the hive's core is not answering (nothing is serving at")


def test_a_body_that_is_not_json_is_a_sentence(app, core):
    reply = post(app, "/send", raw=b'{"body": "unfinished')
    assert reply.status == 400 and reply.error().startswith("the request body is not valid JSON")
    reply = post(app, "/api/model", raw=b'["sonnet"]')
    assert reply.status == 400 and reply.error() == "the request body must be a JSON object"
    assert core.requests == []


def test_loose_ends_come_from_the_core(app, core):
    reply = get(app, "/api/loose-ends")
    assert reply.json() == {"loose_ends": [{"kind": "question", "id": 7, "summary": "which branch?"}]}
    core.stop()
    assert get(app, "/api/loose-ends").status == 503


def test_a_loose_end_is_withdrawn_through_the_core_as_this_agent(app, core):
    core.answers["cancel_loose_end"] = ok(kind="reminder", id=3, cancelled={"id": 3, "cancelled_by": "alice"})
    reply = post(app, "/api/loose-ends/cancel", {"kind": "reminder", "id": 3})
    assert reply.status == 200 and reply.json() == {"ok": True, "cancelled": {"id": 3, "cancelled_by": "alice"}}
    assert core.requests[-1] == {"cmd": "cancel_loose_end", "kind": "reminder", "id": 3}
    post(app, "/api/loose-ends/cancel", form={"kind": "question", "id": "7"})
    assert core.requests[-1] == {"cmd": "cancel_loose_end", "kind": "question", "id": 7}
    core.answers["cancel_loose_end"] = refuse("reminder 4 is bob's: only bob or the manager may cancel it",
                                              "forbidden")
    reply = post(app, "/api/loose-ends/cancel", {"kind": "reminder", "id": 4})
    assert reply.status == 403 and reply.error() == "reminder 4 is bob's: only bob or the manager may cancel it"


@pytest.mark.parametrize("route, body, sentence", [
    ("/api/loose-ends/cancel", {"kind": "reminder", "id": "x"}, "'id' must be a whole number of 1 or more, got 'x'"),
    ("/api/loose-ends/cancel", {"kind": "reminder", "id": "0"}, "'id' must be a whole number of 1 or more, got '0'"),
    ("/api/retry", {"ids": ["4", "five"]}, "message id must be a whole number of 1 or more, got 'five'"),
    ("/api/retry", {"ids": [str(2 ** 63)]},
     "message id must be a whole number of 1 or more and at most 9223372036854775807, got '9223372036854775808'"),
])
def test_a_typed_id_the_page_cannot_read_is_refused_before_the_core(app, core, route, body, sentence):
    """An id a form posts is text: read by wire's one parser, refused in its sentence, never sent on."""
    sent = len(core.requests)
    reply = post(app, route, body)
    assert reply.status == 400 and reply.error() == sentence
    assert len(core.requests) == sent


def test_the_state_carries_the_agents_status_line_from_the_core(app, core):
    assert get(app, "/api/state").json()["status_text"] is None
    core.answers["whoami"] = ok(name="alice", role="agent", hyperhive_rev="x", status_text="indexing",
                                status_set_at="2026-01-01T00:00:00.000Z")
    state = get(app, "/api/state").json()
    assert (state["status_text"], state["status_set_at"]) == ("indexing", "2026-01-01T00:00:00.000Z")
    core.answers["whoami"] = refuse("the core is shutting down", "unavailable")
    assert get(app, "/api/state").json()["status_text"] is None  # the page still loads


# -- /api/stats -----------------------------------------------------------------------------

def test_stats_route_answers_the_window(app):
    TurnStat.create(started_at=(NOW - 60) * 1000, ended_at=NOW * 1000, duration_ms=60_000, result_kind="ok",
                    wake_from="operator", tools='{"Bash": 2}')
    data = get(app, "/api/stats").json()
    assert (data["window"], data["bucket_seconds"], data["turns"]) == ("24h", 3600, 1)
    assert data["top_tools"] == [["Bash", 2]]
    assert get(app, "/api/stats?window=30d").json()["bucket_seconds"] == 86400
    reply = get(app, "/api/stats?window=1y")
    assert reply.status == 400 and reply.error() == "window must be 24h, 7d or 30d"


# -- file previews ----------------------------------------------------------------------------

@pytest.fixture
def files(harness, tmp_path):
    """The agent's state dir (the bus's tmp dir) and a shared dir beside it, with a file in each."""
    state, shared = tmp_path, tmp_path.parent / (tmp_path.name + "-shared")
    shared.mkdir()
    (state / "notes.md").write_text("# notes\nhello from state ✓\n")
    (shared / "plan.txt").write_text("the shared plan\n")
    harness.shared_dir = str(shared)
    return state, shared


def file_url(path):
    from urllib.parse import quote

    return "/api/file?path=" + quote(str(path), safe="")


def test_a_file_in_the_agents_reach_is_previewed(app, files):
    state, shared = files
    data = get(app, file_url(state / "notes.md")).json()
    assert data == {"path": str(state / "notes.md"), "size": len("# notes\nhello from state ✓\n".encode()),
                    "truncated": False, "binary": False, "text": "# notes\nhello from state ✓\n"}
    assert get(app, file_url(shared / "plan.txt")).json()["text"] == "the shared plan\n"
    (state / "a dir ✓").mkdir()
    (state / "a dir ✓" / "odd name.txt").write_text("spaces and unicode")
    assert get(app, file_url(state / "a dir ✓" / "odd name.txt")).json()["text"] == "spaces and unicode"


def test_a_big_file_is_cut_and_a_binary_one_is_not_shown(app, files):
    state, _ = files
    (state / "big.log").write_bytes(b"x" * (200 * 1024))
    big = get(app, file_url(state / "big.log")).json()
    assert (big["size"], big["truncated"], len(big["text"])) == (200 * 1024, True, 64 * 1024)
    (state / "blob.bin").write_bytes(b"\x89PNG\0\0\x01" * 10)
    blob = get(app, file_url(state / "blob.bin")).json()
    assert (blob["size"], blob["binary"], blob["text"]) == (70, True, None)


def test_file_previews_refuse_what_is_out_of_reach(app, files, tmp_path_factory):
    state, shared = files
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.md").write_text("not yours")
    (state / "link.md").symlink_to(outside / "secret.md")
    (state / "linkdir").symlink_to(outside, target_is_directory=True)
    (shared / "shared-link.md").symlink_to(state / "notes.md")  # even a link to a file in reach
    cases = [
        (state / "link.md", 403, "forbidden", "link.md is a symlink"),
        (f"{state}/linkdir/secret.md", 403, "forbidden", "linkdir is a symlink"),
        (shared / "shared-link.md", 403, "forbidden", "links are not followed"),
        (f"{state}/../{outside.name}/secret.md", 400, "bad_argument", "climbs with '..'"),
        (outside / "secret.md", 403, "forbidden", "is outside what can be reached here"),
        ("/etc/passwd", 403, "forbidden", "/etc/passwd is outside what can be reached here: "),
        (state / "gone.md", 404, "not_found", "gone.md does not exist"),
        (f"{state}/no-dir/x.md", 404, "not_found", "the directory no-dir does not exist"),
        ("notes.md", 400, "bad_argument", "is relative"),
        (state, 400, "bad_argument", "the state directory itself"),
    ]
    for path, status, code, words in cases:
        reply = get(app, file_url(path))
        assert reply.status == status, (path, reply.body)
        assert reply.json()["code"] == code and words in reply.error(), (path, reply.error())
    said = get(app, file_url("/etc/passwd")).error()
    assert f"{state} (state)" in said and f"{shared} (shared)" in said, "the sentence names what is in reach"
    reply = get(app, "/api/file")
    assert reply.status == 400 and reply.error() == "give the file as ?path=<absolute path, as the agent names it>"
    assert get(app, "/api/file?path=%ff").error() == "the path is not valid UTF-8 once URL-decoded"


def test_without_a_shared_dir_only_the_state_dir_is_in_reach(app, harness, files):
    state, shared = files
    harness.shared_dir = None
    assert get(app, file_url(state / "notes.md")).status == 200
    reply = get(app, file_url(shared / "plan.txt"))
    assert reply.status == 403 and reply.error() == (f"{shared / 'plan.txt'} is outside what can be reached here: "
                                                     f"{state} (state)")


# -- turn controls --------------------------------------------------------------------------

@pytest.fixture
def blocking(bus, core, sockdir):
    """A harness whose turns run until cancelled, and its page."""
    h = FakeHarness(bus, core.path, recvs=[{"messages": [message()], "unread": 0}], block=True)
    return h, webui.make_app(h, str(sockdir / "web.secret"))


def test_cancel_without_a_turn_is_409(app):
    reply = post(app, "/api/cancel")
    assert reply.status == 409 and reply.error() == "no turn is running"


def test_cancel_stops_the_running_turn(blocking, bus):
    harness, app = blocking
    worker = gevent.spawn(harness.loop.step)
    green_wait(lambda: harness.current is not None, "the turn to start")
    reply = post(app, "/api/cancel")
    assert reply.status == 200 and reply.json() == {"ok": True}
    outcome = worker.get(timeout=WAIT)
    assert outcome.kind == "cancelled"
    [end] = [e for e in bus.history() if e["kind"] == "turn_end"]
    assert (end["outcome"], end["ids"]) == ("cancelled", [1])
    assert "cancel_turn" in harness.client.calls, "its messages are marked cancelled by the core"
    assert "ack_turn" not in harness.client.calls and "requeue_inflight" not in harness.client.calls
    [note] = [e for e in bus.history() if e["kind"] == "note" and e.get("stream") == "operator"]
    assert note["text"].startswith("operator: cancel")


def test_retry_queues_a_cancelled_turns_messages_through_the_core(bus, sockdir):
    (sockdir / "web.secret").write_text(SECRET)
    core = FakeCore(sockdir / "agent.sock", {"retry_cancelled": ok(requeued=[4, 5])})
    try:
        app = webui.make_app(FakeHarness(bus, core.path), str(sockdir / "web.secret"))
        reply = post(app, "/api/retry", {"ids": [4, "5"]})
        assert reply.status == 200 and reply.json() == {"ok": True, "requeued": [4, 5]}
        assert core.requests[-1] == {"cmd": "retry_cancelled", "ids": [4, 5]}
        assert notes(bus)[-1] == "operator: retry — message(s) #4, #5 queued again"
    finally:
        core.stop()
    core = FakeCore(sockdir / "agent.sock", {"retry_cancelled": refuse("message(s) #9 are not cancelled", "conflict")})
    try:
        app = webui.make_app(FakeHarness(bus, core.path), str(sockdir / "web.secret"))
        reply = post(app, "/api/retry", {"ids": [9]})
        assert reply.status == 409 and reply.error() == "message(s) #9 are not cancelled"
    finally:
        core.stop()


def test_compact_is_refused_while_a_turn_runs(blocking, bus):
    harness, app = blocking
    compactions = []
    harness.compaction = lambda: compactions.append(1) or Outcome("ok")
    worker = gevent.spawn(harness.loop.step)
    green_wait(lambda: harness.current is not None, "the turn to start")
    reply = post(app, "/api/compact")
    assert reply.status == 409 and reply.error() == "a turn is running; compact once it ends"
    harness.current.cancel()
    worker.get(timeout=WAIT)
    assert compactions == [] and bus.turn_state == "idle"


def test_compact_runs_in_the_background_and_holds_off_the_next_turn(bus, core, sockdir):
    harness = FakeHarness(bus, core.path, recvs=[{"messages": [message()], "unread": 0}])
    app = webui.make_app(harness, str(sockdir / "web.secret"))
    started, release = gevent.event.Event(), gevent.event.Event()

    def compaction():
        started.set()
        assert release.wait(WAIT)
        return Outcome("ok")

    harness.compaction = compaction
    reply = post(app, "/api/compact")
    assert reply.status == 200 and reply.json() == {"ok": True}
    assert started.wait(WAIT)
    assert bus.turn_state == "compacting"
    again = post(app, "/api/compact")
    assert again.status == 409 and again.error() == "a compaction is already running"

    worker = gevent.spawn(harness.loop.step)  # a message arrives meanwhile
    green_wait(lambda: "recv" in harness.client.calls, "the loop to receive")
    gevent.sleep(0)  # let it run on until it blocks
    assert harness.runner.runs == [] and not worker.dead  # the turn waits for the compaction
    release.set()
    assert worker.get(timeout=WAIT).ok
    states = [e["state"] for e in bus.history() if e["kind"] == "turn_state_changed"]
    assert states == ["compacting", "idle", "thinking", "idle"]
    assert notes(bus)[:2] == ["operator: compact — compacting the conversation", "operator: compact done"]
    assert post(app, "/api/compact").status == 200  # the lock was given back


def test_a_failed_compaction_says_why_and_gives_the_lock_back(app, harness, bus):
    def boom():
        raise RuntimeError("claude vanished")

    harness.compaction = boom
    assert post(app, "/api/compact").status == 200
    green_wait(lambda: any("compact failed" in n for n in notes(bus)), "the failure note")
    green_wait(lambda: not harness.loop.turn_lock.locked(), "the lock to be released")
    assert "operator: compact failed: claude vanished" in notes(bus) and bus.turn_state == "idle"
    harness.compaction = lambda: Outcome("failed", "exit 1")
    assert post(app, "/api/compact").status == 200
    green_wait(lambda: "operator: compact failed: exit 1" in notes(bus), "the second failure note")


def test_new_session_is_armed_then_consumed_by_the_next_turn(bus, core, sockdir):
    harness = FakeHarness(bus, core.path, recvs=[{"messages": [message()], "unread": 0}])
    app = webui.make_app(harness, str(sockdir / "web.secret"))
    sid = "6b0f1e2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    harness.loop.session.save(sid)
    transcript = harness.loop.session.transcripts(sid)[0]
    os.makedirs(os.path.dirname(transcript))
    open(transcript, "w").close()
    assert get(app, "/api/state").json()["session_id"] == sid
    reply = post(app, "/api/new-session")
    assert reply.status == 200 and reply.json()["new_session_armed"] is True
    assert get(app, "/api/state").json()["new_session_armed"] is True
    assert "operator: new session armed — the next turn starts a fresh conversation" in notes(bus)
    harness.loop.step()
    assert [resume for _, resume in harness.runner.runs] == [None]
    assert get(app, "/api/state").json()["session_id"] is None
    assert get(app, "/api/state").json()["new_session_armed"] is False


def test_model_persists_and_emits_model_changed(app, bus, tmp_path):
    reply = post(app, "/api/model", {"model": "sonnet"})
    assert reply.status == 200 and reply.json() == {"ok": True, "model": "sonnet"}
    assert bus.model() == "sonnet"
    assert (tmp_path / "hyperhive-model").read_text() == "sonnet\n"
    changed = [e for e in bus.history() if e["kind"] == "model_changed"]
    assert [e["model"] for e in changed] == ["sonnet"]
    assert "operator: model set to sonnet for the next turns" in notes(bus)
    assert post(app, "/api/model", form={"model": "claude-opus-4-5[1m]"}).status == 200
    assert get(app, "/api/state").json()["model"] == "claude-opus-4-5[1m]"


@pytest.mark.parametrize("model", ["rm -rf /", "a" * 65, "haiku\n--continue", "", 7])
def test_a_bad_model_is_a_sentence_and_changes_nothing(app, bus, model):
    reply = post(app, "/api/model", {"model": model})
    assert reply.status == 400 and "model" in reply.error()
    assert bus.model() == "haiku" and not [e for e in bus.history() if e["kind"] == "model_changed"]


# -- the real unix socket -------------------------------------------------------------------

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=WAIT)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(self.path)


def http_get(path, url, headers):
    """A GET over AF_UNIX, run on a real thread so the gevent server in this thread can answer."""

    def request():
        conn = UnixConnection(path)
        try:
            conn.request("GET", url, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type"), response.read()
        finally:
            conn.close()

    return gevent.get_hub().threadpool.apply(request)


def test_the_page_listens_on_web_sock_beside_the_core_socket(harness, sockdir, caplog):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sockdir / "web.sock"))  # a crashed harness's socket, nobody listening
    stale.close()
    caplog.set_level("INFO")
    server = webui.start(harness)
    try:
        path = str(sockdir / "web.sock")
        assert server.path == path and f"web page on {path}" in caplog.text
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        status, kind, body = http_get(path, "/api/state", {})
        assert status == 403 and kind == "application/json"
        assert json.loads(body)["error"].startswith("this page answers only the hive's core")
        status, kind, body = http_get(path, "/api/state", {"X-Hive-Secret": SECRET})
        assert status == 200 and json.loads(body)["name"] == "alice"
    finally:
        server.stop()
    assert not os.path.exists(sockdir / "web.sock")


def test_a_real_harness_serves_its_page_beside_its_socket(hive):
    """The manager's real harness (a child of a real core) starts its page and guards it."""
    from conftest import wait_until

    path = os.path.join(os.path.dirname(hive.sock("manager")), "web.sock")
    log = os.path.join(hive.home("manager"), "harness.log")
    wait_until(lambda: os.path.exists(log) and f"web page on {path}" in open(log).read(), 30,
               "the manager's page to start")
    status, kind, body = http_get(path, "/api/state", {})
    assert status in (403, 503) and kind == "application/json"  # 503 until the core has written web.secret
    secret_path = os.path.join(os.path.dirname(path), "web.secret")
    if not os.path.exists(secret_path):  # the core writes it; stand in for it if it has not yet
        with open(secret_path, "w") as f:
            f.write(SECRET + "\n")
    with open(secret_path) as f:
        secret = f.read().strip()
    status, kind, body = http_get(path, "/api/state", {"X-Hive-Secret": secret})
    assert status == 200, body
    state = json.loads(body)
    assert (state["name"], state["role"], state["model"]) == ("manager", "manager", "haiku")
    assert "inbox_error" not in state  # the page reached the real core's `recent`



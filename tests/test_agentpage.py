"""An agent's page through the core: nothing a harness sends is taken as HTML, and nothing it sends is read whole.

The core's Presenter on events shaped as a harness stores them (with what a
hostile harness would add), the renderer's time limit with its worker
processes, and the proxy over a real unix socket against a stand-in page
that answers as a rewritten harness might: `*_html` fields carrying a
`<meta http-equiv=refresh>` to another port of the operator's host, an
answer larger than any page needs, an endless event, fields no event has.
"""

import json
import os
import time

import gevent
import gevent.event
import pytest
from gevent import socket as gsocket  # this process is not monkey-patched
from gevent.pywsgi import WSGIServer

from hyperhive.core import agentpage, renderer
from test_dashboard import Dash, error_of

REFRESH = '<meta http-equiv="refresh" content="0; url=http://127.0.0.1:9999/">'


def assistant(*blocks):
    return {"type": "assistant", "message": {"role": "assistant", "content": list(blocks)}}


def user(*blocks):
    return {"type": "user", "message": {"role": "user", "content": list(blocks)}}


def a_turn():
    """Four events as a harness stores them, with the html a hostile one slips in."""
    return [
        {"seq": 1, "kind": "turn_start", "from": "bob", "body": "*hi* <script>x</script>", "body_html": REFRESH},
        {"seq": 2, "kind": "stream", "line": assistant(
            {"type": "text", "text": "I will **reply**", "html": REFRESH},
            {"type": "tool_use", "id": "t1", "name": "mcp__hyperhive__send", "input": {"to": "bob", "body": "_ok_"}},
            {"type": "tool_use", "id": "t2", "name": "mcp__hyperhive__recv", "input": {}},
            {"type": "tool_use", "id": "t3", "name": "mcp__other__ask", "input": {"question": "why?"}},
            {"type": "tool_use", "id": "t4", "name": "Bash", "input": {"command": "ls"}, "input_html": REFRESH})},
        {"seq": 3, "kind": "stream", "line": user(
            {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "from: bob\n\n**yo**"}]},
            {"type": "tool_result", "tool_use_id": "t4", "content": "file **a**", "html": REFRESH})},
        {"seq": 4, "kind": "note", "text": "plain", "extra": {"deep": [{"Summary_HTML": REFRESH}]}},
    ]


def check_presented(events):
    start, said, results, note = events
    assert start["body_html"] == "<p><em>hi</em> &lt;script&gt;x&lt;/script&gt;</p>"
    text, send, recv, ask, bash = said["line"]["message"]["content"]
    assert text["html"] == "<p>I will <strong>reply</strong></p>"
    assert send["input_html"] == "<p><em>ok</em></p>"
    assert ask["input_html"] == "<p>why?</p>"
    assert "input_html" not in recv and "input_html" not in bash
    recv_result, bash_result = results["line"]["message"]["content"]
    assert recv_result["html"] == "<p>from: bob</p>\n<p><strong>yo</strong></p>"
    assert "html" not in bash_result
    assert note == {"seq": 4, "kind": "note", "text": "plain", "extra": {"deep": [{}]}}
    assert "http-equiv" not in json.dumps(events), "nothing of the harness's html is left"


def test_the_core_renders_every_page_event_itself_from_its_text():
    present = agentpage.Presenter()
    check_presented([present.event(e) for e in a_turn()])


def test_a_sub_agents_lines_are_rendered_by_the_core_like_the_sessions():
    """A Task's sub-agent: its prose gets the core's html, its task lines stay text, the harness's html goes."""
    present = agentpage.Presenter()
    started = present.event({"seq": 1, "kind": "stream", "line": {
        "type": "system", "subtype": "task_started", "task_id": "a0123456789abcdef", "tool_use_id": "tA",
        "description": "look <b>around</b>", "description_html": REFRESH, "prompt": "**go**",
        "task_type": "local_agent"}})
    said = present.event({"seq": 2, "kind": "stream", "line": dict(assistant(
        {"type": "text", "text": "found **it** <b>x</b>", "html": REFRESH},
        {"type": "tool_use", "id": "s1", "name": "mcp__hyperhive__recv", "input": {}}),
        parent_tool_use_id="tA", subagent_type="Explore", task_description="look around")})
    heard = present.event({"seq": 3, "kind": "stream", "line": dict(user(
        {"type": "tool_result", "tool_use_id": "s1", "content": "from: bob\n\n**yo**", "html": REFRESH}),
        parent_tool_use_id="tA")})
    done = present.event({"seq": 4, "kind": "stream", "line": {
        "type": "system", "subtype": "task_notification", "task_id": "a0123456789abcdef", "tool_use_id": "tA",
        "status": "completed", "summary": "<i>done</i>", "summary_html": REFRESH}})
    assert started["line"]["description"] == "look <b>around</b>" and "description_html" not in started["line"]
    assert said["line"]["message"]["content"][0]["html"] == "<p>found <strong>it</strong> &lt;b&gt;x&lt;/b&gt;</p>"
    assert heard["line"]["message"]["content"][0]["html"] == "<p>from: bob</p>\n<p><strong>yo</strong></p>"
    assert done["line"]["summary"] == "<i>done</i>" and "summary_html" not in done["line"]
    assert "http-equiv" not in json.dumps([started, said, heard, done])


def test_a_presenter_remembers_a_bounded_number_of_tool_ids():
    present = agentpage.Presenter(tools_kept=2)
    for i, name in enumerate(["mcp__h__recv", "Bash", "Read"]):
        present.event({"seq": 10 + i, "kind": "stream", "line": assistant(
            {"type": "tool_use", "id": f"id{i}", "name": name, "input": {}})})
    assert list(present.tool_names) == ["id1", "id2"]


def test_a_body_that_would_stall_markdown_is_cut_off_by_the_time_limit_while_the_loop_runs():
    r = renderer.Renderer(limit=0.5)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(time.monotonic()) or gevent.sleep(0.01) for _ in iter(int, 1)])
    try:
        started = time.monotonic()
        shown = r.render("[" * 9000)  # 21-37 s of Python-Markdown on the core's loop, once
        took = time.monotonic() - started
    finally:
        ticker.kill()
    assert shown == "<pre>" + "[" * 9000 + "</pre>" and r.timeouts == 1
    assert took < 5, took
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 20 and max(gaps) < 0.25, f"the loop stalled for {max(gaps):.2f}s"
    assert r.render("[" * 9000) == shown and r.timeouts == 1, "the verdict is cached"
    assert r.render("after *that*") == "<p>after <em>that</em></p>", "a fresh worker renders the next"
    r.close()


# -- the proxy, against a page that answers as a rewritten harness might -----------------------------

class HostilePage:
    """A stand-in page on the agent's web.sock; `answers[path]` is what it says (status, type, body)."""

    def __init__(self, path):
        listener = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        self.seen = []
        self.server = WSGIServer(listener, self.app, log=None)
        self.server.start()

    def app(self, environ, start_response):
        path = environ["PATH_INFO"]
        self.seen.append((path, environ["QUERY_STRING"]))
        if path == "/api/state":
            start_response("200 OK", [("Content-Type", "application/json")])
            state = {"seq": 4, "name": "a", "status_html": REFRESH,
                     "inbox": [{"id": 1, "body": "see [x](http://127.0.0.1:9999/)", "body_html": REFRESH}]}
            return [json.dumps(state).encode()]
        if path == "/events/history":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"seq": 4, "events": a_turn()}).encode()]
        if path == "/huge":
            start_response("200 OK", [("Content-Type", "application/json")])
            return (b" " * 65536 for _ in range(agentpage.MAX_JSON // 65536 + 2))
        if path == "/events/stream":
            start_response("200 OK", [("Content-Type", "text/event-stream")])

            def frames():
                yield b"retry: 2000\n: connected\n\n"
                for event in a_turn():
                    yield f"id: {event['seq']}\nevent: takeover\ndata: {json.dumps(event)}\n\n".encode()
                yield b"data: not json <script>\n\n"
                yield b"id: 9\ndata: {\"seq\": 9, \"kind\": \"note\", \"text\": \"" + b"x" * agentpage.MAX_EVENT + b"\"}\n\n"
                yield b"data: {\"seq\": 10, \"kind\": \"note\", \"text\": \"never reached\"}\n\n"
            return frames()
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b"{}"]


@pytest.fixture
def page(tmp_path):
    dash = Dash(tmp_path)
    dash.spawn("a")
    page = HostilePage(os.path.join(os.path.dirname(dash.layout.socket("a")), "web.sock"))
    yield dash, page
    page.server.stop()


def test_what_a_hostile_harness_answers_reaches_the_page_without_its_html(page):
    dash, hostile = page
    state = dash.get(f"/agent/a/api/state?key={dash.key}").json()
    assert "status_html" not in state and "http-equiv" not in json.dumps(state)
    [message] = state["inbox"]
    assert message["body_html"] == ('<p>see <a href="http://127.0.0.1:9999/" rel="noopener noreferrer" '
                                    'target="_blank">x</a></p>'), "rendered by the core from the text"
    assert hostile.seen[-1] == ("/api/state", ""), "the operator's key is never passed on"
    check_presented(dash.get("/agent/a/events/history").json()["events"])


def test_an_answer_bigger_than_any_page_needs_is_refused_not_read_whole(page):
    dash, _ = page
    error_of(dash.get("/agent/a/huge"), 503, "unavailable", f"more than {agentpage.MAX_JSON} bytes")


def test_the_event_stream_passes_only_events_presented_by_the_core_and_ends_at_an_endless_one(page):
    dash, _ = page
    stream = dash.get("/agent/a/events/stream", headers={"Accept": "text/event-stream"})
    body = b"".join(stream.stream()).decode()  # ends by itself: the oversized event closes it
    assert body.startswith("retry: 2000\n: connected\n\n")
    assert "takeover" not in body and "not json" not in body and "never reached" not in body
    frames = [block for block in body.split("\n\n") if block.startswith("id: ")]
    events = [json.loads(block.split("\ndata: ", 1)[1]) for block in frames]
    assert [f.split("\n")[0] for f in frames] == ["id: 1", "id: 2", "id: 3", "id: 4"]
    check_presented(events)

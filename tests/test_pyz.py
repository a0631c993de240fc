"""The artifact is the system under test: everything a user reaches works from the built hyperhive.pyz.

One real hive from `python hyperhive.pyz serve` (the interpreter has only
the compiled pins; the pyz carries the rest), its harnesses and MCP servers
the same pyz, the fake claude. Then, each once:

- every route of the dashboard and of an agent's page (through the core),
  listed from the apps themselves, so a new route without a case here fails;
- every verb of every socket surface (host, agent, manager), listed from
  `verbs.SURFACES`, and every MCP tool of both roles;
- every lookup by name a library does inside the pyz (the entry points of
  every vendored distribution, markdown's extensions by name) and every
  asset through the one loader.

A route or verb passes when it answers what it should (no 500, no
`internal`), and the core logged no failed request. Markdown, which the
pyz once could not load, is checked where the operator sees it: rendered
in the dashboard's snapshot, history and stream, and on the agent's page.
"""

import http.cookiejar
import json
import os
import re
import subprocess
import types
import urllib.error
import urllib.request

import pytest

from conftest import FAKE_CLAUDE, PYZ, PYZ_PYTHON, ROOT, Hive, kill_harnesses, pyz_argv, wait_until
from hyperhive import jsonline, verbs, wire
from hyperhive.harness import tools

MARKDOWN = "table and code:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```\nfenced = True\n```\n"


@pytest.fixture(scope="module")
def hive(tmp_path_factory):
    h = Hive(tmp_path_factory.mktemp("pyz") / "state", env={"ANTHROPIC_API_KEY": "test-key"},
             extra_args=["--pass-env", "ANTHROPIC_API_KEY"])
    h.start()
    try:
        h.spawn("a", "v")
        # v and the manager stop: their sockets stay, and their queues are the test's to pop
        h.call("stop", scope={"agent_names": ["v", "manager"]})
        yield h
    finally:
        try:
            h.stop()
        finally:
            kill_harnesses(h.state_dir)
    failed = [line for line in h.log().splitlines() if "request failed" in line or "Traceback" in line]
    assert not failed, "the core logged failures:\n" + "\n".join(failed)


class Browser:
    """The operator's browser: logged in through a one-time URL, POSTs with the dashboard's Origin."""

    def __init__(self, hive):
        self.base = hive.url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  NoRedirect())
        self.key = ""
        self.login = self.request("GET", hive.login_url()[len(self.base):])
        assert self.login[0] == 303, self.login
        self.key = self.login_location.partition("#hive-key=")[2]  # what the page's script keeps
        assert self.key

    def request(self, method, path, body=None, stream=False, timeout=30):
        data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if self.key:
            req.add_header("X-Hive-Key", self.key)
        if method == "POST":
            req.add_header("Content-Type", "application/json")
            req.add_header("Origin", self.base)
        if stream:
            req.add_header("Accept", "text/event-stream")
        try:
            res = self.opener.open(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            res = e
        self.login_location = res.headers.get("Location") or ""
        if stream and res.status == 200:
            return res.status, res.headers.get("Content-Type", ""), res  # the caller reads and closes
        with res:
            return res.status, res.headers.get("Content-Type", ""), res.read()


def _session_id(self):
    """This browser's session id, as /api/sessions says."""
    listed = json.loads(judged(self.request("GET", "/api/sessions"))[2])["sessions"]
    return next(s["id"] for s in listed if s["current"])


Browser.session_id = _session_id


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer to judge, not to follow


def sse_events(res, until, limit=200):
    """Parsed `data:` frames of an open SSE response until `until(event)` holds; closes it."""
    seen = []
    try:
        for _ in range(limit * 10):
            line = res.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                seen.append(event)
                if until(event):
                    return seen
        raise AssertionError(f"the stream ended or ran on without the event; saw {seen[-5:]}")
    finally:
        res.close()


def judged(answer, want=200):
    """An HTTP answer that is what the route should say: the status, and never an internal error."""
    status, kind, body = answer
    shown = body if isinstance(body, bytes) else b"<stream>"
    assert status == want, (status, shown[:400])
    if kind.startswith("application/json") and status >= 400:
        assert json.loads(shown)["code"] != "internal", shown
    return answer


# -- every route of both pages -------------------------------------------------------------------

def routes_of_the_dashboard():
    from hyperhive.core.dashboard import Dashboard

    return {(r.method, r.rule) for r in Dashboard(views=None, hub=None, dispatch=None, auth=None).app.routes}


def routes_of_the_agent_page(tmp_path):
    from hyperhive.harness import webui

    harness = types.SimpleNamespace(name="x", bus=None, loop=None)
    (tmp_path / "web.secret").write_text("s")
    return {(r.method, r.rule) for r in webui.Page(harness, str(tmp_path / "web.secret")).app.routes}


def make_file(hive, name, relpath, text):
    path = os.path.join(hive.home(name), "state", relpath)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_every_route_of_the_dashboard_and_the_agent_page_answers_from_the_pyz(hive, tmp_path):
    b = Browser(hive)
    manager, v = hive.sock("manager"), hive.sock("v")
    note = make_file(hive, "v", "notes.md", "# notes\nfrom v\n")
    file_msg = jsonline.call(v, "send", to="operator", body=f"see {note}\n\n" + MARKDOWN)["id"]
    asked = jsonline.call(v, "ask", question="**ship** it?", options=["yes", "no"])["id"]
    withdrawn = jsonline.call(v, "ask", question="still needed?")["id"]
    to_approve = jsonline.call(manager, "request_init_config", name="cfg-one")["id"]
    to_deny = jsonline.call(manager, "request_init_config", name="cfg-two")["id"]
    reminder = jsonline.call(hive.sock("a"), "remind", message="later", in_seconds=3600)["id"]
    tool_call = jsonline.call(v, "ask_tool_use", tool="Bash", input={"command": "git push"}, tool_use_id="toolu_1",
                              rule="Bash(git push:*)")["approval"]["id"]
    hive.call("send", to="a", body="FAKE: say done\n\n" + MARKDOWN)
    wait_until(lambda: any("fenced" in t["prompt"] for t in hive.good_turns("a")), 30, "a's turn on the markdown")
    page_file = make_file(hive, "a", "seen.txt", "a's file\n")
    hive.call("spawn", name="w")

    cancelled = []

    def dashboard_sees(event):
        return event.get("kind") == "sent" and "stream check" in event["message"]["body"]

    def page_sees(event):
        return event.get("kind") == "note" and "stream check" in event.get("text", "")

    cases = {
        ("GET", "/login"): lambda: relogin(b, hive),
        ("GET", "/"): lambda: judged(b.request("GET", "/")),
        ("GET", "/static/<path:path>"): lambda: judged(b.request("GET", "/static/dashboard.js")),
        ("GET", "/api/state"): lambda: dashboard_state(b, file_msg, asked, to_approve),
        ("GET", "/dashboard/stream"): lambda: stream_renders(b, hive, "/dashboard/stream", dashboard_sees),
        ("GET", "/dashboard/history"): lambda: history_renders(b, file_msg),
        ("POST", "/op-send"): lambda: judged(b.request("POST", "/op-send", {"to": "@a", "body": "hi **a**"})),
        ("GET", "/api/inbox"): lambda: assert_has(judged(b.request("GET", f"/api/inbox?sender=v&before={10**6}")),
                                                  b'"senders"'),
        ("POST", "/inbox/read"): lambda: assert_has(judged(b.request("POST", "/inbox/read", {"ids": [file_msg]})),
                                                    f"[{file_msg}]".encode()),
        ("POST", "/spawn"): lambda: judged(b.request("POST", "/spawn", {"name": "w2"})),
        ("GET", "/api/tool-calls/<name>"): lambda: assert_has(judged(b.request("GET", "/api/tool-calls/v")),
                                                              f'"id":{tool_call}'.encode()),
        ("GET", "/api/tool-calls/<name>/stream"): lambda: tool_calls_stream(b, v),
        ("POST", "/approve/<approval_id>"):
            lambda: [judged(b.request("POST", f"/approve/{to_approve}")),
                     judged(b.request("POST", f"/approve/{tool_call}", {"always": True}))],
        ("POST", "/deny/<approval_id>"): lambda: judged(b.request("POST", f"/deny/{to_deny}", {"reason": "no"})),
        ("POST", "/answer-question/<question_id>"):
            lambda: judged(b.request("POST", f"/answer-question/{asked}", {"answer": "yes"})),
        ("POST", "/cancel-question/<question_id>"): lambda: judged(b.request("POST", f"/cancel-question/{withdrawn}")),
        ("POST", "/destroy/<name>"): lambda: judged(b.request("POST", "/destroy/w2", {"purge": False})),
        ("POST", "/meta-update"): lambda: judged(b.request("POST", "/meta-update"), 409),  # process: no meta flake
        ("POST", "/<action:re:start|stop|restart|rebuild|kill|pause|resume|purge-tombstone>/<name>"):
            lambda: [judged(b.request("POST", f"/{action}/{name}"))
                     for action, name in (("pause", "w"), ("resume", "w"), ("stop", "w"), ("start", "w"),
                                          ("restart", "w"), ("rebuild", "w"), ("kill", "w"),
                                          ("purge-tombstone", "w2"))],
        ("GET", "/journal/<name>"): lambda: judged(b.request("GET", "/journal/a")),
        ("GET", "/journal/<name>/stream"):
            lambda: sse_events(judged(b.request("GET", "/journal/a/stream", stream=True))[2],
                               lambda e: bool(e.get("lines"))),
        ("GET", "/agent-config/<name>"): lambda: assert_has(judged(b.request("GET", "/agent-config/a")), b"config.js"),
        ("GET", "/api/agent-config/<name>"):
            lambda: assert_has(judged(b.request("GET", "/api/agent-config/a")), b'"hive.json"'),
        ("GET", "/api/sessions"): lambda: assert_has(judged(b.request("GET", "/api/sessions")), b'"current":true'),
        ("POST", "/logout/<session_id>"): lambda: judged(b.request("POST", f"/logout/{Browser(hive).session_id()}")),
        ("POST", "/logout"): "last",  # it ends this browser's session
        ("GET", "/approval/<approval_id>/diff"): lambda: judged(b.request("GET", f"/approval/{to_approve}/diff")),
        ("GET", "/file-ref/<message_id>/<index>"):
            lambda: assert_has(judged(b.request("GET", f"/file-ref/{file_msg}/0")), b"from v"),
        ("GET", "/agent/<name>"): lambda: judged(b.request("GET", "/agent/a"), 308),
        ("GET", "/agent/<name>/"): lambda: assert_has(judged(b.request("GET", "/agent/a/")), b"agent.js"),
        ("GET", "/agent/<name>/stats"): lambda: assert_has(judged(b.request("GET", "/agent/a/stats")), b"stats.js"),
        ("GET", "/agent/<name>/static/<path:path>"): lambda: judged(b.request("GET", "/agent/a/static/agent.js")),
        ("GET", "/agent/<name>/<path:path>"): lambda: None,  # the proxy: the page's GET routes below
        ("POST", "/agent/<name>/<path:path>"): lambda: None,  # the proxy: the page's POST routes below
    }
    page = {
        ("GET", "/api/state"): lambda: page_state(b),
        ("GET", "/events/stream"): lambda: stream_renders(b, hive, "/agent/a/events/stream", page_sees),
        ("GET", "/events/history"): lambda: page_history_renders(b),
        ("POST", "/send"): lambda: judged(b.request("POST", "/agent/a/send", {"body": "from the page"})),
        ("POST", "/api/compact"): lambda: judged(compacted(b)),
        ("POST", "/api/new-session"): lambda: judged(b.request("POST", "/agent/a/api/new-session")),
        ("POST", "/api/model"): lambda: judged(b.request("POST", "/agent/a/api/model", {"model": "sonnet"})),
        ("POST", "/login/start"): lambda: judged(b.request("POST", "/agent/a/login/start"), 409),  # a key is set
        ("POST", "/login/code"): lambda: judged(b.request("POST", "/agent/a/login/code", {"code": "x#y"}), 409),
        ("POST", "/login/cancel"): lambda: judged(b.request("POST", "/agent/a/login/cancel")),
        ("GET", "/api/loose-ends"):
            lambda: assert_has(judged(b.request("GET", "/agent/a/api/loose-ends")), b'"later"'),
        ("POST", "/api/loose-ends/cancel"):
            lambda: judged(b.request("POST", "/agent/a/api/loose-ends/cancel", {"kind": "reminder", "id": reminder})),
        ("GET", "/api/stats"): lambda: judged(b.request("GET", "/agent/a/api/stats?window=24h")),
        ("GET", "/api/file"): lambda: assert_has(judged(b.request("GET", f"/agent/a/api/file?path={page_file}")),
                                                 b"a's file"),
        ("POST", "/api/cancel"): lambda: cancelled.append(cancel_a_turn(b, hive)),  # last: the others wait for no turn
        ("POST", "/api/retry"): lambda: retry_and_cancel_again(b, hive, cancelled[0]),
    }
    assert set(cases) == routes_of_the_dashboard(), "a dashboard route has no case here (or a case no route)"
    assert set(page) == routes_of_the_agent_page(tmp_path), "an agent page route has no case here"
    for key, case in list(cases.items()) + list(page.items()) + [(("POST", "/logout"), lambda: log_out(b))]:
        if case == "last":
            continue
        try:
            case()
        except AssertionError as e:
            raise AssertionError(f"{key}: {e}") from None


def relogin(b, hive):
    """A second login in the same browser: a new session, whose key the page's script then keeps."""
    judged(b.request("GET", hive.login_url()[len(b.base):]), 303)
    b.key = b.login_location.partition("#hive-key=")[2]


def log_out(b):
    judged(b.request("POST", "/logout"))
    judged(b.request("GET", "/api/sessions"), 401)
    judged(b.request("GET", "/"), 401)


def idle(b):
    return wait_until(lambda: json.loads(b.request("GET", "/agent/a/api/state")[2])["turn_state"] == "idle", 30,
                      "a to be idle")


def compacted(b):
    """The answer to a compaction asked while a is idle: a message still queued may start a turn between
    the idle state read and the request, which the page refuses (409, "a turn is running"); ask again."""
    def asked():
        idle(b)
        answer = b.request("POST", "/agent/a/api/compact")
        return None if answer[0] == 409 and b"a turn is running" in answer[2] else answer
    return wait_until(asked, 60, "a compaction while a is idle")


def cancel_a_turn(b, hive):
    """A long turn of a's, cancelled from its page; the id of its message."""
    mid = hive.call("send", to="a", body="FAKE: sleep 60\nlong turn")["id"]
    wait_until(lambda: json.loads(b.request("GET", "/agent/a/api/state")[2])["turn_state"] == "thinking", 30,
               "a's long turn to run")
    judged(b.request("POST", "/agent/a/api/cancel"))
    wait_until(lambda: hive.db_rows("select cancelled_at is not null from message where id=?", mid) == [(1,)], 30,
               "the cancelled turn's message to be marked")
    return mid


def retry_and_cancel_again(b, hive, mid):
    assert_has(judged(b.request("POST", "/agent/a/api/retry", {"ids": [mid]})), f"[{mid}]".encode())
    wait_until(lambda: hive.db_rows("select delivered_at is not null, cancelled_at from message where id=?", mid)
               == [(1, None)], 30, "the retried message to run")
    wait_until(lambda: json.loads(b.request("GET", "/agent/a/api/state")[2])["turn_state"] == "thinking", 30,
               "the retried turn to run")
    judged(b.request("POST", "/agent/a/api/cancel"))


def assert_has(answer, needle):
    assert needle in answer[2], answer[2][:400]
    return answer


def rendered(html):
    """Markdown rendered the way only the markdown library's extensions render it."""
    return "<table>" in html and "<pre><code>fenced = True" in html


def dashboard_state(b, file_msg, asked, approval):
    state = json.loads(judged(b.request("GET", "/api/state"))[2])
    shown = {m["id"]: m for m in state["inbox"]}
    assert rendered(shown[file_msg]["body_html"]), shown[file_msg]["body_html"]
    assert [q["question_html"] for q in state["questions"] if q["id"] == asked] == ["<p><strong>ship</strong> it?</p>"]
    assert approval in [a["id"] for a in state["approvals"]]


def history_renders(b, file_msg):
    history = json.loads(judged(b.request("GET", "/dashboard/history?limit=1000"))[2])
    [event] = [e for e in history["events"] if e["message"]["id"] == file_msg]
    assert rendered(event["message"]["body_html"])


def stream_renders(b, hive, path, sees):
    """The stream stays up across events that carry markdown, and renders it."""
    status, kind, res = judged(b.request("GET", path, stream=True))
    assert kind.startswith("text/event-stream")
    hive.call("send", to="a", body="stream check\n\n" + MARKDOWN)
    jsonline.call(hive.sock("a"), "operator_msg", body="x")  # a `sent` event on the dashboard too
    if path.startswith("/agent/"):
        b.request("POST", "/agent/a/api/model", {"model": "stream check"[:0] or "haiku"})
        jsonline.call(hive.sock("a"), "set_status", text="stream check")
        b.request("POST", "/agent/a/send", {"body": "stream check"})
        # the page's own note for an operator action carries the words
        b.request("POST", "/agent/a/api/loose-ends/cancel", {"kind": "question", "id": 999999})
        seen = sse_events(res, lambda e: e.get("kind") == "turn_start" and "stream check" in e.get("body", ""))
        starts = [e for e in seen if e.get("kind") == "turn_start" and "stream check" in e.get("body", "")]
        assert rendered(starts[-1]["body_html"])
        return
    seen = sse_events(res, sees)
    assert rendered(seen[-1]["message"]["body_html"])


def tool_calls_stream(b, sock):
    """The stream of one agent's tool calls carries its own call's event, and nothing of the others."""
    status, kind, res = judged(b.request("GET", "/api/tool-calls/v/stream", stream=True))
    assert kind.startswith("text/event-stream")
    jsonline.call(sock, "send", to="operator", body="not a tool call")
    asked = jsonline.call(sock, "ask_tool_use", tool="Read", input={"file_path": "/x"}, tool_use_id="toolu_2",
                          rule="Read")["approval"]["id"]
    seen = sse_events(res, lambda e: e.get("kind") == "approval_added")
    assert [e["approval"]["id"] for e in seen] == [asked], seen


def page_state(b):
    state = json.loads(judged(b.request("GET", "/agent/a/api/state"))[2])
    assert state["name"] == "a" and "inbox_error" not in state
    assert any(rendered(m["body_html"]) for m in state["inbox"])


def page_history_renders(b):
    history = json.loads(judged(b.request("GET", "/agent/a/events/history?limit=2000"))[2])
    starts = [e for e in history["events"] if e["kind"] == "turn_start" and "fenced" in e["body"]]
    assert starts and rendered(starts[0]["body_html"])
    texts = [blk for e in history["events"] if e["kind"] == "stream" and e["line"].get("type") == "assistant"
             for blk in e["line"]["message"]["content"] if blk.get("type") == "text"]
    assert texts and all("html" in blk for blk in texts)


# -- every verb of every surface ---------------------------------------------------------------

def commit_in_proposed(hive, name):
    repo = os.path.join(hive.state_dir, "config", "proposed", name)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    with open(os.path.join(repo, "NOTES"), "a") as f:
        f.write("one more change to deploy\n")
    subprocess.run(["git", "-C", repo, "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", repo, "commit", "-qm", "note"], check=True, env=env)
    return subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], check=True, env=env, capture_output=True,
                          text=True).stdout.strip()


def test_every_verb_of_every_surface_answers_from_the_pyz(hive):
    sockets = {"host": hive.host_sock, "agent": hive.sock("v"), "manager": hive.sock("manager")}
    done = set()
    ids = {}

    def call(surface, verb, want="ok", **args):
        try:
            answer = jsonline.call(sockets[surface], verb, timeout=180, **args)
            got = "ok"
        except wire.HiveError as e:
            answer, got = {"error": str(e)}, e.code
        assert got == want, f"{surface} {verb} {args}: {got} {answer}"
        assert wire.WARNINGS not in answer, answer
        done.add((surface, verb))
        return answer

    def stream(surface, verb):
        frames = jsonline.stream(sockets[surface], verb, timeout=30)
        frames.close()
        done.add((surface, verb))

    # the operator
    assert {"a", "v", "manager"} <= set(call("host", "list")["agents"])
    assert {r["name"] for r in call("host", "agent_status")["agent_statuses"]} >= {"a", "v"}
    stream("host", "subscribe_agent_status")
    call("host", "urls")
    call("host", "spawn", name="x")
    call("host", "set_paused", name="x", paused=True)
    call("host", "set_paused", name="x", paused=False)
    call("host", "stop", scope={"agent_names": ["x"]}, graceful=False)
    call("host", "start", scope={"agent_names": ["x"]})
    call("host", "restart", name="x")
    call("host", "rebuild", name="x")
    call("host", "kill", name="x")
    call("host", "send", to="v", body="for v's recv")
    call("host", "inbox", limit=5)
    call("host", "mark_read")
    ids["init"] = call("manager", "request_init_config", name="y", description="a new agent")["id"]
    assert ids["init"] in [a["id"] for a in call("host", "pending")["approvals"]]
    call("host", "approve", id=ids["init"])
    ids["spawn"] = call("host", "request_spawn", name="y")["id"]
    call("host", "deny", id=ids["spawn"], reason="not now")
    call("host", "destroy", name="x", purge=False)
    assert "x" in call("host", "tombstones")["tombstones"]
    call("host", "purge_tombstone", name="x")
    call("host", "update_meta", want="conflict")  # the process backend has no meta flake
    assert call("host", "login_url")["url"].startswith("http://")
    other = Browser(hive).session_id()
    assert other in [s["id"] for s in call("host", "sessions")["sessions"]]
    assert call("host", "logout", id=other)["ended"] == 1
    ids["q"] = call("agent", "ask", question="to the operator?")["id"]
    assert ids["q"] in [q["id"] for q in call("host", "questions")["questions"]]
    call("host", "answer", id=ids["q"], answer="yes")
    ids["q2"] = call("agent", "ask", question="cancel me")["id"]
    call("host", "cancel_question", id=ids["q2"])

    # an agent (v) and the manager: the shared verbs on both sockets
    for surface in ("agent", "manager"):
        other = "manager" if surface == "agent" else "v"
        call(surface, "send", to="operator", body=f"from the {surface} socket")
        call(surface, "operator_msg", body="as if from my page")
        assert call(surface, "recv", wait_seconds=1, max=4)["messages"]
        call(surface, "requeue_inflight")
        popped = [m["id"] for m in call(surface, "recv", wait_seconds=0, max=32)["messages"]]
        assert call(surface, "cancel_turn")["cancelled"] == popped
        assert call(surface, "retry_cancelled", ids=popped)["requeued"] == popped
        call(surface, "recv", wait_seconds=0, max=32)
        call(surface, "ack_turn")
        call(surface, "recent", limit=5)
        call(surface, "inbox", limit=5)
        call(surface, "whoami")
        reminder = call(surface, "remind", message="later", in_seconds=600)["id"]
        assert call(surface, "count_pending_reminders")["count"] >= 1
        call(surface, "cancel_loose_end", kind="reminder", id=reminder)
        call(surface, "get_loose_ends")
        to_me = call("manager" if surface == "agent" else "agent", "ask", question="peer?",
                     to="v" if surface == "agent" else "manager")["id"]
        call(surface, "answer", id=to_me, answer="peer answer")
        mine = call(surface, "ask", question="withdraw me", to=other)["id"]
        call(surface, "cancel_loose_end", kind="question", id=mine)
        call(surface, "set_status", text=f"checking the {surface} surface")
        call(surface, "report_login", logged_in=True)
        asked = dict(tool="Bash", input={"command": "git push"}, tool_use_id=f"toolu_{surface}", rule="Bash")
        pending = call(surface, "ask_tool_use", **asked)["approval"]
        assert pending["status"] == "pending" and pending["input"] == {"command": "git push"}
        call("host", "approve", id=pending["id"], always=surface == "agent")
        assert call(surface, "ask_tool_use", wait_seconds=5, **asked)["approval"]["status"] == "approved"

    # the manager's own
    call("manager", "agent_status")
    call("manager", "request_apply_commit", agent="v", commit_ref=commit_in_proposed(hive, "v")[:12],
         description="a note")
    ids["init2"] = call("manager", "request_init_config", name="z", description="another")["id"]
    call("host", "approve", id=ids["init2"])
    call("manager", "request_spawn", name="z", description="start it")
    call("host", "spawn", name="m")
    for verb in ("stop", "start", "restart", "rebuild", "kill"):
        call("manager", verb, name="m")
    call("manager", "update", want="conflict", description="no meta flake here")

    every = {(surface, verb) for surface, names in verbs.SURFACES.items() for verb in names}
    assert done == every, f"not exercised: {sorted(every - done)}"


def test_every_mcp_tool_of_both_roles_answers_from_the_pyz(hive):
    # v's and the manager's queues: both harnesses are stopped (see the fixture)
    hive.call("send", to="v", body="for v's recv tool")
    for role, sock in (("agent", hive.sock("v")), ("manager", hive.sock("manager"))):
        hive.call("spawn", name=f"t-{role}")
        target = f"t-{role}"
        asked = jsonline.call(hive.sock("a"), "ask", question="peer?", to="v" if role == "agent" else "manager")
        seeded = jsonline.call(hive.sock("manager"), "request_init_config", name=f"s-{role}")["id"]
        hive.call("approve", id=seeded)  # a config to request a spawn of
        args = {
            "send": {"to": "operator", "body": "from the tool"},
            "recv": {"max": 2, "wait_seconds": 0},
            "recent": {"limit": 5},
            "whoami": {},
            "ask": {"question": "from the tool?"},
            "answer": {"id": asked["id"], "answer": "tool answer"},
            "remind": {"message": "tool reminder", "in_seconds": 60},
            "get_loose_ends": {},
            "cancel_loose_end": None,  # the reminder's, once `remind` answered
            "set_status": {"text": "tool status"},
            "request_apply_commit": {"agent": "v", "commit_ref": commit_in_proposed(hive, "v"),
                                     "description": "tool"},
            "request_init_config": {"name": f"n-{role}", "description": "tool"},
            "request_spawn": {"name": f"s-{role}", "description": "tool"},
            "update": {"description": "tool"},
            "agent_status": {},
            "stop": {"name": target}, "start": {"name": target}, "restart": {"name": target},
            "rebuild": {"name": target}, "kill": {"name": target},
        }
        expected_errors = {"update"}  # the process backend has no meta flake: a sentence, not a failure
        mine, said = tools.tools_for(role), {}
        assert list(mine).index("remind") < list(mine).index("cancel_loose_end")
        for name in mine:  # one session each: a session runs its calls at once, and these must not race
            if name == "cancel_loose_end":
                args[name] = {"kind": "reminder", "id": int(re.search(r"reminder (\d+)", said["remind"]).group(1))}
            listed, answer = mcp_run(role, sock, name, args[name])
            assert listed == set(mine), "the pyz's tools are the checkout's"
            assert "error" not in answer, (role, name, answer)
            result = answer["result"]
            text = said[name] = result["content"][0]["text"]
            assert result["isError"] == (name in expected_errors), (role, name, result)
            assert "warning" not in text, (role, name, result)


def mcp_run(role, sock, name, args):
    """One `hyperhive.pyz <role> mcp` session: initialize, tools/list, one call. (tool names listed, its answer)."""
    lines = [{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}},
             {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": args}}]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    done = subprocess.run(pyz_argv(role, "mcp"), input="".join(json.dumps(x) + "\n" for x in lines),
                          env=dict(env, HIVE_SOCKET=sock), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answers = {a["id"]: a for a in map(json.loads, done.stdout.splitlines())}
    return {t["name"] for t in answers[1]["result"]["tools"]}, answers[2]


# -- lookups by name ---------------------------------------------------------------------------

LOOKUPS = r"""
import importlib.metadata as metadata, json, sys
sys.path.insert(0, sys.argv[1])
inside = [d for d in metadata.distributions() if str(getattr(d, "_path", "")).startswith(sys.argv[1])]
loaded = {}
for dist in inside:
    for ep in dist.entry_points:
        ep.load()
        loaded.setdefault(dist.metadata["Name"].lower(), []).append(ep.name)
import markdown
names = [ep.name for ep in metadata.entry_points(group="markdown.extensions")]
for name in names:
    markdown.Markdown(extensions=[name]).convert("x")
from hyperhive import markup, resources
assert resources.IN_ZIP
print(json.dumps({"loaded": loaded, "markdown": names, "rendered": markup.render(sys.argv[2]),
                  "assets": {p: resources.read(p).hex() for p in json.loads(sys.argv[3])}}))
"""


def test_every_lookup_by_name_and_every_asset_works_inside_the_pyz():
    """What the pyz finds by name (entry points, plugins) or path (assets), on the bare runtime interpreter."""
    assets = sorted(os.path.relpath(os.path.join(d, f), ROOT) for d, _, files in os.walk(os.path.join(ROOT, "assets"))
                    for f in files)
    done = subprocess.run([PYZ_PYTHON, "-c", LOOKUPS, PYZ, MARKDOWN, json.dumps(assets)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert {"fenced_code", "tables", "sane_lists"} <= set(found["markdown"])
    assert rendered(found["rendered"]), found["rendered"]
    vendored = [n for n in found["loaded"]]
    assert "markdown" in vendored, found["loaded"]
    for path in assets:
        with open(os.path.join(ROOT, path), "rb") as f:
            assert bytes.fromhex(found["assets"][path]) == f.read(), path


def test_the_suite_runs_the_pyz_it_built_on_the_bare_interpreter():
    """No process of the suite falls back on the checkout or on packages the pyz does not carry."""
    done = subprocess.run([PYZ_PYTHON, "-c", "import bottle"], capture_output=True, text=True)
    assert done.returncode != 0, "the runtime interpreter must have only the compiled pins"
    argv = Hive("/nonexistent", claude=FAKE_CLAUDE).pyz, PYZ
    assert argv[0] == argv[1] and os.path.getmtime(PYZ) >= max(
        os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(ROOT, "hyperhive"))
        for f in files if f.endswith(".py"))

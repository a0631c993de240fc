"""The dashboard's routes in-process (WSGI): a real core's parts on a real database of each engine
(a sqlite file, a PostgreSQL database) and real git repos, a recording container backend, and a real
agent page server on a unix socket for the proxy."""

import json
import os
import gevent
import gevent.event
import pytest
from gevent import socket as gsocket  # this process is not monkey-patched
from gevent.pywsgi import WSGIServer

from conftest import FAKE_CLAUDE, PYZ, PYZ_PYTHON
from fakes import RecordingBackend
from hyperhive import wire
from hyperhive.core.auth import COOKIE, Auth
from hyperhive.core.containers.process import ProcessBackend
from hyperhive.core.daemon import Core
from hyperhive.core.layout import HarnessCommand, Layout
from hyperhive.schema import Agent, Message, open_core
from wsgi import call

ORIGIN = "http://127.0.0.1:7000"


def heard(sub):
    """What a hub subscription has been sent so far (a log's publisher delivers what it queued first)."""
    sub.fanout.flush(timeout=10)
    out = []
    while sub.queue.qsize():
        out.append(sub.queue.get_nowait())
    return out


class Dash:
    def __init__(self, tmp_path, database=None):
        """`database`: a URL of either engine (`db_url`), else the layout's sqlite file."""
        self.layout = Layout(tmp_path / "state")
        self.layout.makedirs()
        self.db = open_core(database or self.layout.db_path)
        self.backend = RecordingBackend()
        self.core = Core(self.layout, self.backend, HarnessCommand(PYZ, claude=FAKE_CLAUDE, python=PYZ_PYTHON),
                         dashboard=None)
        self.core.lifecycle.boot()  # creates the manager
        self.dashboard = self.core.make_dashboard()
        self.app = self.dashboard.app
        cookie, key, _ = self.core.auth.open_session("127.0.0.1", "the tests")
        self.cookie, self.key = f"{COOKIE}={cookie}", key

    def auth_headers(self):
        return {"Cookie": self.cookie, "X-Hive-Key": self.key}

    def get(self, path, headers=None, auth=True):
        return call(self.app, "GET", path, headers=dict(headers or {}, **(self.auth_headers() if auth else {})))

    def post(self, path, body=None, headers=None, auth=True, origin=ORIGIN):
        h = dict(headers or {})
        if auth:
            h.update(self.auth_headers())
        if origin:
            h["Origin"] = origin
        return call(self.app, "POST", path, headers=h, body=body if body is not None else {})

    def spawn(self, name):
        self.core.lifecycle.spawn(name)
        self.core.hub.flush(timeout=10)  # its events are delivered: a test reads the hub's seq after


@pytest.fixture
def dash(tmp_path, db_url):
    d = Dash(tmp_path, db_url)
    yield d
    d.db.close()


def error_of(res, status, code, *words):
    assert res.status == status, res.text
    body = res.json()
    assert body["ok"] is False and body["code"] == code and body["version"] == wire.VERSION
    for w in words:
        assert w in body["error"], body["error"]
    return body["error"]


# -- login ---------------------------------------------------------------------------------

GUARDED = [("GET", "/"), ("GET", "/api/state"), ("GET", "/dashboard/stream"), ("GET", "/dashboard/history"),
           ("GET", "/journal/manager"), ("GET", "/agent-config/manager"), ("GET", "/approval/1/diff"),
           ("GET", "/file-ref/1/0"),
           ("GET", "/agent/manager/"), ("GET", "/static/base.css"), ("POST", "/op-send"), ("POST", "/approve/1"),
           ("POST", "/deny/1"), ("POST", "/restart/manager"), ("POST", "/destroy/a"), ("POST", "/meta-update"),
           ("POST", "/spawn"), ("POST", "/purge-tombstone/a"), ("POST", "/answer-question/1"),
           ("POST", "/cancel-question/1")]


@pytest.mark.parametrize("method,path", GUARDED)
def test_every_route_but_login_needs_the_operator(dash, method, path):
    res = call(dash.app, method, path, headers={"Origin": ORIGIN})
    error_of(res, 401, "unauthorized", "hyperhive login-url")
    res = call(dash.app, method, path, headers={"Origin": ORIGIN, "Cookie": f"{COOKIE}=not-the-secret",
                                                "X-Hive-Key": dash.key})
    error_of(res, 401, "unauthorized")


def test_a_login_url_sets_the_cookie_once(dash):
    token = dash.core.auth.mint()
    res = call(dash.app, "GET", f"/login?token={token}")
    assert res.status == 303 and res.headers["location"].startswith("/#hive-key=")
    cookie = res.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and len(cookie.split(";")[0]) > len(COOKIE) + 40
    assert "; HttpOnly" in cookie and "; samesite=strict" in cookie.lower() and "; Path=/" in cookie
    headers = {"Cookie": cookie.split(";")[0], "X-Hive-Key": res.headers["location"].partition("#hive-key=")[2]}
    assert call(dash.app, "GET", "/api/state", headers=headers).status == 200
    again = call(dash.app, "GET", f"/login?token={token}")
    error_of(again, 401, "unauthorized", "used up or expired")
    error_of(call(dash.app, "GET", "/login"), 401, "unauthorized")


def test_a_login_token_expires():
    now = [1000.0]
    auth = Auth(tick=lambda: now[0])
    token = auth.mint()
    now[0] += 601
    assert not auth.redeem(token)
    fresh = auth.mint()
    assert auth.redeem(fresh) and not auth.redeem(fresh)


def test_a_session_survives_a_core_restart_but_not_a_logout(dash):
    assert dash.get("/api/state").status == 200
    again = Auth()  # a restarted core: sessions live in its database
    assert again.session(dash.cookie.partition("=")[2], dash.key) is not None
    again.logout()
    error_of(dash.get("/api/state"), 401, "unauthorized")


def test_posts_must_come_from_the_dashboard_itself(dash):
    dash.spawn("a")
    error_of(dash.post("/pause/a", origin=None), 403, "forbidden", "Origin")
    error_of(dash.post("/pause/a", origin="http://evil.example"), 403, "forbidden", "evil.example")
    assert dash.post("/pause/a").status == 200
    assert Agent.get(Agent.name == "a").paused


# -- state, stream, history ---------------------------------------------------------------

def test_state_is_the_whole_snapshot(dash):
    dash.spawn("alice")
    dash.core.broker.send("alice", wire.OPERATOR, "**done**")
    dash.core.hub.flush(timeout=10)
    res = dash.get("/api/state")
    assert res.status == 200 and res.headers["cache-control"] == "no-store"
    state = res.json()
    assert state["seq"] == dash.core.hub.seq and state["epoch"] == dash.dashboard.epoch
    assert [c["name"] for c in state["containers"]] == ["manager", "alice"]
    alice = state["containers"][1]
    assert alice["running"] and alice["url"] == "/agent/alice/" and alice["role"] == "agent"
    assert set(wire.STATUS_FIELDS) <= set(alice)
    assert state["inbox"][0]["body"] == "**done**"
    assert state["inbox"][0]["body_html"] == "<p><strong>done</strong></p>"
    assert state["approvals"] == [] and state["questions"] == [] and state["tombstones"] == []
    assert state["transients"] == {} and state["meta_inputs"] is None and state["backend"] == "fake"


def test_state_carries_pending_approvals_with_their_diff(dash):
    approval_id = dash.core.approvals.request_init_config("bob", "a helper")
    approvals = dash.get("/api/state").json()["approvals"]
    assert [a["id"] for a in approvals] == [approval_id]
    assert approvals[0]["kind"] == "init_config" and "diff" in approvals[0]
    diff = dash.get(f"/approval/{approval_id}/diff")
    assert diff.status == 200 and diff.headers["content-type"].startswith("text/plain")
    error_of(dash.get("/approval/999/diff"), 404, "not_found", "999")
    error_of(dash.get("/approval/x/diff"), 400, "bad_argument", "whole number")


def test_the_stream_carries_every_event_with_its_seq(dash):
    dash.spawn("alice")
    res = dash.get("/dashboard/stream")
    assert res.status == 200 and res.headers["content-type"].startswith("text/event-stream")
    first = next(res.stream())
    assert b"retry:" in first  # the hello flushes the headers
    seq0 = dash.core.hub.seq

    def later():
        dash.core.broker.send(wire.OPERATOR, "alice", "<script>x</script> *hi*")
        dash.core.lifecycle.set_paused("alice", True)

    gevent.spawn_later(0.01, later)
    events = res.events(2)
    assert [e["kind"] for e in events] == ["sent", "container_state_changed"]
    assert [e["seq"] for e in events] == [seq0 + 1, seq0 + 2]
    assert [e["_id"] for e in events] == [str(seq0 + 1), str(seq0 + 2)]
    assert events[0]["message"]["body_html"] == "<p>&lt;script&gt;x&lt;/script&gt; <em>hi</em></p>"
    assert events[1]["container"]["paused"] is True
    assert not dash.core.hub._subscribers, "a closed stream must unsubscribe"


def test_history_backfills_the_message_flow(dash):
    dash.spawn("alice")
    ids = [dash.core.broker.send(wire.OPERATOR, "alice", f"m{i}") for i in range(5)]
    dash.core.hub.flush(timeout=10)
    whole = dash.get("/dashboard/history").json()
    assert whole["seq"] == dash.core.hub.seq and whole["epoch"] == dash.dashboard.epoch
    assert [e["message"]["id"] for e in whole["events"]] == ids
    assert all(e["kind"] == "sent" and e["message"]["body_html"] for e in whole["events"])
    assert [e["message"]["id"] for e in dash.get("/dashboard/history?limit=2").json()["events"]] == ids[-2:]
    assert [e["message"]["id"] for e in dash.get(f"/dashboard/history?after={ids[2]}").json()["events"]] == ids[3:]
    error_of(dash.get("/dashboard/history?after=x"), 400, "bad_argument", "after")
    error_of(dash.get("/dashboard/history?limit=0"), 400, "bad_argument", "limit")


# -- actions ---------------------------------------------------------------------------------

def test_op_send_stores_a_message_from_the_operator(dash):
    dash.spawn("alice")
    res = dash.post("/op-send", {"to": "@alice", "body": "hello"})
    assert res.status == 200 and res.json()["ok"]
    row = dash.core.broker.inbox("alice", 1)[0]
    assert row["from"] == wire.OPERATOR and row["body"] == "hello" and row["id"] == res.json()["id"]
    form = call(dash.app, "POST", "/op-send", body="to=alice&body=via+form",
                headers={**dash.auth_headers(), "Origin": ORIGIN,
                         "Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 200 and dash.core.broker.inbox("alice", 1)[0]["body"] == "via form"
    error_of(dash.post("/op-send", {"to": "nobody", "body": "x"}), 404, "not_found", "nobody")
    error_of(dash.post("/op-send", {"to": "../etc", "body": "x"}), 400, "bad_argument", "not valid")
    error_of(dash.post("/op-send", {"to": "alice", "body": "  "}), 400, "bad_argument", "body")
    error_of(dash.post("/op-send", {"body": "x"}), 400, "bad_argument", "'to' is required")
    bad = call(dash.app, "POST", "/op-send", body=b"{not json", headers={
        **dash.auth_headers(), "Origin": ORIGIN, "Content-Type": "application/json"})
    error_of(bad, 400, "bad_frame", "not valid JSON")


def test_lifecycle_actions_run_the_host_verbs(dash):
    dash.spawn("a")
    for action, expect in (("stop", ("stop", "a", True)), ("start", ("start", "a")), ("kill", ("kill", "a")),
                           ("restart", ("start", "a")), ("rebuild", ("start", "a"))):
        res = dash.post(f"/{action}/a")
        assert res.status == 200, (action, res.text)
        assert dash.backend.calls[-1] == expect, action
    assert dash.post("/pause/a").status == 200 and Agent.get(Agent.name == "a").paused
    assert dash.post("/resume/a").status == 200 and not Agent.get(Agent.name == "a").paused
    error_of(dash.post("/levitate/a"), 404, "not_found", "/levitate/a")
    error_of(dash.post("/restart/nobody"), 404, "not_found", "nobody")
    error_of(dash.post("/restart/Bad!"), 400, "bad_argument", "not valid")
    error_of(dash.post("/destroy/manager"), 403, "forbidden", "manager")
    error_of(dash.post("/meta-update"), 409, "conflict", "meta flake")


def test_destroy_leaves_a_tombstone_that_can_be_purged(dash):
    dash.spawn("a")
    assert dash.post("/destroy/a").status == 200
    assert dash.get("/api/state").json()["tombstones"] == ["a"]
    assert dash.get("/journal/a").status == 200, "a tombstone's log stays readable"
    assert dash.post("/purge-tombstone/a").status == 200
    assert dash.get("/api/state").json()["tombstones"] == []
    error_of(dash.post("/purge-tombstone/a"), 404, "not_found")
    dash.spawn("b")
    assert dash.post("/destroy/b", {"purge": True}).status == 200
    assert not os.path.exists(dash.layout.home("b"))


def test_spawn_approve_and_deny(dash):
    assert dash.post("/spawn", {"name": "carol"}).status == 200
    assert "carol" in dash.core.lifecycle.names()
    error_of(dash.post("/spawn", {"name": "carol"}), 409, "conflict", "already exists")
    error_of(dash.post("/spawn", {"name": "operator"}), 400, "bad_argument")
    first = dash.core.approvals.request_init_config("dave", "")
    second = dash.core.approvals.request_init_config("erin", "")
    assert dash.post(f"/approve/{first}").status == 200
    assert dash.core.repos.exists("dave")
    error_of(dash.post(f"/approve/{first}"), 409, "conflict")
    res = dash.post(f"/deny/{second}", {"reason": "not now"})
    assert res.status == 200 and res.json()["approval"]["status"] == "denied"
    assert res.json()["approval"]["note"] == "not now"
    error_of(dash.post("/approve/999"), 404, "not_found")
    error_of(dash.post("/approve/0"), 400, "bad_argument", "approval id must be a whole number of 1 or more, got '0'")


def test_an_operator_question_is_shown_and_answered(dash):
    dash.spawn("alice")
    dash.spawn("bob")
    sub = dash.core.hub.subscribe()
    ask = dash.core.surfaces.dispatcher("agent", "alice")
    qid = ask({"cmd": "ask", "question": "Ship **v2** now?", "options": ["yes", "no"], "ttl_seconds": 3600})["id"]
    peer = ask({"cmd": "ask", "question": "Which branch?", "to": "bob"})["id"]
    [shown] = dash.get("/api/state").json()["questions"]  # bob's question is not the operator's
    assert (shown["id"], shown["asker"], shown["question"], shown["options"]) == \
        (qid, "alice", "Ship **v2** now?", ["yes", "no"])
    assert shown["question_html"] == "<p>Ship <strong>v2</strong> now?</p>"
    assert shown["asked_at"] and shown["expires_at"] > shown["asked_at"]
    added = [e for e in heard(sub) if e["kind"].startswith("question_")]
    assert [(e["kind"], e["question"]["id"]) for e in added] == [("question_added", qid)]
    assert added[0]["question"]["question_html"] == shown["question_html"]

    res = dash.post(f"/answer-question/{qid}", {"answer": "yes"})
    assert res.status == 200, res.text
    assert res.json()["question"]["answer"] == "yes" and res.json()["question"]["answered_by"] == "operator"
    [answer] = [m for m in dash.core.broker.inbox("alice", 10) if m["body"].startswith("[question_answered]")]
    assert answer["from"] == "operator" and f"question {qid}" in answer["body"]
    assert "> Ship **v2** now?" in answer["body"] and answer["body"].endswith("> yes")
    assert dash.get("/api/state").json()["questions"] == []
    resolved = [e for e in heard(sub) if e["kind"] == "question_resolved"]
    assert [(e["question"]["id"], e["question"]["answer"], e["question"]["answered_by"]) for e in resolved] == \
        [(qid, "yes", "operator")]

    error_of(dash.post(f"/answer-question/{qid}", {"answer": "no"}), 409, "conflict", "already closed")
    error_of(dash.post("/answer-question/999", {"answer": "yes"}), 404, "not_found", "there is no question 999")
    error_of(dash.post(f"/answer-question/{peer}", {}), 400, "bad_argument", "'answer' is required")
    error_of(dash.post("/answer-question/x", {"answer": "yes"}), 400, "bad_argument", "whole number")
    # the operator may answer an agent's question in its stead
    assert dash.post(f"/answer-question/{peer}", {"answer": "main"}).status == 200
    assert dash.core.broker.inbox("alice", 1)[0]["from"] == "operator"


def test_the_operator_cancels_a_question_and_its_asker_is_told(dash):
    dash.spawn("alice")
    sub = dash.core.hub.subscribe()
    ask = dash.core.surfaces.dispatcher("agent", "alice")
    qid = ask({"cmd": "ask", "question": "Deploy on Friday?", "options": ["yes", "no"]})["id"]
    res = dash.post(f"/cancel-question/{qid}")
    assert res.status == 200, res.text
    closed = res.json()["question"]
    assert (closed["answer"], closed["answered_by"]) == ("[cancelled by operator]", "operator")
    [told] = [m for m in dash.core.broker.inbox("alice", 10) if f"question {qid}" in m["body"]]
    assert told["from"] == "operator" and "cancelled by the operator" in told["body"]
    assert dash.get("/api/state").json()["questions"] == []
    resolved = [e["question"]["id"] for e in heard(sub) if e["kind"] == "question_resolved"]
    assert resolved == [qid], "the dashboard's card goes from the event"
    error_of(dash.post(f"/cancel-question/{qid}"), 409, "conflict", "already closed")
    error_of(dash.post("/cancel-question/999"), 404, "not_found", "there is no question 999")
    error_of(dash.post("/cancel-question/x"), 400, "bad_argument", "whole number")
    error_of(dash.post(f"/cancel-question/{qid}", origin="http://evil.example"), 403, "forbidden")


# -- journal, config, assets -------------------------------------------------------------------

def test_the_journal_tails_the_harness_log(dash):
    dash.spawn("a")
    page = dash.get("/journal/a")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"a" in page.body
    dash.dashboard.journal_seconds = 0.01
    res = dash.get("/journal/a/stream")
    log_path = dash.layout.log("a")
    gevent.spawn_later(0.05, lambda: open(log_path, "a").write("second line\nhalf"))
    events = res.events(2)
    assert events[0]["lines"] == ["a started"]
    assert events[1]["lines"] == ["second line"], "a half-written line waits for its end"
    resumed = dash.get("/journal/a/stream", headers={"Last-Event-ID": events[1]["_id"]})
    gevent.spawn_later(0.05, lambda: open(log_path, "a").write(" done\n"))
    assert resumed.events(1)[0]["lines"] == ["half done"], "a reconnect resumes where it left off"
    error_of(dash.get("/journal/nobody"), 404, "not_found")
    error_of(dash.get("/journal/..%2Fetc"), 404, "not_found")
    error_of(dash.get("/journal/a..b"), 400, "bad_argument", "not valid")


def stored_refs(message_id):
    return json.loads(Message.get_by_id(message_id).file_refs)


def test_file_refs_are_stored_at_ingest_and_previewed_again_on_demand(dash, tmp_path):
    dash.spawn("alice")
    state, shared = dash.layout.state("alice"), dash.layout.shared_dir
    os.makedirs(state, exist_ok=True)
    with open(os.path.join(state, "report.md"), "w") as f:
        f.write("# report\nall green ✓\n")
    with open(os.path.join(shared, "plan.txt"), "w") as f:
        f.write("the plan\n")
    send = dash.core.surfaces.dispatcher("agent", "alice")
    body = f"see {state}/report.md and ({shared}/plan.txt), twice: {state}/report.md"
    mid = send({"cmd": "send", "to": wire.OPERATOR, "body": body})["id"]
    report = {"path": f"{state}/report.md", "host_path": f"{state}/report.md",
              "size": len("# report\nall green ✓\n".encode())}
    plan = {"path": f"{shared}/plan.txt", "host_path": f"{shared}/plan.txt", "size": 9}
    assert stored_refs(mid) == [report, plan]
    assert dash.get("/api/state").json()["inbox"][0]["file_refs"] == [report, plan]
    assert dash.get("/dashboard/history").json()["events"][-1]["message"]["file_refs"] == [report, plan]

    res = dash.get(f"/file-ref/{mid}/0")
    assert res.status == 200 and res.headers["cache-control"] == "no-store"
    assert res.json() == {"path": report["path"], "size": report["size"], "truncated": False, "binary": False,
                          "text": "# report\nall green ✓\n"}
    assert dash.get(f"/file-ref/{mid}/1").json()["text"] == "the plan\n"

    # the file is swapped for a link out after the message was stored: the stored ref is not trusted
    outside = tmp_path / "outside.md"
    outside.write_text("the host's secrets")
    os.remove(report["host_path"])
    os.symlink(outside, report["host_path"])
    said = error_of(dash.get(f"/file-ref/{mid}/0"), 403, "forbidden", "symlink")
    assert "secrets" not in said
    os.remove(plan["host_path"])
    error_of(dash.get(f"/file-ref/{mid}/1"), 404, "not_found", f"{shared}/plan.txt does not exist")
    error_of(dash.get(f"/file-ref/{mid}/2"), 404, "not_found",
             f"message {mid} has only 2 file references; there is no number 2")
    error_of(dash.get(f"/file-ref/{mid + 1000}/0"), 404, "not_found", f"there is no message {mid + 1000}")
    error_of(dash.get("/file-ref/x/0"), 400, "bad_argument", "message id must be a whole number")
    error_of(dash.get(f"/file-ref/{mid}/-1"), 400, "bad_argument",
             "file reference number must be a whole number of 0 or more, got '-1'")
    error_of(dash.get(f"/file-ref/{mid}/0", auth=False), 401, "unauthorized", "hyperhive login-url")


def test_only_files_the_reader_may_open_become_refs(dash):
    dash.spawn("alice")
    dash.spawn("bob")
    state = dash.layout.state("alice")
    os.makedirs(os.path.join(state, "notes.d"), exist_ok=True)
    os.makedirs(os.path.join(state, "subdir"), exist_ok=True)
    with open(os.path.join(state, "mine.md"), "w") as f:
        f.write("alice's")
    send = dash.core.surfaces.dispatcher("agent", "alice")
    nothing = (f"/etc/passwd, ../x.md, {state}/../alice/state/mine.md, {state}/subdir, {state}/notes.d, "
               f"{state}/missing.md and {dash.layout.state('bob')}/theirs.md")
    mid = send({"cmd": "send", "to": wire.OPERATOR, "body": nothing})["id"]
    assert stored_refs(mid) == []
    error_of(dash.get(f"/file-ref/{mid}/0"), 404, "not_found", "has no file references")
    # to bob, alice's state dir is out of reach: bob could not open it
    assert stored_refs(send({"cmd": "send", "to": "bob", "body": f"read {state}/mine.md"})["id"]) == []
    # from the operator, the reader is alice
    mine = dash.core.broker.send(wire.OPERATOR, "alice", f"read {state}/mine.md")
    assert [r["path"] for r in stored_refs(mine)] == [f"{state}/mine.md"]
    assert dash.get(f"/file-ref/{mine}/0").json()["text"] == "alice's"


def test_agent_config_shows_the_deployed_files(dash):
    dash.spawn("a")
    shell = dash.get("/agent-config/a", headers={"X-Hive-Key": ""})
    assert shell.status == 200 and b"config.js" in shell.body, "the page is a shell; its data comes with the key"
    res = dash.get("/api/agent-config/a").json()
    assert res["name"] == "a" and len(res["sha"]) == 40
    assert "hive.json" in res["files"] and "agent.nix" in res["files"]
    json.loads(res["files"]["hive.json"])
    error_of(dash.get("/api/agent-config/nobody"), 404, "not_found")
    error_of(dash.get("/agent-config/nobody"), 404, "not_found")


def test_static_assets_are_cached_by_revision(dash):
    res = dash.get("/static/base.css")
    assert res.status == 200 and res.headers["content-type"].startswith("text/css")
    assert res.headers["cache-control"] == "no-cache" and res.headers["etag"]
    again = dash.get("/static/base.css", headers={"If-None-Match": res.headers["etag"]})
    assert again.status == 304
    error_of(dash.get("/static/../hyperhive/wire.py"), 404, "not_found")
    error_of(dash.get("/static/nope.js"), 404, "not_found")
    page = dash.get("/")
    assert page.status == 200 and b"{{rev}}" not in page.body and page.headers["x-frame-options"] == "DENY"


def test_unknown_routes_and_methods_have_the_one_error_shape(dash):
    error_of(dash.get("/nothing/here/at/all"), 404, "not_found", "/nothing/here/at/all")
    error_of(dash.post("/api/state"), 400, "bad_argument", "POST is not allowed")
    error_of(dash.get("/restart/a"), 400, "bad_argument", "GET is not allowed")


NAVIGATION = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_a_browser_navigating_to_an_error_gets_a_page_and_a_script_the_json(dash):
    def page_of(res, status, *words):
        assert res.status == status and res.headers["content-type"] == "text/html; charset=utf-8", res.text
        assert "default-src 'none'; style-src 'sha256-" in res.headers["content-security-policy"]
        for w in words:
            assert w in res.text, res.text
        return res.text

    page_of(dash.get("/agent/nobody/", headers=NAVIGATION), 404, "there is no agent named &#x27;nobody&#x27;")
    page_of(call(dash.app, "GET", "/", headers=NAVIGATION), 401, "not logged in",
            "<code>hyperhive login-url</code>")
    page_of(call(dash.app, "GET", "/login?token=spent", headers=NAVIGATION), 401, "used up or expired")
    hostile = page_of(dash.get("/nothing/<script>alert(1)</script>{{css}}", headers=NAVIGATION), 404)
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile
    # the same routes asked by a script, or by anything that does not ask for HTML: the one JSON shape
    error_of(dash.get("/agent/nobody/", headers={"Accept": "application/json"}), 404, "not_found")
    error_of(call(dash.app, "GET", "/", headers={"Accept": "*/*"}), 401, "unauthorized")
    error_of(dash.post("/restart/nobody", headers=NAVIGATION), 404, "not_found")  # a POST is never a page


# -- the proxy ---------------------------------------------------------------------------------

class PageServer:
    """A stand-in agent page on the agent's web.sock that says what it was asked."""

    def __init__(self, path):
        self.seen = []
        listener = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        self.release = gevent.event.Event()
        self.server = WSGIServer(listener, self.app, log=None)
        self.server.start()

    def app(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.seen.append({"path": environ["PATH_INFO"], "query": environ["QUERY_STRING"],
                          "secret": environ.get("HTTP_X_HIVE_SECRET"), "cookie": environ.get("HTTP_COOKIE"),
                          "body": body, "method": environ["REQUEST_METHOD"]})
        if environ["PATH_INFO"] == "/events/stream":
            start_response("200 OK", [("Content-Type", "text/event-stream")])

            def frames():
                yield b"data: {\"seq\": 1}\n\n"
                self.release.wait(10)  # the second frame waits: the first must already be through
                yield b"data: {\"seq\": 2}\n\n"

            return frames()
        if environ["PATH_INFO"] == "/hostile":  # what an agent that rewrote its harness might answer
            start_response("200 OK", [("Content-Type", "text/html"), ("Location", "/approve/1")])
            return [b"<script>fetch('/approve/1', {method: 'POST'})</script>"]
        start_response("201 Created", [("Content-Type", "application/json"), ("Set-Cookie", "x=y"),
                                       ("Content-Security-Policy", "script-src *")])
        return [json.dumps(self.seen[-1], default=str).encode()]


def test_the_proxy_adds_the_agent_secret_and_never_the_cookie(dash):
    dash.spawn("a")
    sock_dir = os.path.dirname(dash.layout.socket("a"))
    page = PageServer(os.path.join(sock_dir, "web.sock"))
    try:
        res = dash.post(f"/agent/a/send?x=1&key={dash.key}", {"body": "hi"})
        assert res.status == 201 and "set-cookie" not in res.headers
        # data only, never as something a browser would run on the dashboard's origin
        assert res.headers["x-content-type-options"] == "nosniff"
        assert res.headers["content-security-policy"] == "default-src 'none'; sandbox"
        seen = page.seen[-1]
        with open(os.path.join(sock_dir, "web.secret")) as f:
            assert seen["secret"] == f.read().strip()
        assert seen["cookie"] is None and seen["path"] == "/send" and seen["query"] == "x=1", "nor the key"
        assert dash.key not in json.dumps(page.seen, default=str)
        assert json.loads(seen["body"]) == {"body": "hi"} and seen["method"] == "POST"
        asked = len(page.seen)
        # the page and its assets come from the core's own files; the harness is not asked
        assert b"static/agent.js" in dash.get("/agent/a/").body
        assert b"static/stats.js" in dash.get("/agent/a/stats").body
        assert dash.get("/agent/a/static/agent.js").body == dash.get("/static/agent.js").body
        assert len(page.seen) == asked
        assert "script-src 'self'" in dash.get("/agent/a/").headers["content-security-policy"]
        hostile = dash.get("/agent/a/hostile")
        error_of(hostile, 503, "unavailable", "only JSON and event streams are passed on")
        assert "location" not in hostile.headers and b"<script>" not in hostile.body
        redirect = dash.get("/agent/a")
        assert redirect.status == 308 and redirect.headers["location"].endswith("/agent/a/")
        stream = dash.get("/agent/a/events/stream", headers={"Accept": "text/event-stream"})
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        it = stream.stream()
        assert b'"seq":1' in next(it), "the first frame is through before the page sends the second"
        page.release.set()
        assert b'"seq":2' in next(it)
        stream.close()
    finally:
        page.server.stop()
    # nothing listens: why, from the agent's row (it runs, so its page is still coming up)
    body = error_of(dash.get("/agent/a/api/state"), 503, "unavailable", "not up yet")
    assert dash.get("/agent/a/api/state").json()["state"] == "running"
    assert dash.post("/stop/a").status == 200
    down = dash.get("/agent/a/api/state")
    error_of(down, 503, "unavailable", "a's harness is not running — start it", "`hyperhive start a`")
    assert (down.json()["state"], down.json()["transient"]) == ("stopped", None), "the page offers a start"
    assert body != down.json()["error"]
    error_of(dash.get("/agent/nobody/"), 404, "not_found", "there is no agent named 'nobody'")
    error_of(dash.get("/agent/Bad/"), 400, "bad_argument")


def test_each_agent_has_its_own_page_secret(dash):
    dash.spawn("a")
    dash.spawn("b")
    secret = {n: open(os.path.join(os.path.dirname(dash.layout.socket(n)), "web.secret")).read().strip()
              for n in ("a", "b")}
    assert secret["a"] != secret["b"] and secret["a"] not in (dash.key, dash.cookie.partition("=")[2])
    mode = os.stat(os.path.join(os.path.dirname(dash.layout.socket("a")), "web.secret")).st_mode & 0o777
    assert mode == 0o640  # the agent's group (its socket dir's) reads it; others nothing


# -- over real HTTP, on a real daemon -------------------------------------------------------------

def test_login_url_from_the_cli_opens_the_dashboard_of_a_real_core(hive):
    import http.cookiejar
    import subprocess
    import urllib.error
    import urllib.parse
    import urllib.request

    from conftest import pyz_argv

    out = subprocess.run(pyz_argv("--socket", hive.host_sock, "login-url"), capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out.startswith(hive.url + "/login?token=")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(hive.url + "/api/state", timeout=30)
    assert refused.value.code == 401 and json.loads(refused.value.read())["code"] == "unauthorized"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(out, timeout=30)  # 303 to /#hive-key=… with the cookie set
    assert page.status == 200 and b"<html" in page.read().lower()
    key = urllib.parse.urlsplit(page.url).fragment.partition("hive-key=")[2]
    with pytest.raises(urllib.error.HTTPError) as keyless:
        opener.open(hive.url + "/api/state", timeout=30)
    assert keyless.value.code == 401, "the cookie alone opens only the shells"
    request = urllib.request.Request(hive.url + "/api/state", headers={"X-Hive-Key": key})
    state = json.loads(opener.open(request, timeout=30).read())
    assert [c["name"] for c in state["containers"]] == ["manager"]
    with pytest.raises(urllib.error.HTTPError) as reused:
        urllib.request.urlopen(out, timeout=30)
    assert reused.value.code == 401
    assert hive.url.startswith("http://127.0.0.1:"), "the dashboard listens on loopback unless told otherwise"


def test_traps_in_an_agents_socket_dir_are_not_followed(dash, tmp_path):
    """A container can write its socket dir: a link or fifo laid there must not fool the core."""
    dash.spawn("a")
    sock_dir = os.path.dirname(dash.layout.socket("a"))
    target = tmp_path / "host-file"
    target.write_text("root-only contents\n")
    secret_path = os.path.join(sock_dir, "web.secret")
    os.unlink(secret_path)
    os.symlink(target, secret_path)
    secret = Auth.agent_secret(sock_dir)
    assert "root-only" not in secret and not os.path.islink(secret_path)
    assert target.read_text() == "root-only contents\n", "the link's target is never written"
    os.unlink(secret_path)
    os.mkfifo(secret_path)
    assert len(Auth.agent_secret(sock_dir)) == 64, "a fifo is replaced, not waited on"
    os.symlink(dash.layout.host_socket, os.path.join(sock_dir, "web.sock"))
    error_of(dash.get("/agent/a/api/state"), 503, "unavailable", "not up yet")


def test_a_replaced_or_truncated_log_is_read_from_its_start(tmp_path):
    backend = ProcessBackend()
    log_path = tmp_path / "harness.log"
    log_path.write_text("".join(f"line {i}\n" for i in range(1000)))
    lines, cursor = backend.log_tail("a", str(tmp_path), lines=3)
    assert lines == ["line 997", "line 998", "line 999"]
    log_path.write_text("fresh\n")  # truncated in place: the offset is past the end
    assert backend.log_tail("a", str(tmp_path), cursor)[0] == ["fresh"]
    _, cursor = backend.log_tail("a", str(tmp_path))
    os.unlink(log_path)
    log_path.write_text("rotated\n")  # a new file: another inode
    assert backend.log_tail("a", str(tmp_path), cursor)[0] == ["rotated"]
    os.unlink(log_path)
    assert backend.log_tail("a", str(tmp_path), cursor) == ([], cursor), "no log yet is no lines, no error"

"""The operator's dashboard: the routes of the core's web surface, its login, and the agent-page proxy.

Owns the HTTP face of the core (docs/web.md lists every route): who may
use each route (`auth`: the session's cookie opens the pages' shells, its
key every data route too), the cold `/api/state` snapshot, the
`/dashboard/stream` of hub events, the message flow backfill, the previews
of messages' file references, the journal tail, the operator's sessions,
and each agent's page (served from the core's files, its data through
`agentpage`). Every action is the host surface's verb run as the operator,
so the dashboard and the admin CLI can never disagree about what an action
does or which sentence a refusal carries.
"""

import http.cookies
import logging
import time
import uuid

import bottle
import gevent

from hyperhive import resources, web, wire
from hyperhive.core import agentpage
from hyperhive.core import auth as auths
from hyperhive.core.auth import COOKIE, KEY_HEADER, KEY_PARAM
from hyperhive.core.views import INBOX_SIZE

log = logging.getLogger(__name__)

HISTORY_DEFAULT, HISTORY_MAX = 200, 1000
JOURNAL_SECONDS = 1.0
# Routes a browser navigates to: the cookie alone opens them, for they hold no data (a shell's
# script asks for the data with the session's key). /login opens a session.
OPEN_ROUTES = frozenset({"/login"})
SHELL_ROUTES = frozenset({"/", "/static/<path:path>", "/journal/<name>", "/agent-config/<name>", "/agent/<name>",
                          "/agent/<name>/", "/agent/<name>/stats", "/agent/<name>/static/<path:path>"})
SESSION_RECHECK_SECONDS = web.KEEPALIVE_SECONDS  # an open stream ends this soon after its session does
AGENT_PAGES = {"": "agent.html", "stats": "stats.html"}  # served by the core, not the harness
ACTIONS = {  # POST /<action>/<name> -> (verb, fixed arguments)
    "start": ("start", {}), "stop": ("stop", {}), "restart": ("restart", {}), "rebuild": ("rebuild", {}),
    "kill": ("kill", {}), "pause": ("set_paused", {"paused": True}), "resume": ("set_paused", {"paused": False}),
    "purge-tombstone": ("purge_tombstone", {}),
}


class Dashboard:
    """`app` is the WSGI application. It reads through `views` (core/views.py), streams the `hub`,
    acts through `dispatch` (the host surface as the operator) and logs in through `auth`; it holds
    nothing else of the core."""

    def __init__(self, views, hub, dispatch, auth):
        self.views, self.hub, self.dispatch, self.auth = views, hub, dispatch, auth
        self.epoch = uuid.uuid4().hex[:12]  # the hub's seq starts over with each core
        self.journal_seconds = JOURNAL_SECONDS
        self.app = self._build()

    # -- snapshots ------------------------------------------------------------------------

    def state(self):
        seq = self.hub.seq  # read first: everything below is at least this new
        return {"seq": seq, "epoch": self.epoch, "rev": resources.revision(), **self.views.snapshot()}

    def history(self, after=None, limit=HISTORY_DEFAULT):
        seq = self.hub.seq
        return {"seq": seq, "epoch": self.epoch, "events": self.views.flow(after, limit)}

    def stream(self, session=None):
        """The dashboard's SSE body; it ends once `session` (when given) has been logged out or expired."""
        return self.hub.sse(self.hub.subscribe(), live=self._live(session))

    def _live(self, session):
        """A check an open stream makes as it goes: its session is still live (asked at most every keepalive)."""
        if session is None:
            return lambda: True
        checked = [time.monotonic()]

        def live():
            if time.monotonic() - checked[0] < SESSION_RECHECK_SECONDS:
                return True
            checked[0] = time.monotonic()
            if self.auth.still_live(session.id):
                return True
            log.info("closing a stream of session %d: it was logged out or expired", session.id)
            return False

        return live

    # -- the guard --------------------------------------------------------------------------

    def _guard(self, callback):
        def wrapper(*args, **kwargs):
            request = bottle.request
            rule = request.route.rule
            if rule not in OPEN_ROUTES:
                shell = rule in SHELL_ROUTES
                session = self.auth.session(_operator_cookie(request), _key(request), need_key=not shell)
                if session is None:
                    raise wire.HiveError(
                        "you are not logged in (or this session ended): run `hyperhive login-url` on the hive's "
                        "host and open the URL it prints" + ("" if shell else "; a page opened before that "
                                                             "login needs a reload"), "unauthorized")
                request.environ["hive.session"] = session
                if request.method not in ("GET", "HEAD"):
                    self._check_origin(request)
            return callback(*args, **kwargs)

        return wrapper

    @staticmethod
    def _check_origin(request):
        origin = request.get_header("Origin")
        if not origin:
            raise wire.HiveError(f"{request.method} {request.path} needs an Origin header (browsers send one; "
                                 "from a script, use the hyperhive CLI)", "forbidden")
        own = f"{request.urlparts.scheme}://{request.get_header('Host', '')}"
        if origin != own:
            raise wire.HiveError(f"refused a {request.method} from {origin}: only the dashboard's own pages "
                                 f"({own}) may act", "forbidden")

    # -- routes -----------------------------------------------------------------------------

    def _build(self):
        app = web.app("the dashboard", pages=True)
        app.install(self._guard)
        route = app.route

        route("/login", callback=self.login)
        route("/logout", "POST", self.logout)
        route("/logout/<session_id>", "POST", self.logout)
        route("/api/sessions", callback=self.sessions)
        route("/", callback=lambda: web.page("dashboard.html"))
        route("/static/<path:path>", callback=lambda path: web.static(path))
        route("/api/state", callback=lambda: web.json_response(self.state()))
        route("/dashboard/stream", callback=self.sse)
        route("/dashboard/history", callback=self.get_history)
        route("/op-send", "POST", self.op_send)
        route("/api/inbox", callback=self.inbox_page)
        route("/inbox/read", "POST", self.mark_read)
        route("/spawn", "POST", self.spawn)
        route("/approve/<approval_id>", "POST", self.approve)
        route("/deny/<approval_id>", "POST", self.deny)
        route("/answer-question/<question_id>", "POST", self.answer_question)
        route("/cancel-question/<question_id>", "POST", self.cancel_question)
        route("/destroy/<name>", "POST", self.destroy)
        route("/meta-update", "POST", lambda: self.act("update_meta"))
        route(f"/<action:re:{'|'.join(ACTIONS)}>/<name>", "POST", self.lifecycle_action)
        route("/journal/<name>", callback=self.journal_page)
        route("/journal/<name>/stream", callback=self.journal_stream)
        route("/agent-config/<name>", callback=self.config_page)
        route("/api/agent-config/<name>", callback=self.agent_config)
        route("/approval/<approval_id>/diff", callback=self.approval_diff)
        route("/api/tool-calls/<name>", callback=self.tool_calls)
        route("/api/tool-calls/<name>/stream", callback=self.tool_calls_stream)
        route("/file-ref/<message_id>/<index>", callback=self.file_ref)
        route("/agent/<name>", callback=lambda name: bottle.redirect(f"/agent/{wire.check_name(name)}/", 308))
        route("/agent/<name>/", callback=lambda name: self.agent_page(name, ""))
        route("/agent/<name>/stats", callback=lambda name: self.agent_page(name, "stats"))
        route("/agent/<name>/static/<path:path>", callback=lambda name, path: self.agent_page(name, "static", path))
        route("/agent/<name>/<path:path>", ["GET", "POST"], callback=self.proxy)
        return app

    def login(self):
        request = bottle.request
        if not self.auth.redeem(request.query.get("token")):
            raise wire.HiveError("this login link is used up or expired; run `hyperhive login-url` on the "
                                 "hive's host for a new one", "unauthorized")
        cookie, key, _ = self.auth.open_session(request.remote_addr, request.get_header("User-Agent", ""))
        # the key rides in the fragment: the browser keeps it from every server and every Referer
        response = bottle.HTTPResponse(status=303, headers={"Location": f"/#hive-key={key}", "Cache-Control": "no-store",
                                                            "Referrer-Policy": "no-referrer"})
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path="/",
                            max_age=auths.SESSION_SECONDS, secure=request.urlparts.scheme == "https")
        return response

    def logout(self, session_id=None):
        """End this session (the browser's own) or, with an id, another one listed by /api/sessions."""
        own = bottle.request.environ["hive.session"]
        target = own.id if session_id is None else _int(session_id, "session id", 1)
        self.auth.logout(target)
        response = web.json_response({"ok": True, "ended": target})
        if target == own.id:
            response.delete_cookie(COOKIE, path="/")
        return response

    def sessions(self):
        return web.json_response({"sessions": self.auth.sessions(current=bottle.request.environ["hive.session"])})

    def sse(self):
        return web.sse(self.stream(bottle.request.environ.get("hive.session")))

    def get_history(self):
        query = bottle.request.query
        after = _int(query.get("after"), "after", 0) if query.get("after") else None
        limit = min(HISTORY_MAX, _int(query.get("limit") or HISTORY_DEFAULT, "limit", 1))
        return web.json_response(self.history(after, limit))

    def act(self, verb, **args):
        return web.json_response(self.dispatch({"cmd": verb, **args}))

    def inbox_page(self):
        """A page of the operator's inbox further back (`before`), with who sent how many."""
        query = bottle.request.query
        before = _int(query.get("before"), "before", 1) if query.get("before") else None
        limit = min(INBOX_SIZE, _int(query.get("limit") or INBOX_SIZE, "limit", 1))
        return web.json_response(self.views.inbox(limit, before, unread=query.get("unread") == "1",
                                                  sender=query.getunicode("sender") or None))

    def mark_read(self):
        ids = web.body().get("ids")
        return self.act("mark_read", **({"ids": ids} if ids is not None else {}))

    def op_send(self):
        data = web.body()
        to = web.field(data, "to")
        return self.act("send", to=to.strip().lstrip("@") if isinstance(to, str) else to, body=web.field(data, "body"))

    def spawn(self):
        return self.act("spawn", name=web.field(web.body(), "name"))

    def approve(self, approval_id):
        always = web.body().get("always", False)  # "always allow" of a tool call: the host verb says if it may
        return self.act("approve", id=_int(approval_id, "approval id", 1), **({"always": always} if always else {}))

    def deny(self, approval_id):
        return self.act("deny", id=_int(approval_id, "approval id", 1),
                        reason=web.body().get("reason") or "")

    def answer_question(self, question_id):
        qid = _int(question_id, "question id", 1)
        return self.act("answer", id=qid, answer=web.field(web.body(), "answer"))

    def cancel_question(self, question_id):
        """Withdraw a question as the operator (the host verb `cancel_question`): its asker is told."""
        return self.act("cancel_question", id=_int(question_id, "question id", 1))

    def destroy(self, name):
        purge = web.body().get("purge", False)
        if isinstance(purge, str):
            purge = purge.lower() in ("1", "true", "on", "yes")
        return self.act("destroy", name=name, purge=bool(purge))

    def lifecycle_action(self, action, name):
        verb, fixed = ACTIONS[action]
        if verb in ("start", "stop"):
            return self.act(verb, scope={"agent_names": [name]})
        return self.act(verb, name=name, **fixed)

    def approval_diff(self, approval_id):
        diff = self.views.approval_diff(_int(approval_id, "approval id", 1))
        return bottle.HTTPResponse(diff, 200, {"Content-Type": "text/plain; charset=utf-8",
                                               "Cache-Control": "no-store"})

    def file_ref(self, message_id, index):
        """The head of a message's file reference, read again now (views.file_ref says how)."""
        return web.json_response(self.views.file_ref(_int(message_id, "message id", 1),
                                                     _int(index, "file reference number", 0)))

    def _to_owner(self, name, path):
        """A page of another node's agent: the browser goes to that node's dashboard."""
        other = self.views.elsewhere(wire.check_name(name))
        if other is not None and other[1]:
            bottle.redirect(f"{other[1]}{path}", 307)

    def config_page(self, name):
        self._to_owner(name, f"/agent-config/{name}")
        self.views.agent(name)
        return web.page("config.html", name=name)

    def agent_config(self, name):
        return web.json_response(self.views.agent_config(name))

    # -- an agent's tool calls, for its page --------------------------------------------------------

    def tool_calls(self, name):
        """The agent's tool calls waiting for the operator: its page shows them with the actions, which are
        this core's own routes (/approve, /deny), never the agent's harness."""
        seq = self.hub.seq  # read first: the rows below are at least this new
        return web.json_response({"seq": seq, "epoch": self.epoch, "approvals": self.views.tool_calls(name)})

    def tool_calls_stream(self, name):
        """The hub's `approval_added` / `approval_resolved` events of the agent's tool calls, nothing else."""
        self.views.agent(name)
        sub, live = self.hub.subscribe(), self._live(bottle.request.environ.get("hive.session"))

        def frames():
            try:  # bytes throughout, as the hub's frames are
                yield web.SSE_HELLO.encode()
                for event in sub.events(web.KEEPALIVE_SECONDS):
                    if not live():
                        return
                    if event is None:
                        yield web.SSE_KEEPALIVE.encode()
                    elif event["kind"] in ("approval_added", "approval_resolved") and \
                            event["approval"]["kind"] == "tool_use" and event["approval"]["agent"] == name:
                        yield self.hub.frame(event)
            finally:
                sub.close()

        return web.sse(frames())

    # -- the journal ----------------------------------------------------------------------------

    def journal_page(self, name):
        self._to_owner(name, f"/journal/{name}")
        self.views.log_home(name)
        return web.page("journal.html", name=name)

    def journal_stream(self, name):
        home = self.views.log_home(name)
        cursor = bottle.request.get_header("Last-Event-ID") or None
        lines, cursor = self.views.log_tail(name, home, cursor)  # a first failure is the page's error
        live = self._live(bottle.request.environ.get("hive.session"))

        def frames(lines=lines, cursor=cursor):
            yield web.SSE_HELLO
            quiet_since = time.monotonic()
            while live():
                if lines:
                    yield web.sse_frame({"lines": lines}, cursor)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= web.KEEPALIVE_SECONDS:
                    yield web.SSE_KEEPALIVE
                    quiet_since = time.monotonic()
                gevent.sleep(self.journal_seconds)
                try:
                    lines, cursor = self.views.log_tail(name, home, cursor)
                except wire.HiveError as e:
                    log.warning("tailing %s's log: %s", name, e)
                    yield web.sse_frame({"lines": [f"[hyperhive: cannot read the log: {e}]"]}, cursor)
                    return

        return web.sse(frames())

    # -- the agent pages ------------------------------------------------------------------------

    def agent_page(self, name, page, asset=None):
        """An agent's page and its assets, from the core's own files: the harness sends only data."""
        if page != "static":
            self._to_owner(name, f"/agent/{name}/{page}")
        self.views.agent(name)
        return web.static(asset) if page == "static" else web.page(AGENT_PAGES[page])

    def proxy(self, name, path):
        sock_dir = self.views.page_dir(name)
        return agentpage.proxy(name, path, sock_dir, self.auth.agent_secret(sock_dir),
                               live=self._live(bottle.request.environ.get("hive.session")),
                               down=lambda name: agentpage.down(name, *self.views.agent_shown(name)))


def _key(request):
    """The session key a request carries: its header, or (for an EventSource, which sends no headers) ?key=."""
    key = request.environ.get("HTTP_" + KEY_HEADER.upper().replace("-", "_"))
    if not key and request.method == "GET":
        key = request.query.get(KEY_PARAM)
    return key or None


def _operator_cookie(request):
    """The operator cookie's value from the Cookie header.

    Python's parser gives up on the whole header over one cookie whose name it
    finds illegal (another app on this host may set one): the pair is then
    looked up by hand, so such a cookie neither fails the request nor locks the
    operator out."""
    try:
        return request.get_cookie(COOKIE)
    except http.cookies.CookieError:
        for pair in (request.get_header("Cookie") or "").split(";"):
            name, _, value = pair.strip().partition("=")
            if name == COOKIE:
                return value
        return None


_int = wire.whole_number  # (value, what, lo): the one parser of a typed number, its one sentence

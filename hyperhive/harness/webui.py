"""The agent's own web page, server side: routes, live-event SSE, operator turn controls.

Owns the page's HTTP data surface (docs/web.md, "Agent page routes"; the
page shell and its assets are the core's): the snapshot, the event stream
and its history, the operator's actions on this agent (send, cancel, retry,
compact, new session, model, claude's login), the loose-ends and stats
data, previews of the files this agent may reach, and the listener: a unix
socket `web.sock` beside the agent's core socket that answers only requests
carrying this agent's secret (`web.secret`, written by the core).

The harness handed to `make_app`/`start` (`main.AgentRuntime`) must have: `name`, `role`,
`socket` (the core socket path), `bus`, `loop` (a TurnLoop: `in_turn`,
`new_session`, `turn_lock`), `current` (the running claude `Run` or None)
and `compact()` (runs a compaction, returns an Outcome); for `/login/*` and
the snapshot's `status` also `login` (a login.Login; without one the page
says online); for `/api/file` also `state_dir` and `shared_dir` (the
hive's shared dir, None without one).
"""

import hmac
import json
import logging
import os
import re
import time

import bottle
import gevent
import gevent.queue

from hyperhive import jsonline, reach, resources, web, wire
from hyperhive.harness import stats
from hyperhive.schema import Event

log = logging.getLogger(__name__)

SOCKET_NAME = "web.sock"
SECRET_NAME = "web.secret"
SECRET_HEADER = "X-Hive-Secret"
MODELS = ("haiku", "sonnet", "opus")
MODEL_RE = re.compile(r"[A-Za-z0-9._\[\]-]{1,64}")  # fullmatch: it becomes a --model argument
INBOX_LIMIT = 30
HISTORY_DEFAULT, HISTORY_MAX = 200, 2000
REPLAY_MAX = 2000  # events replayed to a reconnecting EventSource
CORE_TIMEOUT = 10.0


# -- the event history --------------------------------------------------------------

def _load(rows):
    return [json.loads(row.data) for row in rows]


def events_after(after, limit, before=None):
    """The oldest `limit` events with seq above `after` (and below `before`), oldest first."""
    query = Event.select().where(Event.seq > after)
    if before is not None:
        query = query.where(Event.seq < before)
    return _load(query.order_by(Event.seq).limit(limit))


def newest_after(after, limit):
    """The newest `limit` events with seq above `after`, oldest first (a replay ends where live begins)."""
    return list(reversed(_load(Event.select().where(Event.seq > after).order_by(Event.seq.desc()).limit(limit))))


# -- the secret -----------------------------------------------------------------------

class Secret:
    """This agent's page secret, read from web.secret; re-read while it is missing."""

    def __init__(self, path):
        self.path = path
        self.value = self._read()
        if self.value is None:
            log.error("%s is missing or unreadable; the page refuses every request until the core writes it",
                      path)

    def _read(self):
        try:
            with open(self.path) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def check(self, given):
        if self.value is None:
            self.value = self._read()
            if self.value is None:
                raise wire.HiveError("this agent's page has no web.secret yet; the core writes it when it "
                                     "starts the agent", "unavailable")
            log.info("read %s; the page answers from now on", self.path)
        # WSGI hands headers over as latin-1 text; a hex secret compares the same either way
        if not given or not hmac.compare_digest(given.encode("latin-1", "replace"), self.value.encode()):
            raise wire.HiveError("this page answers only the hive's core (the request lacks this agent's secret)",
                                 "forbidden")


# -- the app -------------------------------------------------------------------------

def _int_param(name, default=None):
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return default
    return wire.whole_number(raw, name)


class Page:
    """One agent's page: `Page(harness, secret_path).app` is the WSGI app."""

    def __init__(self, harness, secret_path, clock=time.time):
        self.harness, self.bus, self.loop = harness, harness.bus, harness.loop
        self.clock = clock
        self.secret = Secret(secret_path)
        self.compacting = False
        self.app = self._routes(web.app(f"{harness.name}'s page"))

    def _routes(self, app):
        app.add_hook("before_request", self._authorize)
        # data only: the page itself and its assets are the core's (the harness is the agent's to change)
        app.route("/api/state", "GET", self.state)
        app.route("/events/stream", "GET", self.stream)
        app.route("/events/history", "GET", self.history)
        app.route("/send", "POST", self.send)
        app.route("/api/cancel", "POST", self.cancel)
        app.route("/api/retry", "POST", self.retry)
        app.route("/api/compact", "POST", self.compact)
        app.route("/api/new-session", "POST", self.new_session)
        app.route("/api/model", "POST", self.set_model)
        app.route("/login/start", "POST", self.login_start)
        app.route("/login/code", "POST", self.login_code)
        app.route("/login/cancel", "POST", self.login_cancel)
        app.route("/api/loose-ends", "GET", self.loose_ends)
        app.route("/api/loose-ends/cancel", "POST", self.cancel_loose_end)
        app.route("/api/stats", "GET", self.stats)
        app.route("/api/file", "GET", self.file)
        return app

    def _authorize(self):
        try:
            # raw from environ: bottle's get_header fails on bytes that are not UTF-8
            self.secret.check(bottle.request.environ.get("HTTP_" + SECRET_HEADER.upper().replace("-", "_")))
        except wire.HiveError as e:
            raise web.error_response(e) from None

    def core(self, verb, **args):
        """One request to the core on this agent's socket; down is a 503 sentence, refusals pass through."""
        try:
            return jsonline.call(self.harness.socket, verb, timeout=CORE_TIMEOUT, **args)
        except jsonline.Unreachable as e:
            raise wire.HiveError(f"the hive's core is not answering ({e}); try again once it is back",
                                 "unavailable") from None

    def note(self, text):
        self.bus.emit("note", text=f"operator: {text}", stream="operator")

    # -- reading ------------------------------------------------------------------

    def state(self):
        seq = self.bus.seq  # first: the page drops buffered events up to here
        model = self.bus.model()
        login = getattr(self.harness, "login", None)  # a harness without a login flow is online
        snapshot = {
            "seq": seq, "name": self.harness.name, "role": self.harness.role, "rev": resources.revision(),
            "status": login.status if login is not None else "online",
            "turn_state": self.bus.turn_state, "turn_state_since": self.bus.turn_state_since,
            "model": model, "models": list(MODELS) + ([model] if model not in MODELS else []),
            "ctx": self.bus.usage.get("ctx"), "cost": self.bus.usage.get("cost"),
            "new_session_armed": bool(self.loop.new_session),
            "session_id": self.loop.session.current(),
            "claude_process": self.harness.engine.info(),
        }
        session = login.view() if login is not None else None
        if session is not None:
            snapshot["session"] = session
        snapshot["inbox"], error = self._inbox()
        if error:
            snapshot["inbox_error"] = error
        snapshot["status_text"] = snapshot["status_set_at"] = None
        if not error:  # the core answered the inbox: ask it for the status line too
            try:
                who = self.core("whoami")
                snapshot["status_text"], snapshot["status_set_at"] = who.get("status_text"), who.get("status_set_at")
            except wire.HiveError as e:
                log.warning("the page's status line is empty: %s", e)
        return web.json_response(snapshot)

    def _inbox(self):
        try:
            messages = self.core("inbox", limit=INBOX_LIMIT)["messages"]
        except wire.HiveError as e:
            log.warning("the page's inbox is empty: %s", e)
            return [], f"the inbox could not be loaded: {e}"
        return messages, None

    def history(self):
        seq = self.bus.seq
        after, before = _int_param("after"), _int_param("before")
        limit = max(1, min(HISTORY_MAX, _int_param("limit", HISTORY_DEFAULT)))
        if after is not None:
            events = events_after(after, limit, before)
        else:
            events = self.bus.history(limit=limit, before=before)
        return web.json_response({"seq": seq, "events": events})

    def stream(self):
        raw = (bottle.request.environ.get("HTTP_LAST_EVENT_ID") or "").strip()
        last_id = int(raw) if re.fullmatch(r"[0-9]{1,18}", raw) else None  # anything else: live events only
        return web.sse(self._frames(last_id))

    def _frames(self, last_id):
        """The SSE body: hello, a replay after Last-Event-ID, then live events; ends when dropped."""
        sub = self.bus.fanout.subscribe()  # before the replay is read: nothing falls between the two
        replay = newest_after(last_id, REPLAY_MAX) if last_id is not None else ()
        return self.bus.fanout.sse(sub, replay=replay)

    def loose_ends(self):
        return web.json_response({"loose_ends": self.core("get_loose_ends").get("loose_ends", [])})

    def cancel_loose_end(self):
        body = web.body()
        kind, item = web.field(body, "kind"), web.field(body, "id")
        if isinstance(item, str):  # a form posts text
            item = wire.whole_number(item, "'id'", 1)
        answer = self.core("cancel_loose_end", kind=kind, id=item)
        self.note(f"withdrew {kind} {item}")
        return web.json_response({"ok": True, "cancelled": answer.get("cancelled")})

    def stats(self):
        window = bottle.request.query.get("window") or "24h"
        return web.json_response(stats.snapshot(window, now=self.clock()))

    def reach(self):
        """What this agent may read, as it names the paths: its state dir and the hive's shared dir.

        The harness runs where the agent does, so a root is the same path inside and on this side."""
        state = os.path.abspath(self.harness.state_dir)  # --state-dir may have been given relative
        roots = [("state", state, state)]
        if self.harness.shared_dir:
            shared = os.path.abspath(self.harness.shared_dir)
            roots.append(("shared", shared, shared))
        return reach.Reach(roots)

    def file(self):
        """The head of a file in this agent's reach, for a file reference on the page."""
        query = bottle.request.query
        if not query.get("path"):
            raise wire.HiveError("give the file as ?path=<absolute path, as the agent names it>")
        path = query.getunicode("path")  # None when the bytes are not UTF-8
        if path is None:
            raise wire.HiveError("the path is not valid UTF-8 once URL-decoded")
        return web.json_response(self.reach().preview(path))

    # -- acting -------------------------------------------------------------------

    def send(self):
        body = web.field(web.body(), "body")
        if not isinstance(body, str):
            raise wire.HiveError("'body' must be text")
        answer = self.core("operator_msg", body=body)
        return web.json_response({"ok": True, "id": answer.get("id")})

    def cancel(self):
        run = self.harness.current
        if run is None:
            raise wire.HiveError("no turn is running", "conflict")
        # Run.cancel waits up to 5 s for claude to exit; the operator gets the answer at once
        gevent.spawn(self._cancel, run)
        self.note("cancel — stopping claude; the turn's messages are marked handled as cancelled, not retried")
        return web.json_response({"ok": True})

    def retry(self):
        """Queue again what a cancelled turn had: the operator's choice, never the loop's."""
        ids = web.field(web.body(), "ids")
        if isinstance(ids, list):  # a form posts text
            ids = [wire.whole_number(i, "message id", 1) if isinstance(i, str) else i for i in ids]
        answer = self.core("retry_cancelled", ids=ids)
        queued = answer.get("requeued") or []
        self.note(f"retry — message(s) {', '.join(f'#{i}' for i in queued)} queued again")
        return web.json_response({"ok": True, "requeued": queued, **({wire.WARNINGS: answer[wire.WARNINGS]}
                                                                     if answer.get(wire.WARNINGS) else {})})

    @staticmethod
    def _cancel(run):
        try:
            run.cancel()
        except Exception:
            log.exception("cancelling the running turn failed")

    def compact(self):
        if self.compacting:
            raise wire.HiveError("a compaction is already running", "conflict")
        if self.loop.in_turn or not self.loop.turn_lock.acquire(blocking=False):
            raise wire.HiveError("a turn is running; compact once it ends", "conflict")
        self.compacting = True  # before the greenlet runs: a second request sees it
        gevent.spawn(self._compact)
        return web.json_response({"ok": True})

    def _compact(self):
        """Compaction holding the turn lock, so the loop starts no turn meanwhile."""
        try:
            self.note("compact — compacting the conversation")
            self.bus.set_turn_state("compacting")
            outcome = self.harness.compact()
            self.note("compact done" if outcome.ok else f"compact failed: {outcome.reason}")
        except Exception as e:
            log.exception("the operator's compaction failed")
            self.note(f"compact failed: {e}")
        finally:
            self.bus.set_turn_state("idle")
            self.compacting = False
            self.loop.turn_lock.release()

    def new_session(self):
        self.loop.new_session = True
        self.note("new session armed — the next turn starts a fresh conversation")
        return web.json_response({"ok": True, "new_session_armed": True})

    def set_model(self):
        model = web.field(web.body(), "model")
        if not isinstance(model, str) or not MODEL_RE.fullmatch(model.strip()):
            raise wire.HiveError("model must be 1-64 letters, digits or . _ - [ ] (like haiku or "
                                 "claude-sonnet-4-5)")
        model = model.strip()
        self.bus.set_model(model)
        self.note(f"model set to {model} for the next turns")
        return web.json_response({"ok": True, "model": model})

    # -- claude's login (harness/login.py runs it; the page polls the session while it runs) --

    def _login(self):
        login = getattr(self.harness, "login", None)
        if login is None:
            raise wire.HiveError("this harness has no login flow; claude counts as logged in", "conflict")
        return login

    def _login_answer(self, login):
        return web.json_response({"ok": True, "status": login.status, "session": login.view()})

    def login_start(self):
        login = self._login()
        login.start()
        return self._login_answer(login)

    def login_code(self):
        login = self._login()
        login.submit_code(web.field(web.body(), "code"))
        return self._login_answer(login)

    def login_cancel(self):
        login = self._login()
        login.cancel()
        return self._login_answer(login)


def make_app(harness, secret_path, clock=time.time):
    """The page's WSGI app (a bottle app); `secret_path` is the web.secret file."""
    return Page(harness, secret_path, clock).app


# -- the listener ---------------------------------------------------------------------

class WebServer:
    """The page served on web.sock beside the agent's core socket; `stop()` removes the socket."""

    def __init__(self, harness, directory=None):
        from gevent.pywsgi import WSGIServer

        directory = directory or os.path.dirname(os.path.abspath(harness.socket))
        self.path = os.path.join(directory, SOCKET_NAME)
        self.app = make_app(harness, os.path.join(directory, SECRET_NAME))
        self.listener = jsonline.bind(self.path, 0o600)
        # the server accepts until "would block": a blocking listener (no monkey patch) would hang it
        self.listener.setblocking(False)
        # no access log: every SSE keepalive would be a line; errors go to the harness log
        self.server = WSGIServer(self.listener, self.app, log=None, error_log=log)

    def start(self):
        self.server.start()
        log.info("web page on %s", self.path)
        return self

    def stop(self, timeout=1.0):
        self.server.stop(timeout=timeout)
        jsonline.unbind(self.path)


def start(harness, directory=None):
    """Serve the harness's page; returns the running WebServer."""
    return WebServer(harness, directory).start()

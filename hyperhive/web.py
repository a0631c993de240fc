"""HTTP plumbing both web surfaces share: assets, the error shape, SSE framing, request bodies.

The core's dashboard and each harness's page are separate bottle apps in
separate processes; they stand on this module (and on `wire` for the error
vocabulary) rather than on each other. Every HTTP error of either app is
`wire.error(...)` as JSON, with the status the error code maps to.
"""

import base64
import hashlib
import html
import json
import re
import logging
import mimetypes
import posixpath

import bottle

from hyperhive import resources, wire

log = logging.getLogger(__name__)

ASSETS = "assets/web"
MAX_BODY = 2 * wire.MAX_BODY  # a form or JSON body; a message body inside it is checked by wire
KEEPALIVE_SECONDS = 15.0
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
               "X-Accel-Buffering": "no"}
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".md": "text/plain; charset=utf-8",
          ".txt": "text/plain; charset=utf-8", ".json": "application/json"}

bottle.BaseRequest.MEMFILE_MAX = MAX_BODY


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_response(obj, status=200, headers=None):
    return bottle.HTTPResponse(dumps(obj), status, {"Content-Type": "application/json",
                                                    "Cache-Control": "no-store", **(headers or {})})


def error_response(e):
    """The one error shape; an error may add fields of its own (`e.fields`), never change the others.

    A browser's navigation to an app that shows pages (`app(..., pages=True)`) gets the sentence as
    a page instead (`error_page`): a person reads it, not a script."""
    if _navigation():
        return error_page(e)
    return json_response({**(getattr(e, "fields", None) or {}), **wire.error_of(e)}, e.status)


def _navigation():
    """Whether the current request is a browser opening a page of an app that shows pages.

    A browser sends `Accept: text/html…` only when it navigates; fetch() as the pages call it asks
    for JSON, an EventSource for an event stream, so they keep the JSON shape."""
    request = bottle.request
    try:
        pages = request.app.config.get("hive.pages")
    except (AttributeError, KeyError, RuntimeError):  # not inside a bottle app's request
        return False
    return bool(pages) and request.method in ("GET", "HEAD") and "text/html" in request.get_header("Accept", "")


ERROR_TITLES = {"unauthorized": "not logged in", "not_found": "not found", "forbidden": "refused",
                "unavailable": "not up", "conflict": "not now", "internal": "something broke"}
ERROR_HINTS = {"not_found": "Check the address: the dashboard links every page there is.",
               "unavailable": "Try again in a moment; the dashboard shows what each agent is doing.",
               "internal": "The core's log has the rest."}


def error_page(e):
    """An error as a page: its sentence (a `code span` in it shown as code) and a way back.

    Self-contained: the page may be for someone without a session, who could load none of the
    static files, so its style is inline and the CSP allows that one style by its hash."""
    css = asset("error.css")[0].decode()
    sentence = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(e)))
    values = {"title": ERROR_TITLES.get(e.code, "cannot do that"), "sentence": sentence, "css": css,
              "hint": ERROR_HINTS.get(e.code, ""), "status": str(e.status), "code": e.code}
    # one pass: a {{name}} inside the sentence is text, never a placeholder
    text = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], asset("error.html")[0].decode())
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    csp = (f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:; base-uri 'none'; "
           "form-action 'none'; frame-ancestors 'none'")
    return bottle.HTTPResponse(text, e.status, {"Content-Type": "text/html; charset=utf-8",
                                                "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                                "X-Frame-Options": "DENY", "Content-Security-Policy": csp})


# -- assets ---------------------------------------------------------------------

_cache = {}


def asset(relpath):
    """(bytes, etag) of a file under assets/web, read once through the zip-aware loader."""
    if relpath not in _cache:
        clean = posixpath.normpath(relpath)
        # a NUL or an over-long name is no asset either, not a 500 from open()
        if clean.startswith(("..", "/")) or "\\" in clean or "\0" in clean or len(clean) > 255 or clean != relpath:
            raise wire.HiveError(f"there is no asset {relpath!r}", "not_found")
        try:
            data = resources.read(f"{ASSETS}/{clean}")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise wire.HiveError(f"there is no asset {relpath!r}", "not_found") from None
        _cache[relpath] = (data, '"' + hashlib.sha256(data).hexdigest()[:20] + '"')
    return _cache[relpath]


def static(relpath):
    """A static asset with caching headers: immutable when the URL names this build's revision."""
    data, etag = asset(relpath)
    ext = posixpath.splitext(relpath)[1]
    kind = _TYPES.get(ext) or mimetypes.guess_type(relpath)[0] or "application/octet-stream"
    versioned = bottle.request.query.get("v") == resources.revision() != "dev"
    headers = {"Content-Type": kind, "ETag": etag, "X-Content-Type-Options": "nosniff",
               "Cache-Control": "public, max-age=31536000, immutable" if versioned else "no-cache"}
    if bottle.request.headers.get("If-None-Match") == etag:
        return bottle.HTTPResponse(status=304, headers=headers)
    return bottle.HTTPResponse(data, 200, headers)


# Every page runs only the scripts and styles of our own files: HTML an agent
# smuggles into what a page shows (an agent page's events come from a harness
# the agent controls) can carry no script, inline or from a URL that answers
# JSON, and no form it injects can submit.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# Shells served under /agent/<name>/ (proxied or not): their asset URLs are relative.
RELATIVE_PAGES = ("agent.html", "stats.html")


def page(asset_name, **values):
    """An HTML shell from assets/web with its {{placeholders}} filled (the revision always).

    `{{head}}` is head.html, the lines every page's <head> shares."""
    head = asset("head.html")[0].decode().rstrip("\n")
    text = asset(asset_name)[0].decode().replace("{{head}}", head)
    static = "static/" if asset_name in RELATIVE_PAGES else "/static/"
    for key, value in dict(values, static=static, rev=resources.revision()).items():
        text = text.replace("{{" + key + "}}", str(value))
    return bottle.HTTPResponse(text, 200, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                                           "X-Frame-Options": "DENY", "Content-Security-Policy": PAGE_CSP})


# -- server-sent events -------------------------------------------------------------

def sse_frame(data, event_id=None):
    """One SSE message carrying a JSON payload (an id lets EventSource resume)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {dumps(data)}\n\n"


def sse(frames):
    """Answer the current request with an SSE body (the frames generator) and the stream's headers."""
    for key, value in SSE_HEADERS.items():
        bottle.response.set_header(key, value)
    return frames


SSE_HELLO = "retry: 2000\n: connected\n\n"  # flushes the headers and sets the reconnect delay
SSE_KEEPALIVE = ": keepalive\n\n"


# -- requests -----------------------------------------------------------------------

def body():
    """The request's fields, from JSON or a form; a bad body is a sentence, not a 500."""
    request = bottle.request
    length = request.content_length
    if length > MAX_BODY:
        raise wire.HiveError(f"the request body is {length} bytes; the limit is {MAX_BODY}")
    kind = (request.content_type or "").split(";")[0].strip()
    if kind == "application/json":
        try:
            data = json.loads(request.body.read() or b"{}")
        except ValueError as e:
            raise wire.HiveError(f"the request body is not valid JSON: {e}", "bad_frame") from None
        if not isinstance(data, dict):
            raise wire.HiveError("the request body must be a JSON object", "bad_frame")
        return data
    try:
        return {k: request.forms.getunicode(k) for k in request.forms}
    except ValueError:  # bottle fails on a Content-Type parameter without "=" ("multipart/form-data;")
        raise wire.HiveError(f"the request's Content-Type {request.content_type[:100]!r} cannot be read",
                             "bad_frame") from None


def field(data, name, required=True):
    value = data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise wire.HiveError(f"{name!r} is required")
        return None
    return value


# -- the app ------------------------------------------------------------------------

def _hive_errors(callback):
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except wire.HiveError as e:
            return error_response(e)
        except Exception as e:
            disk = wire.storage_failure(e)
            if disk is None:
                raise  # a bug: the default handler logs it with its traceback
            log.error("%s %s: %s", bottle.request.method, bottle.request.path, disk)
            return error_response(disk)

    return wrapper


def app(name, pages=False):
    """A bottle app whose every error (ours, a missing route, a crash) has the one error shape.

    `pages`: the app serves pages a browser navigates to, so a navigation's error is a page
    (`error_page`); the harness's app answers only the core's proxy, which passes no HTML on."""
    application = bottle.Bottle(catchall=True)
    application.config["json.enable"] = False
    application.config["hive.pages"] = pages
    application.install(_hive_errors)

    def default_error(res):
        if res.status_code == 404:
            e = wire.HiveError(f"there is nothing at {bottle.request.path}", "not_found")
        elif res.status_code == 405:
            e = wire.HiveError(f"{bottle.request.method} is not allowed on {bottle.request.path}")
        elif res.status_code == 413:
            e = wire.HiveError(f"the request body is over the {MAX_BODY}-byte limit")
        elif res.status_code >= 500:
            log.error("%s %s failed: %s\n%s", bottle.request.method, bottle.request.path, res.exception,
                      res.traceback or "")
            e = wire.HiveError(f"{name} failed on {bottle.request.path}: {res.exception}; the log has the rest",
                               "internal")
        else:
            e = wire.HiveError(str(res.body or res.status_line))
        bottle.response.status = e.status  # the one table: code -> status
        if _navigation():
            page = error_page(e)
            for key, value in page.headers.items():
                bottle.response.set_header(key, value)
            return page.body
        bottle.response.content_type = "application/json"
        bottle.response.set_header("Cache-Control", "no-store")
        return dumps(wire.error_of(e))

    application.default_error_handler = default_error
    return application


# -- the dashboard's server ------------------------------------------------------------
# pywsgi reads a request for as long as its client likes and keeps every
# connection a client opens: a few hundred idle ones would spend the core's
# descriptors. The handler below gives each request HEADER_SECONDS to arrive
# (also how long a kept-alive connection may idle), each later read or write
# IO_SECONDS, and makes connections that have not shown a live session take
# turns: at most PEER_WAITING_MAX of them from one address (and WAITING_MAX in
# all) may wait for their request, and a newer one pushes the one that has
# waited longest out. The operator's own connections, once a request of theirs
# carried a live session, are never counted or pushed.

HEADER_SECONDS = 10.0
IO_SECONDS = 30.0
PEER_WAITING_MAX = 64
WAITING_MAX = 256
EVICTION_LOG_SECONDS = 60.0


class HeadersLate(TimeoutError):
    """A request's line and headers did not all arrive within HEADER_SECONDS."""


class Evicted(ConnectionAbortedError):
    """A connection waiting for its request was pushed out by newer ones (it was told why)."""


class Gate:
    """Connections that wait for a request without having shown a live session, oldest first."""

    def __init__(self, per_peer=PEER_WAITING_MAX, total=WAITING_MAX, clock=None):
        import time

        self.per_peer, self.total = per_peer, total
        self.clock = clock or time.monotonic
        self.waiting = {}  # handler -> peer, in the order they began to wait
        self.peers = {}  # peer -> {handler: None}, likewise
        self._evicted = {}  # peer -> evictions not yet told in the log
        self._logged_at = None

    def wait(self, handler, peer):
        """`handler` begins to wait for its request; whoever this pushes over a cap is evicted."""
        self.waiting[handler] = peer
        mine = self.peers.setdefault(peer, {})
        mine[handler] = None
        if len(mine) > self.per_peer:
            self._evict(next(iter(mine)), f"more than {self.per_peer} connections from {peer}")
        if len(self.waiting) > self.total:
            self._evict(next(iter(self.waiting)), f"more than {self.total} connections in all")

    def leave(self, handler):
        peer = self.waiting.pop(handler, None)
        if peer is not None:
            mine = self.peers[peer]
            mine.pop(handler, None)
            if not mine:
                del self.peers[peer]

    def _evict(self, handler, why):
        peer = self.waiting[handler]
        self.leave(handler)
        handler.evict(f"the dashboard closed this connection: {why} were open without sending a request and "
                      "without a login, and this one had waited longest. Send the request right after "
                      f"connecting (a browser does); if this keeps happening, something on {peer} is holding "
                      "connections open")
        self._evicted[peer] = self._evicted.get(peer, 0) + 1
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= EVICTION_LOG_SECONDS:
            told = ", ".join(f"{n} from {p}" for p, n in sorted(self._evicted.items()))
            log.warning("the dashboard closed idle connections that sent no request (%s): %s waited at once; "
                        "the operator's logged-in connections are not affected (said at most once a minute)",
                        told, why)
            self._evicted, self._logged_at = {}, now


def _unavailable_response(sentence):
    data = dumps(wire.error(sentence, "unavailable")).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)


class _NoBody:
    """Stands in for a request body that is not read on: the connection closes instead."""

    def _discard(self):
        pass


def _server_classes():
    import gevent
    from gevent.pywsgi import WSGIHandler, WSGIServer

    class Handler(WSGIHandler):
        """pywsgi's handler with the deadlines and the gate above."""

        proven = False  # a request on this connection carried a live session
        greenlet = None
        _deadline = None

        def handle(self):
            self.greenlet = gevent.getcurrent()
            self.socket.settimeout(IO_SECONDS)
            try:
                super().handle()
            finally:
                self.server.gate.leave(self)

        def handle_one_request(self):
            self._deadline = gevent.Timeout(HEADER_SECONDS, HeadersLate)
            self._deadline.start()
            if not self.proven:
                self.server.gate.wait(self, self.client_address[0] if self.client_address else "?")
            try:
                return super().handle_one_request()
            finally:
                self._headers_in()

        def read_request(self, raw_requestline):
            try:
                return super().read_request(raw_requestline)
            finally:
                self._headers_in()

        def _headers_in(self):
            self._deadline.close()
            self.server.gate.leave(self)

        def _handle_client_error(self, ex):
            if isinstance(ex, (HeadersLate, Evicted)):
                return None  # closed: late is an idle connection, an evicted one was told why
            return super()._handle_client_error(ex)

        def run_application(self):
            try:
                super().run_application()
            finally:
                if self.server.trusted(self.environ):
                    self.proven = True
                else:
                    # A stranger gets one answer per connection, and what it sent
                    # beyond its headers is not read on (a chunked body may never end).
                    self.close_connection = True
                    self.wsgi_input = _NoBody()

        def handle_error(self, t, v, tb):
            if issubclass(t, TimeoutError):  # a write the client did not read for IO_SECONDS
                log.warning("the dashboard stopped answering %s %s to %s: it read nothing for %gs",
                            getattr(self, "command", "?"), getattr(self, "path", "?"),
                            self.client_address[0] if self.client_address else "?", IO_SECONDS)
                self.close_connection = True
                return
            super().handle_error(t, v, tb)

        def evict(self, sentence):
            try:
                # an idle connection's buffer takes it whole; the evicting greenlet never waits here
                self.socket.send(_unavailable_response(sentence), 0, timeout=0.0)
            except OSError:
                pass  # it is closed either way
            if self.greenlet is not None:
                self.greenlet.kill(Evicted(sentence), block=False)

    class Server(WSGIServer):
        """A WSGIServer whose `trusted(environ)` says a request carried a live session."""

        handler_class = Handler

        def __init__(self, listener, application, trusted, gate=None, **kwargs):
            super().__init__(listener, application, **kwargs)
            self.trusted = trusted
            self.gate = gate or Gate()

    return Handler, Server


def server(listener, application, trusted, **kwargs):
    """The dashboard's WSGI server (see above); `trusted(environ)` is true for a request with a live session."""
    return _server_classes()[1](listener, application, trusted, **kwargs)

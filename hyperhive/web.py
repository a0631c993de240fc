"""HTTP plumbing both web surfaces share: assets, the error shape, SSE framing, request bodies.

The core's dashboard and each harness's page are separate bottle apps in
separate processes; they stand on this module (and on `wire` for the error
vocabulary) rather than on each other. Every HTTP error of either app is
`wire.error(...)` as JSON, with the status the error code maps to.
"""

import hashlib
import json
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
    return json_response(wire.error_of(e), e.status)


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


def app(name):
    """A bottle app whose every error (ours, a missing route, a crash) has the one error shape."""
    application = bottle.Bottle(catchall=True)
    application.config["json.enable"] = False
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
        bottle.response.content_type = "application/json"
        bottle.response.set_header("Cache-Control", "no-store")
        return dumps(wire.error_of(e))

    application.default_error_handler = default_error
    return application

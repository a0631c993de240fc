"""Markdown for the operator's pages, rendered off the core's loop, with a time limit, and cached.

Owns the worker processes that run `markup.render` for the core and the
cache of what they rendered. What agents send is markdown the core shows the
operator, and Python-Markdown is quadratic on runs of `[` (9,000 of them
took 21-37 s) and recurses without bound on nested lists: run on the core's
one loop, a body could freeze every socket and the dashboard. So no body is
rendered on the loop: a small pool of worker processes (this program's own
`markup`, over a socket pair the loop waits on cooperatively) renders each
text once; a render that runs past LIMIT seconds has its worker killed (a
new one starts on demand) and the text is shown escaped, which is cached
too, so the same text never costs the limit twice.

Outside a gevent hub (the CLI, some tests) `render` still works: waiting on
the socket then simply blocks.
"""

import collections
import html
import json
import logging
import os
import subprocess
import sys
import time

import gevent
import gevent.lock
import gevent.socket

from hyperhive import markup, resources
from hyperhive.fanout import InFlight

log = logging.getLogger(__name__)

LIMIT = 1.0  # seconds one render may take
WORKERS = 2
CACHE = 4096  # rendered texts kept
MAX_TEXT = markup.MAX_RENDER  # past this a body is shown as text without asking a worker
MAX_ANSWER = 8 * MAX_TEXT  # the worst a worker's answer may be (escaping can grow a text a few times)
START_LIMIT = 10.0  # seconds a new worker may take to start

# The worker: reads one JSON line ({"text"}), answers one ({"html"}), forever. It imports only
# the stdlib and markup (markdown), from wherever this program runs (the pyz or a checkout).
WORKER = r"""
import json, os, sys
os.set_blocking(0, True)  # its socket came from gevent, which keeps every fd non-blocking: EAGAIN is no end
sys.path.insert(0, sys.argv[1])
from hyperhive import markup
out = sys.stdout.buffer
out.write(b'{"ready": true}\n'); out.flush()
for line in sys.stdin.buffer:
    text = json.loads(line)["text"]
    out.write(json.dumps({"html": markup.render(text)}).encode() + b"\n")
    out.flush()
"""


def escaped(text):
    return f"<pre>{html.escape(text, quote=True)}</pre>"


class Worker:
    """One render process and the core's end of its socket pair."""

    def __init__(self):
        ours, theirs = gevent.socket.socketpair()
        os.set_blocking(theirs.fileno(), True)  # the worker's end: plain blocking reads and writes
        try:
            # its stderr is the core's (the log); it ends at the end of its stdin, when the core does
            self.proc = subprocess.Popen([sys.executable, "-c", WORKER, resources.ROOT], stdin=theirs.fileno(),
                                         stdout=theirs.fileno(), close_fds=True, start_new_session=True)
        finally:
            theirs.close()
        self.sock = ours
        self.reader = ours.makefile("rb")
        self.sock.settimeout(START_LIMIT)
        if json.loads(self.reader.readline(MAX_ANSWER) or b"{}").get("ready") is not True:
            self.close()
            raise OSError("the markdown worker did not start")

    def render(self, text, limit):
        self.sock.settimeout(limit)
        self.sock.sendall(json.dumps({"text": text}).encode() + b"\n")
        line = self.reader.readline(MAX_ANSWER)
        if not line.endswith(b"\n"):
            raise OSError("the markdown worker's answer was cut off")
        return json.loads(line)["html"]

    def close(self):
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        for part in (self.reader, self.sock):
            try:
                part.close()
            except OSError:
                pass
        # SIGKILL is immediate; the poll loop only keeps waitpid off the loop if the kernel is slow
        deadline = time.monotonic() + 5.0
        while self.proc.poll() is None and time.monotonic() < deadline:
            gevent.sleep(0.01)


class Renderer:
    """`render(text)` -> HTML safe for a page, never on the caller's loop, within `limit` seconds."""

    def __init__(self, limit=LIMIT, workers=WORKERS, cache=CACHE):
        self.limit = limit
        self.cache = collections.OrderedDict()
        self.cache_size = cache
        self.idle = []  # workers ready for a text
        self.slots = gevent.lock.BoundedSemaphore(workers)
        self.timeouts = 0  # texts that ran out of time: a figure for the log and the tests
        self.rendering = InFlight()

    def render(self, text):
        if not text:
            return ""
        if not isinstance(text, str):
            text = str(text)
        found = self.cache.get(text)
        if found is not None:
            self.cache.move_to_end(text)
            return found
        # 500 pages sent one new message ask for it at once: one render, not 500
        html_ = self.rendering.make(text, lambda: escaped(text) if len(text) > MAX_TEXT else self._render(text))
        self.cache[text] = html_
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return html_

    def _render(self, text):
        with self.slots:
            worker = self.idle.pop() if self.idle else None
            for attempt in (1, 2):  # an idle worker may have died meanwhile: one more try on a fresh one
                started = time.monotonic()
                try:
                    worker = worker or Worker()
                    result = worker.render(text, self.limit)
                except (OSError, ValueError, KeyError, TypeError) as e:  # a timeout is an OSError too
                    if worker is not None:
                        worker.close()
                    worker = None
                    if isinstance(e, TimeoutError) or time.monotonic() - started >= self.limit:
                        self.timeouts += 1
                        log.warning("rendering a %d-character body took over %gs; showing it as text", len(text),
                                    self.limit)
                        return escaped(text)
                    if attempt == 2:
                        log.error("the markdown worker failed on a %d-character body (%s); showing it as text",
                                  len(text), e)
                        return escaped(text)
                    continue
                self.idle.append(worker)
                return result

    def close(self):
        while self.idle:
            self.idle.pop().close()


_shared = None


def render(text):
    """The core's one renderer (started on first use)."""
    global _shared
    if _shared is None:
        _shared = Renderer()
    return _shared.render(text)


def close():
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None



def message_shown(message):
    """A message as a page shows it: its body rendered too."""
    return dict(message, body_html=render(message["body"]))


def event_shown(event):
    """A dashboard event as a page is sent it: a `sent` event's message rendered."""
    return dict(event, message=message_shown(event["message"])) if event["kind"] == "sent" else event

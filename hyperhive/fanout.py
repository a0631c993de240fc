"""The one fan-out of numbered events: the core's hub and an agent's bus both publish through it.

Owns the `seq` counter, the subscribers and how a slow one is treated: each
has a bounded queue, and one that falls `queue_size` events behind is dropped,
its queue emptied and closed, so the publisher never grows and the page (which
reconnects and replays) never shows "live" while receiving nothing. Each event
is serialized into its SSE frame once, however many pages listen.
"""

import logging

from gevent.event import AsyncResult
from gevent.queue import Empty, Full, Queue

from hyperhive import web

log = logging.getLogger(__name__)

CLOSED = object()  # the last thing a dropped subscriber's queue holds
FRAMES_KEPT = 512  # serialized frames kept for the pages that are a little behind


class InFlight:
    """Work made once per key however many greenlets ask for it at the same moment: the first makes it,
    the others wait on its result (or its exception)."""

    def __init__(self):
        self._waiting = {}  # key -> the AsyncResult of the one making it

    def make(self, key, make):
        waiting = self._waiting.get(key)
        if waiting is not None:
            return waiting.get()
        self._waiting[key] = result = AsyncResult()
        try:
            made = make()
        except BaseException as e:
            result.set_exception(e)
            raise
        finally:
            del self._waiting[key]
        result.set(made)
        return made


class Fanout:
    """`kinds` is the stream's table in `hyperhive.events`; `shown(event)` is what a page is sent."""

    def __init__(self, kinds, queue_size=4096, seq=0, shown=None):
        self.kinds, self.queue_size, self.seq = kinds, queue_size, seq
        self.shown = shown or (lambda event: event)
        self._subscribers = set()
        self._frames = {}
        self._making = InFlight()

    def number(self, kind, **data):
        """The next event of `kind`, numbered but not yet delivered (a publisher that keeps events
        writes it first)."""
        assert kind in self.kinds, kind
        self.seq += 1
        return {"seq": self.seq, "kind": kind, **data}

    def deliver(self, event):
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(event)
            except Full:
                log.warning("dropping an event subscriber that fell %d events behind at seq %s "
                            "(a page reconnects and replays)", self.queue_size, event["seq"])
                sub.drop()
        return event

    def publish(self, kind, **data):
        return self.deliver(self.number(kind, **data))

    def flush(self, timeout=None):
        """Every event published so far is delivered: here at once (a log's publisher may queue them)."""
        return True

    def subscribe(self):
        """A subscription that receives every event delivered from now on."""
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    def frame(self, event):
        """The event's SSE frame (bytes), made once: every subscriber that asks while it is being made
        (`shown` may wait on a markdown worker) waits for that one."""
        seq = event["seq"]
        found = self._frames.get(seq)
        if found is not None:
            return found
        found = self._making.make(seq, lambda: web.sse_frame(self.shown(event), seq).encode())
        self._frames[seq] = found
        if len(self._frames) > FRAMES_KEPT:
            for old in sorted(self._frames)[:FRAMES_KEPT // 2]:
                del self._frames[old]
        return found

    def sse(self, sub, replay=(), live=lambda: True):
        """An SSE body for `sub`: hello, the `replay` events (older ones a client asked for), then
        every live event not already replayed; ends when the subscriber is dropped or `live()`
        turns false, and unsubscribes either way."""
        try:
            yield web.SSE_HELLO.encode()
            last = 0
            for event in replay:
                last = event["seq"]
                yield web.sse_frame(self.shown(event), event["seq"]).encode()
            for event in sub.events(web.KEEPALIVE_SECONDS):
                if not live():
                    return
                if event is None:
                    yield web.SSE_KEEPALIVE.encode()
                elif event["seq"] > last:  # queued while the replay was read: already sent
                    yield self.frame(event)
        finally:
            sub.close()


class Subscription:
    def __init__(self, fanout):
        self.fanout = fanout
        self.queue = Queue(fanout.queue_size)

    def events(self, idle):
        """Each event as it comes, None after `idle` seconds of quiet; ends once dropped."""
        while True:
            try:
                event = self.queue.get(timeout=idle)
            except Empty:
                yield None
                continue
            if event is CLOSED:
                return
            yield event

    def drop(self):
        self.close()
        self.queue.queue.clear()
        self.queue.put_nowait(CLOSED)

    def close(self):
        self.fanout._subscribers.discard(self)

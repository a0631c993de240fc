"""The core's event hub: every dashboard event, numbered, fanned out.

Each event gets a monotonic `seq`. Subscribers get a bounded queue; one that
stops reading is dropped (and told so by its queue closing) rather than
letting the hub grow without bound. A short ring of recent events backs the
dashboard's history fetch.
"""

import collections
import logging

from gevent.queue import Full, Queue

log = logging.getLogger(__name__)

KINDS = frozenset({
    "sent", "delivered", "approval_added", "approval_resolved", "question_added",
    "question_resolved", "transient_set", "transient_cleared", "container_state_changed",
    "container_removed", "tombstones_changed", "meta_inputs_changed", "cancelled", "requeued", "read",
})
CLOSED = object()  # put on a subscriber's queue when the hub drops it


class Hub:
    def __init__(self, history=1000, queue_size=4096):
        self.seq = 0
        self.history = collections.deque(maxlen=history)
        self.queue_size = queue_size
        self._subscribers = set()

    def publish(self, kind, **data):
        assert kind in KINDS, kind
        self.seq += 1
        event = {"seq": self.seq, "kind": kind, **data}
        self.history.append(event)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except Full:
                log.warning("dropping an event subscriber that stopped reading (%d events behind)", queue.qsize())
                self._subscribers.discard(queue)
                queue.queue.clear()
                queue.put_nowait(CLOSED)
        return event

    def subscribe(self):
        queue = Queue(self.queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue):
        self._subscribers.discard(queue)

    def since(self, seq):
        return [e for e in self.history if e["seq"] > seq]

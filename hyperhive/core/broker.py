"""The message broker: durable queues with lease delivery.

A message is committed to sqlite before `send` answers, so an answered send
survives a kill -9. `recv` pops (stamps delivered_at) and the harness acks
only after a turn ended well; `requeue_inflight` at harness boot puts every
popped-but-unacked row back, flagged redelivered. Vacuum removes only acked
rows, so nothing unhandled is ever lost.
"""

import json
import time

from gevent.event import Event

from hyperhive import wire
from hyperhive.wire import iso
from hyperhive.schema import Message, core_db

VACUUM_AGE_MS = 30 * 24 * 3600 * 1000


def delivered_row(m):
    return {"id": m.id, "from": m.sender, "body": m.body, "sent_at": iso(m.sent_at),
            "redelivered": m.redelivered, "file_refs": json.loads(m.file_refs)}


def listed_row(m):
    row = delivered_row(m)
    row.update(to=m.recipient, delivered_at=iso(m.delivered_at), acked_at=iso(m.acked_at))
    return row


class Broker:
    """Queues per recipient; `hub` gets a `sent`/`delivered` event per change."""

    def __init__(self, hub, clock=time.time):
        self.hub = hub
        self.clock = clock
        self._wakeups = {}  # recipient -> Event set on the next send to it
        self._held = set()  # paused recipients: recv answers nothing while held

    def _now(self):
        return int(self.clock() * 1000)

    def _wake(self, recipient):
        event = self._wakeups.pop(recipient, None)
        if event is not None:
            event.set()

    def send(self, sender, recipient, body, file_refs=()):
        """Commit one message and wake its recipient; returns the message id."""
        now = self._now()
        # The operator reads on the dashboard: there is no turn to ack, so a
        # message to the operator is delivered and handled once it is stored.
        done = now if recipient == wire.OPERATOR else None
        with core_db.atomic():
            m = Message.create(sender=sender, recipient=recipient, body=body, sent_at=now,
                               delivered_at=done, acked_at=done, file_refs=json.dumps(list(file_refs)))
        self.hub.publish("sent", message=listed_row(m))
        self._wake(recipient)
        return m.id

    def hold(self, recipient, held):
        """Pause (held=True) or resume deliveries to a recipient."""
        if held:
            self._held.add(recipient)
        else:
            self._held.discard(recipient)
            self._wake(recipient)

    def pop(self, recipient, limit):
        """Stamp and return up to `limit` undelivered messages, oldest first."""
        if recipient in self._held:
            return []
        now = self._now()
        with core_db.atomic():
            rows = list(Message.select()
                        .where((Message.recipient == recipient) & Message.delivered_at.is_null())
                        .order_by(Message.id).limit(limit))
            if rows:
                Message.update(delivered_at=now).where(Message.id.in_([m.id for m in rows])).execute()
        if rows:
            self.hub.publish("delivered", recipient=recipient, ids=[m.id for m in rows])
        return [delivered_row(m) for m in rows]

    def recv(self, recipient, wait_seconds, limit):
        """Long-poll up to wait_seconds for the first message, then drain up to limit."""
        deadline = time.monotonic() + wait_seconds
        while True:
            rows = self.pop(recipient, limit)
            left = deadline - time.monotonic()
            if rows or left <= 0:
                return rows
            event = self._wakeups.setdefault(recipient, Event())
            event.wait(timeout=left)

    def ack_turn(self, recipient):
        """Mark every message popped since the last ack as handled."""
        with core_db.atomic():
            return (Message.update(acked_at=self._now())
                    .where((Message.recipient == recipient) & Message.delivered_at.is_null(False)
                           & Message.acked_at.is_null()).execute())

    def requeue_inflight(self, recipient):
        """Return popped-but-unacked messages to the queue, flagged redelivered."""
        with core_db.atomic():
            count = (Message.update(delivered_at=None, redelivered=True)
                     .where((Message.recipient == recipient) & Message.delivered_at.is_null(False)
                            & Message.acked_at.is_null()).execute())
        if count:
            self._wake(recipient)
        return count

    def recent(self, name, limit):
        """Messages to or from name, newest first."""
        query = (Message.select().where((Message.recipient == name) | (Message.sender == name))
                 .order_by(Message.id.desc()).limit(limit))
        return [listed_row(m) for m in query]

    def inbox(self, recipient, limit):
        query = (Message.select().where(Message.recipient == recipient)
                 .order_by(Message.id.desc()).limit(limit))
        return [listed_row(m) for m in query]

    def pending_count(self, recipient):
        return (Message.select().where((Message.recipient == recipient) & Message.delivered_at.is_null())
                .count())

    def vacuum(self):
        """Delete acked messages older than 30 days; unacked rows always survive."""
        cutoff = self._now() - VACUUM_AGE_MS
        with core_db.atomic():
            return Message.delete().where(Message.acked_at.is_null(False) & (Message.acked_at < cutoff)).execute()

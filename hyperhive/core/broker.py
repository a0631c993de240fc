"""The message broker: durable queues with lease delivery, and the operator's inbox.

A message is committed to sqlite before `send` answers, so an answered send
survives a kill -9. `recv` pops (stamps delivered_at) and the harness acks
only after a turn ended well; `requeue_inflight` at harness boot puts every
popped-but-unacked row back, flagged redelivered. The sweep removes only acked
rows (`sweeps`), so nothing unhandled is ever lost.

The operator reads on the dashboard and the CLI: a message to the operator
is delivered once stored, and acked when the operator marks it read
(`mark_read`), so an unread one is never swept, however old. The inbox pages
back to the first message, says per sender how many are unread and how many
came in the last hour (who floods shows), and one sender may leave at most
OPERATOR_UNREAD_PER_SENDER unread: a flood cannot bury the others' reports.
"""

import json
import logging
import time

from gevent import wait
from gevent.event import Event

from hyperhive import wire
from hyperhive.core import aftermath
from hyperhive.wire import iso
from hyperhive.schema import Message, core_db, found, is_postgres, sql

log = logging.getLogger(__name__)

# The hot path in plain SQL: building these through the ORM cost more than
# sqlite itself (bench/ measured 0.3-0.7 ms per query).
_INSERT = ("INSERT INTO message (sender, recipient, body, sent_at, delivered_at, acked_at, redelivered, file_refs) "
           "VALUES (?, ?, ?, ?, ?, ?, FALSE, ?) RETURNING id")
# PostgreSQL: ids are taken under a lock its statement holds to its commit, so they grow in commit order
# across every core, as sqlite's serialized writes make them (senders_through and flow's `after` rely on
# it); one round trip still
ORDER_LOCK = 4244
_INSERT_PG = ("INSERT INTO message (sender, recipient, body, sent_at, delivered_at, acked_at, redelivered, file_refs) "
              "SELECT ?, ?, ?, ?::bigint, ?::bigint, ?::bigint, FALSE, ? "
              f"FROM (SELECT pg_advisory_xact_lock({ORDER_LOCK})) AS ordered RETURNING id")
# INDEXED BY: without statistics the planner prefers the full (recipient, id)
# index, which makes a pop O(history) instead of O(queue).
_POP = ("UPDATE message SET delivered_at = ? WHERE id IN (SELECT id FROM message INDEXED BY message_undelivered "
        "WHERE recipient = ? AND delivered_at IS NULL ORDER BY id LIMIT ?) "
        "RETURNING id, sender, body, sent_at, redelivered, file_refs")
# PostgreSQL: a row another core's pop holds is skipped, never waited on (schema.sql makes the rest of it);
# and the queue's length comes in the same round trip (the count sees the queue before the pop, popped
# rows included), so a recv that took all it asked for does not ask the server again what is left
_POP_PG = ("WITH popped AS (" + _POP.replace("ORDER BY id LIMIT ?)", "ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED)")
           + ") SELECT popped.*, (SELECT count(*) FROM message WHERE recipient = ? AND delivered_at IS NULL) "
             "FROM popped")
_UNREAD = ("SELECT count(*) FROM message INDEXED BY message_undelivered "
           "WHERE recipient = ? AND delivered_at IS NULL")
# Counted only as far as the quota: a check never costs more than the queue it allows.
_QUEUED = ("SELECT count(*) FROM (SELECT 1 FROM message INDEXED BY message_undelivered "
           "WHERE recipient = ? AND delivered_at IS NULL LIMIT ?) AS queued")
_QUEUED_FROM = ("SELECT count(*) FROM (SELECT 1 FROM message INDEXED BY message_undelivered_from "
                "WHERE recipient = ? AND sender = ? AND delivered_at IS NULL LIMIT ?) AS queued")
_UNPOP = "UPDATE message SET delivered_at = NULL WHERE id IN ({})"
# A listing reads each body only as far as it shows it: a thousand long bodies never sit in memory whole.
_LISTED = ("SELECT id, sender, recipient, substr(body, 1, ?), length(body), sent_at, delivered_at, acked_at, "
           "cancelled_at, redelivered, file_refs FROM message WHERE {} ORDER BY id DESC LIMIT ?")

# Quotas on undelivered messages, for what agents send (docs/architecture.md): the operator's
# own sends and the core's are not refused, but they count.
QUEUE_MAX = 1000  # in one recipient's queue
SENDER_QUEUE_MAX = 100  # from one sender in one recipient's queue


def cut_body(body, chars=None):
    """(body as listed, its whole length when it was cut, else None): past LISTED_BODY_MAX it is cut, with a marker."""
    chars = len(body) if chars is None else chars
    if chars <= wire.LISTED_BODY_MAX:
        return body, None
    return (body[:wire.LISTED_BODY_MAX] + f"\n\n[… cut here: the whole message is {chars:,} characters; "
            "its recipient's recv hands it over whole]"), chars


def _message(mid, sender, body, sent_at, redelivered, refs):
    """A message as recv hands it over: wire.MESSAGE_FIELDS, built from that tuple."""
    return dict(zip(wire.MESSAGE_FIELDS, (mid, sender, body, iso(sent_at), bool(redelivered), json.loads(refs))))


_LISTED_ONLY = wire.LISTED_MESSAGE_FIELDS[len(wire.MESSAGE_FIELDS):]


def _listed(mid, sender, recipient, body, chars, sent_at, delivered_at, acked_at, cancelled_at, redelivered, refs):
    """A message as listings show it: wire.LISTED_MESSAGE_FIELDS, a long body cut (with `body_chars`)."""
    body, whole = cut_body(body, chars)
    row = _message(mid, sender, body, sent_at, redelivered, refs)
    row.update(zip(_LISTED_ONLY, (recipient, iso(delivered_at), iso(acked_at), iso(cancelled_at))))
    if whole is not None:
        row["body_chars"] = whole
    return row


class Listing(list):
    """Rows of an answer; `cut_short` when ANSWER_BUDGET stopped it before the limit asked for."""

    cut_short = False
    left = None  # what is still queued after a pop, when the pop counted it


def _size(body, refs):
    """What a row weighs against ANSWER_BUDGET: its body and references, in characters."""
    return len(body) + len(refs)


OPERATOR_UNREAD_PER_SENDER = 1000
SENDER_RATE_SECONDS = 3600
_UNREAD_FROM = ("SELECT count(*) FROM message INDEXED BY message_operator_unread "
                "WHERE recipient = 'operator' AND acked_at IS NULL AND sender = ?")
# the core's own helper events are not an agent's flood (they are rate-limited where they are made)
UNCAPPED_SENDERS = frozenset({"core"})


def no_refs(sender, recipient, body):
    """A broker that looks up no file references (the references module does, in the core)."""
    return []


class Broker:
    """Queues per recipient; `hub` gets a `sent`/`delivered` event per change."""

    def __init__(self, hub, refs_of=no_refs, clock=time.time):
        self.hub = hub
        self.refs_of = refs_of  # (sender, recipient, body) -> the file references a message carries
        self.clock = clock
        self._wakeups = {}  # recipient -> Event set on the next send to it
        self._held = set()  # paused recipients: recv answers nothing while held

    def _now(self):
        return int(self.clock() * 1000)

    def _refs(self, sender, recipient, body):
        try:
            return self.refs_of(sender, recipient, body)
        except Exception:  # a reference is a convenience: the message goes out without it
            log.exception("finding the file references of a message from %s to %s failed", sender, recipient)
            return []

    def _wake(self, recipient):
        event = self._wakeups.pop(recipient, None)
        if event is not None:
            event.set()

    def wake(self, recipient):
        """Another core queued a message for `recipient` (a notice): its long-poll here looks again."""
        self._wake(recipient)

    def wake_all(self):
        """Every long-poll here looks again (notices may have been missed while the listener was away)."""
        for recipient in list(self._wakeups):
            self._wake(recipient)

    def send(self, sender, recipient, body, file_refs=None):
        """Commit one message and wake its recipient; returns the message id.

        Without `file_refs`, the body is scanned for them (`refs_of`) here, at ingest."""
        now = self._now()
        if file_refs is None:
            file_refs = self._refs(sender, recipient, body)
        # The operator has no turn to pop it in: a message to the operator is
        # delivered once stored, and handled once the operator marks it read.
        delivered = now if recipient == wire.OPERATOR else None
        if delivered is not None and sender not in UNCAPPED_SENDERS:
            unread = core_db.execute_sql(sql(_UNREAD_FROM), (sender,)).fetchone()[0]
            if unread >= OPERATOR_UNREAD_PER_SENDER:
                raise wire.HiveError(f"the operator has {unread} unread messages from {sender}, the most one sender "
                                     "may leave; wait until the operator reads them (or send fewer, longer ones)",
                                     "conflict")
        refs = json.dumps(list(file_refs))
        # one statement is its own transaction: committed when execute returns
        mid = core_db.execute_sql(sql(_INSERT_PG if is_postgres() else _INSERT),
                                  (sender, recipient, body, now, delivered, None, refs)).fetchone()[0]
        self._wake(recipient)
        # The event is listed as inbox rows are (a long body cut): every page's queue holds it.
        aftermath.after(f"telling the dashboard about message {mid}", self.hub.publish, "sent", message=_listed(
            mid, sender, recipient, body, len(body), now, delivered, None, None, False, refs))
        return mid

    def admit(self, sender, recipient):
        """Refuse (unavailable) a message `sender` would queue past a quota: the recipient's
        QUEUE_MAX undelivered, or SENDER_QUEUE_MAX of them from this sender."""
        who = "the operator" if sender == wire.OPERATOR else sender
        mine = core_db.execute_sql(sql(_QUEUED_FROM), (recipient, sender, SENDER_QUEUE_MAX)).fetchone()[0]
        if mine >= SENDER_QUEUE_MAX:
            raise wire.HiveError(f"{who} already has {SENDER_QUEUE_MAX} unread messages waiting for {recipient}, "
                                 f"the most one sender may queue for one recipient; send again once {recipient} "
                                 "has read some (it may be paused or busy)", "unavailable")
        if core_db.execute_sql(sql(_QUEUED), (recipient, QUEUE_MAX)).fetchone()[0] >= QUEUE_MAX:
            raise wire.HiveError(f"{recipient} already has {QUEUE_MAX} unread messages waiting, the most its queue "
                                 f"takes; send again once {recipient} has read some (it may be paused or busy)",
                                 "unavailable")

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
            return Listing()
        left = None
        if is_postgres():
            rows = core_db.execute_sql(sql(_POP_PG), (self._now(), recipient, limit, recipient)).fetchall()
            if rows:
                left = max(0, rows[0][-1] - len(rows))
                rows = [row[:-1] for row in rows]
        else:
            rows = core_db.execute_sql(sql(_POP), (self._now(), recipient, limit)).fetchall()
        if not rows:
            return Listing()
        rows.sort()  # RETURNING does not promise an order
        popped = Listing()
        popped.left = left
        if limit > 1:
            rows = self._fit(rows, popped)
        aftermath.after("telling the dashboard what was delivered", self.hub.publish, "delivered",
                        recipient=recipient, ids=[r[0] for r in rows])
        popped.extend(_message(*row) for row in rows)
        return popped

    @staticmethod
    def _fit(rows, popped):
        """The first rows that fit ANSWER_BUDGET (one at least); the rest go back to the queue untouched."""
        total = 0
        for i, (_, _, body, _, _, refs) in enumerate(rows):
            total += _size(body, refs)
            if total > wire.ANSWER_BUDGET and i:
                back = [r[0] for r in rows[i:]]
                core_db.execute_sql(sql(_UNPOP.format(",".join("?" * len(back)))), back)
                popped.cut_short = True
                return rows[:i]
        return rows

    def recv(self, recipient, wait_seconds, limit, gone=None):
        """Long-poll up to wait_seconds for the first message, then drain up to limit.

        Returns (messages, unread). When `gone` (the client hung up) is set
        first, nothing is popped: a dead poller must not take a message.
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            if gone is not None and gone.is_set():
                return [], 0
            rows = self.pop(recipient, limit)
            left = deadline - time.monotonic()
            if rows or left <= 0:
                # fewer than asked means the queue is empty (unless the budget cut it): no need to count
                if len(rows) < limit and not rows.cut_short:
                    return rows, 0
                return rows, rows.left if rows.left is not None and not rows.cut_short else self.pending_count(recipient)
            event = self._wakeups.setdefault(recipient, Event())
            if gone is None:
                event.wait(timeout=left)
            else:
                wait([event, gone], timeout=left, count=1)

    def ack_turn(self, recipient):
        """Mark every message popped since the last ack as handled."""
        with core_db.atomic():
            return (Message.update(acked_at=self._now())
                    .where((Message.recipient == recipient) & Message.delivered_at.is_null(False)
                           & Message.acked_at.is_null()).execute())

    def cancel_turn(self, recipient):
        """The operator cancelled the turn: every message popped since the last ack is handled, as cancelled.

        Returns [(id, sender)] of what it marked. Never retried on its own: `retry` queues them again."""
        now = self._now()
        with core_db.atomic():
            rows = list(Message.select(Message.id, Message.sender)
                        .where((Message.recipient == recipient) & Message.delivered_at.is_null(False)
                               & Message.acked_at.is_null()).order_by(Message.id).tuples())
            if rows:
                Message.update(acked_at=now, cancelled_at=now).where(
                    Message.id.in_([mid for mid, _ in rows])).execute()
        if rows:
            aftermath.after("telling the dashboard what was cancelled", self.hub.publish, "cancelled",
                            recipient=recipient, ids=[mid for mid, _ in rows])
        return rows

    def retry(self, recipient, ids):
        """Queue cancelled messages of recipient again, flagged redelivered; returns the ids it queued."""
        with core_db.atomic():
            found = [mid for (mid,) in Message.select(Message.id).where(
                Message.id.in_(ids) & (Message.recipient == recipient) & Message.cancelled_at.is_null(False)).tuples()]
            if found:
                Message.update(delivered_at=None, acked_at=None, cancelled_at=None, redelivered=True).where(
                    Message.id.in_(found)).execute()
        if found:
            self._wake(recipient)
            aftermath.after("telling the dashboard what was queued again", self.hub.publish, "requeued",
                            recipient=recipient, ids=sorted(found))
        return sorted(found)

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
        """Messages to or from name, newest first (a Listing: bounded, each body cut past LISTED_BODY_MAX)."""
        return self._listing("recipient = ? OR sender = ?", (name, name), limit)

    def inbox(self, recipient, limit, before=None, unread=False, sender=None):
        """Messages to recipient, newest first (a Listing, as recent): below id `before` (a page further
        back), only unread ones, only one sender's."""
        where, params = ["recipient = ?"], [recipient]
        if sender is not None:
            where.append("sender = ?")
            params.append(sender)
        if before is not None:
            where.append("id < ?")
            params.append(before)
        if unread:
            where.append("acked_at IS NULL")
        return self._listing(" AND ".join(where), params, limit)

    @staticmethod
    def refs_of_message(message_id):
        """(sender, recipient, file references) of one message, for a page's preview."""
        m = found(Message, Message.id == message_id, f"message {message_id}")
        return m.sender, m.recipient, json.loads(m.file_refs or "[]")

    def senders(self, recipient):
        """Per sender of recipient's inbox: how many are unread, and how many came in the last hour; and the
        highest message id those counts include, so a page adding live `sent` events counts none twice (ids
        grow in commit order: writes are serialized)."""
        since = self._now() - SENDER_RATE_SECONDS * 1000
        (through,) = core_db.execute_sql("SELECT COALESCE(MAX(id), 0) FROM message").fetchone()
        rows = core_db.execute_sql(sql(
            "SELECT sender, SUM(CASE WHEN acked_at IS NULL THEN 1 ELSE 0 END), SUM(CASE WHEN sent_at >= ? THEN 1 ELSE 0 END) "
            "FROM message WHERE recipient = ? AND id <= ? "
            "AND (acked_at IS NULL OR sent_at >= ?) GROUP BY sender ORDER BY sender"), (since, recipient, through, since))
        return [{"name": name, "unread": unread, "last_hour": last_hour} for name, unread, last_hour in rows], through

    def mark_read(self, recipient, ids=None):
        """The reader has seen these (None: everything unread); returns the ids newly marked read."""
        with core_db.atomic():
            query = Message.select(Message.id).where((Message.recipient == recipient) & Message.acked_at.is_null())
            if ids is not None:
                query = query.where(Message.id.in_(ids))
            found = [mid for (mid,) in query.order_by(Message.id).tuples()]
            if found:
                Message.update(acked_at=self._now()).where(Message.id.in_(found)).execute()
        if found:
            aftermath.after("telling the dashboard what was read", self.hub.publish, "read", recipient=recipient,
                            ids=found)
        return found

    @staticmethod
    def flow(after, limit):
        """The message flow oldest first, each body cut as listed: the last `limit`, or those above id `after`."""
        if after is None:
            rows = core_db.execute_sql(sql(_LISTED.format("TRUE")), (wire.LISTED_BODY_MAX, limit)).fetchall()
            rows.reverse()
        else:
            rows = core_db.execute_sql(sql(_LISTED.format("id > ?").replace("DESC", "ASC")),
                                       (wire.LISTED_BODY_MAX, after, limit)).fetchall()
        return [_listed(*row) for row in rows]

    @staticmethod
    def _listing(where, params, limit):
        rows, total = Listing(), 0
        cursor = core_db.execute_sql(sql(_LISTED.format(where)), (wire.LISTED_BODY_MAX, *params, limit))
        try:
            for row in cursor:
                total += _size(row[3], row[10])
                if total > wire.ANSWER_BUDGET and rows:
                    rows.cut_short = True
                    break
                rows.append(_listed(*row))
        finally:
            cursor.close()  # left open part-read, it would hold a read transaction and the WAL with it
        return rows

    def pending_count(self, recipient):
        if recipient in self._held:
            return 0
        return core_db.execute_sql(sql(_UNREAD), (recipient,)).fetchone()[0]

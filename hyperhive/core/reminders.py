"""Reminders: a message an agent leaves for its future self, delivered when it comes due.

Owns the `reminder` rows, the scheduler step the core runs every few
seconds (it takes `now`, so tests step it), and the payload file. With
`file_path`, the message is written at once to that file (named as the
agent sees it inside its container, translated to the host's and walked
without following links: `hyperhive.reach`), and what comes due is a
pointer to the file instead of the text, so a long payload never floods
the inbox.

Nothing is dropped in silence. A reminder whose owner no longer exists
fails: the reason goes on its row (`failed_at`, `error`), in the log, and
in the manager's loose ends until someone dismisses it. One whose payload
file is gone when it comes due is delivered with its text inline, saying
so, and the row keeps the reason.
"""

import logging
import time

from hyperhive import markup, wire
from hyperhive.schema import Reminder, core_db, found

log = logging.getLogger(__name__)

SENDER = wire.REMINDER
PENDING = Reminder.fired_at.is_null() & Reminder.failed_at.is_null()


def row(r):
    """A reminder as the wire carries it (wire.REMINDER_FIELDS)."""
    return {"id": r.id, "owner": r.owner, "message": r.message, "due_at": wire.iso(r.due_at),
            "file_path": r.file_path, "created_at": wire.iso(r.created_at), "fired_at": wire.iso(r.fired_at),
            "failed_at": wire.iso(r.failed_at), "error": r.error}


def pending_count(owner):
    return Reminder.select().where((Reminder.owner == owner) & PENDING).count()


class Reminders:
    """`lifecycle` answers `known(name)` and `changed(name)`, `references` an agent's `reach(name)`;
    `clock()` is unix seconds."""

    def __init__(self, broker, lifecycle, references, clock=time.time):
        self.broker, self.lifecycle, self.references, self.clock = broker, lifecycle, references, clock

    def _now(self):
        return int(self.clock() * 1000)

    # -- queries ----------------------------------------------------------------------------

    def get(self, reminder_id):
        return found(Reminder, Reminder.id == reminder_id, f"reminder {reminder_id}")

    def open_for(self, name):
        """Pending reminders and undismissed failures of name; the manager's are the whole hive's."""
        query = Reminder.select().where(Reminder.fired_at.is_null())
        if name != wire.MANAGER:
            query = query.where(Reminder.owner == name)
        return [row(r) for r in query.order_by(Reminder.due_at, Reminder.id)]

    # -- setting ----------------------------------------------------------------------------

    def remind(self, owner, message, due_at=None, in_seconds=None, file_path=None):
        """Queue a reminder for owner; returns its row. `due_at` is unix seconds. The arguments come
        checked by `verbs.check_args`; what is left here is what needs the clock and the owner's count."""
        now = self._now()
        due = self._due(now, due_at, in_seconds)
        if pending_count(owner) >= wire.MAX_PENDING_REMINDERS:
            raise wire.HiveError(f"you already have {wire.MAX_PENDING_REMINDERS} pending reminders; cancel some "
                                 "(get_loose_ends lists them, cancel_loose_end drops one) before setting more",
                                 "conflict")
        host_path = None
        if file_path is not None:
            try:
                host_path = self.references.reach(owner).write(file_path, message)
            except wire.HiveError as e:
                raise wire.HiveError(f"remind: cannot write the message to file_path: {e}", e.code) from None
            except OSError as e:
                raise wire.HiveError(f"remind: cannot write the message to {file_path}: {e.strerror}",
                                     "forbidden") from None
        with core_db.atomic():
            r = Reminder.create(owner=owner, message=message, due_at=due, file_path=file_path,
                                host_path=host_path, created_at=now)
        log.info("reminder %d: %s, due %s%s", r.id, owner, wire.iso(due), f", payload in {host_path}" if host_path else "")
        self.lifecycle.watch.changed(owner)
        return row(r)

    @staticmethod
    def _due(now, due_at, in_seconds):
        if (due_at is None) == (in_seconds is None):
            raise wire.HiveError("remind: give exactly one of due_at (an RFC 3339 time like "
                                 "\"2026-01-31T09:00:00Z\") or in_seconds")
        if in_seconds is not None:  # its range is the verb's (verbs.VERBS)
            return now + int(in_seconds) * 1000
        due = int(due_at * 1000)
        if due < now - wire.REMINDER_LATE_SECONDS * 1000:
            raise wire.HiveError(f"remind: due_at {wire.iso(due)} is {wire.duration((now - due) / 1000)} in the past "
                                 f"(now is {wire.iso(now)}); pick a time ahead, or use in_seconds")
        if due > now + wire.REMINDER_MAX_SECONDS * 1000:
            raise wire.HiveError(f"remind: due_at {wire.iso(due)} is more than a year ahead")
        return max(due, now)

    # -- cancelling ---------------------------------------------------------------------------

    def cancel(self, reminder_id, by):
        """Drop a pending (or failed) reminder before it fires: its owner, or the manager."""
        r = self.get(reminder_id)
        if by not in (r.owner, wire.MANAGER):
            raise wire.HiveError(f"reminder {r.id} is {r.owner}'s: only {r.owner} or the manager may cancel it",
                                 "forbidden")
        if r.fired_at is not None:
            raise wire.HiveError(f"reminder {r.id} already fired at {wire.iso(r.fired_at)}", "conflict")
        with core_db.atomic():
            if not Reminder.delete().where((Reminder.id == r.id) & Reminder.fired_at.is_null()).execute():
                raise wire.HiveError(f"reminder {r.id} fired a moment ago", "conflict")
        log.info("reminder %d of %s cancelled by %s", r.id, r.owner, by)
        self.lifecycle.watch.changed(r.owner)
        return dict(row(r), cancelled_by=by)

    # -- the scheduler -------------------------------------------------------------------------

    def step(self, now=None):
        """Deliver every reminder due by `now` (unix seconds; default the clock). Returns the ids handled."""
        now_ms = int((self.clock() if now is None else now) * 1000)
        due = list(Reminder.select().where(PENDING & (Reminder.due_at <= now_ms)).order_by(Reminder.due_at,
                                                                                            Reminder.id))
        if due and self.lifecycle.node is not None:  # a hive of several: each node fires its own agents' only
            mine = {a.name for a in self.lifecycle.own()}
            due = [r for r in due if r.owner in mine or not self.lifecycle.known(r.owner)]
        owners = set()
        for r in due:
            try:
                self._fire(r, now_ms)
            except Exception as e:  # one bad row must not hold back the others: it fails, with why
                log.exception("reminder %d could not be delivered", r.id)
                self._fail(r, now_ms, f"delivery failed: {e}")
            owners.add(r.owner)
        for owner in owners:
            self.lifecycle.watch.changed(owner)
        return [r.id for r in due]

    def _fail(self, r, at, error):
        Reminder.update(failed_at=at, error=error).where(Reminder.id == r.id).execute()
        log.warning("reminder %d of %s failed: %s", r.id, r.owner, error)

    def _fire(self, r, at):
        if not self.lifecycle.known(r.owner):
            return self._fail(r, at, f"not delivered: its owner {r.owner} no longer exists")
        error = None
        if r.file_path is None:
            body = self._inline(r, "")
        else:
            try:
                size = self._payload_size(r)
                body = (f"[reminder] Reminder {r.id} (set {wire.iso(r.created_at)}, due {wire.iso(r.due_at)}) is "
                        f"due. Its message is in {r.file_path} ({size} bytes): read it there.")
            except wire.HiveError as e:
                error = f"the payload file is gone: {e}; delivered inline"
                body = self._inline(r, f" Its message was to be in {r.file_path}, but that file is gone ({e}); "
                                       "here is the text as it was set.")
        with core_db.atomic():  # the message and the mark: both or neither
            if not Reminder.update(fired_at=at, error=error).where((Reminder.id == r.id) & PENDING).execute():
                return None  # cancelled a moment ago
            self.broker.send(SENDER, r.owner, body)
        if error:
            log.warning("reminder %d of %s: %s", r.id, r.owner, error)
        else:
            log.info("reminder %d delivered to %s", r.id, r.owner)
        return r.id

    def _payload_size(self, r):
        """The payload file's size, found again through the owner's reach (never a link out)."""
        return self.references.reach(r.owner).size(r.file_path)

    @staticmethod
    def _inline(r, extra):
        return (f"[reminder] Reminder {r.id} (set {wire.iso(r.created_at)}, due {wire.iso(r.due_at)}) is due."
                f"{extra}\n\n{markup.quote(r.message)}")


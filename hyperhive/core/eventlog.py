"""The dashboards' events of a hive of several cores: one log in PostgreSQL, numbered hive-wide.

Owns the `hive_event` table's writes and reads. A core's `publish` queues the
event; one writer greenlet appends what is queued (its id is the event's
seq) and tells the other cores; each core delivers the rows above the last
one it delivered, in id order, to its own pages. So every dashboard of the
hive sees the same events under the same seq, and the snapshot + stream +
seq contract of one core holds across all of them. Rows commit in id order
(a transaction-scoped advisory lock around each append), so a reader never
delivers a higher seq before a lower one commits.

The log has a connection of its own and the append is off the request's
path: a send or a pop answers without waiting on the dashboards (bench/'s
`nodes` measured the append in the path at 5-7x a sqlite wake). An event is
a page's hint, not the hive's state (a page's snapshot reads the tables):
one still queued when its core dies is lost to the pages, never a message.
Kept for KEEP_SECONDS; a page further behind reloads its snapshot.
"""

import json
import logging

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Full, Queue

from hyperhive.core import notices
from hyperhive.fanout import Fanout
from hyperhive.schema import HiveEvent, now_ms

log = logging.getLogger(__name__)

APPEND_LOCK = 4243  # the advisory lock key that orders the appends
BATCH = 500  # rows appended, or read, per statement round
QUEUED_MAX = 10000  # events waiting for the writer; past it a new one is dropped, said in the log
RETRY_SECONDS = 0.5  # the writer's pause before appending a batch again when the database refused it
KEEP_SECONDS = 3600
_SELECT = "SELECT id, kind, data FROM hive_event WHERE id > %s ORDER BY id LIMIT %s"
_INSERT = "INSERT INTO hive_event (at, kind, data) VALUES (%s, %s, %s)"


class EventLog(Fanout):
    """A Fanout whose `publish` goes through the hive's log; `catch_up()` delivers what the log has
    that this core has not delivered yet (after each append, on every notice, and after a reconnect)."""

    def __init__(self, kinds, notices_, url, shown=None):
        from hyperhive import postgres

        self.db = postgres.Database(url)
        (last,) = self.db.execute_sql("SELECT COALESCE(MAX(id), 0) FROM hive_event").fetchone()
        super().__init__(kinds, seq=last, shown=shown)
        self._reading = Semaphore()
        self._queue = Queue(QUEUED_MAX)
        self._dropped = 0
        self._unwritten = 0  # published, not yet appended
        self._written = Event()  # set while nothing waits to be appended
        notices_.on(notices.EVENT, lambda payload: self.catch_up())
        notices_.caught_up(self.catch_up)
        self._writer = gevent.spawn(self._write)

    def publish(self, kind, **data):
        assert kind in self.kinds, kind
        try:
            self._queue.put_nowait((now_ms(), kind, json.dumps(data)))
            self._unwritten += 1
            self._written.clear()
        except Full:
            self._dropped += 1
            if self._dropped in (1, 100) or self._dropped % 10000 == 0:
                log.error("the event log's writer is %d events behind (the database is away?); %d event(s) "
                          "dropped, which open pages miss until they reload", QUEUED_MAX, self._dropped)

    def _write(self):
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except Empty:
                    break
            while True:
                try:
                    with self.db.atomic():
                        self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                        for row in batch:
                            self.db.execute_sql(_INSERT, row)
                        self.db.execute_sql("SELECT pg_notify(%s, '')", (notices.EVENT,))
                    break
                except Exception as e:  # the database away: the batch waits, in order, and goes once it is back
                    log.warning("appending %d event(s) to the hive's log failed (%s); trying again",
                                len(batch), str(e).splitlines()[0] if str(e) else type(e).__name__)
                    gevent.sleep(RETRY_SECONDS)
            self._unwritten -= len(batch)
            if not self._unwritten:
                self._written.set()
            self.catch_up()

    def catch_up(self):
        with self._reading:
            while True:
                rows = self.db.execute_sql(_SELECT, (self.seq, BATCH)).fetchall()
                for seq, kind, data in rows:
                    self.seq = seq
                    if kind not in self.kinds:  # a newer core's kind: this page would not know it
                        log.warning("event %d is of a kind this core does not know (%s); not shown", seq, kind)
                        continue
                    self.deliver({"seq": seq, "kind": kind, **json.loads(data)})
                if len(rows) < BATCH:
                    return

    def flush(self, timeout=None):
        """Wait until every event published so far is appended and delivered here (a graceful stop's last
        events reach the other nodes' pages); False when `timeout` passed first."""
        if self._unwritten and not self._written.wait(timeout):
            return False
        self.catch_up()
        return True

    def close(self):
        self._writer.kill()
        self.db.close()

    @staticmethod
    def sweep(now_ms_=None):
        """Drop events older than KEEP_SECONDS (the sweeper's hourly pass)."""
        cutoff = (now_ms() if now_ms_ is None else now_ms_) - KEEP_SECONDS * 1000
        return HiveEvent.delete().where(HiveEvent.at < cutoff).execute()

"""The dashboards' events of a hive of several cores: one log in PostgreSQL, numbered hive-wide.

Owns the `hive_event` table's writes and reads. A core's `publish` appends a
row (its id is the event's seq) and tells the other cores; each core delivers
the rows above the last one it delivered, in id order, to its own pages. So
every dashboard of the hive sees the same events under the same seq, and the
snapshot + stream + seq contract of one core holds across all of them. Rows
commit in id order (a transaction-scoped advisory lock around the append), so
a reader never delivers a higher seq before a lower one commits. Kept for
KEEP_SECONDS; a page further behind reloads its snapshot.
"""

import json
import logging

from gevent.lock import Semaphore

from hyperhive.core import notices
from hyperhive.fanout import Fanout
from hyperhive.schema import HiveEvent, core_db, now_ms

log = logging.getLogger(__name__)

APPEND_LOCK = 4243  # the advisory lock key that orders the appends
BATCH = 500  # rows read per catch-up query
KEEP_SECONDS = 3600


class EventLog(Fanout):
    """A Fanout whose `publish` goes through the hive's log; `catch_up()` delivers what the log has
    that this core has not delivered yet (on every notice, and after a reconnect)."""

    def __init__(self, kinds, notices_, shown=None):
        (last,) = core_db.execute_sql("SELECT COALESCE(MAX(id), 0) FROM hive_event").fetchone()
        super().__init__(kinds, seq=last, shown=shown)
        self.notices = notices_
        self._reading = Semaphore()
        notices_.on(notices.EVENT, lambda payload: self.catch_up())
        notices_.caught_up(self.catch_up)

    def publish(self, kind, **data):
        assert kind in self.kinds, kind
        with core_db.atomic():
            core_db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            HiveEvent.insert(kind=kind, data=json.dumps(data)).execute()
            self.notices.tell(notices.EVENT)
        self.catch_up()

    def catch_up(self):
        with self._reading:
            while True:
                rows = list(HiveEvent.select(HiveEvent.id, HiveEvent.kind, HiveEvent.data)
                            .where(HiveEvent.id > self.seq).order_by(HiveEvent.id).limit(BATCH).tuples())
                for seq, kind, data in rows:
                    self.seq = seq
                    if kind not in self.kinds:  # a newer core's kind: this page would not know it
                        log.warning("event %d is of a kind this core does not know (%s); not shown", seq, kind)
                        continue
                    self.deliver({"seq": seq, "kind": kind, **json.loads(data)})
                if len(rows) < BATCH:
                    return

    @staticmethod
    def sweep(now_ms_=None):
        """Drop events older than KEEP_SECONDS (the sweeper's hourly pass)."""
        cutoff = (now_ms() if now_ms_ is None else now_ms_) - KEEP_SECONDS * 1000
        return HiveEvent.delete().where(HiveEvent.at < cutoff).execute()

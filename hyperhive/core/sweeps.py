"""The hourly sweeps that keep the core's database small.

Owns what is old enough to go from hive.db: acked messages, answered
questions, fired (or failed) reminders and decided tool calls (tool_use
approvals; the config approvals stay, their history is in git too), each
after 30 days. A message
nobody acked is never swept, however old. Every sweep takes `now`, so tests
step it, and logs how many rows it removed. The harness sweeps its own file
(event history after 7 days, turn stats after 90): `Bus.prune`.
"""

import logging
import time

from hyperhive.schema import Approval, Message, Question, Reminder, core_db

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
KEEP_DAYS = {"messages": 30, "questions": 30, "reminders": 30, "tool_calls": 30}


def _queries(cutoffs):
    yield "messages", "acked messages", Message.delete().where(
        Message.acked_at.is_null(False) & (Message.acked_at < cutoffs["messages"]))
    yield "questions", "answered questions", Question.delete().where(
        Question.answered_at.is_null(False) & (Question.answered_at < cutoffs["questions"]))
    yield "reminders", "fired or failed reminders", Reminder.delete().where(
        (Reminder.fired_at.is_null(False) & (Reminder.fired_at < cutoffs["reminders"]))
        | (Reminder.failed_at.is_null(False) & (Reminder.failed_at < cutoffs["reminders"])))
    yield "tool_calls", "decided tool calls", Approval.delete().where(
        (Approval.kind == "tool_use") & Approval.resolved_at.is_null(False)
        & (Approval.resolved_at < cutoffs["tool_calls"]))


class Sweeper:
    def __init__(self, clock=time.time):
        self.clock = clock

    def step(self, now=None):
        """Remove every row past its age at `now` (unix seconds); returns {what: rows removed}."""
        now_ms = int((self.clock() if now is None else now) * 1000)
        cutoffs = {what: now_ms - days * DAY_MS for what, days in KEEP_DAYS.items()}
        removed = {}
        for what, words, query in _queries(cutoffs):
            with core_db.atomic():
                removed[what] = query.execute()
            log.info("sweep: removed %d %s older than %d days", removed[what], words, KEEP_DAYS[what])
        return removed

"""Loose ends: what is still open about an agent, and withdrawing one of them.

Owns the one list an agent reads to see what it left open or is waited on
for (approvals about it, questions it asked or must answer, its pending
reminders and undismissed failed ones; the manager's list is the whole
hive's) and the rule for withdrawing a row: a sub-agent withdraws only its
own, the manager anyone's. Each kind's own module does the withdrawing.
"""

from hyperhive import wire


class LooseEnds:
    def __init__(self, approvals, questions, reminders):
        self.approvals, self.questions, self.reminders = approvals, questions, reminders

    def list(self, name):
        """Every loose end of name (the manager: of the hive), each tagged with `loose_end`: its kind."""
        everyone = name == wire.MANAGER
        # approval rows keep their own `kind` (apply_commit, spawn, ...); a tool call waiting for the
        # operator is none: it ends with its turn, and is its agent's alone (the manager never sees one)
        ends = [dict(a, loose_end="approval") for a in self.approvals.pending()
                if (everyone or a["agent"] == name) and a["kind"] != "tool_use"]
        # the agent page labels rows by `kind`
        ends += [dict(q, loose_end="question", kind="question") for q in self.questions.open_for(name)]
        ends += [dict(r, loose_end="reminder", kind="reminder") for r in self.reminders.open_for(name)]
        return ends

    def cancel(self, name, kind, item_id):
        """Withdraw loose end `kind` `item_id` as name; returns the row as it closed."""
        if kind == "question":
            return self.questions.cancel(item_id, by=name)
        if kind == "reminder":
            return self.reminders.cancel(item_id, by=name)
        if kind == "approval":
            if name != wire.MANAGER:
                raise wire.HiveError(f"approval {item_id} is the manager's request: only the manager withdraws it "
                                     "(or the operator denies it); ask the manager", "forbidden")
            return self.approvals.cancel(item_id, by=name)
        raise wire.HiveError(f"cancel_loose_end: 'kind' must be one of {', '.join(wire.LOOSE_END_KINDS)}, "
                             f"got {str(kind)[:40]!r}")

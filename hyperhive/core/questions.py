"""Questions: an agent asks the operator or a peer, and exactly one answer comes back.

Owns the `question` rows, who may answer or cancel one, the ttl watchdog that
closes a question nobody answered in time, and the messages both ways. A
peer question reaches its target's inbox as a `[question_asked]` message;
every way a question closes (an answer, a cancel, an expiry, a destroyed
target) reaches the asker's inbox as a `[question_answered]` message sent
through the broker, so it is durable and wakes the asker. An answer whose
asker was destroyed meanwhile is recorded on the row (`note`) and logged,
never dropped in silence.

Only operator questions are the dashboard's business: they alone publish
`question_added` / `question_resolved`; a question between two agents never
shows in the operator's queue.
"""

import json
import logging
import time

from hyperhive import markup, wire
from hyperhive.core import aftermath, renderer
from hyperhive.schema import Question, core_db, found

log = logging.getLogger(__name__)

WATCHDOG = wire.TTL_WATCHDOG
CORE = "core"  # closes the questions of a destroyed agent
OPEN_FOR_OPERATOR = 100  # open questions one asker may have waiting for the operator


def row(q):
    """A question as the wire carries it (wire.QUESTION_FIELDS)."""
    return {"id": q.id, "asker": q.asker, "target": q.target, "question": q.question,
            "options": json.loads(q.options), "asked_at": wire.iso(q.asked_at),
            "expires_at": wire.iso(q.expires_at), "answered_at": wire.iso(q.answered_at),
            "answer": q.answer, "answered_by": q.answered_by, "note": q.note}


def shown(q):
    """A row for the operator's screens: with the question rendered from markdown (off the loop)."""
    return dict(row(q), question_html=renderer.render(q.question))


def _whom(name):
    return "the operator" if name == wire.OPERATOR else name


def _shorten(text, limit=80):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


class Questions:
    """`clock()` is unix seconds (injectable); `lifecycle.known(name)` says who exists."""

    def __init__(self, broker, hub, lifecycle, clock=time.time):
        self.broker, self.hub, self.lifecycle, self.clock = broker, hub, lifecycle, clock

    def _now(self):
        return int(self.clock() * 1000)

    # -- queries -----------------------------------------------------------------------

    def get(self, question_id):
        return found(Question, Question.id == question_id, f"question {question_id}")

    def pending_for_operator(self):
        """Open questions put to the operator, oldest first, as the dashboard shows them."""
        query = (Question.select().where((Question.target == wire.OPERATOR) & Question.answered_at.is_null())
                 .order_by(Question.id))
        return [shown(q) for q in query]

    def open_for(self, name):
        """Open questions name asked or must answer; the manager's are the whole hive's."""
        query = Question.select().where(Question.answered_at.is_null())
        if name != wire.MANAGER:
            query = query.where((Question.asker == name) | (Question.target == name))
        return [row(q) for q in query.order_by(Question.id)]

    # -- asking -----------------------------------------------------------------------

    def ask(self, asker, question, to=None, options=(), ttl_seconds=None):
        """Queue a question from asker to `to` (default: the operator); returns its row.

        The arguments come checked by `verbs.check_args` (the verb's table); what is left here is
        what the table cannot know: who asks whom, and how many are open."""
        if asker == wire.OPERATOR:
            raise wire.HiveError("the operator answers questions here; to ask an agent something, send it a message")
        target = wire.OPERATOR if to is None else to
        if target == asker:
            raise wire.HiveError("you cannot ask yourself a question; ask the operator (leave out `to`) "
                                 "or another agent")
        if not self.lifecycle.known(target):
            raise wire.HiveError(f"there is no agent named {target!r} to ask; ask the operator (leave out `to`) "
                                 "or an agent that exists", "not_found")
        options = list(options or ())
        if target != wire.OPERATOR:  # a question to an agent is a message to it, under the same quota
            self.broker.admit(asker, target)
        else:
            self._admit_for_operator(asker)
        now = self._now()
        expires = now + int(ttl_seconds) * 1000 if ttl_seconds is not None else None
        with core_db.atomic():  # the row and the target's message: both or neither
            q = Question.create(asker=asker, target=target, question=question, options=json.dumps(options),
                                asked_at=now, expires_at=expires)
            if target != wire.OPERATOR:
                self.broker.send(asker, target, self._asked_body(q, options))
        if target == wire.OPERATOR:
            aftermath.after(f"telling the dashboard about question {q.id}",
                            lambda: self.hub.publish("question_added", question=shown(q)))
        log.info("question %d: %s asks %s", q.id, asker, target)
        return row(q)

    @staticmethod
    def _admit_for_operator(asker):
        """The operator's open questions are one list on the dashboard: no asker may fill it."""
        open_ = (Question.select().where((Question.asker == asker) & (Question.target == wire.OPERATOR)
                                         & Question.answered_at.is_null()).count())
        if open_ >= OPEN_FOR_OPERATOR:
            raise wire.HiveError(f"{asker} already has {open_} questions open for the operator, the most one asker "
                                 "may; wait for answers, or withdraw some (cancel_loose_end)", "conflict")

    @staticmethod
    def _asked_body(q, options):
        lines = [f"[question_asked] {q.asker} asks you question {q.id}:", "", markup.quote(q.question), ""]
        if options:
            lines.append("Choices: " + " · ".join(f"`{o}`" for o in options) + " (or answer in your own words)")
        if q.expires_at is not None:
            lines.append(f"It expires in {wire.duration((q.expires_at - q.asked_at) / 1000)} "
                         f"({wire.iso(q.expires_at)}); after that it is closed unanswered.")
        lines.append(f"Answer it with your `answer` tool (id {q.id}); the answer goes back to {q.asker}'s "
                     "inbox. A `send` does not close the question.")
        return "\n".join(lines)

    # -- closing -----------------------------------------------------------------------

    def _open(self, question_id):
        q = self.get(question_id)
        if q.answered_at is not None:
            raise wire.HiveError(self._closed_sentence(q), "conflict")
        return q

    @staticmethod
    def _closed_sentence(q):
        when = wire.iso(q.answered_at)
        if q.answered_by == WATCHDOG:
            how = f"it expired unanswered at {when}"
        elif (q.answer or "").startswith("[cancelled"):
            how = f"it was {q.answer.strip('[]')} at {when}"
        else:
            how = f"{q.answered_by} answered it {_shorten(q.answer or '')!r} at {when}"
        return f"question {q.id} is already closed: {how}"

    def answer(self, question_id, answer, by):
        """`by` answers question_id; the asker gets it in its inbox. Returns the closed row."""
        if not isinstance(answer, str) or not answer.strip():
            raise wire.HiveError("answer: the answer must not be empty")
        q = self._open(question_id)
        if by == q.target:
            pass
        elif q.target == wire.OPERATOR:
            raise wire.HiveError(f"question {q.id} is for the operator: only the operator answers it "
                                 f"(on the dashboard, or `hyperhive answer {q.id} …`)", "forbidden")
        elif by != wire.OPERATOR:  # the operator may answer any agent's question in its stead
            also = "; you asked it, so withdraw it with cancel_loose_end if you no longer need it" \
                if by == q.asker else ""
            raise wire.HiveError(f"question {q.id} was put to {q.target}: only {q.target} (or the operator) "
                                 f"may answer it{also}", "forbidden")
        headline = f"Your question {q.id} to {_whom(q.target)} was answered by {_whom(by)}."
        return self._close(q, answer, by, headline)

    def cancel(self, question_id, by):
        """Withdraw an open question (its asker, the manager or the operator); the asker is unblocked."""
        q = self._open(question_id)
        if by not in (wire.OPERATOR, wire.MANAGER, q.asker):
            raise wire.HiveError(f"question {q.id} is {q.asker}'s: only {q.asker}, the manager or the operator "
                                 "may cancel it", "forbidden")
        headline = (f"Your question {q.id} to {_whom(q.target)} was cancelled by {_whom(by)}; it has no answer. "
                    "Ask again if you still need one.")
        return self._close(q, f"[cancelled by {by}]", by, headline)

    def expire_step(self, now=None):
        """Close every open question whose ttl ran out by `now` (unix seconds; default the clock).

        Returns the ids it closed. The core runs this every few seconds."""
        now_ms = int((self.clock() if now is None else now) * 1000)
        due = list(Question.select().where(Question.answered_at.is_null() & Question.expires_at.is_null(False)
                                           & (Question.expires_at <= now_ms)).order_by(Question.id))
        closed = []
        for q in due:
            ttl = wire.duration((q.expires_at - q.asked_at) / 1000)
            answer = (f"Nobody answered in time: the question expired after {ttl} unanswered. "
                      "Go on without an answer, or ask again.")
            headline = f"Your question {q.id} to {_whom(q.target)} expired: nobody answered within {ttl}."
            try:
                self._close(q, answer, WATCHDOG, headline, at=now_ms)
            except wire.HiveError as e:  # answered a moment ago: nothing to expire
                log.info("question %d: %s", q.id, e)
                continue
            closed.append(q.id)
        return closed

    def agent_destroyed(self, name):
        """Close what a destroyed agent leaves open: questions to it (their askers are told) and its own."""
        for q in list(Question.select().where(Question.answered_at.is_null() & (Question.target == name))
                      .order_by(Question.id)):
            self._close(q, f"[cancelled: {name} was destroyed before answering]", CORE,
                        f"Your question {q.id} to {name} was cancelled: {name} was destroyed before answering.")
        for q in list(Question.select().where(Question.answered_at.is_null() & (Question.asker == name))
                      .order_by(Question.id)):
            self._close(q, f"[cancelled: {name} was destroyed]", CORE, None, note=f"closed: its asker {name} "
                        "was destroyed")

    def _close(self, q, answer, by, headline, at=None, note=None):
        """Stamp the answer on the row and deliver it to the asker, in one transaction.

        With a note (or an asker that is gone) nothing is delivered, and the row says why."""
        at = self._now() if at is None else at
        if note is not None:
            pass
        elif by == q.asker:
            note = "withdrawn by its asker"
        elif not self.lifecycle.known(q.asker):
            note = f"not delivered: {q.asker} was destroyed before the answer came"
            log.warning("question %d: %s answered it, but its asker %s no longer exists; the answer is kept "
                        "on the question's row only", q.id, by, q.asker)
        with core_db.atomic():
            closed = (Question.update(answered_at=at, answer=answer, answered_by=by, note=note)
                      .where((Question.id == q.id) & Question.answered_at.is_null()).execute())
            if not closed:
                raise wire.HiveError(self._closed_sentence(Question.get_by_id(q.id)), "conflict")
            q = Question.get_by_id(q.id)
            if note is None:
                self.broker.send(by, q.asker, self._answered_body(q, headline))
        if q.target == wire.OPERATOR:
            aftermath.after(f"telling the dashboard that question {q.id} is closed",
                            lambda: self.hub.publish("question_resolved", question=shown(q)))
        log.info("question %d closed by %s%s", q.id, by, f" ({note})" if note else "")
        return row(q)

    @staticmethod
    def _answered_body(q, headline):
        return "\n".join([f"[question_answered] {headline}", "", "Your question:", markup.quote(q.question), "",
                          f"Answer (from {q.answered_by}):", markup.quote(q.answer)])

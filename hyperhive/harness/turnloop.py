"""The turn loop: wait for a message, wake claude with it, ack only a turn that ended well.

Owns the order of a harness's life (boot → requeue_inflight → wait for
claude's login → loop on recv → turn → ack, or requeue and back off), what
each way a turn ends means for its messages (ok: acked; cancelled by the
operator: handled as cancelled, never retried on its own; refused by the
API or without claude: requeued, and the loop parks on the login; failed:
requeued, retried with backoff), the conversation every turn resumes (only
"new session" starts a fresh one), the wake prompt, the compact-and-retry-
once rule, the pause marker, and the core client that retries with backoff
when the core is down. Every wait goes through `sleep`, so tests step the
loop without sleeping for real.
"""

import logging
import os
import threading
import time

from hyperhive import jsonline, wire
from hyperhive.harness import session as sessions
from hyperhive.harness.claude import Outcome

log = logging.getLogger(__name__)

RECV_WAIT = 180
RECV_REFUSED_SECONDS = 5.0  # after the core refused a recv (another took over, or a cap): poll again then
# After a turn that did not end well its messages are requeued; the retry
# waits 2 s, doubling per failure in a row up to 5 min, so a message that
# always fails (or an API outage) costs a turn every few minutes, not a loop.
RETRY_BACKOFF = (2.0, 300.0)
# Failures in a row after which the operator is told the agent is stuck (once per streak).
STUCK_AFTER = 5


class CoreClient:
    """Requests to the core on this agent's socket, retried with backoff while it is down."""

    def __init__(self, socket, sleep=time.sleep, notify=None, backoff=(0.5, 30.0)):
        self.socket, self.sleep = socket, sleep
        self.notify = notify or (lambda text: None)
        self.backoff = backoff

    def call(self, verb, timeout=30.0, **args):
        """The answer, retried until the core is reachable.

        A `recv` cut off by the core's death may have been popped for us and
        never answered; the turn loop only receives between turns, when
        nothing of ours is rightly in flight, so the retry first requeues
        (left in flight, the next good turn's ack would mark it done unseen).
        """
        delay = self.backoff[0]
        down_since = None
        while True:
            try:
                if down_since is not None and verb == "recv":
                    jsonline.call(self.socket, "requeue_inflight", timeout=timeout)
                answer = jsonline.call(self.socket, verb, timeout=timeout, **args)
            except jsonline.Unreachable as e:
                if down_since is None:
                    down_since = time.monotonic()
                text = f"core unreachable ({e}); retrying {verb} in {delay:g}s"
                log.warning(text)
                self.notify(text)
                self.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            if down_since is not None:
                text = f"core reachable again after {time.monotonic() - down_since:.1f}s"
                log.info(text)
                self.notify(text)
            return answer

    def try_call(self, verb, timeout=5.0, **args):
        """One attempt, no retry: the answer, or None with the reason logged (for what may go without)."""
        try:
            return jsonline.call(self.socket, verb, timeout=timeout, **args)
        except (jsonline.Unreachable, wire.HiveError) as e:
            log.warning("%s: %s", verb, e)
            return None


def wake_prompt(messages, unread):
    """What claude is told when messages wake it."""
    text = "\n\n---\n\n".join(map(wire.format_message, messages))
    if unread:
        text += (f"\n\n({unread} more unread message{'s' if unread != 1 else ''} waiting; "
                 f"call recv with max: {min(unread, wire.RECV_MAX_BATCH)} to read them)")
    return text


class TurnLoop:
    """One agent's loop. `runner(prompt, resume) -> Outcome` runs claude, resuming the conversation
    with that session id (None: a fresh one); `compact()` compacts the current conversation.

    A turn holds `turn_lock` from its start to its end; the web page's
    compaction takes the same lock, so the two never share claude's session.
    The harness passes a gevent lock; the default is for code without a hub.
    `session` (a session.Session) keeps the conversation's id across restarts.
    """

    def __init__(self, client, bus, runner, compact, session, paused=lambda: False, sleep=time.sleep, batch=1,
                 turn_lock=None, login=None):
        self.client, self.bus, self.runner, self.compact = client, bus, runner, compact
        self.session = session
        self.login = login  # a login.Login; None runs turns without asking (tests of the loop alone)
        self.paused, self.sleep, self.batch = paused, sleep, batch
        self.turn_lock = turn_lock if turn_lock is not None else threading.Lock()
        self.stopping = False
        self.in_turn = False
        self.new_session = False
        self.failures = 0  # turns in a row that did not end well
        self.unsettled = False  # a step broke off with messages maybe in flight: requeue before the next recv

    def boot(self):
        requeued = self.client.call("requeue_inflight")["requeued"]
        if requeued:
            self.bus.note(f"{requeued} message(s) were in flight when the harness last stopped; "
                          "they come again, flagged redelivered")
        if self.login is not None:
            self.login.check()  # told at every boot, so a core that thought otherwise learns
        return requeued

    def step(self):
        """Wait for messages (up to RECV_WAIT) and run one turn if any came. Returns the Outcome or None."""
        if self.paused():
            self.bus.set_turn_state("paused")
            self.sleep(1.0)
            return None
        if self.bus.turn_state == "paused":
            self.bus.set_turn_state("idle")
        if self.login is not None and not self.login.ready():
            return None  # parked until claude has a login: nothing is received meanwhile
        if self.unsettled:
            self.client.call("requeue_inflight")
            self.unsettled = False
        try:
            answer = self.client.call("recv", timeout=RECV_WAIT + 30, wait_seconds=RECV_WAIT, max=self.batch)
        except wire.HiveError as e:
            if e.code not in ("conflict", "unavailable") or wire.storage_failure(e) is not None:
                raise
            # Another client on this socket took the one waiting recv over, or holds every
            # connection the socket serves: something else in this container. Poll again a little
            # later; what a cut-off recv may have popped is requeued first.
            log.warning("recv: %s; polling again in %gs", e, RECV_REFUSED_SECONDS)
            self.unsettled = True
            self.sleep(RECV_REFUSED_SECONDS)
            return None
        messages = answer["messages"]
        if not messages or self.stopping:
            return None  # popped during shutdown: left unacked, requeued at next boot
        return self.turn(messages, answer.get("unread", 0))

    def _settle(self, outcome):
        """Tell the core how the turn ended: its messages acked, cancelled, or requeued."""
        if outcome.ok:
            self.client.call("ack_turn")
            self.failures = 0
        elif outcome.kind == "cancelled":
            # The operator's stop: handled as cancelled, the senders told, nothing retried unless asked.
            self.client.call("cancel_turn")
        else:
            # Requeued now, not left in flight: `ack_turn` marks every popped
            # message handled, so the next good turn would ack these unseen.
            requeued = self.client.call("requeue_inflight")["requeued"]
            log.warning("turn %s (%s); its %d message(s) come again, flagged redelivered",
                        outcome.kind, outcome.reason, requeued)

    def turn(self, messages, unread):
        with self.turn_lock:  # waits out an operator's compaction
            return self._turn(messages, unread)

    def _turn(self, messages, unread):
        prompt = wake_prompt(messages, unread)
        first = messages[0]
        self.bus.emit("turn_start", **{"from": first["from"], "body": first["body"], "unread": unread,
                                       "redelivered": any(m.get("redelivered") for m in messages),
                                       "ids": [m["id"] for m in messages],
                                       "file_refs": [ref for m in messages for ref in m.get("file_refs") or ()]})
        self.in_turn = True
        self.bus.set_turn_state("thinking")
        self.bus.begin_turn(first["from"])
        outcome = Outcome("failed", "the turn loop failed mid-turn; the harness log has why")
        try:
            try:
                outcome = self._run(prompt)
            finally:
                self.bus.end_turn(outcome, **self._open_counts())
                self.bus.set_turn_state("idle")
            self._settle(outcome)
        finally:
            # only once the core knows how the turn ended: a graceful stop waits for `in_turn`, and one that
            # came between claude's exit and the ack would leave a finished turn's messages to run again
            self.in_turn = False
        ids = [m["id"] for m in messages]
        parked = self.login is not None and outcome.kind in ("auth_failed", "claude_missing")
        if not outcome.ok and outcome.kind != "cancelled" and not parked:
            self.failures += 1
            if self.failures == STUCK_AFTER:
                self._report_stuck(messages, outcome)
        self.bus.emit("turn_end", ok=outcome.ok, note=outcome.reason or None, outcome=outcome.kind, ids=ids)
        if outcome.kind == "cancelled":
            self.bus.note(f"the operator cancelled the turn: message(s) {_listed(ids)} are marked handled as "
                          "cancelled and their senders told; retry them from the turn's row to run them again")
        elif parked:
            self.bus.note(f"the turn did not run ({outcome.reason}); its message(s) wait in the queue until "
                          "claude can run again")
            if outcome.kind == "auth_failed":
                self.login.refused(outcome.reason)
            else:
                self.login.gone(outcome.reason)
        elif not outcome.ok:
            self.bus.note(f"the turn did not end well ({self.failures} in a row); "
                          f"its messages come again in {wire.duration(self._retry_delay())}")
            self._back_off()
        return outcome

    def _report_stuck(self, messages, outcome):
        """Retrying in silence would hide a stuck agent: the operator hears of it once per streak."""
        ids = ", ".join(f"#{m['id']}" for m in messages)
        self.client.try_call("send", to=wire.OPERATOR, body=(
            f"[helper event] turn_stuck: my last {self.failures} turns did not end well; the latest "
            f"{outcome.kind}: {outcome.reason}. Message(s) {ids} stay queued and are retried every few "
            "minutes. My page shows each attempt; a new session or a restart may help."))

    def _retry_delay(self):
        first, most = RETRY_BACKOFF
        return min(first * 2 ** (self.failures - 1), most)

    def _back_off(self):
        """Wait before the requeued messages are tried again, in slices so a stop is not held up."""
        left = self._retry_delay()
        while left > 0 and not self.stopping:
            self.sleep(min(left, 1.0))
            left -= 1.0

    def _open_counts(self):
        """What the agent left open after the turn, for its turn_stat row (None where the core did not say)."""
        # short: the turn is over and its ack waits on these; a slow core means unknown, not a stall
        ends = self.client.try_call("get_loose_ends", timeout=2.0)
        reminders = self.client.try_call("count_pending_reminders", timeout=2.0)
        return {"open_loose_ends": len(ends["loose_ends"]) if ends else None,
                "pending_reminders": reminders["count"] if reminders else None}

    def _run(self, prompt):
        outcome = self._claude(prompt)
        if outcome.kind == "prompt_too_long":
            self.bus.note("the prompt is too long; compacting the conversation and retrying once")
            self.bus.set_turn_state("compacting")
            compacted = self.compact()
            self.bus.set_turn_state("thinking")
            if not compacted.ok:
                reason = compacted.reason or "it did not say why"
                return Outcome("failed", reason if reason.startswith("compaction") else f"compaction failed: {reason}")
            outcome = self._claude(prompt)
        return outcome

    def _claude(self, prompt):
        """One run of claude on the agent's conversation; a conversation claude no longer has starts anew."""
        resume = self.resume_id()
        outcome = self.runner(prompt, resume)
        if resume and outcome.kind == "failed" and sessions.says_gone(outcome):
            self.bus.note(f"claude has no conversation {resume} any more; this turn starts a fresh one")
            self.session.forget()
            outcome = self.runner(prompt, None)
        if outcome.session_id:
            self.session.save(outcome.session_id)
        return outcome

    def resume_id(self):
        """The session id the next run resumes: None after "new session", or when its transcript is gone."""
        if self.new_session:
            self.new_session = False
            self.session.forget()
            return None
        resume = self.session.current()
        if resume and not self.session.exists(resume):
            self.bus.note(f"the conversation {resume} is gone (claude has no transcript of it at "
                          f"{self.session.transcripts(resume)[0]}); this turn starts a fresh one")
            self.session.forget()
            return None
        return resume

    def run(self):
        booted = False
        while not self.stopping:
            try:
                if not booted:
                    self.boot()
                    booted = True
                else:
                    self.step()
            except Exception as e:
                if wire.storage_failure(e) is None:
                    raise  # a bug: the harness dies with its traceback and the core reports the crash
                self._survive_disk(e)

    def _survive_disk(self, e):
        """A full or read-only disk is waited out: what the step popped comes again once it is writable.

        Not through the bus, which cannot write either; the log says it.
        """
        self.failures += 1
        self.unsettled = True
        log.error("%s; the turn's messages are requeued and tried again in %s",
                  wire.storage_failure(e), wire.duration(self._retry_delay()))
        self._back_off()


def _listed(ids):
    return ", ".join(f"#{i}" for i in ids)


def pause_marker(path):
    """A `paused()` for the loop: the core's marker file exists."""
    return (lambda: bool(path) and os.path.exists(path))

"""The three socket surfaces: which verbs each answers, and as whom.

Identity is the socket: the host socket acts as the operator, an agent's
socket as that agent, the manager's socket as the manager. A handler gets
the caller's name from the socket it was built for, never from the request,
so no request can speak for someone else.
"""

import logging
import os

from hyperhive import resources, verbs, wire
from hyperhive.core import aftermath, reminders
from hyperhive.core.looseends import LooseEnds
from hyperhive.schema import Agent

log = logging.getLogger(__name__)
# Characters of diffs one `pending` answer carries whole (a client reads up to wire.MAX_ANSWER).
PENDING_DIFF_BUDGET = 8 * 1024 * 1024


def _for_agent(messages):
    """Messages as an agent is shown them: a file reference is the path as it names it and the size,
    never where the core found it on the host (the operator's to know)."""
    for m in messages:
        if m.get("file_refs"):
            m["file_refs"] = [{"path": r.get("path"), "size": r.get("size")} for r in m["file_refs"]]
    return messages


class Surfaces:
    """Every verb of the three surfaces, over the core's parts, each handed in built.

    `urls()` answers the `urls` verb; `login_url()` mints a one-time dashboard URL (or raises
    `unavailable` when the core serves no dashboard); `clock()` is unix seconds."""

    def __init__(self, broker, lifecycle, hub, approvals, questions, reminders, auth, helper_events, urls,
                 login_url, clock, nodes=None):
        self.broker, self.lifecycle, self.hub, self.approvals = broker, lifecycle, hub, approvals
        self.questions, self.reminders, self.auth = questions, reminders, auth
        self.helper_events, self.urls, self.login_url, self.clock = helper_events, urls, login_url, clock
        self._polls = {}  # agent -> Event of its one recv waiting now: set when a newer recv takes over
        self.nodes = nodes  # the hive's cores: a verb on another node's agent is carried out there

    def _now(self):
        return int(self.clock() * 1000)

    @property
    def loose_ends(self):
        return LooseEnds(self.approvals, self.questions, self.reminders)

    def dispatcher(self, surface, caller):
        """A `dispatch(obj)` for jsonline.Server, bound to one surface and caller."""

        def dispatch(obj, gone=None):
            verb, args = verbs.parse_request(obj, surface)
            if verb in verbs.WAITING_VERBS - verbs.STREAMING_VERBS:  # a long wait ends when its client hangs up
                args["gone"] = gone
            owners = self.nodes.owners(verb, args) if self.nodes is not None else {}
            if owners:
                return self._elsewhere(surface, caller, verb, args, obj, owners)
            with aftermath.collecting() as notes:
                return aftermath.answer(getattr(self, f"do_{verb}")(caller, **args), notes)

        return dispatch

    def _elsewhere(self, surface, caller, verb, args, obj, owners):
        """A verb on agents (or an approval) of other nodes: each node carries out its share, this one
        included; one answer says how each went."""
        answers, failures = [], []
        for node, names in owners.items():
            request = dict(obj)
            if names is not None and "scope" in args:
                request["scope"] = {"agent_names": names}
            what = f"{verb} of {', '.join(names)}" if names else f"{verb} of approval {args.get('id')}"
            try:
                if node == self.nodes.name:
                    with aftermath.collecting() as notes:
                        answer = aftermath.answer(getattr(self, f"do_{verb}")(
                            caller, **dict(args, scope=names)), notes)
                else:
                    answer = self.nodes.carry(node, surface, caller, request, what)
            except wire.HiveError as e:
                answer = wire.error_of(e)
            if len(owners) == 1:
                return answer if answer.get("ok") else _raise(answer)
            (answers if answer.get("ok") else failures).append((node, answer))
        if failures:
            raise wire.HiveError("; ".join(f"on node {node}: {a.get('error')}" for node, a in failures), "conflict")
        return answers[0][1]

    # -- messages ---------------------------------------------------------------------

    def do_send(self, caller, to, body):
        if to == caller:
            raise wire.HiveError("you cannot send a message to yourself; use a reminder for a note to self")
        if not self.lifecycle.known(to):
            raise wire.HiveError(f"there is no agent named {to!r}; `list` shows who is in the hive", "not_found")
        if caller != wire.OPERATOR:  # the operator's own sends always go (docs/architecture.md)
            self.broker.admit(caller, to)
        return wire.ok(id=self.broker.send(caller, to, body))

    def do_operator_msg(self, caller, body):
        # Relayed by the agent's own web page: it can only ever reach this agent. The agent
        # controls that page, so its share of the queue is quota'd as an agent's send is.
        self.broker.admit(wire.OPERATOR, caller)
        return wire.ok(id=self.broker.send(wire.OPERATOR, caller, body))

    def do_recv(self, caller, wait_seconds, max, gone=None):
        """One recv waits per agent: a newer one takes over, so a harness that reconnects is never
        locked out by its own dead long-poll, and a flood of them holds one connection, not all."""
        from gevent.event import Event

        if not wait_seconds:  # answers at once: nothing to take over from
            messages, unread = self.broker.recv(caller, 0, max, gone)
            return wire.ok(messages=_for_agent(messages), unread=unread)
        mine = Event()
        earlier = self._polls.get(caller)
        if earlier is not None:
            earlier.set()
        self._polls[caller] = mine
        stop = Event()
        mine.rawlink(lambda _: stop.set())
        if gone is not None:
            gone.rawlink(lambda _: stop.set())
        try:
            messages, unread = self.broker.recv(caller, wait_seconds, max, stop)
        finally:
            if self._polls.get(caller) is mine:
                del self._polls[caller]
        if mine.is_set():
            raise wire.HiveError(f"a newer recv on {caller}'s socket took over from this one, which took no "
                                 "message; only one recv waits at a time per agent", "conflict")
        return wire.ok(messages=_for_agent(messages), unread=unread)

    def do_ack_turn(self, caller):
        self._turn_over(caller, "it finished")
        acked = self.broker.ack_turn(caller)
        Agent.update(last_turn_at=self._now()).where(Agent.name == caller).execute()
        self.lifecycle.watch.changed(caller)
        return wire.ok(acked=acked)

    def do_cancel_turn(self, caller):
        """The operator's cancel, as the harness that ran the turn reports it: handled, not retried."""
        self._turn_over(caller, "the operator cancelled it")
        rows = self.broker.cancel_turn(caller)
        for mid, sender in rows:
            if sender != caller and sender != wire.OPERATOR and self.lifecycle.known(sender):
                aftermath.after(f"telling {sender} that message {mid} was cancelled", self.broker.send, "core",
                                sender, f"[cancelled] the operator cancelled {caller}'s turn before it finished, "
                                f"so your message #{mid} to {caller} is marked handled without an answer. It runs "
                                "again only if the operator retries it; send it anew if it still matters.")
        if rows:
            log.info("%s: the operator cancelled the turn of message(s) %s", caller, ", ".join(str(m) for m, _ in rows))
        return wire.ok(cancelled=[mid for mid, _ in rows])

    def do_retry_cancelled(self, caller, ids):
        queued = self.broker.retry(caller, ids)
        missing = [i for i in ids if i not in queued]
        if missing:
            shown = ", ".join(f"#{i}" for i in missing)
            if not queued:
                raise wire.HiveError(f"message(s) {shown} are not cancelled messages of {caller}'s; only what a "
                                     "cancelled turn had can be retried", "conflict")
            return wire.ok(requeued=queued, **{wire.WARNINGS: [f"message(s) {shown} were not cancelled messages "
                                                               f"of {caller}'s, so they were left as they are"]})
        return wire.ok(requeued=queued)

    def do_requeue_inflight(self, caller):
        self._turn_over(caller, "it did not finish, and its messages are queued again")
        return wire.ok(requeued=self.broker.requeue_inflight(caller))

    def _turn_over(self, caller, how):
        self.approvals.turn_over(caller, f"{caller}'s turn ended ({how})")

    def do_ask_tool_use(self, caller, tool, input, tool_use_id, rule, wait_seconds, gone=None):
        """A tool call of the caller's that its policy asks about: the approval it makes (or made before, for
        this tool_use_id), answered once the operator decides or `wait_seconds` pass, whichever is first."""
        return wire.ok(approval=self.approvals.ask_tool_use(caller, tool, input, tool_use_id, rule,
                                                            wait_seconds=wait_seconds, gone=gone))

    def do_recent(self, caller, limit):
        return _listing(_for_agent(self.broker.recent(caller, limit)), limit)

    def do_inbox(self, caller, limit, before, unread, only_from):
        messages = self.broker.inbox(caller, limit, before=before, unread=unread, sender=only_from)
        if caller != wire.OPERATOR:
            return _listing(_for_agent(messages), limit)
        senders, through = self.broker.senders(caller)  # who floods shows
        return dict(_listing(messages, limit), senders=senders, senders_through=through)

    def do_mark_read(self, caller, ids):
        return wire.ok(read=self.broker.mark_read(caller, ids))

    def do_whoami(self, caller):
        role = "manager" if caller == wire.MANAGER else "agent"
        agent = Agent.get_or_none(Agent.name == caller)
        return wire.ok(name=caller, role=role, hyperhive_rev=resources.revision(),
                       operator_pronouns=os.environ.get(wire.PRONOUNS_ENV) or None,
                       status_text=agent.status_text if agent else None,
                       status_set_at=wire.iso(agent.status_set_at) if agent else None)

    def do_set_status(self, caller, text):
        text = wire.check_status_text(text)
        at = self._now() if text else None
        Agent.update(status_text=text or None, status_set_at=at).where(Agent.name == caller).execute()
        self.lifecycle.watch.changed(caller)
        return wire.ok(status_text=text or None, status_set_at=wire.iso(at))

    def do_report_login(self, caller, logged_in, note, claude_missing):
        """The harness's word on claude's login (or its binary); a change is told once to the manager and
        the operator."""
        agent = self.lifecycle.get(caller)
        # the note goes into messages from `core`: one short line, quoted as the harness's words, so it
        # cannot pose as another event or as the core's own sentence
        note = " ".join(note.replace('"', "'").split())[:300]
        needs_login = not logged_in and not claude_missing
        missing = (note or "claude not found") if claude_missing else None
        if agent.needs_login == needs_login and agent.claude_missing == missing:
            return wire.ok(changed=False)
        Agent.update(needs_login=needs_login, claude_missing=missing).where(Agent.name == caller).execute()
        self.lifecycle.watch.changed(caller)
        if logged_in:
            text = f"[helper event] logged_in: {caller}'s claude runs again; its waiting messages run."
        elif claude_missing:
            text = (f"[helper event] claude_missing: {caller} cannot run claude; its messages wait until the "
                    f'binary is there (its harness says: "{note}")')
        else:
            # the note in parentheses at the end: a reader sees where the harness's words start and stop
            text = (f"[helper event] needs_login: {caller}'s claude has no valid login, so its turns are parked; "
                    f"the operator logs it in on its page (/agent/{caller}/)." + (f' (its harness says: "{note}")'
                                                                                 if note else ""))
        for whom in (wire.MANAGER, wire.OPERATOR):
            if whom != caller:  # rate-limited: an agent flapping its login must not spend the manager's turns
                self.helper_events.tell(f"{caller}'s login", whom, text)
        log.warning("%s", text)
        return wire.ok(changed=True)

    # -- reminders and loose ends -------------------------------------------------------------

    def do_remind(self, caller, message, due_at, in_seconds, file_path):
        reminder = self.reminders.remind(caller, message, due_at=due_at, in_seconds=in_seconds, file_path=file_path)
        return wire.ok(id=reminder["id"], reminder=reminder)

    def do_count_pending_reminders(self, caller):
        return wire.ok(count=reminders.pending_count(caller))

    def do_get_loose_ends(self, caller):
        """What is still open about the caller; the manager sees the whole hive's."""
        return wire.ok(loose_ends=self.loose_ends.list(caller))

    def do_cancel_loose_end(self, caller, kind, id):
        return wire.ok(kind=kind, id=id, cancelled=self.loose_ends.cancel(caller, kind, id))

    # -- questions ---------------------------------------------------------------------

    def do_ask(self, caller, question, to, options, ttl_seconds):
        asked = self.questions.ask(caller, question, to=to, options=options, ttl_seconds=ttl_seconds)
        return wire.ok(id=asked["id"], question=asked)

    def do_answer(self, caller, id, answer):
        return wire.ok(question=self.questions.answer(id, answer, by=caller))

    def do_cancel_question(self, caller, id):
        return wire.ok(question=self.questions.cancel(id, by=caller))

    def do_questions(self, caller):
        return wire.ok(questions=self.questions.pending_for_operator())

    # -- the hive ---------------------------------------------------------------------

    def do_list(self, caller):
        return wire.ok(agents=self.lifecycle.names())

    def do_agent_status(self, caller):
        return wire.ok(agent_statuses=self.lifecycle.rows())

    def do_urls(self, caller):
        return wire.ok(urls=self.urls())

    def do_pending(self, caller):
        """Pending approvals with their diffs (each at most gitrepos.DIFF_BYTES), as many whole as the answer's
        budget holds; past it a diff is a line naming the dashboard's route for it."""
        rows, budget = self.approvals.pending(with_diff=True), PENDING_DIFF_BUDGET
        for row in rows:
            budget -= len(row["diff"])
            if budget < 0:
                row["diff"] = (f"# not listed: the diffs above fill this answer; the dashboard's "
                               f"/approval/{row['id']}/diff has it\n")
        return wire.ok(approvals=rows)

    def do_login_url(self, caller):
        return wire.ok(url=self.login_url())

    def do_sessions(self, caller):
        return wire.ok(sessions=self.auth.sessions())

    def do_logout(self, caller, id):
        return wire.ok(ended=self.auth.logout(id))

    def do_subscribe_agent_status(self, caller):
        sub = self.hub.subscribe()

        def frames():
            try:
                yield wire.ok()
                for event in sub.events(60):
                    if event is not None and event["kind"] == "container_state_changed":
                        yield wire.ok(agent_statuses=[event["container"]])
            finally:
                sub.close()

        return frames()

    # -- lifecycle ----------------------------------------------------------------------

    def do_spawn(self, caller, name):
        self.lifecycle.spawn(name, parent=caller)
        return wire.ok()

    def do_start(self, caller, scope=None, name=None):
        return self._each(scope or [name], self.lifecycle.start)

    def do_stop(self, caller, graceful, scope=None, name=None):
        if caller == wire.MANAGER and name == wire.MANAGER:
            raise wire.HiveError("the manager cannot stop itself; ask the operator", "forbidden")
        return self._each(scope or [name], lambda n: self.lifecycle.stop(n, graceful=graceful))

    def _each(self, names, action):
        for name in names:
            self.lifecycle.get(name)  # refuse the whole scope before touching any agent
        failures = []
        for name in names:
            try:
                action(name)
            except wire.HiveError as e:
                failures.append(f"{name}: {e}")
        if failures:
            raise wire.HiveError("; ".join(failures), "conflict")
        return wire.ok()

    def do_restart(self, caller, name):
        self.lifecycle.restart(name)
        return wire.ok()

    def do_rebuild(self, caller, name):
        self.lifecycle.rebuild(name)
        return wire.ok()

    def do_kill(self, caller, name):
        if caller == wire.MANAGER and name == wire.MANAGER:
            raise wire.HiveError("the manager cannot kill itself; ask the operator", "forbidden")
        self.lifecycle.kill(name)
        return wire.ok()

    def do_destroy(self, caller, name, purge):
        self.lifecycle.destroy(name, purge=purge)
        # nobody is left waiting on it, nor waiting for it
        aftermath.after(f"closing the questions of the destroyed {name}", self.questions.agent_destroyed, name)
        return wire.ok()

    def do_set_paused(self, caller, name, paused):
        self.lifecycle.set_paused(name, paused)
        return wire.ok()

    def do_tombstones(self, caller):
        return wire.ok(tombstones=self.lifecycle.tombstones())

    def do_update_meta(self, caller):
        self.lifecycle.update_meta()
        return wire.ok()

    def do_purge_tombstone(self, caller, name):
        self.lifecycle.purge_tombstone(name)
        return wire.ok()

    # -- config as code ---------------------------------------------------------------------

    def do_approve(self, caller, id, always):
        return wire.ok(approval=self.approvals.approve(id, always=always))

    def do_deny(self, caller, id, reason):
        return wire.ok(approval=self.approvals.deny(id, reason))

    def do_request_spawn(self, caller, name, description, commit_ref):
        return wire.ok(id=self.approvals.request_spawn(name, description, by=caller, commit_ref=commit_ref))

    def do_request_init_config(self, caller, name, description):
        self._config_here(name)
        return wire.ok(id=self.approvals.request_init_config(name, description))

    def do_request_apply_commit(self, caller, agent, commit_ref, description):
        self._config_here(agent)
        return wire.ok(id=self.approvals.request_apply_commit(agent, commit_ref, description))

    def _config_here(self, name):
        """A config change is proposed in this node's repos: refuse one for another node's agent, saying so."""
        other = self.lifecycle.elsewhere(name)
        if other is not None:
            raise wire.HiveError(f"{name} runs on node {other[0]}, and the config repos this node keeps "
                                 f"are of node {self.lifecycle.node}'s agents only; a change to {name}'s config is "
                                 "proposed on its own node (docs/architecture.md, A hive across hosts)", "conflict")

    def do_update(self, caller, description):
        return wire.ok(id=self.approvals.request_update(description))


def _raise(answer):
    """An error answer from another node, raised here as it would have been there."""
    raise wire.HiveError(answer.get("error") or "the other node's answer was malformed", answer.get("code") or "internal")


def _listing(rows, limit):
    """A listing's answer; one the answer budget stopped short says so."""
    if not rows.cut_short:
        return wire.ok(messages=rows)
    return wire.ok(messages=rows, **{wire.WARNINGS: [
        f"the listing stops after the newest {len(rows)} messages (of up to {limit} asked for): one answer "
        f"carries about {wire.ANSWER_BUDGET // 1024 // 1024} MiB of bodies at most, each cut past "
        f"{wire.LISTED_BODY_MAX // 1024} KiB; recv hands a message over whole"]})

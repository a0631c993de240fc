"""Config as code, and tool calls the operator decides: the approval queue and what deciding does.

Owns the `approval` rows (kinds apply_commit, init_config, spawn,
update_meta_inputs, tool_use), the walk of an apply_commit or a spawn through its tags
in the applied repo (proposal → approved → building → deployed | failed, or
denied), and the helper events that tell the manager every outcome. Git goes
through `repos` (the git module), containers through `lifecycle`.

A tool_use approval is an agent's tool call its permission policy says to
ask about (hyperhive/permissions.py): its harness asks (`ask_tool_use`), waits
here without holding the core (each waiter on an Event the decision sets),
and runs the call or not as the operator decides. Deciding one does no git or
container work; it ends with the turn that made it (`turn_over`). Its
"always allow" sends the manager a helper event asking for the policy
change; the config itself changes only through a commit the operator approves.
"""

import json
import logging
import time

from gevent import wait
from gevent.event import Event

from hyperhive import permissions, states, wire
from hyperhive.states import APPROVED, CANCELLED, DENIED, FAILED_APPROVAL, PENDING
from hyperhive.core import aftermath
from hyperhive.schema import Agent, Approval, core_db

log = logging.getLogger(__name__)
TOOL_USE = "tool_use"
KINDS = ("apply_commit", "init_config", "spawn", "update_meta_inputs", TOOL_USE)
QUEUING = "queuing"  # internal: never on the wire, swept at boot


def row(a):
    return {"id": a.id, "agent": a.agent, "kind": a.kind, "commit_ref": a.commit_ref,
            "fetched_sha": a.fetched_sha, "requested_at": wire.iso(a.requested_at), "status": a.status,
            "resolved_at": wire.iso(a.resolved_at), "note": a.note, "description": a.description,
            "tool": a.tool, "input": json.loads(a.tool_input) if a.tool_input is not None else None, "rule": a.rule}


class Approvals:
    def __init__(self, repos, lifecycle, broker, hub, clock=time.time, node=None):
        self.node = node  # the core that makes an approval carries out the operator's decision on it
        self.repos, self.lifecycle, self.broker, self.hub, self.clock = repos, lifecycle, broker, hub, clock
        self._decided = {}  # tool_use approval id -> the Event its waiters wait on, set when it is resolved

    def _now(self):
        return int(self.clock() * 1000)

    # -- queries -----------------------------------------------------------------------

    def pending(self, with_diff=False):
        """Pending approvals, oldest first; `with_diff` adds each one's diff (the dashboard shows it)."""
        rows = Approval.select().where(Approval.status == PENDING).order_by(Approval.id)
        return [dict(row(a), diff=a.diff) if with_diff else row(a) for a in rows]

    def get(self, approval_id):
        a = Approval.get_or_none((Approval.id == approval_id) & (Approval.status != QUEUING))
        if a is None:
            raise wire.HiveError(f"there is no approval {approval_id}", "not_found")
        return a

    def diff(self, approval_id):
        return self.get(approval_id).diff

    # -- requests ------------------------------------------------------------------------

    def _queue(self, agent, kind, description, status=PENDING, **fields):
        dup = Approval.get_or_none((Approval.agent == agent) & (Approval.kind == kind)
                                   & (Approval.status == PENDING) & (kind != "apply_commit"))
        if dup is not None:
            raise wire.HiveError(f"approval {dup.id} already asks for {kind} of {agent!r}", "conflict")
        with core_db.atomic():
            a = Approval.create(agent=agent, kind=kind, description=description, status=status, node=self.node,
                                requested_at=self._now(), **fields)
        return a

    def sweep_unfinished(self):
        """At boot: drop rows a crash left half-queued (their proposal was never pinned)."""
        half = Approval.status == QUEUING
        if self.node is not None:  # another node's are its own to sweep: it may be queuing them now
            half &= (Approval.node == self.node) | Approval.node.is_null()
        removed = Approval.delete().where(half).execute()
        if removed:
            log.warning("dropped %d approval request(s) a crash left half-queued", removed)
        return removed

    def _added(self, a):
        aftermath.after(f"telling the dashboard about approval {a.id}",
                        lambda: self.hub.publish("approval_added", approval=dict(row(a), diff=a.diff)))
        log.info("approval %d queued: %s %s", a.id, a.kind, a.agent)
        return a.id

    def _pinned(self, agent, kind, description, ref, diff, commit_ref, **fields):
        """Queue an approval of the proposed commit `ref`, pinned as proposal/<id> with diff(agent, sha)."""
        self.repos.resolve(agent, ref)  # refuse an unknown sha before a row exists
        # The id names the proposal tag, so the row exists first, but stays
        # out of `pending` until its commit is pinned and its diff is known.
        a = self._queue(agent, kind, description, status=QUEUING, commit_ref=commit_ref, **fields)
        try:
            sha = self.repos.pin_proposal(agent, a.id, ref)
            text = diff(agent, sha)
        except wire.HiveError:
            Approval.delete().where(Approval.id == a.id).execute()
            raise
        Approval.update(fetched_sha=sha, diff=text, status=PENDING).where(Approval.id == a.id).execute()
        return self._added(Approval.get_by_id(a.id))

    def request_apply_commit(self, agent, commit_ref, description):
        self.lifecycle.get(agent)
        ref = self.repos.check_commit_ref(commit_ref)
        return self._pinned(agent, "apply_commit", description, ref, self.repos.diff, ref)

    def request_init_config(self, name, description):
        wire.check_agent_name(name)
        if self.repos.exists(name):
            raise wire.HiveError(f"{name!r} already has config repos; edit them and request_apply_commit", "conflict")
        return self._added(self._queue(name, "init_config", description))

    def request_spawn(self, name, description, by=wire.MANAGER, commit_ref=None):
        """Pin the config the agent will start on: `commit_ref`, else proposed main as it is now, so an
        edit committed after this asks is not part of the spawn."""
        wire.check_agent_name(name)
        if Agent.get_or_none(Agent.name == name) is not None:
            raise wire.HiveError(f"an agent named {name!r} already exists", "conflict")
        if not self.repos.exists(name):
            raise wire.HiveError(f"{name!r} has no config yet; request_init_config first, then request_spawn",
                                 "conflict")
        given = None if commit_ref is None else self.repos.check_commit_ref(commit_ref)
        ref = given or self.repos.proposed_main(name)
        return self._pinned(name, "spawn", description, ref, self.repos.spawn_diff, given, requested_by=by)

    def ask_tool_use(self, agent, tool, tool_input, tool_use_id, rule, wait_seconds=0, gone=None):
        """The approval of `agent`'s tool call `tool_use_id`: made pending the first time, found again every
        later time (a retried call never makes two); waits up to `wait_seconds` for the operator's decision
        (or until `gone`, the caller hung up). Returns its row, whatever its status by then."""
        a = Approval.get_or_none((Approval.agent == agent) & (Approval.tool_use_id == tool_use_id))
        if a is None:
            a = self._new_tool_use(agent, tool, tool_input, tool_use_id, rule)
        if a.status == PENDING and wait_seconds > 0:
            event = self._decided.setdefault(a.id, Event())
            wait([event] if gone is None else [event, gone], timeout=wait_seconds, count=1)
            a = Approval.get_by_id(a.id)
        return row(a)

    def _new_tool_use(self, agent, tool, tool_input, tool_use_id, rule):
        if rule:
            permissions.Policy.parse({"ask": [rule]}, where="ask_tool_use: 'rule'")
        waiting = Approval.select().where((Approval.agent == agent) & (Approval.kind == TOOL_USE)
                                          & (Approval.status == PENDING)).count()
        if waiting >= wire.TOOL_USE_PENDING_MAX:
            raise wire.HiveError(f"{agent} already has {waiting} tool calls waiting for the operator's approval, the "
                                 "most one agent may; wait for the operator to decide them (they are cancelled when "
                                 "the turn that made them ends)", "conflict")
        with core_db.atomic():
            a = Approval.create(agent=agent, kind=TOOL_USE, status=PENDING, requested_at=self._now(), node=self.node, tool=tool,
                                tool_input=json.dumps(tool_input, ensure_ascii=False), rule=rule or None,
                                tool_use_id=tool_use_id, description=permissions.summary(tool, tool_input))
        self._added(a)
        return a

    def turn_over(self, agent, why):
        """`agent`'s turn ended (`why`, a sentence's start: "a's turn ended (it finished)"): every tool call of
        it still waiting for the operator is cancelled, so no decision arrives for a call nobody runs; returns
        how many."""
        rows = list(Approval.select().where((Approval.agent == agent) & (Approval.kind == TOOL_USE)
                                            & (Approval.status == PENDING)).order_by(Approval.id))
        for a in rows:
            self._resolve(a, CANCELLED, f"{why} before the operator decided")
        return len(rows)

    def request_update(self, description):
        if not self.lifecycle.backend.meta:
            raise wire.HiveError(f"the {self.lifecycle.backend.name} backend has no meta flake to update; "
                                 "its agents read their config at each start", "conflict")
        return self._added(self._queue("manager", "update_meta_inputs", description))

    # -- decisions -----------------------------------------------------------------------

    def _pending(self, approval_id):
        a = self.get(approval_id)
        if a.status != PENDING:
            raise wire.HiveError(f"approval {a.id} is already {a.status}", "conflict")
        # a tool call is only decided: nothing of the agent changes, so its start or stop is no reason to wait
        if a.kind != TOOL_USE and a.agent in self.lifecycle.transients:
            raise wire.HiveError(f"agent {a.agent!r} is busy {self.lifecycle.transients[a.agent]}; "
                                 "decide once that finishes", "conflict")
        return a

    def _resolve(self, a, status, note=None):
        with core_db.atomic():
            Approval.update(status=status, note=note, resolved_at=self._now()).where(Approval.id == a.id).execute()
        a = Approval.get_by_id(a.id)
        aftermath.after(f"telling the dashboard that approval {a.id} is {status}",
                        lambda: self.hub.publish("approval_resolved", approval=row(a)))
        assert status in states.RESOLVED, status
        decided = self._decided.pop(a.id, None)
        if decided is not None:  # its waiters answer now
            decided.set()
        if a.kind == TOOL_USE:  # the agent's own business: its harness hears it, the manager does not
            log.info("approval %d (tool_use of %s, %s) is %s%s", a.id, a.agent, a.tool, status,
                     f": {note}" if note else "")
            return row(a)
        what = f"approval {a.id} ({a.kind} of {a.agent}"
        what += f", commit {a.fetched_sha[:12]})" if a.fetched_sha else ")"
        text = {APPROVED: f"{what} was approved and applied.",
                DENIED: f"{what} was denied by the operator" + (f": {note}" if note else "."),
                FAILED_APPROVAL: f"{what} was approved but failed: {note}",
                CANCELLED: f"{what} was withdrawn: {note}"}[status]
        aftermath.after("telling the manager", self.broker.send, "core", wire.MANAGER, f"[helper event] {text}")
        log.info("%s", text)
        return row(a)

    def approve(self, approval_id, always=False):
        """Decide for approval `approval_id`; `always` (a tool_use approval only) also asks the manager to
        allow its rule for good."""
        a = self.get(approval_id)
        if always and a.kind != TOOL_USE:
            raise wire.HiveError(f"approve: 'always' is for a tool_use approval (a tool call the agent asked "
                                 f"about); approval {a.id} is {a.kind} of {a.agent}, so approve it without it")
        if always and not a.rule:
            raise wire.HiveError(f"approval {a.id} matched no ask rule, so there is no rule to allow always; allow "
                                 "this call once, and have the manager write the rule you want")
        a = self._pending(approval_id)
        if a.kind == TOOL_USE:
            decided = self._resolve(a, APPROVED, "always allowed: the manager was asked to allow its rule"
                                    if always else None)
            if always:
                self._ask_always(a)
            return decided
        try:
            if a.kind == "apply_commit":
                self._apply(a)
            elif a.kind == "init_config":
                self.repos.init_agent(a.agent)
            elif a.kind == "spawn":
                self._spawn(a)
            else:
                self.lifecycle.update_meta()
        except wire.HiveError as e:
            if a.fetched_sha:
                self.repos.tag(a.agent, "failed", a.id, a.fetched_sha, message=str(e))
            return self._resolve(a, FAILED_APPROVAL, str(e))
        return self._resolve(a, APPROVED)

    def _ask_always(self, a):
        """The operator chose "always allow": the manager is asked for the policy change, which reaches the
        agent as any change does, through a commit the operator approves. Nothing here edits a config."""
        rule = json.dumps(a.rule, ensure_ascii=False)
        text = (f"[helper event] always_allow: the operator allowed {a.agent}'s {a.tool} call (approval {a.id}) and "
                f"wants calls matching the ask rule {rule} to run without asking from now on. Add {rule} to "
                f"{a.agent}'s permissions.allow and take it out of permissions.ask, where it would still win "
                f"(hive.json's \"permissions\"; under nixos, hyperhive.permissions in agent.nix), commit, and "
                f"request_apply_commit it for the operator's approval.")
        aftermath.after("telling the manager", self.broker.send, "core", wire.MANAGER, text)
        log.info("%s", text)

    def _apply(self, a):
        self.repos.tag(a.agent, "approved", a.id, a.fetched_sha)
        self.repos.tag(a.agent, "building", a.id, a.fetched_sha)
        self.lifecycle.rebuild(a.agent, a.fetched_sha, deploy=lambda: self.repos.deploy(a.agent, a.id, a.fetched_sha))

    def _spawn(self, a):
        parent = a.requested_by or wire.MANAGER
        if not a.fetched_sha:  # queued by a core from before spawns were pinned: it starts on applied main
            self.lifecycle.spawn(a.agent, parent=parent)
            return
        self.repos.tag(a.agent, "approved", a.id, a.fetched_sha)
        # before anything starts: a commit that cannot become applied main would only be torn down again
        self.repos.check_fast_forward(a.agent, a.fetched_sha)
        self.repos.tag(a.agent, "building", a.id, a.fetched_sha)
        self.lifecycle.spawn(a.agent, parent=parent, sha=a.fetched_sha,
                             deploy=lambda: self.repos.deploy(a.agent, a.id, a.fetched_sha))

    def deny(self, approval_id, reason):
        a = self._pending(approval_id)
        if a.kind == TOOL_USE:
            return self._resolve(a, DENIED, reason or None)
        if a.fetched_sha:
            self.repos.tag(a.agent, "denied", a.id, a.fetched_sha, message=reason or "denied by the operator")
        return self._resolve(a, DENIED, reason or None)

    def cancel(self, approval_id, by):
        """Withdraw a pending approval before the operator decides (the manager, who asked for it)."""
        a = self._pending(approval_id)
        if a.kind == TOOL_USE:
            raise wire.HiveError(f"approval {a.id} is a tool call of {a.agent}'s waiting for the operator; it ends "
                                 f"when the operator decides or when {a.agent}'s turn ends, and nobody else "
                                 "withdraws it", "forbidden")
        note = f"withdrawn by {by}"
        if a.fetched_sha:
            self.repos.tag(a.agent, "cancelled", a.id, a.fetched_sha, message=note)
        return self._resolve(a, CANCELLED, note)

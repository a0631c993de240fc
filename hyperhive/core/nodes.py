"""The cores of a hive: each one's heartbeat and liveness, and the commands one core hands another.

Owns the `node` and `command` tables. Every core beats every
HEARTBEAT_SECONDS; one silent for SILENT_SECONDS is down. An agent runs on
one node (its registry row says which), and a request that acts on it (a
lifecycle verb, or the operator's decision on an approval that node made)
is carried out there: the core it arrived on writes a command row and waits
for its answer, and the owning core runs it through its own surfaces, as
the same caller, and writes the answer back. A node that is down is
refused at once, with how long it has been silent; a command not begun
within BEGIN_SECONDS is never begun (its asker was told). On sqlite there is
one node, and nothing is ever routed.
"""

import json
import logging
import os
import socket
import time

import gevent
from gevent.event import Event

from hyperhive import wire
from hyperhive.core import notices
from hyperhive.schema import Agent, Approval, Command, Node, core_db, is_postgres

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
SILENT_SECONDS = 10.0  # no heartbeat for this long: the node is down
BEGIN_SECONDS = 30.0  # a command its node has not begun by then is dropped, and its asker told
CHECK_SECONDS = 2.0  # how often an asker looks whether the node carrying out its command is still alive
KEEP_SECONDS = 86400  # answered commands kept this long (the sweep)
NODE_FILE = "node"  # in the state dir: the name this core runs under
# Verbs that act on one agent (by name or scope), and on one approval (by id)
BY_AGENT = frozenset({"start", "stop", "restart", "rebuild", "kill", "destroy", "set_paused"})
BY_APPROVAL = frozenset({"approve", "deny"})


def default_name(state_dir=None):
    """The name this core ran under before (kept in its state dir: a renamed host keeps its agents), else
    the host's name."""
    if state_dir is not None:
        try:
            with open(os.path.join(state_dir, NODE_FILE)) as f:
                kept = f.read(256).strip()
            if kept:
                return kept
        except FileNotFoundError:
            pass
    return socket.gethostname().split(".")[0] or "localhost"


def keep_name(state_dir, name):
    """Remember the node's name in its state dir, for the next start without --node."""
    from hyperhive import files

    path = os.path.join(state_dir, NODE_FILE)
    try:
        with open(path) as f:
            if f.read(256).strip() == name:
                return
    except FileNotFoundError:
        pass
    files.replace(path, name + "\n")


def silence(seconds):
    return wire.duration(max(0, int(seconds)))


class Nodes:
    """This core (`name`) among the hive's; `dispatcher(surface, caller)` runs a command it is handed."""

    def __init__(self, name, notices_, clock=time.time, url=lambda: None, state_dir=""):
        self.name = wire.check_name(name, "node name")
        # a core started again on its state dir (after a crash: the row still looks alive) is the same node
        self.place = f"{socket.gethostname()}:{os.path.abspath(state_dir) if state_dir else ''}"
        self.notices, self.clock, self.url = notices_, clock, url
        self.dispatcher = None  # set by the core once its surfaces are built
        self.hub = None  # the dashboards' (set by the core): a change in the nodes' liveness is shown
        self._seen = None  # {node: alive} as this core last saw the hive
        self._answers = {}  # command id -> Event set once it is answered
        self._running = set()  # command ids this core is carrying out
        notices_.on(notices.ANSWER, self._answered)
        notices_.on(notices.COMMAND, lambda node: self.run_waiting() if node == self.name else None)
        notices_.caught_up(self._caught_up)

    def _now(self):
        return int(self.clock() * 1000)

    # -- heartbeats ---------------------------------------------------------------------

    def join(self):
        """Beat for the first time, refusing a name another live core beats under."""
        other = Node.get_or_none(Node.name == self.name)
        me = (os.getpid(), socket.gethostname())
        if other is not None and other.place != self.place and self.alive(other):
            raise wire.HiveError(f"another core (pid {other.pid} on {other.host}) is live as node {self.name!r}: its "
                                 f"last heartbeat was {silence((self._now() - other.heartbeat_at) / 1000)} ago; pick "
                                 "another --node, or stop that core first", "conflict")
        if not is_postgres():
            live = [n.name for n in Node.select().where(Node.name != self.name)
                    if self.alive(n) and n.place != self.place]
            if live:
                raise wire.HiveError(f"this sqlite database is in use by the live core of node {live[0]}; sqlite "
                                     "serves one core, so several need --database postgresql://…", "conflict")
        now = self._now()
        (Node.insert(name=self.name, url=self.url(), started_at=now, heartbeat_at=now, pid=me[0], host=me[1],
                     place=self.place)
         .on_conflict(conflict_target=[Node.name],
                      update={Node.url: self.url(), Node.started_at: now, Node.heartbeat_at: now, Node.pid: me[0],
                              Node.host: me[1], Node.place: self.place}).execute())
        # agents of a hive from before nodes (or made while none claimed them) are this node's; on sqlite the
        # one core is the hive, whatever name it ran under before
        if is_postgres():
            claimed = Agent.update(node=self.name).where(Agent.node.is_null()).execute()
        else:
            claimed = Agent.update(node=self.name).where(Agent.node.is_null() | (Agent.node != self.name)).execute()
            Node.delete().where(Node.name != self.name).execute()
        if claimed:
            log.info("node %s runs the %d agent(s) no node ran", self.name, claimed)
        self.notices.tell(notices.NODES, self.name)

    def beat(self):
        """The heartbeat; and when a node joined, went silent or came back since the last one, the pages are
        told (every core may tell them: the list is whole each time, so twice is harmless)."""
        Node.update(heartbeat_at=self._now(), url=self.url()).where(Node.name == self.name).execute()
        rows = self.rows()
        seen = {n["name"]: n["alive"] for n in rows}
        if self._seen is not None and seen != self._seen:
            for name in sorted(set(seen) | set(self._seen)):
                if seen.get(name) != self._seen.get(name) and name != self.name:
                    log.warning("node %s is %s", name, "live" if seen.get(name) else "silent")
            if self.hub is not None:
                self.hub.publish("nodes_changed", nodes=rows)
        self._seen = seen

    def alive(self, node):
        return self._now() - node.heartbeat_at <= SILENT_SECONDS * 1000

    def rows(self):
        """Every node: its name, dashboard, liveness and how long it has been silent."""
        now = self._now()
        return [{"name": n.name, "url": n.url, "alive": self.alive(n), "me": n.name == self.name,
                 "silent_seconds": max(0, (now - n.heartbeat_at) // 1000), "started_at": wire.iso(n.started_at),
                 "heartbeat_at": wire.iso(n.heartbeat_at)} for n in Node.select().order_by(Node.name)]

    def check_up(self, node, what):
        """Refuse `what` (`unavailable`) when `node` is down, saying for how long."""
        row = Node.get_or_none(Node.name == node)
        if row is None:
            raise wire.HiveError(f"{what} runs on node {node}, which has never joined this hive; it runs once that "
                                 "node's core starts", "unavailable")
        if not self.alive(row):
            raise wire.HiveError(f"{what} runs on node {node}, which has been silent for "
                                 f"{silence((self._now() - row.heartbeat_at) / 1000)} (its core is down or cut off "
                                 "from the database); try again once it is back", "unavailable")

    # -- routing ------------------------------------------------------------------------

    def owners(self, verb, args):
        """{node: the agent names it owns} for a verb that acts on agents, or {node: None} for one on an
        approval; {} when the request is this node's own."""
        if verb in BY_AGENT:
            names = args.get("scope") or [args.get("name")]
            nodes = dict(Agent.select(Agent.name, Agent.node).where(Agent.name.in_(names)).tuples())
            owned = {}
            for name in names:  # unknown names stay here: the local verb refuses them as it always has
                owned.setdefault(nodes.get(name) or self.name, []).append(name)
            return {} if set(owned) == {self.name} else owned
        if verb in BY_APPROVAL:
            approval = Approval.get_or_none(Approval.id == args.get("id"))
            node = approval.node if approval is not None else None
            return {} if node in (None, self.name) else {node: None}
        return {}

    def carry(self, node, surface, caller, request, what):
        """Hand `request` to `node` and wait for its answer (a dict, as a socket answers)."""
        self.check_up(node, what)
        now = self._now()
        command = Command.create(node=node, surface=surface, caller=caller, request=json.dumps(request),
                                 asked_by=self.name, asked_at=now, expires_at=now + int(BEGIN_SECONDS * 1000))
        done = self._answers[command.id] = Event()
        try:
            self.notices.tell(notices.COMMAND, node)
            while True:
                done.wait(CHECK_SECONDS)
                done.clear()  # set again by the next answer (or reconnect); never a loop without a wait
                row = Command.get_by_id(command.id)
                if row.done_at is not None:
                    return json.loads(row.answer)
                if row.begun_at is None and self._now() > row.expires_at:
                    if Command.delete().where((Command.id == row.id) & Command.begun_at.is_null()).execute():
                        raise wire.HiveError(f"node {node} did not take up {what} within {BEGIN_SECONDS:g} s, so "
                                             "it was dropped untried; try again", "unavailable")
                    continue  # it was begun just now
                self.check_up(node, f"{what} (begun there, its result unknown until that node is back)")
        finally:
            self._answers.pop(command.id, None)

    def _answered(self, payload):
        try:
            done = self._answers.get(int(payload))
        except ValueError:
            return
        if done is not None:
            done.set()

    # -- carrying out -------------------------------------------------------------------------

    def run_waiting(self):
        """Begin every command waiting for this node, each in a greenlet of its own."""
        now = self._now()
        while True:
            with core_db.atomic():
                row = (Command.select().where((Command.node == self.name) & Command.begun_at.is_null()
                                              & (Command.expires_at > now))
                       .order_by(Command.id).limit(1).for_update("FOR UPDATE SKIP LOCKED").first()) \
                    if is_postgres() else None
                if row is None:
                    return
                Command.update(begun_at=self._now()).where(Command.id == row.id).execute()
            gevent.spawn(self._carry_out, row)

    def _carry_out(self, row):
        try:
            answer = self.dispatcher(row.surface, row.caller)(json.loads(row.request))
            if not isinstance(answer, dict):  # a streaming verb is never routed
                answer = wire.error("that verb cannot be carried out on another node", "bad_argument")
        except wire.HiveError as e:
            answer = wire.error_of(e)
        except Exception:
            log.exception("carrying out command %d from node %s failed", row.id, row.asked_by)
            answer = wire.error(f"node {self.name} failed carrying it out; its log has the details", "internal")
        log.info("carried out %s for %s on node %s: %s", json.loads(row.request).get("cmd"), row.caller,
                 row.asked_by, "ok" if answer.get("ok") else answer.get("error"))
        with core_db.atomic():
            Command.update(done_at=self._now(), answer=json.dumps(answer)).where(Command.id == row.id).execute()
            self.notices.tell(notices.ANSWER, row.id)

    def _caught_up(self):
        self.run_waiting()
        for done in list(self._answers.values()):  # an answer may have come while nobody listened
            done.set()

    def sweep(self):
        cutoff = self._now() - KEEP_SECONDS * 1000
        return Command.delete().where(Command.done_at.is_null(False) & (Command.done_at < cutoff)).execute()

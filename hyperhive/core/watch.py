"""The watch: every agent's row as the pages last saw it, published when it changes.

Owns the rows last published (the dashboard's cold load reads them, never
each backend), the pass that re-reads every row every `watch_seconds` and
hands it to the restart policy, and the manager's `needs_update` helper
event. A change an operation commits asks for its row at once (`changed`),
so no page waits for the next pass.
"""

import json
import logging

import gevent

from hyperhive import states, wire
from hyperhive.core import aftermath
from hyperhive.schema import Agent, is_postgres

log = logging.getLogger(__name__)


class Watch:
    """Over `life` (the Lifecycle): its rows, hub, repos, transients, clock, restart policy and `tell`."""

    def __init__(self, life):
        self.life = life
        self.seen = {}  # name -> its row as last published
        self.behind = {}  # name -> the applied sha the manager was told the agent runs behind

    def cached_rows(self, fresh=False):
        """Every agent's row as the watch last saw it (the dashboard's cold load must not ask each backend),
        `fresh`: this node's read again now. Another node's agent is shown as its node last published it,
        with whether that node is alive (`node_alive`)."""
        rows, nodes = [], None
        for agent in Agent.select().order_by(Agent.name):
            if agent.node in (None, self.life.node) or self.life.node is None:
                if fresh or agent.name not in self.seen:
                    self._changed(agent.name, agent) if fresh else self.changed(agent.name, agent)
                row = self.seen.get(agent.name)
                if row is not None:
                    rows.append(dict(row, node_alive=True))
                continue
            if nodes is None:
                nodes = {n["name"]: n for n in self.life.nodes_rows()}
            rows.append(self.elsewhere(agent, nodes.get(agent.node)))
        return sorted(rows, key=lambda r: (r["role"] != "manager", r["name"]))

    @staticmethod
    def elsewhere(agent, node):
        """An agent of another node as it published its row (or the registry's word, before it did)."""
        try:
            row = json.loads(agent.shown) if agent.shown else None
        except ValueError:
            row = None
        if row is None:
            row = dict.fromkeys(wire.STATUS_FIELDS)
            row.update(name=agent.name, state=states.agent_state(False, False, agent.paused), running=False,
                       failed=False, needs_update=False, paused=agent.paused, role=agent.role, parent=agent.parent,
                       needs_login=agent.needs_login, pending_reminders=0)
        url = (node or {}).get("url")
        return dict(row, node=agent.node, node_alive=bool(node and node["alive"]),
                    url=f"{url}/agent/{agent.name}/" if url else None)

    def changed(self, name, agent=None):
        """Re-read one agent's row and tell subscribers if it differs.

        Called after an agent's change is committed: a row that cannot be
        read now is the dashboard's loss, noted, never the change's."""
        aftermath.after(f"updating {name}'s row on the dashboard", self._changed, name, agent)

    def _changed(self, name, agent=None):
        agent = agent or Agent.get_or_none(Agent.name == name)
        if agent is None:
            if self.seen.pop(name, None) is not None:
                self.life.hub.publish("container_removed", name=name)
            return
        row = self.life.row(agent)
        before = self.seen.get(name)
        if before != row:
            self.seen[name] = row
            if self.life.node is not None and is_postgres():  # the other nodes' pages read it there
                Agent.update(shown=json.dumps(row)).where(Agent.name == name).execute()
            self.life.hub.publish("container_state_changed", container=dict(row, node_alive=True))
        self._tell_if_behind(name, row, first=before is None)

    def _tell_if_behind(self, name, row, first):
        """Tell the manager once per applied commit that an agent runs an older config than its applied
        main (a deploy that failed, a meta update): the original's NeedsUpdate. Not mid-operation (a
        deploy is behind until its restart), and not for what the core saw at its start: the manager was
        told before the core restarted."""
        if not row["needs_update"]:
            self.behind.pop(name, None)
            return
        applied = self.life.repos.deployed_sha(name)
        if name in self.life.transients or self.behind.get(name) == applied:
            return
        self.behind[name] = applied
        if not first:
            self.life.tell(wire.MANAGER, f"[helper event] needs_update: {name} runs config {row['deployed_sha']}, "
                       f"behind its applied main {applied[:12]}; `rebuild {name}` puts it on applied main, "
                       "or the operator's `rebuild` on the dashboard.")

    def step(self, now=None):
        """One pass of the crash/change watch: publish every row that changed, start again what died.

        `now` is unix seconds (the lifecycle's clock by default); tests step it.
        """
        now = self.life.clock() if now is None else now
        for agent in list(self.life.own()):
            self.changed(agent.name, agent)
            gevent.sleep(0)  # a hive of many agents must not stall every socket for the whole pass
            row = self.seen.get(agent.name)  # none when its row could not be read (logged)
            if row is not None and self.life.restarts.mind(agent, row, now):
                self.changed(agent.name)

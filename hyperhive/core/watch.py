"""The watch: every agent's row as the pages last saw it, published when it changes.

Owns the rows last published (the dashboard's cold load reads them, never
each backend), the pass that re-reads every row every `watch_seconds` and
hands it to the restart policy, and the manager's `needs_update` helper
event. A change an operation commits asks for its row at once (`changed`),
so no page waits for the next pass.
"""

import logging

import gevent

from hyperhive import wire
from hyperhive.core import aftermath
from hyperhive.schema import Agent

log = logging.getLogger(__name__)


class Watch:
    """Over `life` (the Lifecycle): its rows, hub, repos, transients, clock, restart policy and `tell`."""

    def __init__(self, life):
        self.life = life
        self.seen = {}  # name -> its row as last published
        self.behind = {}  # name -> the applied sha the manager was told the agent runs behind

    def cached_rows(self):
        """Every row as the watch last saw it (the dashboard's cold load must not ask each backend)."""
        for name in self.life.names():
            if name not in self.seen:
                self.changed(name)
        rows = sorted(self.seen.values(), key=lambda r: (r["role"] != "manager", r["name"]))
        return [dict(r) for r in rows]

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
            self.life.hub.publish("container_state_changed", container=row)
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
        for agent in list(Agent.select()):
            self.changed(agent.name, agent)
            gevent.sleep(0)  # a hive of many agents must not stall every socket for the whole pass
            row = self.seen.get(agent.name)  # none when its row could not be read (logged)
            if row is not None and self.life.restarts.mind(agent, row, now):
                self.changed(agent.name)

"""What the operator's pages read of the core: the dashboard's one narrow way in.

Owns no state. Each method is one question a page asks, answered by the part
that owns the answer; the dashboard holds this, the hub, the host surface's
dispatcher (every action is a verb run as the operator) and the login, and
never reaches a part or a table of the core itself. So what a page can learn
is listed here, and a change to a part touches the dashboard only through it.
"""

import os

from hyperhive import wire
from hyperhive.core import renderer

INBOX_SIZE = 50  # what the snapshot and one page of the inbox hold


class Views:
    def __init__(self, lifecycle, broker, approvals, questions, repos, references):
        self.lifecycle, self.broker, self.approvals = lifecycle, broker, approvals
        self.questions, self.repos, self.references = questions, repos, references

    def snapshot(self):
        """Everything the dashboard's cold load shows (the caller reads the hub's seq first)."""
        lifecycle = self.lifecycle
        senders, through = self.broker.senders(wire.OPERATOR)
        return {
            "backend": lifecycle.backend.name,
            "containers": lifecycle.watch.cached_rows(),
            "transients": dict(lifecycle.transients),
            "approvals": self.approvals.pending(with_diff=True),
            "questions": self.questions.pending_for_operator(),
            "inbox": self._shown(self.broker.inbox(wire.OPERATOR, INBOX_SIZE)),
            "inbox_unread": self._shown(self.broker.inbox(wire.OPERATOR, INBOX_SIZE, unread=True)),
            "inbox_senders": senders,
            "inbox_senders_through": through,
            "tombstones": lifecycle.tombstones(),
            "meta_inputs": lifecycle.meta_inputs(),
            "node": lifecycle.node,
            "nodes": lifecycle.nodes_rows(),
        }

    @staticmethod
    def _shown(messages):
        return [renderer.message_shown(m) for m in messages]

    def flow(self, after, limit):
        """The message flow, oldest first, as `sent` events (bodies read only as far as they are listed)."""
        return [{"seq": 0, "kind": "sent", "message": renderer.message_shown(m)} for m in self.broker.flow(after, limit)]

    def inbox(self, limit, before=None, unread=False, sender=None):
        """A page of the operator's inbox further back, with who sent how many."""
        messages = self.broker.inbox(wire.OPERATOR, limit, before=before, unread=unread, sender=sender)
        senders, through = self.broker.senders(wire.OPERATOR)
        return {"messages": self._shown(messages), "senders": senders, "senders_through": through}

    def tool_calls(self, name):
        """One agent's tool calls waiting for the operator (pending tool_use approvals), oldest first."""
        self.agent(name)
        return [a for a in self.approvals.pending() if a["kind"] == "tool_use" and a["agent"] == name]

    def approval_diff(self, approval_id):
        return self.approvals.diff(approval_id)

    def file_ref(self, message_id, number):
        """The head of a message's file reference, read again now through the reach it was found in.

        The stored host path is never opened as it is: the file may have been
        swapped for a symlink (or moved out of reach) since the message was sent."""
        sender, recipient, refs = self.broker.refs_of_message(message_id)
        if number >= len(refs):
            have = f"only {len(refs)} file reference{'' if len(refs) == 1 else 's'}" if refs else "no file references"
            raise wire.HiveError(f"message {message_id} has {have}; there is no number {number} (they count from 0)",
                                 "not_found")
        return self.references.of(sender, recipient).preview(refs[number]["path"])

    def agent(self, name):
        """Refuse a name that is no agent (not_found), for the pages of one agent."""
        try:
            self.lifecycle.get(wire.check_name(name))
        except wire.HiveError as e:
            if e.code != "not_found":
                raise
            raise wire.HiveError(f"there is no agent named {name!r} in this hive: the dashboard lists the agents "
                                 "there are (and `hyperhive list` on the hive's host)", "not_found") from None

    def elsewhere(self, name):
        """(node, its dashboard URL or None) when the agent runs on another node of the hive, else None."""
        return self.lifecycle.elsewhere(name)

    def here(self, name):
        """Refuse (conflict) what only the node that runs the agent has: its page, its log, its config."""
        other = self.elsewhere(name)
        if other is not None:
            node, url = other
            where = f"that node's dashboard, {url}/agent/{name}/" if url else "that node (it serves no dashboard)"
            raise wire.HiveError(f"{name} runs on node {node}: its page, log and config are on {where}", "conflict")

    def agent_shown(self, name):
        """(state, transient) of an agent as the dashboard last showed it: why its page may not answer."""
        row = next((r for r in self.lifecycle.watch.cached_rows() if r["name"] == name), None)
        return (row or {}).get("state"), self.lifecycle.transients.get(name)

    def agent_config(self, name):
        self.agent(name)
        self.here(name)
        sha = self.repos.deployed_sha(name)
        return {"name": name, "sha": sha, "files": self.repos.files(name) if sha else {}}

    def page_dir(self, name):
        """Where an agent's page listens (its socket dir), for the proxy."""
        self.agent(name)
        self.here(name)
        return os.path.dirname(self.lifecycle.layout.socket(name))

    def log_home(self, name):
        """An agent's home, for a live agent or a tombstone (whose log is its last word)."""
        wire.check_name(name)
        if not self.lifecycle.known(name) and name not in self.lifecycle.tombstones():
            raise wire.HiveError(f"there is no agent named {name!r}", "not_found")
        self.here(name)
        return self.lifecycle.layout.home(name)

    def log_tail(self, name, home, cursor):
        return self.lifecycle.backend.log_tail(name, home, cursor)

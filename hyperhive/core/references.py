"""What each principal may open, and the file references a message carries.

Owns the reach of every agent (its state dir and the shared dir, as it names
them inside its container) and the rule for a message's file references: an
agent's are looked up in what it may open itself, so naming a path teaches it
nothing of another's tree, and the reader is shown only those it may open as
named. The broker asks here at ingest; reminders write through an agent's
reach; the dashboard's previews open a reference again through the reach it
was found in. Built before the broker, from the layout and the backend only.
"""

from hyperhive import wire
from hyperhive.reach import Reach, scan
from hyperhive.schema import Agent


class References:
    def __init__(self, layout, backend):
        self.layout, self.backend = layout, backend

    def reach(self, name):
        """What an agent may read and write, as it names the paths inside its container."""
        state, shared = self.layout.state(name), self.layout.shared_dir
        return Reach([("state", self.backend.state_in or state, state),
                      ("shared", self.backend.shared_in or shared, shared)])

    @staticmethod
    def _agent(name):
        return name != wire.OPERATOR and Agent.get_or_none(Agent.name == name) is not None

    def of(self, sender, recipient):
        """Where the file references of a message are looked up, and opened again for a preview.

        An agent's are in what it may open itself (its state dir and the shared dir), as it names them, so
        that naming a path teaches it nothing of another's tree. The operator and the core, who may read
        every agent's files, name them as the agent they write to sees them."""
        owner = sender if self._agent(sender) else recipient
        if self._agent(owner):
            return self.reach(owner)
        shared = self.layout.shared_dir
        return Reach([("shared", self.backend.shared_in or shared, shared)])

    def file_refs(self, sender, recipient, body):
        """The file references of a message: files its sender may open that its reader may open too.

        An agent writing to another names files in its own reach; the reader is shown only those it may
        open as named (the shared dir's): another's state dir is not its to read, and under nixos its own
        /state/x.md is a different file."""
        paths = scan(body)
        if not paths:  # most messages name no file: no reach to build, no disk to touch
            return []
        refs = self.of(sender, recipient).refs(paths)
        if self._agent(sender) and self._agent(recipient) and sender != recipient:
            theirs = self.reach(recipient)
            refs = [ref for ref in refs if _same_file(theirs, ref)]
        return refs


def _same_file(reach, ref):
    """Whether `reach` names the file of a ref by the ref's path (no disk is touched)."""
    try:
        return reach.host_path(ref["path"]) == ref["host_path"]
    except wire.HiveError:
        return False

"""Shared test fakes.

`RecordingBackend`: a container backend that starts nothing. It keeps the
contract of `hyperhive.core.containers.base.Backend` (tests/test_backends.py
runs the contract suite against it too), records every call the core makes,
and lets a test make a harness die or refuse to start.
"""

import os

from hyperhive import wire
from hyperhive.core.containers.base import Backend
from hyperhive.core.containers.process import ProcessBackend


class RecordingBackend(Backend):
    """Agents 'run' while their name is in `up`; every call is in `calls`, as (verb, name[, graceful]).

    A start appends "<name> started" to the launch's real log file, which
    `log_tail` reads as the process backend does, unless a test gave the
    agent log lines in memory with `die`. `refuse` is a HiveError every start
    raises (after recording the call) until it is None again.
    """

    name = "fake"

    def __init__(self):
        self.up, self.calls, self.launches = set(), [], []
        self.codes, self.logs = {}, {}
        self.refuse = None
        self._files = ProcessBackend()

    def running(self, name, home=None):
        return name in self.up

    def start(self, launch):
        self.calls.append(("start", launch.name))
        if self.refuse is not None:
            raise self.refuse
        if launch.name in self.up:
            raise wire.HiveError(f"agent {launch.name!r} is already running", "conflict")
        self.launches.append(launch)
        self.up.add(launch.name)
        self.codes.pop(launch.name, None)
        os.makedirs(os.path.dirname(launch.log_path), exist_ok=True)
        with open(launch.log_path, "a") as f:
            f.write(f"{launch.name} started\n")

    def stop(self, name, home=None, graceful=True, timeout=None):
        self.calls.append(("stop", name, graceful))
        return self._end(name)

    def kill(self, name, home=None):
        self.calls.append(("kill", name))
        return self._end(name)

    def _end(self, name):
        was = name in self.up
        self.up.discard(name)
        return was

    def sweep(self, name, home):
        self.calls.append(("sweep", name))
        return 0

    def exit_code(self, name):
        return None if name in self.up else self.codes.get(name)

    def log_tail(self, name, home, cursor=None, lines=500):
        if name in self.logs:
            return self.logs[name][-lines:], None
        return self._files.log_tail(name, home, cursor, lines)

    # -- for the test --------------------------------------------------------------------------

    def die(self, name, code=None, log=()):
        """The harness ends on its own, with exit status `code` and these last lines in its log."""
        self.up.discard(name)
        self.codes[name] = code
        self.logs[name] = list(log)

    def did(self, verb):
        """The names each `verb` call was for, in order."""
        return [call[1] for call in self.calls if call[0] == verb]

    def starts(self, name):
        return self.did("start").count(name)

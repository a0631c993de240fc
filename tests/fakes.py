"""Shared test fakes: the clock, the recording hub, the core rig and the one recording backend.

Each fake is strict where the real part is: the recording hub refuses a kind
`hyperhive.events` does not define. The rig builds the core's parts in the
order and with the arguments the daemon uses (hyperhive/core/daemon.py), over
a real database (a sqlite file, or the `db_url` a test hands in: either
engine), so a test of questions, reminders or the surfaces runs the code the
core runs; a test hands in the fakes it needs (a lifecycle, the
repos, a backend) rather than patching the real ones.

`RecordingBackend`: a container backend that starts nothing. It keeps the
contract of `hyperhive.core.containers.base.Backend` (tests/test_backends.py
runs the contract suite against it too), records every call the core makes,
and lets a test make a harness die or refuse to start. It is the only fake
backend: a test that needs one uses this.
"""

import os

import pytest

from hyperhive import events, wire
from hyperhive.core.approvals import Approvals
from hyperhive.core.broker import Broker
from hyperhive.core.containers.base import Backend
from hyperhive.core.containers.process import ProcessBackend
from hyperhive.core.helperevents import HelperEvents
from hyperhive.core.layout import Layout
from hyperhive.core.lifecycle import Lifecycle
from hyperhive.core.questions import Questions
from hyperhive.core.references import References
from hyperhive.core.reminders import Reminders
from hyperhive.core.surfaces import Surfaces
from hyperhive.schema import Agent, open_core

T0 = 1_700_000_000.0


class Clock:
    """An injectable clock (unix seconds) a test moves by setting `t`."""

    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


class RecordingHub:
    """Stands in for the core's event hub: records every (kind, data) published, of a defined kind only."""

    def __init__(self):
        self.events = []

    def publish(self, kind, **data):
        assert kind in events.DASHBOARD, f"{kind!r} is no dashboard event kind (hyperhive/events.py)"
        self.events.append((kind, data))


class CoreRig:
    """The core's parts, built as the daemon builds them, on a real database and a moved clock.

    `agents` exist as rows with state dirs (none is started). `lifecycle` and
    `repos` default to the real ones over a process backend with no harness
    and no sockets; a test hands in its own where it needs less. `database`: a URL
    of either engine (`db_url`), else a sqlite file in tmp_path."""

    def __init__(self, tmp_path, t=T0, agents=("manager", "a", "b"), backend=None, lifecycle=None, repos=None,
                 database=None):
        self.tmp_path = tmp_path
        self.db = open_core(database or tmp_path / "hive.db")
        self.layout = Layout(tmp_path / "hive")
        self.layout.makedirs()
        for name in agents:
            Agent.create(name=name, role="manager" if name == wire.MANAGER else "agent")
            os.makedirs(self.layout.state(name))
        self.hub, self.clock = RecordingHub(), Clock(t)
        self.backend = backend or ProcessBackend()
        self.references = References(self.layout, self.backend)
        self.broker = Broker(self.hub, refs_of=self.references.file_refs, clock=self.clock)
        self.repos = repos
        self.lifecycle = lifecycle or Lifecycle(self.layout, self.backend, self.broker, self.hub, None, None, repos,
                                                clock=self.clock,
                                                turn_over=lambda name, why: self.approvals.turn_over(name, why))
        self.approvals = Approvals(repos, self.lifecycle, self.broker, self.hub, clock=self.clock)
        self.questions = Questions(self.broker, self.hub, self.lifecycle, clock=self.clock)
        self.reminders = Reminders(self.broker, self.lifecycle, self.references, clock=self.clock)
        self.surfaces = Surfaces(self.broker, self.lifecycle, self.hub, self.approvals, self.questions,
                                 self.reminders, auth=None, helper_events=HelperEvents(self.broker, clock=self.clock),
                                 urls=lambda: {"domain": None, "home": None, "forge": None},
                                 login_url=self._no_dashboard, clock=self.clock)

    @staticmethod
    def _no_dashboard():
        raise wire.HiveError("this rig serves no dashboard", "unavailable")

    def state(self, name):
        return self.layout.state(name)

    def inbox(self, name):
        """Everything queued for name, popped (oldest first)."""
        return self.broker.pop(name, 32)

    def call(self, surface, caller, verb, **args):
        return self.surfaces.dispatcher(surface, caller)({"cmd": verb, **args})

    def refused(self, code, surface, caller, verb, **args):
        with pytest.raises(wire.HiveError) as e:
            self.call(surface, caller, verb, **args)
        assert e.value.code == code, (e.value.code, str(e.value))
        return str(e.value)

    def close(self):
        self.db.close()


class RecordingBackend(Backend):
    """Agents 'run' while their name is in `up`; every call is in `calls`, as (verb, name[, graceful]).

    A start appends "<name> started" to the launch's real log file, which
    `log_tail` reads as the process backend does, unless a test gave the
    agent log lines in memory with `die`. `refuse` is a HiveError every start
    raises (after recording the call) until it is None again.
    """

    name = "fake"

    def __init__(self, state_in=None, shared_in=None):
        # where the agents see their state dir and the shared dir (as nixos's do), when a test says
        self.state_in, self.shared_in = state_in, shared_in
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


class IdleEngine:
    """A harness engine (harness/engine.py) as the page reads it: a session whose claude is not running."""

    mode = "session"

    def info(self):
        return {"mode": self.mode, "pid": None, "started_at": None, "turns": 0, "rss_bytes": None, "recycled": 0,
                "hang_seconds": 300, "recycle_turns": 200, "recycle_rss_mb": 2048, "recycle_idle_seconds": 21600}

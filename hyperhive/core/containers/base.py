"""The container-backend contract: `Launch`, what the core hands a backend, and `Backend`, what it asks of one.

The core (lifecycle, approvals, the daemon, the dashboard) calls only what is
written here, on every backend alike: each capability one backend lacks has
a default on `Backend`, so no caller asks whether a backend has something.
tests/test_backends.py runs one contract suite against every backend and the
tests' recording fake; docs/conventions.md ("Adding a backend") lists the
files a new one touches.

Errors: whatever a backend raises for a person is a `wire.HiveError(sentence,
code)` saying what was attempted, what went wrong and what to do, and a
command that failed carries the tail of its stderr. The codes a backend uses:
`conflict` (the agent already runs; its name's uid is another agent's),
`unavailable` (a tool is missing, a start, stop or build failed, leftovers
outlived SIGKILL), `not_found` (nothing of the agent's to act on),
`forbidden` (a link where a principal's tree should be), `bad_argument`
(a value the backend cannot carry), `internal` (a layout that would hide the
whole host). Anything else escaping a backend is a bug.
"""

import abc
from dataclasses import dataclass

from hyperhive import wire

# How often the crash watch asks `running` of every agent unless a backend says otherwise: a harness
# that died is seen within this.
WATCH_SECONDS = 2.0


@dataclass(frozen=True)
class Launch:
    """Everything a backend needs to run one agent's harness, made whole by `Lifecycle.launch` at each start.

    Never changed once made: a backend that runs something else around the
    harness (bwrap runs bwrap) makes its own command from it, and a test
    that needs another makes one with `dataclasses.replace`.
    """

    name: str  # the agent
    role: str  # "agent" or "manager"
    argv: list  # the harness's command line on the host (nixos runs the container's own)
    env: dict  # the harness's environment: HIVE_SOCKET, HIVE_PAUSE_FILE, HIVE_CLAUDE_BIN and the rest
    state_dir: str  # the harness's own directory: its cwd and HOME, read-write
    home_dir: str  # the agent's host directory: its state dir's parent, pidfile, log, pause marker
    log_path: str  # where the harness's output goes
    config_dir: str | None = None  # its proposed config repo (the manager's: the root of all of them); None: none
    shared_dir: str | None = None  # the hive's shared dir, read-write for every agent; None: none
    hidden_dirs: tuple = ()  # the hive's own roots (state dir, run dir) a sandbox hides and checks paths
    #                          from; empty: they follow from the layout of home_dir and the socket
    rev: str | None = None  # the applied commit to build from when it is not applied main (nixos); None: main


class Backend(abc.ABC):
    """Where agents run. A subclass implements the abstract methods and overrides what it has of the rest.

    `home` is always the agent's host directory (`Launch.home_dir`): a
    backend that keeps a pidfile or a log there finds it again after a
    restart of the core, which adopts whatever still runs.
    """

    # What `serve --backend` takes, and what the dashboard and the log show.
    name = None
    # Seconds between two passes of the crash watch, each asking `running` of every agent.
    watch_seconds = WATCH_SECONDS
    # Where an agent sees its state dir and the shared dir, which file references and reminders
    # translate to and from; None: at their host paths.
    state_in = shared_in = None
    # The meta flake every agent's container is built from (nixos's `metaflake.MetaFlake`): the core
    # syncs its inputs with the agents and offers `update`. None: the agents read their config at each
    # start, and `update` is refused.
    meta = None
    # Whether what the agent runs in brings its own claude (a nixos container's), so the core's --claude
    # need not be on this host.
    own_claude = False

    @classmethod
    def works(cls):
        """(True, what) when this backend can run agents on this host, else (False, why, a sentence).

        `serve --backend NAME` refuses one that cannot, with the why."""
        return True, f"the {cls.name} backend"

    @classmethod
    def create(cls, state_dir, source=None):
        """The backend `serve` runs: for the hive at `state_dir`, containers built from `source` (the
        directory hyperhive.pyz and nix/templates/ are in; None: the one this hyperhive runs from)."""
        return cls()

    # -- what every backend does --------------------------------------------------------------------

    @abc.abstractmethod
    def start(self, launch):
        """Start the agent's harness as `launch` says, returning once it runs (its result is not used).

        Raises `conflict` when it runs already (one harness per agent, ever),
        `unavailable` when it could not be started; nothing is left running
        after a start that raised."""

    @abc.abstractmethod
    def running(self, name, home):
        """Whether the agent's harness runs now: False, never an error, for an agent it never started.

        Asked every `watch_seconds` for every agent, and it sees a harness
        an earlier core started (adoption)."""

    @abc.abstractmethod
    def stop(self, name, home, graceful=True, timeout=None):
        """Stop the agent's harness; True if it ran, False (not an error) if it did not.

        Graceful: the harness is asked to end and finishes its turn first.
        Not graceful: it and what it started end now, its turn unacked.
        Either way whatever outlives `timeout` seconds (None: the backend's
        own) is killed; once this returns, `running` is False."""

    @abc.abstractmethod
    def kill(self, name, home):
        """End the agent's harness and everything it started now; True if it ran, False (not an error)
        if it did not. Once this returns, `running` is False."""

    @abc.abstractmethod
    def log_tail(self, name, home, cursor=None, lines=500):
        """(new lines of the harness's log after `cursor`, the cursor to pass next time); without a
        cursor the last `lines`. No log yet is ([], cursor), not an error. The cursor is the backend's
        own string; one it no longer recognizes reads from the tail again."""

    # -- what some backends have; the defaults are what the others mean ------------------------------

    def exit_code(self, name):
        """How the harness this core last started for the agent ended: its exit status, -N for signal N;
        None while it runs, or when the backend cannot know (a container's systemd restarts it)."""
        return None

    def sweep(self, name, home):
        """Kill what is left of the harness that last ran for the agent (what claude started, say) and
        return how many processes that was. Raises `unavailable` when some outlive SIGKILL, since a start
        beside them would run the agent twice. 0 where the backend's own supervisor does it (nixos)."""
        return 0

    def ids(self, name):
        """The (uid, gid) the agent's harness runs as on the host, or None: the core's own."""
        return None

    def build(self, name, rev=None):
        """Rebuild what the agent runs in from its applied config at `rev` (None: main), before a restart
        on it. Nothing to do where the harness reads its config at each start."""

    def destroy(self, name):
        """Remove what the agent ran in beyond its state (its container), after a kill; True if there was
        something, False (not an error) if not. The agent's home and state are never touched."""
        return False

    def update_all(self):
        """Move every input of `meta` and rebuild every agent on them, all or nothing; the names rebuilt.
        Only asked of a backend with a `meta`."""
        raise wire.HiveError(f"the {self.name} backend has no meta flake to update; its agents read their "
                             "config at each start", "conflict")

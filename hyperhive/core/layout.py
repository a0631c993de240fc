"""Where a hive lives on the host, and how the core runs a harness.

Owns the paths of everything of a hive (`Layout`: state dir, run dir, each
agent's home, state dir, socket, log and pause marker) and the command a
harness starts with (`HarnessCommand`).
"""

import os
import sys

from hyperhive import wire


class Layout:
    """Where everything of a hive lives on the host."""

    def __init__(self, state_dir, run_dir=None):
        self.state_dir = os.path.abspath(state_dir)
        self.run_dir = os.path.abspath(run_dir or os.path.join(self.state_dir, "run"))
        self.agents_dir = os.path.join(self.state_dir, "agents")
        self.db_path = os.path.join(self.state_dir, "hive.db")
        self.lock_path = os.path.join(self.state_dir, "hive.lock")
        self.host_socket = os.path.join(self.run_dir, "host.sock")
        self.config_dir = os.path.join(self.state_dir, "config")
        # read-write for every agent: where they leave files for each other and the operator
        self.shared_dir = os.path.join(self.state_dir, "shared")

    def home(self, name):
        """The agent's host-side directory: its state dir, log, pidfile, markers."""
        return os.path.join(self.agents_dir, wire.check_name(name))

    def state(self, name):
        """The directory the harness owns (its cwd; /state inside a container)."""
        return os.path.join(self.home(name), "state")

    def socket(self, name):
        # A directory of its own per socket: a sandbox binds the directory, so
        # the socket a restarted core binds anew shows up inside (a bound file
        # would pin the dead socket's inode).
        if name == wire.MANAGER:
            return os.path.join(self.run_dir, "manager", "manager.sock")
        return os.path.join(self.run_dir, "agents", wire.check_name(name), "agent.sock")

    def log(self, name):
        return os.path.join(self.home(name), "harness.log")

    def pause_marker(self, name):
        return os.path.join(self.home(name), "paused")

    def makedirs(self):
        for d in (self.state_dir, self.agents_dir, self.run_dir, os.path.join(self.run_dir, "agents"),
                  self.shared_dir):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.state_dir, 0o700)


class HarnessCommand:
    """How the core runs a harness: the interpreter, the entry file (hyperhive.pyz), the claude binary, the
    environment variables to forward, and the engine's settings (HIVE_CLAUDE_MODE and its limits)."""

    def __init__(self, entry, claude="claude", pass_env=(), python=sys.executable, engine=None):
        self.entry, self.claude, self.pass_env, self.python = entry, claude, tuple(pass_env), python
        self.engine = dict(engine or {})

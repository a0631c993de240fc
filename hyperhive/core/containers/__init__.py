"""The container seam: the only code that starts, stops or inspects where agents run.

A backend turns a `Launch` (what to run for an agent, with which environment
and paths) into a running harness and answers whether it still runs. Each
backend lives in its own module here; nothing else in hyperhive runs a
container command.
"""

from hyperhive import wire
from hyperhive.core.containers.process import ProcessBackend


class Launch:
    """Everything a backend needs to run one agent's harness."""

    def __init__(self, name, role, argv, env, state_dir, home_dir, log_path):
        self.name, self.role, self.argv, self.env = name, role, argv, env
        self.state_dir, self.home_dir, self.log_path = state_dir, home_dir, log_path


BACKENDS = {"process": ProcessBackend}


def pick(requested):
    """The backend for `--backend` (auto: the best one this host can run)."""
    if requested in ("auto", None):
        return ProcessBackend()
    if requested not in BACKENDS:
        raise wire.HiveError(f"unknown backend {requested!r}; this build has: auto, {', '.join(BACKENDS)}")
    return BACKENDS[requested]()

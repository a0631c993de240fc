"""The container seam: the only code that starts, stops or inspects where agents run.

A backend turns a `Launch` (what to run for an agent, with which environment
and paths) into a running harness and answers whether it still runs. Each
backend lives in its own module here; nothing else in hyperhive runs a
container command.
"""

import logging
import os
import shutil

from hyperhive import resources, wire
from hyperhive.core.containers.bwrap import BwrapBackend
from hyperhive.core.containers.nixos import NixosBackend, check_source
from hyperhive.core.containers.process import ProcessBackend

log = logging.getLogger(__name__)


class Launch:
    """Everything a backend needs to run one agent's harness."""

    def __init__(self, name, role, argv, env, state_dir, home_dir, log_path):
        self.name, self.role, self.argv, self.env = name, role, argv, env
        self.state_dir, self.home_dir, self.log_path = state_dir, home_dir, log_path
        self.rev = None  # the applied commit to build from, when not applied main (nixos)


BACKENDS = {"nixos": NixosBackend, "bwrap": BwrapBackend, "process": ProcessBackend}


def _nixos(state_dir, source):
    from hyperhive.core.gitrepos import WorkTree

    # HIVE_NIXOS_CONF_DIR: where nixos-container keeps h-<name>.conf, if not the NixOS default
    conf_dir = os.environ.get("HIVE_NIXOS_CONF_DIR") or "/etc/nixos-containers"
    return NixosBackend.at(state_dir, WorkTree(), source=check_source(source), conf_dir=conf_dir)


def pick(requested, state_dir, source=None):
    """The backend for `--backend` (auto: the best one this host can run).

    `source` is the directory the nixos backend builds containers from
    (hyperhive.pyz and nix/templates/: --container-source); by default the
    one this hyperhive runs from, the installed package's or the checkout.
    """
    if requested == "nixos" or (requested in ("auto", None) and shutil.which("nixos-container")):
        return _nixos(state_dir, source or os.path.dirname(resources.entry()))
    if requested in ("auto", None):
        ok, why = BwrapBackend.works()
        if ok:
            return BwrapBackend()
        log.warning("agents run unsandboxed on the process backend: %s", why)
        return ProcessBackend()
    if requested not in BACKENDS:
        raise wire.HiveError(f"unknown backend {requested!r}; this build has: auto, {', '.join(BACKENDS)}")
    if requested == "bwrap":
        ok, why = BwrapBackend.works()
        if not ok:
            raise wire.HiveError(f"--backend bwrap cannot run here: {why}", "unavailable")
    return BACKENDS[requested]()

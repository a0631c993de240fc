"""The container seam: the only code that starts, stops or inspects where agents run.

A backend turns a `Launch` (what to run for an agent, with which environment
and paths) into a running harness and answers whether it still runs; what
every backend does and may do is `base.Backend`. Each backend lives in its
own module here, listed in BACKENDS; nothing else in hyperhive runs a
container command.
"""

import logging

from hyperhive import wire
from hyperhive.core.containers.base import Backend, Launch
from hyperhive.core.containers.bwrap import BwrapBackend
from hyperhive.core.containers.nixos import NixosBackend
from hyperhive.core.containers.process import ProcessBackend

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Backend", "Launch", "pick"]  # Backend and Launch: the core's names for them

# The registry: every backend `serve --backend` takes, by name.
BACKENDS = {cls.name: cls for cls in (NixosBackend, BwrapBackend, ProcessBackend)}


def pick(requested, state_dir, source=None):
    """The backend for `--backend` (auto: the best one this host can run).

    `source` is the directory the nixos backend builds containers from
    (hyperhive.pyz and nix/templates/: --container-source); by default the
    one this hyperhive runs from, the installed package's or the checkout.
    """
    if requested in ("auto", None):
        if NixosBackend.works()[0]:
            return NixosBackend.create(state_dir, source)
        ok, why = BwrapBackend.works()
        if ok:
            return BwrapBackend.create(state_dir, source)
        log.warning("agents run unsandboxed on the process backend: %s", why)
        return ProcessBackend.create(state_dir, source)
    if requested not in BACKENDS:
        raise wire.HiveError(f"unknown backend {requested!r}; this build has: auto, {', '.join(BACKENDS)}")
    backend = BACKENDS[requested]
    ok, why = backend.works()
    if not ok:
        raise wire.HiveError(f"--backend {requested} cannot run here: {why}", "unavailable")
    return backend.create(state_dir, source)

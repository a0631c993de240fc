"""What an agent's sandbox must write becomes its uid's before each start (the bwrap and nixos backends).

Each of these is a tree a principal can write, so every directory is opened
through `trees.open_dir` (no link on the way) and changed by descriptor;
nothing is followed, and a file with a second name elsewhere keeps its owner.
"""

import logging
import os

from hyperhive import wire
from hyperhive.core import trees

log = logging.getLogger(__name__)


def refuse_shared_ids(launch):
    """Two agents never share a uid: a name whose uid another agent of this hive (a tombstone included)
    has already is refused, with the way out."""
    mine = trees.ids(launch.name)
    agents = os.path.dirname(os.path.abspath(launch.home_dir))
    for other in os.listdir(agents) if os.path.isdir(agents) else ():
        if other != launch.name and wire.NAME_RE.fullmatch(other) and trees.ids(other) == mine:
            raise wire.HiveError(f"cannot start {launch.name!r} as uid {mine[0]}: the agent {other!r} has that uid "
                                 "too (both names hash to it); give the agent another name", "conflict")


def _opened(path, hidden, tree):
    return trees.open_dir(trees.root_of(path, hidden), path, tree, os.O_RDONLY)


def hand_over(launch, uid, gid, hidden):
    """The agent's state dir its own (uid:gid), its home and socket dir the core's with its group (the
    socket dir setgid, so what the core makes there later, a restarted core's socket among it, is its
    group's too), the shared dir everyone's (sticky), and for the manager every proposed repo. The
    files the core writes for it (its model, extra-mcp.json, permissions.json) become readable to it: the core's umask
    (0007 under the NixOS module) gives them to nobody else. `hidden` are the hive's roots the paths
    are checked from."""
    name = launch.name
    home = os.path.abspath(launch.home_dir)
    fd = _opened(home, hidden, f"{name}'s home")
    try:
        os.fchown(fd, 0, gid)
        os.fchmod(fd, 0o750)  # the way to its state dir, pause marker, extra-mcp.json and permissions.json
        trees.own_entry(fd, "extra-mcp.json", 0, gid, mode=0o640)
        trees.own_entry(fd, "permissions.json", 0, gid, mode=0o640)
    finally:
        os.close(fd)
    state = os.path.abspath(launch.state_dir)
    fd = _opened(state, hidden, f"{name}'s state dir")
    try:
        changed = trees.hand_over(fd, uid, gid, f"{name}'s state dir")
        trees.own_entry(fd, wire.MODEL_FILE, uid, gid)
    finally:
        os.close(fd)
    if changed:
        log.info("handed %d entries of %s's state dir over to its uid %d", changed, name, uid)
    socket = os.path.abspath(launch.env["HIVE_SOCKET"])
    sock_dir = os.path.dirname(socket)
    if os.path.basename(sock_dir) == name:
        fd = _opened(sock_dir, hidden, f"{name}'s socket dir")
        try:
            # root's, the agent's group, setgid: every socket and secret the core makes there (a restarted
            # core's too) is the agent's group's, and the harness's web.sock is its own
            os.fchown(fd, 0, gid)
            os.fchmod(fd, 0o2770)
            trees.own_entry(fd, os.path.basename(socket), 0, gid)
            trees.own_entry(fd, "web.secret", 0, gid, mode=0o640)
        finally:
            os.close(fd)
    shared = launch.shared_dir
    if shared:
        # every agent adds files, each removes only its own (the sticky bit, as on /tmp)
        fd = _opened(os.path.abspath(shared), hidden, "the shared dir")
        try:
            os.fchmod(fd, 0o1777)
        finally:
            os.close(fd)
    config = launch.config_dir
    if config and launch.role == "manager" and os.path.isdir(config):
        hand_over_proposed(os.path.abspath(config), hidden, uid, gid)


def hand_over_proposed(config, hidden, uid, gid):
    """The proposed repos' root and each repo in it become the manager's; a link among them is left alone
    (its container leaves it out, and says so)."""
    fd = _opened(config, hidden, "the proposed config repos")
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
    for entry in sorted(os.listdir(config)):
        if not wire.NAME_RE.fullmatch(entry):
            continue
        try:
            fd = _opened(os.path.join(config, entry), hidden, "the proposed config repos")
        except wire.HiveError:
            continue
        try:
            trees.hand_over(fd, uid, gid, f"{entry}'s proposed config repo", readable=True)
        finally:
            os.close(fd)

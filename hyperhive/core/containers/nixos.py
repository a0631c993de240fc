"""The `nixos` backend: each agent a NixOS container `h-<name>` built from the meta flake.

Owns every `nixos-container` and `journalctl` call, the one line of each
container's `<conf_dir>/h-<name>.conf` that carries its bind mounts, and the
`harness.env` file beside each agent's socket. The harness inside is started
by the container's own systemd (nix/templates/harness-base.nix, which the
meta flake adds), so a `Launch`'s argv is not used here: its host paths
become bind mounts at fixed places inside, and the part of its env that is
the operator's (--pass-env, hive.json's env) and the core's claude go into
harness.env, which the harness unit reads at every start.

Every command goes through `commands.run`; a failure comes back as a
`HiveError` sentence naming what was attempted and the tail of its stderr.
"""

import logging
import os
import re
import shutil

from hyperhive import files, resources, wire
from hyperhive.core import planted, trees
from hyperhive.core.containers import owners
from hyperhive.core.containers.base import Backend
from hyperhive.core.containers.commands import HINTS, CommandFailed, nix, run
from hyperhive.core.metaflake import MetaFlake

log = logging.getLogger(__name__)

CONF_DIR = "/etc/nixos-containers"  # nixos-container's configurationDirectory (fixed at its build)
# Where the host paths appear inside a container; the nix templates point the harness here.
# The socket's own directory is bound (not the file: that pins the inode of a
# socket a restarted core replaces), so the socket is /run/hyperhive/<its name>.
SOCKET_DIR_IN = "/run/hyperhive"
STATE_IN = "/state"
SHARED_IN = "/shared"
CONFIG_IN = "/agents/{name}/config"
MANAGER_CONFIG_IN = "/config"  # the whole proposed root: agents added after the manager started show up too
HOST_DIR_IN = "/run/hyperhive-host"  # the agent's host dir, read-only: the core's pause marker
ENV_FILE = "harness.env"  # beside the socket, so on the run dir's tmpfs: it may carry API keys
# The container's own NixOS config sets these (or they name host paths); never forwarded.
# HIVE_* variables that name no host path: the same inside a container
SHARED_HIVE_ENV = frozenset({"HIVE_OPERATOR_PRONOUNS", *wire.ENGINE_ENV})
HOST_ONLY_ENV = frozenset({"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ", "PYTHONUNBUFFERED"})
TEMPLATES = ("harness-base.nix", "agent-base.nix", "manager.nix")
MAX_CONTAINER_NAME = 11  # nixos-container create refuses longer names (its ve-<name> interface)
# A bind path goes through systemd's EnvironmentFile, an unquoted shell expansion (word
# splitting) and nspawn's SRC:DST syntax; these characters survive all three untouched.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")


def container(name):
    return "h-" + wire.check_name(name)


def check_source(source):
    """The container source, checked: a directory with hyperhive.pyz and the nix templates."""
    source = os.path.abspath(source)
    wanted = ["hyperhive.pyz", "nix/python-deps.nix", *(f"nix/templates/{t}" for t in TEMPLATES)]
    missing = [rel for rel in wanted if not os.path.isfile(os.path.join(source, rel))]
    if missing:
        raise wire.HiveError(f"the nixos backend builds every container from {source} (--container-source), but "
                             f"it has no {', '.join(missing)}; point --container-source at the installed "
                             "package's share/hyperhive (the NixOS module does), or in a checkout run "
                             "./build_zipapp.sh first", "unavailable")
    return source


def container_env(env):
    """What of a Launch's env reaches the harness in a container.

    The operator's variables (--pass-env, hive.json's env) go in; the HIVE_*
    ones name host paths, so the templates set the container's own, except
    HIVE_CLAUDE_BIN when it is in the Nix store, which the container shares,
    and the ones that name no path (the operator's pronouns).
    """
    out = {k: v for k, v in env.items()
           if k not in HOST_ONLY_ENV and (not k.startswith("HIVE_") or k in SHARED_HIVE_ENV)}
    claude = env.get("HIVE_CLAUDE_BIN") or ""
    if claude.startswith("/nix/store/"):
        out["HIVE_CLAUDE_BIN"] = claude
    return out


def env_file(env):
    """`env` as a systemd EnvironmentFile: double-quoted values, with what systemd unescapes escaped."""
    lines = []
    for key in sorted(env):
        value = env[key]
        if "\n" in value or "\r" in value:
            raise wire.HiveError(f"cannot pass {key} into a container: its value spans lines, which a systemd "
                                 "EnvironmentFile cannot carry")
        lines.append(f'{key}="' + re.sub(r'([\\"`$])', r"\\\1", value) + '"')
    return "".join(line + "\n" for line in lines)


class NixosBackend(Backend):
    """NixOS containers via `nixos-container`; builds always go through the meta flake's two phases."""

    name = "nixos"
    watch_seconds = 10.0  # each status check forks nixos-container: the crash watch runs slower
    # where an agent sees its state dir and the shared dir (file references and reminders translate)
    state_in, shared_in = STATE_IN, SHARED_IN
    own_claude = True  # the container's system brings claude; the host's --claude is not used

    def __init__(self, meta, run=run, conf_dir=CONF_DIR, host_network=True, stop_timeout=90.0):
        self.meta, self.run, self.conf_dir = meta, run, conf_dir
        # Host network: the harness must reach the Claude API and the core must reach its web UI;
        # nixos-container's default private veth has neither without host NAT set up.
        self.host_network = host_network
        self.stop_timeout = stop_timeout

    @classmethod
    def works(cls):
        exe = shutil.which("nixos-container")
        if not exe:
            return False, f"nixos-container is not on PATH: {HINTS['nixos-container']}"
        return True, f"NixOS containers through {exe}"

    @classmethod
    def at(cls, state_dir, git, source=None, **kwargs):
        """The backend over the meta flake at `<state_dir>/meta`."""
        return cls(MetaFlake(os.path.join(state_dir, "meta"), nix, git, source=source), **kwargs)

    @classmethod
    def create(cls, state_dir, source=None):
        """As `serve` wires it up: the meta flake under the state dir, containers built from `source`
        (checked) or the directory this hyperhive runs from."""
        from hyperhive.core.gitrepos import WorkTree

        # HIVE_NIXOS_CONF_DIR: where nixos-container keeps h-<name>.conf, if not the NixOS default
        conf_dir = os.environ.get("HIVE_NIXOS_CONF_DIR") or CONF_DIR
        source = check_source(source or os.path.dirname(resources.entry()))
        return cls.at(state_dir, WorkTree(), source=source, conf_dir=conf_dir)

    def _nc(self, *args, timeout=None):
        return self.run("nixos-container", *args, timeout=timeout)

    def _conf(self, name):
        return os.path.join(self.conf_dir, container(name) + ".conf")

    def _flake(self, name):
        return f"{self.meta.path}#{name}"

    # -- queries ---------------------------------------------------------------------------

    def exists(self, name):
        """Whether h-<name> exists: its conf file is how nixos-container itself decides."""
        return os.path.exists(self._conf(name))

    def running(self, name, home=None):
        if not self.exists(name):
            return False
        return self._nc("status", container(name)).strip() == "up"

    def names(self):
        """Agents that have a container, from `nixos-container list` (other containers ignored)."""
        return sorted(line[2:] for line in self._nc("list").split()
                      if line.startswith("h-") and wire.NAME_RE.fullmatch(line[2:]))

    def pid(self, home):
        return None  # the harness runs in the container's pid namespace; no host pid to offer

    @staticmethod
    def ids(name):
        """The (uid, gid) name's harness runs as, in its container and so on the host (no user namespace
        between them): the meta flake sets it as hyperhive.uid, harness-base.nix makes it the unit's user."""
        return trees.ids(name)

    def exit_code(self, name):
        return None  # systemd inside the container restarts the harness; no exit code reaches us

    def journal(self, name, lines=200):
        """The last `lines` of the container's journal; of its host unit while it is down."""
        if not isinstance(lines, int) or not 1 <= lines <= 10000:
            raise wire.HiveError("lines must be a whole number from 1 to 10000")
        c = container(name)
        if self.running(name):
            return self.run("journalctl", "-M", c, "-n", str(lines), "--no-pager")
        # a stopped machine has no journal to open with -M; the unit's log says why it stopped
        return self.run("journalctl", "-u", f"container@{c}.service", "-n", str(lines), "--no-pager")

    def log_tail(self, name, home=None, cursor=None, lines=500):
        """New journal lines after `cursor` (a journald cursor); the last `lines` without one."""
        c = container(name)
        where = ["-M", c] if self.running(name) else ["-u", f"container@{c}.service"]
        at = [f"--after-cursor={cursor}"] if cursor else ["-n", str(lines)]
        try:
            out = self.run("journalctl", *where, *at, "--no-pager", "--show-cursor")
        except CommandFailed as e:
            if not cursor or "cursor" not in e.stderr:
                raise
            # one journald no longer knows (the journal was rotated away, or it was the unit's and the
            # machine runs now): read from the tail again, as the contract says
            return self.log_tail(name, home, None, lines)
        result = []
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                cursor = line[len("-- cursor: "):]
            elif line != "-- No entries --":
                result.append(line)
        return result, cursor

    # -- start / stop ------------------------------------------------------------------------

    def _binds(self, launch):
        """The nspawn flags binding this agent's socket, state and (read-only) config in, checked."""
        socket = launch.env.get("HIVE_SOCKET")
        sock_dir = os.path.dirname(socket) if socket else None
        config = launch.config_dir
        wanted = [("--bind", sock_dir, SOCKET_DIR_IN), ("--bind", launch.state_dir, STATE_IN)]
        if launch.shared_dir:
            wanted.append(("--bind", launch.shared_dir, SHARED_IN))
        pause = launch.env.get("HIVE_PAUSE_FILE")
        if pause:
            # a directory, not the marker: the core creates and removes the file while the container runs
            wanted.append(("--bind-ro", os.path.dirname(pause), HOST_DIR_IN))
        hidden = [os.path.abspath(d) for d in launch.hidden_dirs]
        if config and launch.role == "manager":
            # the manager edits every agent's proposed repo: all of them at /config ($HIVE_CONFIG_DIR),
            # and each at /agents/<agent>/config as the agent itself sees it; one it swapped for a link is
            # left out (nspawn would bind the link's target), and the log says so
            wanted.append(("--bind", config, MANAGER_CONFIG_IN))
            for entry in sorted(os.listdir(config) if os.path.isdir(config) else ()):
                repo = os.path.join(config, entry)
                if not wire.NAME_RE.fullmatch(entry) or not os.path.lexists(repo):
                    continue
                try:
                    trees.checked_dir(trees.root_of(repo, hidden), repo, "the proposed config repos")
                except wire.HiveError as e:
                    log.error("%s leaves out %s's proposed config repo: %s", container(launch.name), entry, e)
                    continue
                wanted.append(("--bind", repo, CONFIG_IN.format(name=entry)))
        elif config:
            # read-only: config edits only ever flow through the manager and the approval queue
            wanted.append(("--bind-ro", config, CONFIG_IN.format(name=launch.name)))
        flags = []
        for flag, src, dst in wanted:
            if not src or not SAFE_PATH.fullmatch(src):
                raise wire.HiveError(f"cannot bind {src!r} into {container(launch.name)} at {dst}: a bind path "
                                     "must be absolute and use only letters, digits and . _ / @ + -")
            if src == sock_dir and not os.path.exists(socket):
                raise wire.HiveError(f"{launch.name!r}'s socket {socket} does not exist; open it before starting",
                                     "unavailable")
            if not os.path.lexists(src):
                os.makedirs(src)  # a missing source dir would make the container not boot
            # each is a tree an agent (or the manager) writes: nspawn binds what a link points to, so none
            # may be one, on the way or at the end. (It binds by name at the container's start: a link
            # swapped in between this check and that is what the bwrap backend's descriptors rule out.)
            trees.checked_dir(trees.root_of(src, hidden), src, f"{container(launch.name)}'s bind at {dst}")
            flags.append(f"{flag}={src}:{dst}")
        return flags

    def _write_conf(self, name, flags):
        """Set EXTRA_NSPAWN_FLAGS (and PRIVATE_NETWORK) in the container's conf, keeping its other lines.

        container@.service reads this file as its EnvironmentFile at every
        start and appends $EXTRA_NSPAWN_FLAGS to systemd-nspawn's command
        line, so this is where an imperative container's bind mounts live.
        Rewritten at every start, so a restart picks up a changed layout.
        """
        path = self._conf(name)
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines()
                     if not ln.startswith("EXTRA_NSPAWN_FLAGS=")
                     and not (self.host_network and ln.startswith("PRIVATE_NETWORK="))]
        if self.host_network:
            lines.append("PRIVATE_NETWORK=0")
        lines.append(f'EXTRA_NSPAWN_FLAGS="{" ".join(flags)}"')
        files.replace(path, "\n".join(lines) + "\n", 0o644)

    def _create(self, name, rev=None):
        c = container(name)
        if len(c) > MAX_CONTAINER_NAME:
            raise wire.HiveError(f"agent name {name!r} is too long for the nixos backend: nixos-container "
                                 f"refuses container names over {MAX_CONTAINER_NAME} characters, and "
                                 f"{c!r} has {len(c)}; use at most {MAX_CONTAINER_NAME - 2}")
        self.meta.prepare(name, rev)
        try:
            self._nc("create", c, "--flake", self._flake(name))
        except wire.HiveError as e:
            self.meta.abort(name)
            # a create whose build failed leaves its conf behind; without this the next try says "exists"
            try:
                self._nc("destroy", c)
            except wire.HiveError as cleanup:
                log.error("could not clean up after the failed create of %s: %s", c, cleanup)
            raise wire.HiveError(f"could not create container {c}; nothing was kept. {e}", e.code) from None
        self.meta.finalize(name, f"create {c}" + (f" at {rev[:12]}" if rev else ""))

    def _write_env(self, launch):
        """harness.env beside the socket (0600): rewritten at every start, so nothing stale stays in it."""
        path = os.path.join(os.path.dirname(launch.env["HIVE_SOCKET"]), ENV_FILE)
        text = env_file(container_env(launch.env))
        # the socket dir is bound into the container: the agent may have left a directory at the name,
        # the one thing files.replace cannot put a file over (it never writes through a link)
        moved = planted.clear(os.path.dirname(path), ENV_FILE, only_dirs=True)
        if moved:
            log.warning("%s: %s", launch.name, moved)
        files.replace(path, text, 0o600)

    def start(self, launch):
        name = launch.name
        c = container(name)
        if self.running(name):
            raise wire.HiveError(f"container {c} is already running", "conflict")
        flags = self._binds(launch)
        owners.refuse_shared_ids(launch)
        uid, gid = self.ids(name)
        owners.hand_over(launch, uid, gid, [os.path.abspath(d) for d in launch.hidden_dirs])
        self._write_env(launch)
        if not self.exists(name):
            # a spawn approval's commit is not yet applied main: build that commit, not HEAD
            self._create(name, launch.rev)
        elif self.meta.stale(name):
            # built from an older hyperhive (the package moved): catch up before it runs again
            try:
                self.build(name)
            except wire.HiveError as e:
                log.error("%s starts on its previous system: rebuilding it on the current hyperhive failed: %s",
                          c, e)
        self._write_conf(name, flags)
        try:
            self._nc("start", c)
        except wire.HiveError as e:
            raise wire.HiveError(f"could not start container {c}. {e}", e.code) from None
        log.info("started %s", c)

    def stop(self, name, home=None, graceful=True, timeout=None):
        """Stop h-<name>; returns False if it was not running.

        Graceful: `nixos-container stop` (systemctl stop container@): the
        container shuts down, so its systemd sends the harness SIGTERM and it
        finishes its turn within the unit's stop timeout; if the whole stop
        outlasts `timeout` it is terminated. Not graceful: `nixos-container
        terminate` (machinectl terminate): everything in it dies now, and the
        cut turn's messages stay unacked for redelivery.
        """
        if not self.running(name):
            return False
        c = container(name)
        if not graceful:
            self._terminate(c)
            return True
        try:
            self._nc("stop", c, timeout=timeout or self.stop_timeout)
        except CommandFailed as e:
            if not e.timed_out:
                raise wire.HiveError(f"could not stop container {c}. {e}", e.code) from None
            log.warning("%s did not stop within %gs; terminating it", c, timeout or self.stop_timeout)
            self._terminate(c)
        return True

    def kill(self, name, home=None):
        """`nixos-container terminate`: kill everything in h-<name> now; False if it was not running."""
        if not self.running(name):
            return False
        self._terminate(container(name))
        return True

    def _terminate(self, c):
        try:
            self._nc("terminate", c)  # returns once the container's leader process has exited
        except wire.HiveError as e:
            raise wire.HiveError(f"could not terminate container {c}. {e}", e.code) from None

    def destroy(self, name):
        """Remove h-<name> (its root, profile and conf; never the bound state). False if it did not exist."""
        c = container(name)
        if not self.exists(name):
            return False
        try:
            self._nc("destroy", c)
        except wire.HiveError as e:
            raise wire.HiveError(f"could not destroy container {c}. {e}", e.code) from None
        return True

    # -- builds ------------------------------------------------------------------------------

    def _update(self, name):
        self._nc("update", container(name), "--flake", self._flake(name))

    def _restore(self, name, why):
        """After an abort: rebuild h-<name> from the restored lock, because `why` may have moved it.

        nixos-container update switches the container's profile before it
        reloads the running container, so a failed reload (or a rollback of
        an update-all) leaves it on the new system unless rebuilt; the old
        system is still in the store, so this is a cache hit.
        """
        try:
            self._update(name)
            return ""
        except wire.HiveError as e:
            log.error("could not put %s back on its previous system after %s: %s", container(name), why, e)
            return f" Putting it back on its previous system failed too: {e}"

    def build(self, name, rev=None):
        """Rebuild h-<name> from its applied repo (at `rev`, or HEAD): prepare → update → finalize.

        On failure the lock goes back byte for byte and the container keeps
        (or is put back on) its previous system.
        """
        c = container(name)
        if not self.exists(name):
            raise wire.HiveError(f"there is no container {c} to rebuild; start the agent first", "not_found")
        self.meta.prepare(name, rev)
        try:
            self._update(name)
        except CommandFailed as e:
            self.meta.abort(name)
            moved = "failed to reload container" in e.stderr
            extra = self._restore(name, "a failed reload") if moved else ""
            raise wire.HiveError(f"rebuilding container {c} failed; it keeps its previous configuration and "
                                 f"the meta flake its previous lock. {e}{extra}", e.code) from None
        try:
            self.meta.finalize(name, f"rebuild {c}" + (f" at {rev[:12]}" if rev else ""))
        except wire.HiveError as e:
            raise wire.HiveError(f"{c} was rebuilt but the meta flake could not record it, so it was put "
                                 f"back. {e}{self._restore(name, 'a failed commit')}", e.code) from None
        log.info("rebuilt %s", c)

    def update_all(self):
        """The `update` approval: move every meta flake input, rebuild every container, all or nothing."""
        names = [n for n in sorted(self.meta.agents()) if self.exists(n)]
        self.meta.prepare_all()
        done = []
        for name in names:
            try:
                self._update(name)
            except CommandFailed as e:
                self.meta.abort(None)
                if "failed to reload container" in e.stderr:
                    done.append(name)
                extra = "".join(self._restore(n, "an aborted update") for n in done)
                raise wire.HiveError(f"updating the meta flake's inputs failed at {container(name)}, so every "
                                     f"container and the lock were left as before. {e}{extra}", e.code) from None
            done.append(name)
        try:
            self.meta.finalize(None, "update inputs")
        except wire.HiveError as e:
            extra = "".join(self._restore(n, "a failed commit") for n in done)
            raise wire.HiveError(f"the containers were updated but the meta flake could not record it, so "
                                 f"they were put back. {e}{extra}", e.code) from None
        log.info("updated every meta flake input and rebuilt %s", ", ".join(names) or "nothing")
        return names

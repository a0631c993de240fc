"""What an agent's bwrap sandbox shows: bwrap's options (the mount plan) and the descriptors they name.

The `bwrap` backend (bwrap.py) starts bwrap with these options and INIT;
this module decides, for one `Launch`, what the harness inside sees and
through which descriptors, and owns nothing that runs.

What it sees. The host's programs read-only (/usr with its merged-/usr
links, /nix/store), an /etc of the few files programs need to resolve names,
check TLS certificates and find their libraries, with a passwd and group of
its own; /proc, /dev, /tmp and /run of its own; of everything else only the
programs it runs (the interpreter with its venv and base prefix, the pyz or
checkout, claude). No /root, /home, /var, /srv, /opt, /mnt, /sys, no
/nix/var: no host unix socket at a path (they live in /run, /tmp, /var,
/home and /nix/var). Of the hive, only the agent's own parts, at the same
absolute paths the environment names:

  <state>/agents/<name>/state   read-write (the harness's cwd and HOME)
  <state>/agents/<name>/        read-only, for the pause marker (`paused`
                                appears and goes away while the harness runs,
                                so its directory is bound, not the file)
  its socket's own directory    read-write: a restarted core's new socket
                                shows up in it, and the harness serves its
                                page on web.sock there
  its config checkout           (when the Launch carries a `config_dir`) at
                                its own path and at /agents/<name>/config;
                                read-only, but see config_args() for the manager
  <state>/shared                read-write, the hive's shared dir ($HIVE_SHARED_DIR)
  <state>/agents/<name>/ also holds extra-mcp.json ($HIVE_EXTRA_MCP), which
  the core rewrites at every start.

The rest of the hive's state dir (hive.db, the other agents, the config
repos) and the run dir (host.sock, manager.sock, the other agents' sockets)
are covered by empty tmpfs mounts before the agent's own parts are bound back.
Each of those parts is a tree the agent (or, for the config repos, the
manager) can write, so it is bound by descriptor, opened without following a
link (`trees.open_dir`), and handed over to the agent's uid at each start
(`owners.hand_over`).
"""

import logging
import os
import shutil
import sys

from hyperhive import wire
from hyperhive.core import trees

log = logging.getLogger(__name__)

# Every namespace but the network: the harness needs the Anthropic API (or a
# loopback mock in tests) and the core reaches the agent's page over its
# socket dir, not the network. Sharing the host's network means an agent can
# reach whatever listens on the host's loopback (the dashboard among it, which
# answers nothing without the operator's session cookie and origin-bound key)
# and the host's abstract unix sockets, which belong to the network namespace,
# not to any path a mount could hide (docs/architecture.md, "Threat model").
NAMESPACES = ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try")
# Only for a core that is not root: bwrap's own user namespace (the core's
# uid mapped to itself) locks every mount, and --disable-userns stops the
# sandbox from nesting one.
USERNS = ("--unshare-user", "--disable-userns")
# As root bwrap keeps every capability unless told; the harness needs none.
# (bwrap always sets no_new_privs, so nothing regains them on exec.)
HARDENING = ("--cap-drop", "ALL")
# A root core's INIT needs these two for the moment it takes to become the
# agent's uid, which clears them (and every other) for good.
SWITCH = ("--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID")
# The host's programs: what of the host's root is shown, read-only.
SHOWN_TOP = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
NIX_STORE = "/nix/store"
# Of the host's /etc only what programs need to work; passwd and group are the sandbox's own.
ETC_KEEP = (
    # names: the resolver's configuration and the tables getaddrinfo and friends read
    "resolv.conf", "hosts", "host.conf", "nsswitch.conf", "gai.conf", "services", "protocols",
    # TLS: the CA certificates (Debian, Fedora, NixOS spell them differently)
    "ssl", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies",
    # time, locale, file types, terminals
    "localtime", "timezone", "zoneinfo", "locale.alias", "locale.conf", "mime.types", "terminfo",
    # the dynamic loader's cache, Debian's program names, what the system is
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "os-release", "mtab",
    # NixOS: where most of the above link to
    "static",
)
# /etc/resolv.conf may link here; the files alone, not systemd-resolved's varlink socket beside them.
RUN_FILES = ("/run/systemd/resolve/stub-resolv.conf", "/run/systemd/resolve/resolv.conf")
# NixOS's system profile (PATH), links into the store.
RUN_KEEP = ("/run/current-system", "/run/booted-system")
CONFIG_MOUNT = "/agents/{name}/config"

# Deliberately absent:
# --die-with-parent: a harness must outlive a core crash (the restarted core
#   adopts it by pidfile, mid-turn); with it, kill -9 of the core would kill
#   every agent.
# --new-session: bwrap's guard against TIOCSTI needs a terminal to matter, and
#   there is none: the backend starts bwrap in a new session (no controlling
#   tty) with stdin /dev/null and stdout a log file. It would also move
#   everything inside out of the session that `os.killpg` signals.
# --unshare-net: see NAMESPACES.
# --setenv: the harness's environment reaches INIT on a descriptor, never as
#   INIT's own environment: INIT runs as root until its first lines, and a
#   loader variable there would run before them.
# bwrap's own pid 1 (no --as-pid-1): it lives on until the last process in
#   the sandbox is gone, while the outer bwrap exits as soon as the harness
#   does; whatever the harness left running would go on, unseen by the core.
#   INIT (bwrap.py) replaces it.


def _abs(path):
    return os.path.abspath(path)


class _Fd(str):
    """A descriptor's number as bwrap reads it, remembering the path it was opened from (for the log)."""

    def __new__(cls, fd, path):
        self = super().__new__(cls, str(fd))
        self.path = path
        return self


def _under(path, dirs):
    """Whether path is one of dirs or inside one."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _shown(path):
    """Whether path is already visible inside: under the host's programs, shown whole."""
    return _under(path, ["/" + t for t in SHOWN_TOP] + [NIX_STORE])


def as_root():
    """Whether this core can give each agent a uid of its own (it must be root to)."""
    return os.geteuid() == 0


def root_args(root="/"):
    """The host's programs read-only, one top-level entry at a time; the rest of its root is not shown.

    Not `--ro-bind / /`: the root stays bwrap's own tmpfs so mount points that
    do not exist on the host (/agents/<name>/config) can be made in it; it is
    remounted read-only once every mount is in place.
    """
    args = []
    for entry in SHOWN_TOP:
        path = os.path.join(root, entry)
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), "/" + entry]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, "/" + entry]
    if os.path.isdir(os.path.join(root, NIX_STORE.lstrip("/"))):
        args += ["--ro-bind", os.path.join(root, NIX_STORE.lstrip("/")), NIX_STORE]
    return args


def hive_dirs(launch):
    """The hive's directories to hide: the core's state dir and run dir.

    A Launch may name them (`hidden_dirs`); else they follow from the layout:
    the home is <state>/agents/<name>, the socket is in <run> or under
    <run>/agents/ (possibly in a directory of the agent's own).
    """
    if launch.hidden_dirs:
        dirs = [_abs(d) for d in launch.hidden_dirs]
    else:
        state_root = os.path.dirname(os.path.dirname(_abs(launch.home_dir)))
        run = os.path.dirname(_abs(launch.env["HIVE_SOCKET"]))
        while os.path.basename(run) in (launch.name, "agents"):
            run = os.path.dirname(run)
        dirs = [state_root, run]
    if "/" in dirs:
        raise wire.HiveError(f"refusing to sandbox {launch.name!r}: the hive's directories {dirs} "
                             "would hide the whole host", "internal")
    kept = []
    for d in dirs:
        if not _under(d, kept):
            kept.append(d)
    return kept


def _python_homes(exe):
    """What an interpreter needs besides its own file: its venv and the prefix that venv is made from."""
    exe = _abs(exe)
    venv = os.path.dirname(os.path.dirname(exe))
    cfg = os.path.join(venv, "pyvenv.cfg")
    if not os.path.isfile(cfg):
        # a plain install: its prefix (lib/pythonX.Y beside bin/)
        return [os.path.dirname(os.path.dirname(os.path.realpath(exe)))]
    homes = [venv]
    try:
        with open(cfg) as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() == "home" and os.path.isabs(value.strip()):
                    homes.append(os.path.dirname(os.path.realpath(value.strip())))
    except OSError as e:
        log.warning("cannot read %s: %s; its interpreter may not start in the sandbox", cfg, e)
    return homes


def program_paths(launch):
    """What must stay visible to run at all: INIT's and the harness's interpreter, the entry, claude."""
    found = [_abs(sys.prefix), os.path.realpath(sys.base_prefix)]
    argv, env = launch.argv, launch.env
    if argv:
        exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=env.get("PATH"))
        if exe:  # its homes first: the link a venv's python is, is inside the venv
            found += [*_python_homes(exe), exe]
    if len(argv) > 1 and os.path.isabs(argv[1]) and os.path.isfile(argv[1]):
        entry = _abs(argv[1])  # the pyz, or hyperhive.py beside its package
        found.append(os.path.dirname(entry) if entry.endswith(".py") else entry)
    claude = env.get("HIVE_CLAUDE_BIN")
    if claude and not os.path.isabs(claude):
        claude = shutil.which(claude, path=env.get("PATH"))
    if claude and os.path.exists(claude):
        # the link claude is known by, and the directory of what it runs (a node package's files, or
        # the native build's), so that it finds what lies beside it
        found += [os.path.dirname(os.path.realpath(claude)), _abs(claude)]
    kept = []
    for path in found:
        if path not in kept:
            kept.append(path)
    return kept


def _dirs(path, made):
    """`--dir` (mode 0755) for each ancestor of path bwrap would otherwise make 0700 for a mount point:
    the agent's uid must walk through them."""
    args, here = [], ""
    for part in os.path.dirname(path).strip("/").split("/"):
        if not part:
            continue
        here += "/" + part
        if here not in made and not _shown(here):
            made.add(here)
            args += ["--perms", "0755", "--dir", here]
    return args


class Sandbox:
    """One agent's sandbox: bwrap's options and the descriptors they name (bwrap.py's `command` runs it).

    The principal-writable parts of the hive are opened here, checked, and
    bound by descriptor; `close()` releases every descriptor once bwrap has
    its own copies. `described()` is the options with each descriptor shown
    as the path it was opened from, for the log and the tests.
    """

    def __init__(self, launch, root=None):
        self.launch = launch
        self.root = as_root() if root is None else root
        self.fds = []
        # directories there are or were made (0755) for mount points; paths bound or linked
        self.made, self.bound = {"/dev", "/proc", "/tmp", "/run", "/etc", "/var"}, []
        self.uid, self.gid = trees.ids(launch.name) if self.root else (-1, -1)
        try:
            self.options = self._options()
        except BaseException:
            self.close()
            raise

    # -- descriptors ----------------------------------------------------------------------

    def memfd(self, name, data):
        """A descriptor bwrap (or INIT) reads `data` from: a file in memory, never on a disk."""
        fd = os.memfd_create(name, 0)
        self.fds.append(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        return str(fd)

    def _bind(self, path, dest, tree, writable):
        """Bind a directory of a principal-writable tree by descriptor: no link on its way is followed,
        and what is bound is the directory checked, whatever its name points to by the time bwrap mounts."""
        path = _abs(path)
        fd = trees.open_dir(trees.root_of(path, self.hidden), path, tree)
        self.fds.append(fd)
        self.bound.append(dest)
        self.made.add(dest)
        return _dirs(dest, self.made) + ["--bind-fd" if writable else "--ro-bind-fd", _Fd(fd, path), dest]

    def expose(self, path, depth=0):
        """Args that show a host program (file or directory) at its own path: each link on the way as a
        link, what it leads to bound read-only; nothing for what the sandbox shows already."""
        path = _abs(path)
        if _shown(path) or _under(path, self.bound) or depth > 16 or not os.path.lexists(path):
            return []
        here = ""
        parts = path.strip("/").split("/")
        for i, part in enumerate(parts):
            here += "/" + part
            if os.path.islink(here):
                target = os.readlink(here)
                after = os.path.normpath(os.path.join(os.path.dirname(here), target, "/".join(parts[i + 1:])))
                self.bound.append(here)
                return _dirs(here, self.made) + ["--symlink", target, here] + self.expose(after, depth + 1)
        self.bound.append(path)
        return _dirs(path, self.made) + ["--ro-bind", path, path]

    def described(self):
        """The options, each descriptor shown as the path it was opened from and each --*-fd as its
        path-taking twin: what the sandbox binds, readable."""
        return [a.path if isinstance(a, _Fd) else {"--bind-fd": "--bind", "--ro-bind-fd": "--ro-bind"}.get(a, a)
                for a in self.options]

    def close(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    # -- the layout -------------------------------------------------------------------------

    def _etc(self):
        args = ["--perms", "0755", "--dir", "/etc"]
        for entry in ETC_KEEP:
            path = os.path.join("/etc", entry)
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.exists(path):
                args += ["--ro-bind", path, path]
        name = self.launch.name
        state = _abs(self.launch.state_dir)
        uid, gid = (self.uid, self.gid) if self.root else (os.getuid(), os.getgid())
        passwd = f"root:x:0:0:root:/nonexistent:/bin/false\n{name}:x:{uid}:{gid}:hyperhive {name}:{state}:/bin/sh\n" \
                 "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        group = f"root:x:0:\n{name}:x:{gid}:\nnogroup:x:65534:\n"
        args += ["--perms", "0644", "--ro-bind-data", self.memfd("passwd", passwd.encode()), "/etc/passwd",
                 "--perms", "0644", "--ro-bind-data", self.memfd("group", group.encode()), "/etc/group"]
        return args

    def _run(self):
        args = ["--tmpfs", "/run"]
        for path in RUN_KEEP:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
        for path in RUN_FILES:
            if os.path.isfile(path):
                args += _dirs(path, self.made) + ["--ro-bind", path, path]
        return args

    def _options(self):
        launch = self.launch
        name = launch.name
        state = _abs(launch.state_dir)
        socket = _abs(launch.env["HIVE_SOCKET"])
        pause = launch.env.get("HIVE_PAUSE_FILE")
        config = launch.config_dir
        self.hidden = hive_dirs(launch)
        programs = program_paths(launch)

        args = [*NAMESPACES, *(() if self.root else USERNS), "--as-pid-1", *HARDENING,
                *(SWITCH if self.root else ()), "--hostname", f"h-{name}"]
        args += root_args()
        args += ["--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc",
                 # no sysctl is the agent's to write (uid 0 may write a root-owned one without any
                 # capability, and a non-root core's agent is that core's uid); /proc/sys/user is
                 # per user namespace, so INIT's child can close its own to further ones
                 "--ro-bind-try", "/proc/sys", "/proc/sys",
                 *(("--bind-try", "/proc/sys/user", "/proc/sys/user") if self.root else ()),
                 "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
        args += ["--perms", "1777", "--tmpfs", "/tmp"]
        args += self._run()
        args += self._etc()
        args += ["--perms", "0755", "--dir", "/var", "--symlink", "../tmp", "/var/tmp",
                 "--symlink", "../run", "/var/run"]
        # The programs (a venv, checkout or pyz may lie anywhere the sandbox does not show) ...
        for path in programs:
            if not _under(path, self.hidden):
                args += self.expose(path)
        # ... hide the hive (after the program binds: a checkout holding the state dir is re-masked) ...
        for d in self.hidden:
            args += _dirs(d, self.made) + ["--tmpfs", d]
            self.made.add(d)
        # ... except a program that lives inside it (a venv under the state dir, say): what was bound
        # before is masked there now
        self.bound = []
        for path in programs:
            if _under(path, self.hidden):
                args += self.expose(path)
        # ... and bind back the agent's own parts.
        if pause:
            pause_dir = os.path.dirname(_abs(pause))
            if not _under(pause_dir, [state]):  # before the state dir: it is usually its parent
                args += self._bind(pause_dir, pause_dir, f"{name}'s home", writable=False)
        args += self._bind(state, state, f"{name}'s state dir", writable=True)
        sock_dir = os.path.dirname(socket)
        if os.path.basename(sock_dir) == name:
            # a socket directory of the agent's own: a restarted core's new socket shows up in it,
            # and the harness binds its page's web.sock there (the core reads it with care)
            args += self._bind(sock_dir, sock_dir, f"{name}'s socket dir", writable=True)
        else:
            # A file bind pins the socket's inode: a core restarted after a crash
            # binds a new socket at the path, which this sandbox never sees.
            args += _dirs(socket, self.made) + ["--ro-bind", socket, socket]
        shared = launch.shared_dir
        if shared:  # every agent's, read-write: files they leave for each other
            args += self._bind(shared, _abs(shared), "the shared dir", writable=True)
        if config:
            args += self.config_args(_abs(config))
        # INIT enters the state dir once it is the agent: bwrap, as root without a capability, may not
        args += ["--chdir", "/", "--clearenv", "--remount-ro", "/"]
        return args

    def config_args(self, config):
        """The config checkout: at its own path ($HIVE_CONFIG_DIR) and at /agents/<name>/config.

        An agent's is its proposed repo, read-only: its config changes only
        through the manager and the operator's approval. The manager's is the
        root of every agent's proposed repo, writable; the applied repos (the
        core's alone) are under another root it never sees. Each proposed repo
        is the manager's to write, so one that is a link (to the core's state
        dir, say) is refused: for an agent, its start fails; for the manager,
        that repo is left out, and the log says so.
        """
        launch = self.launch
        if launch.role != "manager":
            return (self._bind(config, config, f"{launch.name}'s proposed config repo", writable=False)
                    + self._bind(config, CONFIG_MOUNT.format(name=launch.name),
                                 f"{launch.name}'s proposed config repo", writable=False))
        # every agent's proposed repo, writable, at its host path and at /agents/<agent>/config; the
        # applied repos live under another root that stays masked
        args = self._bind(config, config, "the proposed config repos", writable=True)
        for entry in sorted(os.listdir(config) if os.path.isdir(config) else ()):
            if not wire.NAME_RE.fullmatch(entry):
                continue
            try:
                args += self._bind(os.path.join(config, entry), CONFIG_MOUNT.format(name=entry),
                                   "the proposed config repos", writable=True)
            except wire.HiveError as e:
                if e.code == "forbidden":
                    log.error("%s's sandbox leaves out %s's proposed config repo: %s", launch.name, entry, e)
        return args

    def env_fd(self, env):
        """The harness's environment, for INIT to read: NAME=value pairs, NUL-separated."""
        env = dict(env, TMPDIR="/tmp")  # the host's TMPDIR is not there; the sandbox's /tmp is its own
        data = b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items())
        return self.memfd("harness-env", data)


def sandbox_argv(launch, root=None):
    """The sandbox's options for a Launch, described (`Sandbox.described`); nothing stays open."""
    box = Sandbox(launch, root)
    try:
        return box.described()
    finally:
        box.close()

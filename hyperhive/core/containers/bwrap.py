"""The `bwrap` backend: each harness in a bubblewrap sandbox, on any Linux, as a uid of its own.

Same life as the `process` backend (a child in its own session, tracked by a
pidfile of pid + start time, adopted by a restarted core); only what runs
differs: `bwrap --args <fd> -- <INIT> <the harness argv>`, its options read
from a descriptor, so that the host's `ps` shows neither the sandbox's layout
nor the harness's environment (API keys among it).

Who it runs as. With the core root (the NixOS module, a systemd unit) each
agent is an unprivileged uid of its own on the host (`trees.ids`, the gid the
same number): no user namespace stands between it and the host, so what it
writes is that uid's on the host too, and of everything root's or another
user's it may do only what the mode grants "others". bwrap runs as root
without a user namespace (as the agent's uid it could not reach the agent's
parts under the core's 0700 state dir, not even by descriptor: bwrap looks a
descriptor's path up) and keeps no capability but CAP_SETUID and CAP_SETGID,
which INIT (pid 1 inside, the hive's own code, started with an empty
environment) uses once, first, to become that uid; the harness it starts then
enters a user namespace of its own that maps only that uid and in which no
further one can be made, so nothing inside ever holds a capability. With the
core not root, bwrap makes the usual unprivileged sandbox (--unshare-user,
--disable-userns) and the agent is the core's uid: the layout is the same, the
separation from the core's own files only what the masks give.

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

pid tree, as the host sees it:

  bwrap (pidfile pid, session leader)  ->  INIT (pid 1 inside)
                                             ->  harness (pid 2)  ->  claude ...

bwrap forwards no signals, and a SIGTERM'd bwrap just dies and leaves the
sandbox running, so TERM goes to the processes inside instead (INIT first,
which passes it on to the harness); KILL goes to everything. When INIT ends
-- right after the harness, or killed -- the kernel kills all that is left
in the pid namespace, even processes that left the session.
"""

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from hyperhive import wire
from hyperhive.core import trees
from hyperhive.core.containers import owners
from hyperhive.core.containers.process import ProcessBackend, _start_time

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
# How long a graceful stop looks for the harness inside a sandbox still being set up.
FIND_HARNESS_SECONDS = 2.0

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
#   INIT below replaces it.

# pid 1 inside (--as-pid-1), run as `python -I -S -c INIT <uid> <gid> <env fd> <cwd> <argv...>`
# with an empty environment: it reads the harness's environment (NUL-separated
# NAME=value) from the descriptor and closes every other one bwrap passed on;
# under a root core it then becomes the agent's uid (uid -1: it already is),
# which ends its capabilities, and enters the harness's cwd as that uid. It runs the harness as its child, passes stop
# signals on to it, reaps orphans, and exits with the harness's status (128+N
# for signal N, as bwrap's own would) -- which ends the pid namespace. Its
# handlers are set before the fork: pid 1 ignores any signal it has no handler
# for, so one caught early is passed on once the child exists. The child, with
# default handlers again, enters a user namespace mapping only its uid and
# sets that namespace's user-namespace limit to 0 (no capability in it
# survives the exec), so nothing inside can nest one; where the host allows no
# user namespace to that uid at all, the harness cannot make one either, and
# it goes on without.
INIT = r"""
import os, signal, sys
uid, gid, env_fd, cwd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
argv = sys.argv[5:]
with os.fdopen(env_fd, "rb") as f:
    env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
for fd in os.listdir("/proc/self/fd"):
    if int(fd) > 2:
        try:
            os.close(int(fd))
        except OSError:
            pass
if uid >= 0:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
os.umask(0o022)  # not the core's (0007 under systemd): the manager's commits are read by the other agents
os.chdir(cwd)  # as the agent: its state dir may be its alone (bwrap, root without capabilities, may not enter)

def own_userns():
    import ctypes, errno
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self is root's after a uid change, and the maps go there
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        e = ctypes.get_errno()
        if e in (errno.EPERM, errno.ENOSPC, errno.EINVAL, errno.ENOSYS, errno.EACCES):
            print(f"sandbox init: the host gives uid {uid} no user namespace ({os.strerror(e)}), "
                  "so the harness cannot make one either", file=sys.stderr, flush=True)
            return
        raise OSError(e, "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")

child, pending = None, []
def forward(sig, frame):
    if child is None:
        pending.append(sig)
    else:
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
for sig in STOPS:
    signal.signal(sig, forward)
child = os.fork()
if child == 0:
    for sig in STOPS:
        signal.signal(sig, signal.SIG_DFL)
    try:
        if uid >= 0:
            own_userns()
        os.execve(argv[0], argv, env)
    except OSError as e:
        print(f"sandbox init: cannot run {argv[0]}: {e}", file=sys.stderr, flush=True)
    os._exit(127)
for sig in pending:
    os.kill(child, sig)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        sys.exit(1)
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
        sys.exit(code if code >= 0 else 128 - code)
"""


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
    """One agent's sandbox: bwrap's options, the descriptors they name, INIT's command line.

    The principal-writable parts of the hive are opened here, checked, and
    bound by descriptor; `close()` releases every descriptor once bwrap has
    its own copies. `described()` is the options with each descriptor shown
    as the path it was opened from, for the log and the tests.
    """

    def __init__(self, launch, bwrap="bwrap", root=None):
        self.launch, self.bwrap = launch, bwrap
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

    def _data(self, name, data):
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
        args += ["--perms", "0644", "--ro-bind-data", self._data("passwd", passwd.encode()), "/etc/passwd",
                 "--perms", "0644", "--ro-bind-data", self._data("group", group.encode()), "/etc/group"]
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

    def command(self, env_fd):
        """bwrap's command line: its options from a descriptor, then INIT and the harness's argv."""
        data = b"".join(a.encode() + b"\0" for a in self.options)
        return [self.bwrap, "--args", self._data("bwrap-args", data), "--",
                sys.executable, "-I", "-S", "-c", INIT, str(self.uid), str(self.gid), env_fd,
                _abs(self.launch.state_dir), *self.launch.argv]

    def env_fd(self, env):
        """The harness's environment, for INIT to read: NAME=value pairs, NUL-separated."""
        env = dict(env, TMPDIR="/tmp")  # the host's TMPDIR is not there; the sandbox's /tmp is its own
        data = b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items())
        return self._data("harness-env", data)


def sandbox_argv(launch, bwrap="bwrap", root=None):
    """The sandbox's options for a Launch, described (`Sandbox.described`); nothing stays open."""
    box = Sandbox(launch, bwrap, root)
    try:
        return box.described()
    finally:
        box.close()


def _ppids():
    """pid -> parent pid of every process, from one pass over /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return parents


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def descendants(pid):
    """Every process below pid, shallowest first."""
    children = {}
    for child, parent in _ppids().items():
        children.setdefault(parent, []).append(child)
    found, frontier = [], [pid]
    while frontier:
        frontier = [c for p in frontier for c in sorted(children.get(p, ()))]
        found += frontier
    return found


def inside(pid):
    """The processes inside the sandbox whose bwrap is pid: INIT, then the harness, then the rest."""
    return [p for p in descendants(pid) if _comm(p) not in (None, "bwrap")]


class BwrapBackend(ProcessBackend):
    """Each harness in a bubblewrap sandbox; otherwise the process backend's life."""

    name = "bwrap"

    def __init__(self, clock=time.monotonic, bwrap=None):
        super().__init__(clock)
        self.bwrap = bwrap or shutil.which("bwrap") or "bwrap"

    @staticmethod
    def works(bwrap=None, timeout=10.0):
        """(True, what) if bwrap can make this backend's sandbox here, else (False, why)."""
        exe = bwrap or shutil.which("bwrap")
        if not exe:
            return False, "bwrap is not on PATH (install bubblewrap)"
        true = shutil.which("true") or "/bin/true"
        root = as_root()
        argv = [exe, *NAMESPACES, *(() if root else USERNS), "--as-pid-1", *HARDENING, *(SWITCH if root else ()),
                *root_args(), "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run",
                "--perms", "0755", "--dir", "/etc", "--remount-ro", "/", "--", true]
        try:
            probe = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            version = subprocess.run([exe, "--version"], capture_output=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as e:
            return False, f"{exe} could not run: {e}"
        if probe.returncode != 0:
            said = probe.stderr.decode(errors="replace").strip().splitlines()
            return False, f"{exe} cannot make a sandbox here: {said[-1] if said else f'exit {probe.returncode}'}"
        who = "each agent as a uid of its own" if root else "agents as this core's own uid (run the core as root " \
              "for a uid per agent)"
        return True, f"{version.stdout.decode(errors='replace').strip() or 'bwrap'} at {exe}, {who}"

    def argv(self, launch):
        return sandbox_argv(launch, self.bwrap)

    @staticmethod
    def ids(name):
        """The (uid, gid) name's sandbox runs as on the host; None when it runs as the core's own."""
        return trees.ids(name) if as_root() else None

    def start(self, launch):
        socket = launch.env.get("HIVE_SOCKET")
        if not socket or not os.path.exists(socket):
            raise wire.HiveError(f"cannot sandbox {launch.name!r}: its socket {socket} does not exist yet "
                                 "(the core opens it before starting the harness)", "unavailable")
        config = launch.config_dir
        if config and not os.path.isdir(config):
            raise wire.HiveError(f"cannot sandbox {launch.name!r}: its config dir {config} does not exist",
                                 "unavailable")
        if as_root():
            owners.refuse_shared_ids(launch)
        os.makedirs(launch.state_dir, exist_ok=True)
        box = Sandbox(launch, self.bwrap)
        try:
            if box.root:
                owners.hand_over(launch, box.uid, box.gid, box.hidden)
            command = box.command(box.env_fd(launch.env))
            log.debug("sandbox for %s: %s", launch.name, shlex.join(box.described()))
            # bwrap itself runs on the host: nothing of the harness's environment (a loader variable
            # least of all) reaches it; the harness's goes in through INIT's descriptor
            return self._spawn(launch, command, {"PATH": os.environ.get("PATH") or os.defpath}, tuple(box.fds))
        finally:
            box.close()

    def exit_code(self, name):
        """As the process backend reports it: bwrap says 128+N for a harness killed by signal N."""
        code = super().exit_code(name)
        if code is not None and 128 < code <= 128 + 64:
            return -(code - 128)
        return code

    # -- signals: the process backend's stop/kill, aimed inside the sandbox -------------

    def _signal(self, pid, sig):
        """The graceful stop's signal, to INIT, which passes it on to the harness alone."""
        deadline = self.clock() + FIND_HARNESS_SECONDS
        while True:
            procs = inside(pid)
            if procs:
                ProcessBackend._signal(procs[0], sig)
                return
            if _start_time(pid) is None:  # gone, or a zombie: nothing left to stop
                return
            if self.clock() >= deadline:
                break
            time.sleep(0.05)  # the sandbox is still being set up; gevent-patched in the core
        log.warning("found no harness inside sandbox %d; killing the sandbox", pid)
        self._signal_group(pid, signal.SIGKILL)

    def _signal_group(self, pid, sig):
        """Everything inside the sandbox; a KILL takes bwrap too.

        A TERM spares bwrap: it would die at once and report the agent
        stopped while the harness still runs. The sandbox ends with INIT,
        which exits when the harness does.
        """
        if sig != signal.SIGKILL:
            for p in inside(pid):
                ProcessBackend._signal(p, sig)
            return
        for p in [pid, *descendants(pid)]:
            ProcessBackend._signal(p, sig)
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

"""The `bwrap` backend: each harness in a bubblewrap sandbox, on any Linux.

Same life as the `process` backend (a child in its own session, tracked by a
pidfile of pid + start time, adopted by a restarted core); only what runs
differs: `bwrap <sandbox> -- <the harness argv>`. Inside, the host's root is
read-only, /tmp and /run are the sandbox's own, and of the hive only the
agent's own parts exist, at the same absolute paths the environment names:

  <state>/agents/<name>/state   read-write (the harness's cwd and HOME)
  <state>/agents/<name>/        read-only, for the pause marker (`paused`
                                appears and goes away while the harness runs,
                                so its directory is bound, not the file)
  its socket's own directory    read-only is enough to connect, and keeps the
                                sandbox from chmod'ing the core's socket; a
                                directory, so a restarted core's new socket
                                shows up inside
  its config checkout           (when the Launch carries a `config_dir`) at
                                its own path and at /agents/<name>/config;
                                read-only, but see config_args() for the manager
  <state>/shared                read-write, the hive's shared dir ($HIVE_SHARED_DIR)
  <state>/agents/<name>/ also holds extra-mcp.json ($HIVE_EXTRA_MCP), which
  the core rewrites at every start.

The rest of the hive's state dir (hive.db, the other agents, the config
repos) and the run dir (host.sock, manager.sock, the other agents' sockets)
are covered by empty tmpfs mounts before the agent's own parts are bound back.

pid tree, as the host sees it:

  bwrap (pidfile pid, session leader)  ->  INIT (pid 1 inside)
                                             ->  harness (pid 2)  ->  claude ...

bwrap forwards no signals, and a SIGTERM'd bwrap just dies and leaves the
sandbox running, so TERM goes to the processes inside instead (INIT first,
which passes it on to the harness); KILL goes to everything. When INIT ends
-- right after the harness, or killed -- the kernel kills all that is left
in the pid namespace, even processes that left the session.
"""

import copy
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from hyperhive import wire
from hyperhive.core.containers.process import ProcessBackend, _start_time

log = logging.getLogger(__name__)

# Every namespace but the network: the harness needs the Anthropic API (or a
# loopback mock in tests) and the dashboard proxies its web UI over the host's
# loopback. A new user namespace (uid 0 mapped to itself) locks every mount
# we make, so nothing inside can lift a mask or a read-only flag even with a
# capability back; --disable-userns stops it from nesting one to try.
NAMESPACES = ("--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-ipc",
              "--unshare-uts", "--unshare-cgroup-try")
# As root bwrap keeps every capability unless told; the harness needs none.
# (bwrap always sets no_new_privs, so nothing regains them on exec.)
HARDENING = ("--cap-drop", "ALL")
# Not taken from the host: the sandbox gets its own.
OWN_TOP = ("proc", "dev", "tmp", "run")
# From the host's /run (masked: it holds root-only daemon sockets like
# systemd's private bus and docker.sock), only what programs need to work:
# NixOS's system profile (PATH), and name resolution.
RUN_KEEP = ("/run/current-system", "/run/booted-system", "/run/systemd/resolve", "/run/nscd")
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
# bwrap's own pid 1 (no --as-pid-1): it lives on until the last process in
#   the sandbox is gone, while the outer bwrap exits as soon as the harness
#   does; whatever the harness left running would go on, unseen by the core.
#   INIT below replaces it.

# pid 1 inside (--as-pid-1): runs the harness as its child, passes stop
# signals on to it, reaps orphans, and exits with the harness's status (128+N
# for signal N, as bwrap's own would) -- which ends the pid namespace. Its
# handlers are set before the fork: pid 1 ignores any signal it has no
# handler for, so one caught early is passed on once the child exists.
INIT = r"""
import os, signal, sys
child, pending = None, []
def forward(sig, frame):
    if child is None:
        pending.append(sig)
    else:
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, forward)
child = os.fork()
if child == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as e:
        print(f"sandbox init: cannot run {sys.argv[1]}: {e}", file=sys.stderr, flush=True)
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


def _under(path, dirs):
    """Whether path is one of dirs or inside one."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _keep(path):
    """Args that show host path (symlink or dir/file) at the same place, if it exists."""
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.exists(path):
        return ["--ro-bind", path, path]
    return []


def root_args(root="/"):
    """The host's root read-only, one top-level entry at a time.

    Not `--ro-bind / /`: the root stays bwrap's own tmpfs so mount points that
    do not exist on the host (/agents/<name>/config) can be made in it; it is
    remounted read-only once every mount is in place.
    """
    args = []
    for entry in sorted(os.listdir(root)):
        if entry in OWN_TOP:
            continue
        path = os.path.join(root, entry)
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), "/" + entry]
        elif os.path.isdir(path) or os.path.isfile(path):
            args += ["--ro-bind", path, "/" + entry]
    return args


def hive_dirs(launch):
    """The hive's directories to hide: the core's state dir and run dir.

    A Launch may name them (`hidden_dirs`); else they follow from the layout:
    the home is <state>/agents/<name>, the socket is in <run> or under
    <run>/agents/ (possibly in a directory of the agent's own).
    """
    named = getattr(launch, "hidden_dirs", None)
    if named:
        dirs = [_abs(d) for d in named]
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


def _interpreter(exe):
    """A program to keep visible: a venv's python needs its whole venv."""
    exe = _abs(exe)
    venv = os.path.dirname(os.path.dirname(exe))
    return venv if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else exe


def program_paths(launch):
    """What must stay visible to run at all: INIT's and the harness's interpreter, the entry, claude."""
    found = [_interpreter(sys.executable)]
    argv, env = launch.argv, launch.env
    if argv:
        exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=env.get("PATH"))
        if exe and _interpreter(exe) not in found:
            found.append(_interpreter(exe))
    if len(argv) > 1 and os.path.isabs(argv[1]) and os.path.isfile(argv[1]):
        entry = _abs(argv[1])  # the pyz, or hyperhive.py beside its package
        found.append(os.path.dirname(entry) if entry.endswith(".py") else entry)
    claude = env.get("HIVE_CLAUDE_BIN")
    if claude and os.path.isabs(claude) and os.path.exists(claude):
        found.append(_abs(claude))
    return found


def sandbox_argv(launch, bwrap="bwrap"):
    """The full command line: bwrap, its mounts, `--`, the harness's own argv."""
    name = launch.name
    state = _abs(launch.state_dir)
    socket = _abs(launch.env["HIVE_SOCKET"])
    pause = launch.env.get("HIVE_PAUSE_FILE")
    config = getattr(launch, "config_dir", None)
    hidden = hive_dirs(launch)
    own = ["/tmp", "/run"]
    programs = program_paths(launch)

    args = [bwrap, *NAMESPACES, "--as-pid-1", *HARDENING, "--hostname", f"h-{name}"]
    args += root_args()
    args += ["--dev", "/dev", "--proc", "/proc",
             # bwrap 0.8 leaves these writable on a fresh procfs, and uid 0
             # may write a root-owned sysctl without any capability
             "--ro-bind-try", "/proc/sys", "/proc/sys",
             "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
    args += ["--tmpfs", "/tmp", "--tmpfs", "/run"]
    for path in RUN_KEEP:
        args += _keep(path)
    # A venv, checkout or pyz under /tmp would vanish with the host's /tmp.
    for path in programs:
        if _under(path, own) and not _under(path, hidden):
            args += ["--ro-bind", path, path]
    # Hide the hive (after the program binds: a checkout holding the state dir is re-masked) ...
    for d in hidden:
        args += ["--tmpfs", d]
    # ... except a program that lives inside it (a venv under the state dir, say).
    for path in programs:
        if _under(path, hidden):
            args += ["--ro-bind", path, path]
    # ... and bind back the agent's own parts.
    if pause:
        pause_dir = os.path.dirname(_abs(pause))
        if not _under(pause_dir, [state]):  # before the state dir: it is usually its parent
            args += ["--ro-bind", pause_dir, pause_dir]
    args += ["--bind", state, state]
    sock_dir = os.path.dirname(socket)
    if os.path.basename(sock_dir) == name:
        # a socket directory of the agent's own: a restarted core's new socket shows up in it,
        # and the harness binds its page's web.sock there (the core reads it with care)
        args += ["--bind", sock_dir, sock_dir]
    else:
        # A file bind pins the socket's inode: a core restarted after a crash
        # binds a new socket at the path, which this sandbox never sees.
        args += ["--ro-bind", socket, socket]
    shared = getattr(launch, "shared_dir", None)
    if shared:  # every agent's, read-write: files they leave for each other
        args += ["--bind", _abs(shared), _abs(shared)]
    if config:
        args += config_args(launch, _abs(config))
    args += ["--chdir", state, "--setenv", "TMPDIR", "/tmp", "--remount-ro", "/",
             "--", sys.executable, "-I", "-S", "-c", INIT, *launch.argv]
    return args


def config_args(launch, config):
    """The config checkout: at its own path ($HIVE_CONFIG_DIR) and at /agents/<name>/config.

    An agent's is its proposed repo, read-only: its config changes only
    through the manager and the operator's approval. The manager's is the
    root of every agent's proposed repo, writable; the applied repos (the
    core's alone) are under another root it never sees.
    """
    if launch.role == "manager":
        # every agent's proposed repo, writable, at its host path and at
        # /agents/<agent>/config; the applied repos live under another root
        # that stays masked
        args = ["--bind", config, config]
        for entry in sorted(os.listdir(config) if os.path.isdir(config) else ()):
            repo = os.path.join(config, entry)
            if os.path.isdir(repo) and wire.NAME_RE.fullmatch(entry):
                args += ["--bind", repo, CONFIG_MOUNT.format(name=entry)]
        return args
    return ["--ro-bind", config, config, "--ro-bind", config, CONFIG_MOUNT.format(name=launch.name)]


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
        argv = [exe, *NAMESPACES, "--as-pid-1", *HARDENING, *root_args(), "--dev", "/dev", "--proc", "/proc",
                "--tmpfs", "/tmp", "--tmpfs", "/run", "--remount-ro", "/", "--", true]
        try:
            probe = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            version = subprocess.run([exe, "--version"], capture_output=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as e:
            return False, f"{exe} could not run: {e}"
        if probe.returncode != 0:
            said = probe.stderr.decode(errors="replace").strip().splitlines()
            return False, f"{exe} cannot make a sandbox here: {said[-1] if said else f'exit {probe.returncode}'}"
        return True, f"{version.stdout.decode(errors='replace').strip() or 'bwrap'} at {exe}"

    def argv(self, launch):
        return sandbox_argv(launch, self.bwrap)

    def start(self, launch):
        socket = launch.env.get("HIVE_SOCKET")
        if not socket or not os.path.exists(socket):
            raise wire.HiveError(f"cannot sandbox {launch.name!r}: its socket {socket} does not exist yet "
                                 "(the core opens it before starting the harness)", "unavailable")
        config = getattr(launch, "config_dir", None)
        if config and not os.path.isdir(config):
            raise wire.HiveError(f"cannot sandbox {launch.name!r}: its config dir {config} does not exist",
                                 "unavailable")
        sandboxed = copy.copy(launch)
        sandboxed.argv = self.argv(launch)
        log.debug("sandbox for %s: %s", launch.name, shlex.join(sandboxed.argv))
        return super().start(sandboxed)

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

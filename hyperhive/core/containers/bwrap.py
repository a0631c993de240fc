"""The `bwrap` backend: each harness in a bubblewrap sandbox, on any Linux, as a uid of its own.

Same life as the `process` backend (a child in its own session, tracked by a
pidfile of pid + start time, adopted by a restarted core); only what runs
differs: `bwrap --args <fd> -- <INIT> <the harness argv>`, its options read
from a descriptor, so that the host's `ps` shows neither the sandbox's layout
nor the harness's environment (API keys among it). This module owns that
life: INIT, bwrap's command line, starting it, and the signals and exit
codes, aimed inside the sandbox; what the sandbox shows (its mounts, the
descriptors they are bound by) is `sandbox.py`'s.

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
from hyperhive.core.containers.sandbox import HARDENING, NAMESPACES, SWITCH, USERNS, Sandbox, as_root, root_args

log = logging.getLogger(__name__)

# How long a graceful stop looks for the harness inside a sandbox still being set up.
FIND_HARNESS_SECONDS = 2.0

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


def command(bwrap, box, env_fd):
    """bwrap's command line for a Sandbox: its options from a descriptor, then INIT and the harness's argv."""
    data = b"".join(a.encode() + b"\0" for a in box.options)
    return [bwrap, "--args", box.memfd("bwrap-args", data), "--",
            sys.executable, "-I", "-S", "-c", INIT, str(box.uid), str(box.gid), env_fd,
            os.path.abspath(box.launch.state_dir), *box.launch.argv]


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
        box = Sandbox(launch)
        try:
            if box.root:
                owners.hand_over(launch, box.uid, box.gid, box.hidden)
            argv = command(self.bwrap, box, box.env_fd(launch.env))
            log.debug("sandbox for %s: %s", launch.name, shlex.join(box.described()))
            # bwrap itself runs on the host: nothing of the harness's environment (a loader variable
            # least of all) reaches it; the harness's goes in through INIT's descriptor
            return self._spawn(launch, argv, {"PATH": os.environ.get("PATH") or os.defpath}, tuple(box.fds))
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

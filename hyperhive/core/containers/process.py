"""The `process` backend: each harness a plain child process with its own state dir.

A pidfile (pid + kernel start time) lets a restarted core adopt harnesses
that outlived it, so a core crash never kills a turn. The harness leads its
own session and process group, which claude and all it starts inherit:
whatever is left of that group when the harness is gone (however it went)
is killed before the next start, and the start waits until it is gone.
"""

import logging
import os
import signal
import subprocess
import time
import zlib

from hyperhive import files, wire
from hyperhive.core.containers.base import Backend

log = logging.getLogger(__name__)


# How long a start waits for the previous harness's leftovers to die of SIGKILL.
SWEEP_SECONDS = 10.0


def _stat(pid):
    """(state, pgid, sid, start time in clock ticks since boot) of pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _start_time(pid):
    """The kernel's start time of pid (clock ticks since boot), or None if gone/zombie."""
    found = _stat(pid)
    if found is None or found[0] in ("Z", "X"):
        return None
    return found[3]


def leftovers(leader, started):
    """The live processes of the session and group that `leader` (started at `started`) led.

    The kernel keeps a pid number while a group or session still bears it,
    so processes that bear it once the leader is gone are the old harness's.
    Only a live process *at* that number with another start time means the
    number was reused, and the group is someone else's. A process that
    left with setsid() of its own is out of reach here (docs/gotchas.md).
    """
    found, me = [], os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue  # a zombie is dead already; its parent (or init) reaps it
        state, pgid, sid, start = stat
        if pid == leader and start != started:
            return []
        if leader in (pgid, sid) and start >= started:
            found.append(pid)
    return sorted(found)


def _parse_cursor(cursor):
    try:
        inode, offset, head = str(cursor).split(":")
        return int(inode), int(offset), int(head)
    except ValueError:
        return None, None, None


def _head(f, offset):
    """A fingerprint of the first bytes before offset: they never change while a log only grows."""
    f.seek(0)
    return zlib.crc32(f.read(min(64, offset)))


class ProcessBackend(Backend):
    """Each harness a child process in its own session, tracked by pidfile."""

    name = "process"

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._children = {}  # name -> Popen, for harnesses this core started

    @staticmethod
    def ids(name):
        """The (uid, gid) name's harness runs as on the host: None, the core's own (no sandbox)."""
        return None

    @staticmethod
    def _pidfile(launch_or_home):
        return os.path.join(launch_or_home, "harness.pid")

    def _read_pid(self, home):
        try:
            with open(self._pidfile(home)) as f:
                pid, started = f.read().split()
            return int(pid), int(started)
        except (OSError, ValueError):
            return None

    def pid(self, home):
        """The live harness pid for an agent home dir, or None."""
        found = self._read_pid(home)
        if found is None:
            return None
        pid, started = found
        return pid if _start_time(pid) == started else None

    def running(self, name, home):
        child = self._children.get(name)
        if child is not None and child.poll() is None:
            return True
        return self.pid(home) is not None

    def exit_code(self, name):
        """How the last child this core started for name ended, or None if unknown/running."""
        child = self._children.get(name)
        return None if child is None else child.poll()

    def log_tail(self, name, home, cursor=None, lines=500):
        """New lines of the harness's log after `cursor`; the last `lines` without one.

        Returns (lines, cursor). The cursor is "<inode>:<offset>:<crc of the
        bytes before offset, up to 64>": a log that was truncated or replaced
        (even by a file that got the same inode back) is read from its start.
        """
        path = os.path.join(home, "harness.log")
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return [], cursor
        with f:
            st = os.fstat(f.fileno())
            inode, offset, head = _parse_cursor(cursor)
            if inode != st.st_ino or offset is None or offset > st.st_size or _head(f, offset) != head:
                offset = None
            if offset is None:  # the tail: back off far enough for `lines` lines
                start = max(0, st.st_size - lines * 400)
                f.seek(start)
                data = f.read(st.st_size - start)
                if start:
                    data = data[data.find(b"\n") + 1:]  # the first line was cut
                out = data.split(b"\n")
                complete = out[:-1][-lines:]
                end = st.st_size - len(out[-1])
            else:
                f.seek(offset)
                data = f.read(min(st.st_size - offset, 4 * 1024 * 1024))
                cut = data.rfind(b"\n") + 1  # a half-written last line waits for its end
                complete = data[:cut].split(b"\n")[:-1]
                end = offset + cut
            mark = _head(f, end)
        return [b.decode(errors="replace") for b in complete], f"{st.st_ino}:{end}:{mark}"

    def start(self, launch):
        return self._spawn(launch, launch.argv, launch.env)

    def _spawn(self, launch, argv, env, pass_fds=()):
        """Run `argv` (the harness, or what wraps it) for the launch's agent, with `env` and `pass_fds`."""
        if self.running(launch.name, launch.home_dir):
            raise wire.HiveError(f"agent {launch.name!r} is already running", "conflict")
        self.sweep(launch.name, launch.home_dir)
        os.makedirs(launch.state_dir, exist_ok=True)
        logfile = open(launch.log_path, "ab")
        try:
            child = subprocess.Popen(argv, cwd=launch.state_dir, env=env,
                                     stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True, close_fds=True, pass_fds=pass_fds)
        except OSError as e:
            raise wire.HiveError(f"could not start the harness for {launch.name!r}: {e}", "unavailable") from None
        finally:
            logfile.close()
        self._children[launch.name] = child
        started = _start_time(child.pid)
        files.replace(self._pidfile(launch.home_dir), f"{child.pid} {started}\n", 0o644)
        log.info("started %s (pid %d)", launch.name, child.pid)
        return child.pid

    def sweep(self, name, home, timeout=SWEEP_SECONDS):
        """SIGKILL what is left of the group of the harness that last ran for name; wait until it is gone.

        For a harness that is gone (died, killed, stopped): a claude it
        started, or what claude started, must never act as the agent beside
        the next one. Returns how many processes were killed; raises when
        some outlive the deadline (stuck in the kernel, say), since starting
        beside them would run the agent twice.
        """
        found = self._read_pid(home)
        if found is None:
            return 0
        leader, started = found
        left = leftovers(leader, started)
        if not left:
            return 0
        log.warning("%s: killing %d process(es) left of its last harness (group %d): %s", name, len(left),
                    leader, " ".join(map(str, left)))
        killed, deadline = len(left), self.clock() + timeout
        while left:
            for pid in left:  # one by one too: a process that changed its group is still in the session
                self._kill_leftover(pid)
            self._kill_leftover(-leader)
            self.exit_code(name)  # reaps the leader if this core started it
            if self.clock() >= deadline:
                raise wire.HiveError(
                    f"{len(left)} process(es) left of {name!r}'s last harness survived SIGKILL for {timeout:g}s "
                    f"(pids {' '.join(map(str, left))}, maybe stuck in the kernel), so it is not started beside "
                    "them; check them with `ps -o pid,stat,wchan,cmd -p <pid>` and start it again once they are gone",
                    "unavailable")
            time.sleep(0.05)  # bounded poll of external processes; gevent-patched in the core
            left = leftovers(leader, started)
        return killed

    @staticmethod
    def _kill_leftover(pid):
        """SIGKILL a pid (or a group, negative); one that is gone already is fine."""
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _wait_gone(self, name, home, timeout):
        deadline = self.clock() + timeout
        while self.running(name, home):
            if self.clock() >= deadline:
                return False
            time.sleep(0.05)  # bounded poll of an external process; gevent-patched in the core
        return True

    def stop(self, name, home, graceful=True, timeout=None):
        """Stop a harness; SIGKILL whatever is left at the deadline.

        Graceful: SIGTERM to the harness alone, which finishes its running
        turn (and acks it) before it exits. Not graceful: SIGTERM to the whole
        session, so claude dies with it and the turn's messages stay unacked
        for redelivery.
        """
        pid = self._live_pid(name, home)
        if pid is None:
            self._clear(name, home)
            return False
        timeout = timeout if timeout is not None else (60.0 if graceful else 5.0)
        if graceful:
            self._signal(pid, signal.SIGTERM)
        else:
            self._signal_group(pid, signal.SIGTERM)
        if not self._wait_gone(name, home, timeout):
            log.warning("%s did not stop within %gs of SIGTERM; killing it", name, timeout)
            self.kill(name, home)
        self._clear(name, home)
        return True

    def kill(self, name, home):
        pid = self._live_pid(name, home)
        if pid is None:
            self._clear(name, home)
            return False
        self._signal_group(pid, signal.SIGKILL)
        self._wait_gone(name, home, 10.0)
        self._clear(name, home)
        return True

    def _clear(self, name, home):
        """After a stop or kill: nothing of the harness's group stays, nor its pidfile."""
        self.sweep(name, home)
        self._forget(home)

    def _live_pid(self, name, home):
        child = self._children.get(name)
        if child is not None and child.poll() is None:
            return child.pid
        return self.pid(home)

    def _signal_group(self, pid, sig):
        """Signal the harness's whole session: itself and the claude it may be running."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            self._signal(pid, sig)

    @staticmethod
    def _signal(pid, sig):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _forget(self, home):
        try:
            os.unlink(self._pidfile(home))
        except FileNotFoundError:
            pass

"""The `process` backend: each harness a plain child process with its own state dir.

A pidfile (pid + kernel start time) lets a restarted core adopt harnesses
that outlived it, so a core crash never kills a turn.
"""

import logging
import os
import signal
import subprocess
import time
import zlib

from hyperhive import wire

log = logging.getLogger(__name__)


def _start_time(pid):
    """The kernel's start time of pid (clock ticks since boot), or None if gone/zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


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


class ProcessBackend:
    """Each harness a child process in its own session, tracked by pidfile."""

    name = "process"
    # where an agent sees its state dir and the shared dir: None is at the host's own path
    # (the bwrap sandbox binds them there too)
    state_in = shared_in = None

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._children = {}  # name -> Popen, for harnesses this core started

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
        if self.running(launch.name, launch.home_dir):
            raise wire.HiveError(f"agent {launch.name!r} is already running", "conflict")
        os.makedirs(launch.state_dir, exist_ok=True)
        logfile = open(launch.log_path, "ab")
        try:
            child = subprocess.Popen(launch.argv, cwd=launch.state_dir, env=launch.env,
                                     stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True, close_fds=True)
        except OSError as e:
            raise wire.HiveError(f"could not start the harness for {launch.name!r}: {e}", "unavailable") from None
        finally:
            logfile.close()
        self._children[launch.name] = child
        started = _start_time(child.pid)
        tmp = self._pidfile(launch.home_dir) + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{child.pid} {started}\n")
        os.replace(tmp, self._pidfile(launch.home_dir))
        log.info("started %s (pid %d)", launch.name, child.pid)
        return child.pid

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
            return False
        timeout = timeout if timeout is not None else (60.0 if graceful else 5.0)
        if graceful:
            self._signal(pid, signal.SIGTERM)
        else:
            self._signal_group(pid, signal.SIGTERM)
        if not self._wait_gone(name, home, timeout):
            log.warning("%s did not stop within %gs of SIGTERM; killing it", name, timeout)
            self.kill(name, home)
        self._forget(home)
        return True

    def kill(self, name, home):
        pid = self._live_pid(name, home)
        if pid is None:
            return False
        self._signal_group(pid, signal.SIGKILL)
        self._wait_gone(name, home, 10.0)
        self._forget(home)
        return True

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

"""One `claude auth login` child, driven from the agent's page over pipes.

Owns the child process: the URL it prints, the code the operator pastes
back, its output (capped) and how it ended, and cancelling it. `login.py`
starts one for the page and decides what its end means for the harness.

Facts of the real CLI (2.1.x, measured): over pipes `auth login` prints
`If the browser didn't open, visit: <url>`, then the prompt
`Paste code here if prompted > ` without a newline, reads one line, and on a
bad code prints `Invalid code. …` and exits 1.
"""

import codecs
import logging
import os
import re
import subprocess
import time

import gevent
import gevent.event
from gevent import select as gselect

from hyperhive import wire

log = logging.getLogger(__name__)

OUTPUT_MAX = 64 * 1024
CODE_MAX = 2048
CANCEL_GRACE = 5.0
DRAIN_SECONDS = 2.0  # after the CLI exits, how long a child it left holding the pipe may keep us reading
EXIT_CHECK = 0.2  # while its pipe is quiet, how often the session looks whether the CLI has exited
PROMPT = "Paste code here if prompted >"
URL_AFTER_VISIT = re.compile(r"visit:\s*(https://\S+)\s")
ANY_URL = re.compile(r"(https://\S+)\s")  # followed by whitespace: a URL cut mid-chunk is not taken
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class LoginSession:
    """`claude auth login` over pipes, read as it writes (its prompt ends without a newline).

    Started like claude.py starts a turn (`subprocess`, which is gevent's
    in the monkey-patched harness), and read with gevent's select on the raw
    pipe, so it is cooperative with or without the patch. Its exit is seen
    with `poll()` (a waitpid of its own pid only): in a process that is not
    patched (the tests), gevent's child watcher would reap every child, the
    ones `sh` waits for included. `on_exit(session)` runs once it has ended.
    """

    def __init__(self, claude, env, cwd, on_exit=None, grace=CANCEL_GRACE):
        self.claude, self.grace = claude, grace
        self.on_exit = on_exit
        self.url = None
        self.finished = False
        self.exit_code = None
        self.exit_note = None
        self.cancelled = False
        self.done = gevent.event.Event()
        self._text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            self.proc = subprocess.Popen([claude, "auth", "login"], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
        except OSError as e:
            raise wire.HiveError(f"could not run `{claude} auth login`: {e.strerror or e}; check the claude "
                                 "binary the harness is given (--claude or HIVE_CLAUDE_BIN)", "unavailable") from None
        log.info("claude auth login started (pid %d)", self.proc.pid)
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        gevent.spawn(self._run)

    @property
    def output(self):
        """What the CLI printed so far (stdout and stderr), the newest OUTPUT_MAX characters."""
        return ANSI.sub("", self._text).replace("\r\n", "\n").replace("\r", "\n")

    def view(self):
        return {"url": self.url, "output": self.output, "finished": self.finished,
                "exit_code": self.exit_code, "exit_note": self.exit_note}

    def _add(self, text):
        if not text:
            return
        self._text = (self._text + text)[-OUTPUT_MAX:]
        if self.url is None:
            plain = ANSI.sub("", self._text)
            found = URL_AFTER_VISIT.search(plain) or ANY_URL.search(plain)
            if found:
                self.url = found.group(1)

    def _run(self):
        try:
            self._pump()
            while self.proc.poll() is None:
                gevent.sleep(EXIT_CHECK)  # its output closed: its exit follows at once
        except Exception:
            log.exception("watching claude auth login failed; killing it")
            self.proc.kill()
            self.proc.wait()
        self._finish(self.proc.returncode)

    def _pump(self):
        """Read until end of file, or until the CLI has been gone DRAIN_SECONDS with a child of it
        (a browser opener) still holding the pipe."""
        gone_since = None
        while True:
            readable, _, _ = gselect.select([self._fd], [], [], EXIT_CHECK)
            if readable:
                try:
                    chunk = os.read(self._fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                self._add(self._decoder.decode(chunk))
                continue
            if self.proc.poll() is not None:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since >= DRAIN_SECONDS:
                    break
        self._add(self._decoder.decode(b"", final=True))

    def _finish(self, code):
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass  # a pipe the child broke has nothing left to release
        self.exit_code = code
        self.exit_note = self._why(code)
        self.finished = True
        self.done.set()
        log.info("claude auth login ended: %s", self.exit_note)
        if self.on_exit is not None:
            try:
                self.on_exit(self)
            except Exception:
                log.exception("handling the end of claude auth login failed")

    def _why(self, code):
        if self.cancelled:
            return "the login was cancelled"
        if code == 0:
            return "claude auth login succeeded"
        if code < 0:
            return f"claude auth login was stopped by signal {-code}. Start a new login to retry."
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        # the CLI's answer follows its prompt on the same line (the prompt has no newline)
        said = lines[-1].rpartition(PROMPT)[2].strip()[:300] if lines else ""
        if said and said[-1] not in ".!?":
            said += "."
        return f"claude auth login failed (exit {code}){': ' + said if said else '.'} Start a new login to retry."

    def submit_code(self, code):
        """Hand the pasted code to the CLI (one line)."""
        if not isinstance(code, str) or not code.strip():
            raise wire.HiveError("'code' is required: paste the code the sign-in page showed")
        code = code.strip()
        if "\n" in code or "\r" in code:
            raise wire.HiveError("the code is one line; paste just the code the sign-in page showed")
        if len(code) > CODE_MAX:
            raise wire.HiveError(f"the code is {len(code)} characters; a sign-in code is under {CODE_MAX}")
        if self.finished:
            raise wire.HiveError(f"this login has ended ({self.exit_note}); start a new one", "conflict")
        try:
            self.proc.stdin.write(code.encode() + b"\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as e:
            raise wire.HiveError(f"claude auth login no longer reads its input ({e}); start a new login",
                                 "conflict") from None
        log.info("a login code was handed to claude auth login")

    def cancel(self):
        """Close its input, SIGTERM, SIGKILL after the grace; returns once it has exited."""
        self.cancelled = True
        if self.finished:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass  # its end is already gone; the signals below still stop it
        if self.proc.poll() is None:
            self.proc.terminate()
            if not self.done.wait(self.grace):
                log.warning("claude auth login ignored SIGTERM for %gs; killing it", self.grace)
                self.proc.kill()
        self.done.wait()

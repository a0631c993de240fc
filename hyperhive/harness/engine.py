"""How a turn's prompt reaches claude: the two engines, the hang watchdog they share, and recycling.

- `SessionEngine` (the default): one long-lived `claude --print --input-format
  stream-json …` per agent. A turn writes one user line and ends at its
  `result` line; the process, its MCP server, its prompt cache and its token
  stay up between turns. Interrupt (the operator's cancel) and the model go
  over the control protocol; a tool call not granted up front comes back as
  a `can_use_tool` control request, answered by `permit` (harness/permits.py).
- `SpawnEngine`: one `claude --print … -- <prompt>` per turn, for a CLI
  without stream-json input (`serve --claude-mode spawn`).

Both answer `run(prompt, resume) -> Outcome` for the turn loop, so leases,
acks, compaction and continuity are the loop's, the same in both modes.

Facts of claude 2.1.197 read here (measured against a mock of the API): with
stream-json input it prints nothing until the first user line; each user
line gets its own `system/init` (the same `session_id` throughout) and ends
with a `result` line; a user line written while a turn runs is folded into
that turn, so the loop writes one only between turns. `{"subtype":
"interrupt"}` is answered at once and the turn ends about 120 ms later with
a `result` of subtype `error_during_execution`; the process lives on.
`{"subtype": "set_model", "model": M}` is answered after a replayed
`<local-command-stdout>` user line, and the next request goes out on M.
`/compact` as a user line compacts and ends with a result as in a spawn.
Closing stdin between turns makes it exit 0.

The watchdog: a turn with no output for `hang_seconds` (an `api_retry` line
is output: the CLI's own retries are life) is interrupted, then killed after
HANG_GRACE; the turn fails (its messages come again, flagged redelivered) and
the operator is told once per hang. A turn waiting on the operator's tool
approval is not hung.
"""

import json
import logging
import os
import subprocess
import time
import uuid

import gevent
import gevent.event
import gevent.lock

from hyperhive import wire
from hyperhive.harness.claude import Outcome, Reading, Run, dies_with_harness, spawn_failure

log = logging.getLogger(__name__)

MODES, MODE_ENV = wire.CLAUDE_MODES, wire.CLAUDE_MODE_ENV
HANG_ENV, RECYCLE_TURNS_ENV, RECYCLE_RSS_ENV, RECYCLE_IDLE_ENV = (key for _, key, _, _, _ in wire.ENGINE_LIMITS)
HANG_GRACE = 10.0  # after the watchdog's interrupt, before the process is killed
CANCEL_GRACE = 5.0  # after the operator's interrupt, likewise
CONTROL_TIMEOUT = 10.0  # a control request claude does not answer by then: the process is replaced
STOP_GRACE = 5.0  # stdin closed between turns: claude exits at once; killed after this
# A process that died between turns starts again after 2 s, doubling per death in a row, up to 5 min.
RESTART_BACKOFF = (2.0, 300.0)
LINE_MAX = 64 * 1024 * 1024  # one stream-json line: a tool result may be large, never unbounded


class Limits:
    """The watchdog's and recycling's numbers (serve's options reach the harness as environment variables)."""

    def __init__(self, **given):
        for attr, _, _, _, default in wire.ENGINE_LIMITS:
            setattr(self, attr, given.pop(attr, default))
        if given:
            raise TypeError(f"no engine limit {', '.join(given)}")

    @classmethod
    def from_env(cls, env=os.environ):
        limits = cls()
        for attr, key, _, lowest, default in wire.ENGINE_LIMITS:
            raw = env.get(key)
            if not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                value = None
            if value is None or value < lowest:
                log.error("%s=%r is not a number of at least %s; using %s", key, raw, lowest, default)
                continue
            setattr(limits, attr, int(value) if value.is_integer() else value)
        return limits

    def as_dict(self):
        return dict(vars(self))


def mode_from_env(env=os.environ):
    mode = env.get(MODE_ENV) or "session"
    if mode not in MODES:
        log.error("%s=%r is not one of %s; using session", MODE_ENV, mode, ", ".join(MODES))
        return "session"
    return mode


# Claude Code's Bash tool runs a command for at most 10 minutes, and says nothing meanwhile: while a tool call
# has no result yet, a turn may be silent that much longer before it counts as hung.
TOOL_SECONDS = 600.0


class Watchdog:
    """Whether a turn is hung: no output for `seconds` (TOOL_SECONDS more while a tool runs), and not waiting
    on the operator. Stepped with `now`."""

    def __init__(self, seconds):
        self.seconds = seconds

    def hung(self, turn, now):
        if turn.waiting:
            return False
        running = turn.reading is not None and turn.reading.tools_running
        return now - turn.last_life > self.seconds + (TOOL_SECONDS if running else 0)

    def reason(self):
        return (f"claude said nothing for {wire.duration(self.seconds)} (no output, not even an API retry); "
                "the turn was ended as hung")


def rss_bytes(pid):
    """A process's resident memory, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Hang:
    """What both engines do when the watchdog fires: say it, tell the operator once, end the turn."""

    def __init__(self, bus, tell, limits, clock):
        self.bus, self.tell, self.clock = bus, tell, clock
        self.watchdog = Watchdog(limits.hang_seconds)

    def watch(self, turn, end):
        """Run beside a turn until it is over: when it hangs, `end()` stops it (and returns once it did)."""
        while not turn.over:
            gevent.sleep(1.0)
            if turn.over or not self.watchdog.hung(turn, self.clock()):
                continue
            reason = self.watchdog.reason()
            turn.reading.hung = reason
            log.warning("%s", reason)
            self.bus.note(f"{reason}; its messages come again, flagged redelivered")
            self.tell(f"[helper event] turn_hung: {reason}. Its messages are requeued and run again; my page "
                      "shows the turn. A restart or a new session may help if it happens again.")
            end()
            return


class SpawnEngine:
    """One `claude --print` per turn."""

    mode = "spawn"

    def __init__(self, invocation, bus, model, limits=None, tell=None, clock=time.monotonic, on_session=None):
        self.invocation, self.bus, self.model = invocation, bus, model
        self.limits = limits or Limits()
        self.on_session = on_session
        self.hang = _Hang(bus, tell or (lambda text: None), self.limits, clock)
        self.clock = clock
        self.current = None  # the running Run: the operator's cancel reaches it
        self.turns = 0

    def run(self, prompt, resume):
        run = Run(self.invocation, self.bus, self.model(), prompt, resume, on_session=self.on_session,
                  clock=self.clock)
        self.current = run
        watch = gevent.spawn(self.hang.watch, run, run.hung)
        try:
            return run.wait()
        finally:
            run.over = True
            watch.kill()
            self.current = None
            self.turns += 1

    def info(self):
        run = self.current
        return {"mode": self.mode, "pid": run.proc.pid if run is not None and run.proc is not None else None,
                "turns": self.turns, **self.limits.as_dict()}

    def tick(self, now, ready):
        pass

    def close(self):
        pass


class ProcessGone(Exception):
    pass


class Process:
    """One long-lived claude and its pipes. Its lines go to `on_line`; control answers to whoever asked."""

    def __init__(self, argv, invocation, resume, model, clock):
        self.resumed, self.model, self.clock = resume, model, clock
        self.session_id = None  # what its init lines named
        self.turns = 0
        self.started = clock()
        self.started_unix = time.time()
        self.last_used = self.started
        self.pending = {}  # request_id -> AsyncResult of claude's control_response
        self.exited = gevent.event.AsyncResult()
        self.write_lock = gevent.lock.Semaphore()
        self.proc = subprocess.Popen(argv, cwd=invocation.state_dir, env=invocation.env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=dies_with_harness())
        self.pid = self.proc.pid

    @property
    def conversation(self):
        """The conversation this process goes on with: the one it named, else the one it was started on."""
        return self.session_id or self.resumed

    def alive(self):
        return not self.exited.ready() and self.proc.poll() is None

    def pump(self, on_line, on_stderr):
        gevent.spawn(self._pump_stderr, on_stderr)
        gevent.spawn(self._pump_stdout, on_line)

    def _pump_stdout(self, on_line):
        try:
            for raw in self.proc.stdout:
                text = raw[:LINE_MAX].decode(errors="replace").strip()
                if text:
                    try:
                        on_line(self, text)
                    except Exception:
                        log.exception("reading claude's line failed: %.200s", text)
        finally:
            code = self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):  # now, not when a collector gets to it
                _close(pipe)
            for waiter in self.pending.values():
                waiter.set_exception(ProcessGone(f"claude exited with code {code}"))
            self.exited.set(code)

    def _pump_stderr(self, on_stderr):
        try:
            for raw in self.proc.stderr:
                text = raw.decode(errors="replace").rstrip()
                if text:
                    on_stderr(self, text)
        finally:
            _close(self.proc.stderr)

    def write(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        with self.write_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (OSError, ValueError) as e:  # a broken pipe, or stdin already closed
                raise ProcessGone(f"claude's stdin is closed ({e})") from None

    def control(self, request, timeout=CONTROL_TIMEOUT):
        """Send a control request and wait for its answer: the response dict, or ProcessGone / HiveError."""
        rid = f"hive-{uuid.uuid4().hex[:12]}"
        waiter = self.pending[rid] = gevent.event.AsyncResult()
        try:
            self.write({"type": "control_request", "request_id": rid, "request": request})
            answer = waiter.get(timeout=timeout)
        except gevent.Timeout:
            raise wire.HiveError(f"claude did not answer {request.get('subtype')} within {timeout:g}s",
                                 "unavailable") from None
        finally:
            self.pending.pop(rid, None)
        if answer.get("subtype") != "success":
            raise wire.HiveError(f"claude refused {request.get('subtype')}: {answer.get('error') or answer}")
        return answer

    def answered(self, response):
        waiter = self.pending.get(response.get("request_id"))
        if waiter is not None:
            waiter.set(response)

    def stop(self, grace=STOP_GRACE):
        """Between turns: close stdin (claude exits 0), kill it if it does not."""
        with self.write_lock:
            _close(self.proc.stdin)
        self.kill_after(grace)

    def kill_after(self, grace):
        if not self.exited.wait(grace):
            self.kill()
            self.exited.wait(grace)

    def kill(self):
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass

    def rss(self):
        return rss_bytes(self.pid)


def _close(pipe):
    try:
        pipe.close()
    except OSError as e:  # a pipe whose other end is gone: nothing left to lose
        log.debug("closing claude's pipe: %s", e)


class SessionTurn:
    """One turn on a session process: its Reading, and when it is over."""

    def __init__(self, engine, proc, reading, clock):
        self.engine, self.proc, self.reading, self.clock = engine, proc, reading, clock
        self.done = gevent.event.Event()
        self.last_life = clock()
        self.waiting = 0  # tool approvals the operator has not decided yet
        self.over = False

    def cancel(self):
        """The operator's cancel: interrupt, and if claude does not end the turn, kill it."""
        self.reading.cancelled = True
        self.engine.interrupt(self, CANCEL_GRACE)

    def hung(self):
        self.engine.interrupt(self, HANG_GRACE)


class SessionEngine:
    """One long-lived claude per agent. `permit(turn, request) -> response` answers a can_use_tool request;
    `tell(text)` reaches the operator; `ready()` says whether claude may run now (its login)."""

    mode = "session"

    def __init__(self, invocation, bus, model, session, limits=None, permit=None, tell=None, clock=time.monotonic,
                 on_session=None):
        self.invocation, self.bus, self.model, self.session = invocation, bus, model, session
        self.limits = limits or Limits()
        self.permit = permit or (lambda turn, request: {"behavior": "deny", "message": "no tool approvals here"})
        self.on_session = on_session
        self.clock = clock
        self.hang = _Hang(bus, tell or (lambda text: None), self.limits, clock)
        self.proc = None
        self.turn = None
        self.lock = gevent.lock.RLock()  # a turn, a start, a recycle: one at a time
        self.deaths = 0  # the process died between turns this many times in a row
        self.restart_at = None  # when a process that died between turns starts again
        self.recycled = 0
        self.closed = False

    @property
    def current(self):
        return self.turn

    # -- the process ----------------------------------------------------------------------

    def _start(self, resume):
        model = self.model()
        argv = self.invocation.session_argv(model, resume)
        log.info("starting claude's session process (resume=%s, model %s)", resume, model)
        proc = Process(argv, self.invocation, resume, model, self.clock)
        self.proc = proc
        return proc

    def _on_line(self, proc, text):
        line = None
        if text.startswith("{"):
            try:
                line = json.loads(text)
            except ValueError:
                pass
        kind = line.get("type") if isinstance(line, dict) else None
        if kind == "control_response":
            proc.answered(line.get("response") or {})
            return
        if kind == "control_request":
            gevent.spawn(self._answer, proc, line)
            return
        if kind == "keep_alive":
            return
        turn = self.turn
        if turn is None or turn.proc is not proc:
            # between turns: the replay of a set_model, or what a process said before it died
            log.info("claude between turns: %.300s", text)
            if isinstance(line, dict) and isinstance(line.get("session_id"), str):
                proc.session_id = line["session_id"]
            return
        turn.last_life = self.clock()
        parsed = turn.reading.stdout(self.bus, text, line)
        if isinstance(parsed, dict):
            if isinstance(parsed.get("session_id"), str) and parsed.get("type") in ("system", "result"):
                proc.session_id = parsed["session_id"]
            if parsed.get("type") == "result":
                turn.done.set()

    def _on_stderr(self, proc, text):
        turn = self.turn
        if turn is not None and turn.proc is proc:
            turn.last_life = self.clock()
            turn.reading.stderr(self.bus, text)
        else:
            log.info("claude (stderr, between turns): %s", text)

    def _answer(self, proc, line):
        """A control request from claude: can_use_tool goes to `permit`; anything else is refused."""
        rid, request = line.get("request_id"), line.get("request") or {}
        if request.get("subtype") == "can_use_tool":
            turn = self.turn if self.turn is not None and self.turn.proc is proc else None
            try:
                answer = {"subtype": "success", "request_id": rid, "response": self.permit(turn, request)}
            except Exception as e:
                log.exception("deciding claude's %s call failed", request.get("tool_name"))
                answer = {"subtype": "success", "request_id": rid, "response": {
                    "behavior": "deny", "message": f"the harness could not decide this call: {e}"}}
        else:
            answer = {"subtype": "error", "request_id": rid,
                      "error": f"the hive does not answer {request.get('subtype')!r} requests"}
        try:
            proc.write({"type": "control_response", "response": answer})
        except ProcessGone as e:
            log.warning("could not answer claude's %s: %s", request.get("subtype"), e)

    def _ready(self, resume):
        """The process this turn runs on, (re)started when it is gone or holds another conversation."""
        proc = self.proc
        if proc is not None and not proc.alive():
            self.proc = proc = None
        if proc is not None and proc.conversation != resume:
            why = f"resume conversation {resume}" if resume else "start a fresh conversation"
            self.bus.note(f"starting claude's process again to {why}")
            proc.stop()
            self.proc = proc = None
        model = self.model()
        if proc is not None and proc.model != model:
            try:  # between turns: what claude answers it with is no turn's
                proc.control({"subtype": "set_model", "model": model})
                proc.model = model
                self.bus.note(f"claude runs {model} from this turn on (set on the running process, pid {proc.pid})")
            except (ProcessGone, wire.HiveError) as e:
                self.bus.note(f"claude could not switch to {model} in place ({e}); starting it again on {model}")
                proc.stop()
                self.proc = proc = None
        return proc

    # -- a turn -----------------------------------------------------------------------------

    def run(self, prompt, resume):
        with self.lock:
            return self._run(prompt, resume)

    def _run(self, prompt, resume):
        reading = Reading(prompt, self.on_session, on_refused=lambda: gevent.spawn(self._refused))
        # the turn is the operator's to cancel from its first moment, while its process still starts
        turn = self.turn = SessionTurn(self, None, reading, self.clock)
        try:
            proc = self._ready(resume)
            fresh = proc is None
            if fresh:
                proc = self._start(resume)
        except OSError as e:
            self.turn = None
            why, missing = spawn_failure(self.invocation.claude, e)
            return Outcome("claude_missing", missing) if missing else Outcome("failed", why)
        except BaseException:
            self.turn = None
            raise
        turn.proc = proc  # before the pumps run: a fresh process's first lines are this turn's
        if fresh:
            proc.pump(self._on_line, self._on_stderr)
        if reading.cancelled:  # cancelled before a line was written: nothing ran
            self.turn = None
            return reading.classify(0)
        watch = gevent.spawn(self.hang.watch, turn, turn.hung)
        code = None
        try:
            proc.write({"type": "user", "message": {"role": "user", "content": prompt}})
            gevent.wait([turn.done, proc.exited], count=1)
            code = 0 if turn.done.is_set() else proc.exited.get()
        except ProcessGone:
            if proc.exited.wait(STOP_GRACE):
                code = proc.exited.get()
        finally:
            turn.over = True
            watch.kill()
            self.turn = None
        proc.turns += 1
        proc.last_used = self.clock()
        outcome = reading.classify(-1 if code is None else code)
        if not proc.alive():
            self.proc = None
        elif outcome.ok:
            self.deaths = 0
        self._recycle_if_due(proc)
        return outcome

    def interrupt(self, turn, grace):
        """End a running turn: interrupt it; kill the process if the turn has not ended after `grace`."""
        proc = turn.proc
        if proc is None:
            return  # its process is still starting: the turn sees its cancel before it writes a line
        try:
            proc.control({"subtype": "interrupt"}, timeout=grace)
        except (ProcessGone, wire.HiveError) as e:
            log.warning("interrupt: %s", e)
        if not turn.done.wait(grace) and not proc.exited.ready():
            log.warning("claude did not end the turn %gs after an interrupt; killing it", grace)
            proc.kill()

    def _refused(self):
        turn = self.turn
        if turn is not None:
            self.interrupt(turn, CANCEL_GRACE)

    # -- between turns -------------------------------------------------------------------

    def _recycle_if_due(self, proc):
        if proc is not self.proc or not proc.alive():
            return
        rss = proc.rss()
        why = None
        if proc.turns >= self.limits.recycle_turns:
            why = f"after {proc.turns} turns"
        elif rss is not None and rss > self.limits.recycle_rss_mb * 1024 * 1024:
            why = f"at {rss // (1024 * 1024)} MiB resident, above {self.limits.recycle_rss_mb} MiB"
        if why:
            self._recycle(proc, why)

    def _recycle(self, proc, why):
        resume = self.session.current()
        self.bus.note(f"replacing claude's process {why}; the next one resumes the same conversation")
        log.info("recycling claude's process %d %s", proc.pid, why)
        proc.stop()
        self.proc = None
        self.recycled += 1
        if not self.closed:
            try:
                self._start(resume).pump(self._on_line, self._on_stderr)
            except OSError as e:
                log.warning("claude's session process could not start again: %s", e)

    def tick(self, now, ready):
        """Between turns (called every few seconds): a process that died is started again with backoff, a
        long-idle one is replaced, and the first one starts once `ready()` (claude's login) says so."""
        if self.closed or not self.lock.acquire(blocking=False):
            return
        try:
            proc = self.proc
            if proc is not None and not proc.alive():
                code = proc.exited.get() if proc.exited.ready() else proc.proc.poll()
                self.deaths += 1
                delay = min(RESTART_BACKOFF[0] * 2 ** (self.deaths - 1), RESTART_BACKOFF[1])
                self.bus.note(f"claude's process exited between turns (code {code}); starting it again in "
                              f"{wire.duration(delay)}")
                self.proc, self.restart_at = None, now + delay
            elif proc is not None and now - proc.last_used > self.limits.recycle_idle_seconds:
                self._recycle(proc, f"after {wire.duration(now - proc.last_used)} idle")
            elif proc is None and (self.restart_at is None or now >= self.restart_at) and ready():
                self.restart_at = None
                resume = self.session.current()
                if resume and not self.session.exists(resume):
                    resume = None  # the turn loop says so at its turn; a process is warm either way
                try:
                    self._start(resume).pump(self._on_line, self._on_stderr)
                except OSError as e:
                    self.deaths += 1
                    self.restart_at = now + min(RESTART_BACKOFF[0] * 2 ** (self.deaths - 1), RESTART_BACKOFF[1])
                    log.warning("claude's session process could not start: %s", spawn_failure(
                        self.invocation.claude, e)[0])
        finally:
            self.lock.release()

    def info(self):
        """What the page shows of the process: its pid, age, turns and resident memory."""
        proc = self.proc
        live = proc is not None and proc.alive()
        return {"mode": self.mode, "pid": proc.pid if live else None,
                "started_at": wire.iso(int(proc.started_unix * 1000)) if live else None,
                "turns": proc.turns if live else 0, "rss_bytes": proc.rss() if live else None,
                "recycled": self.recycled, **self.limits.as_dict()}

    def close(self):
        """At the harness's stop, after the running turn ended: the process exits with it."""
        self.closed = True
        with self.lock:
            if self.proc is not None:
                self.proc.stop()
                self.proc = None

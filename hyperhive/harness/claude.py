"""Running `claude` for one turn: the command line, the files it reads, the stdout pump.

Owns the exact invocation (the facts of the real CLI are in DESIGN.md: the
variadic flags swallow a following prompt, so `--allowedTools=a,b` and `--`
before the prompt), the MCP config and settings files written for it, and
the classification of how a turn ended. Every stdout line goes to the bus
as it arrives; stderr lines become notes.

Facts of claude 2.1.197 read here (measured against a mock of the API): the
`system/init` line names the conversation (`session_id`); a key the API
refuses (401/403) is retried ten times over three minutes, each announced by
a `system/api_retry` line with `error_status`, before the result says
"Invalid API key · …" — so the first such line ends the turn as an auth
failure. `/compact` reports on `system/status` lines (`compact_result`
success or failed, `compact_error`) and a `compact_boundary` line; a failed
one still ends `is_error: false` with the error as its text.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import gevent

from hyperhive import files, permissions, resources, states, wire
from hyperhive.harness import mcp, permits, tools

log = logging.getLogger(__name__)

# Claude Code's own tools an agent may use in its state dir.
BUILTIN_TOOLS = ("Bash", "Edit", "Glob", "Grep", "MultiEdit", "NotebookEdit", "Read", "Task",
                 "TodoWrite", "WebFetch", "WebSearch", "Write")
TOO_LONG_MARKERS = ("prompt is too long", "prompt too long", "context length", "context window")
AUTH_STATUSES = (401, 403)
# What a result says when the API refused the login (the key, the token, the OAuth session).
AUTH_MARKERS = ("invalid api key", "invalid x-api-key", "please run /login", "not logged in",
                "oauth token has been revoked", "authentication_error")
COMPACT = "/compact"

# Resolved here, never in a forked child: claude's preexec may only call it.
_PRCTL = mcp.prctl()


def dies_with_harness():
    """A preexec_fn: the child is SIGKILLed when the harness dies, however it dies.

    A claude that outlived its harness would finish the old turn and act as
    the agent while the redelivered turn does the same work again. The
    kernel sends the signal when the *thread* that forked exits, so claude
    must be started from the harness's main thread (every greenlet runs there).
    """
    harness = os.getpid()

    def preexec():
        if _PRCTL is not None:
            _PRCTL(mcp.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != harness:  # it died before the watch was set
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


class Outcome:
    """How a turn ended: kind is one of `states.OUTCOMES`; `session_id` is the conversation claude named, if it said."""

    def __init__(self, kind, reason="", result=None, session_id=None):
        assert kind in states.OUTCOMES, kind
        self.kind, self.reason, self.result, self.session_id = kind, reason, result, session_id

    @property
    def ok(self):
        return self.kind == "ok"

    def __repr__(self):
        return f"Outcome({self.kind!r}, {self.reason!r})"


def load_extra_mcp(path):
    """Extra MCP servers (`{key: {command, args, env, allowedTools}}`), or {} with a logged reason."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            extra = json.load(f)
        if not isinstance(extra, dict):
            raise ValueError("the top level must be an object of server entries")
        for key, entry in extra.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
                raise ValueError(f"server {key!r} needs a \"command\" string")
            if key == "hyperhive":
                raise ValueError("the name 'hyperhive' is taken by the hive's own server")
        return extra
    except (OSError, ValueError) as e:
        log.error("ignoring extra MCP servers in %s: %s", path, e)
        return {}


class Invocation:
    """The files and flags every turn of this agent shares."""

    def __init__(self, claude, role, name, state_dir, socket, extra_mcp=None, python=sys.executable, policy=None,
                 mode="session"):
        self.claude, self.role, self.name, self.state_dir = claude, role, name, state_dir
        self.socket, self.python = socket, python
        self.extra = extra_mcp or {}
        self.policy = policy if policy is not None else permissions.Policy.parse(None)
        self.mode = mode  # the engine's: only a session's calls can wait on the operator
        self.dir = os.path.join(state_dir, ".hyperhive")
        os.makedirs(self.dir, exist_ok=True)
        self.mcp_config = os.path.join(self.dir, "mcp.json")
        self.settings = os.path.join(self.dir, "claude-settings.json")
        self._write(self.mcp_config, json.dumps({"mcpServers": self.servers()}, indent=2))
        self._write(self.settings, resources.text("assets/prompts/claude-settings.json"))
        prompt = resources.text(f"assets/prompts/{'manager' if role == 'manager' else 'agent'}.md")
        self.system_prompt = prompt.replace("{name}", name)
        pronouns = os.environ.get(wire.PRONOUNS_ENV, "").strip()
        if pronouns:
            self.system_prompt += f"\n\nThe operator's pronouns are {pronouns}; refer to the operator with them."

    @staticmethod
    def _write(path, text):
        files.replace(path, text)

    def servers(self):
        ours = {"type": "stdio", "command": self.python, "args": [resources.entry(), self.role, "mcp"],
                "env": {"HIVE_SOCKET": self.socket}}
        extra = {key: {"type": "stdio", "command": e["command"], "args": list(e.get("args") or []),
                       "env": dict(e.get("env") or {})} for key, e in self.extra.items()}
        return {"hyperhive": ours, **extra}

    def default_grants(self):
        """What an agent may use without asking: claude's own tools, the hive's, the extra servers' patterns."""
        granted = list(BUILTIN_TOOLS) + tools.allowed_tools(self.role)
        for key, entry in self.extra.items():
            patterns = entry.get("allowedTools") or []
            granted += [f"mcp__{key}__{p}" for p in patterns] if patterns else [f"mcp__{key}"]
        return granted

    def allowed_tools(self):
        return permits.grants(self.default_grants(), self.policy, self.mode)[0]

    def disallowed_tools(self):
        return permits.grants(self.default_grants(), self.policy, self.mode)[1]

    def _flags(self, model):
        denied = self.disallowed_tools()
        return ["--print", "--output-format", "stream-json", "--verbose", "--model", model,
                "--mcp-config", self.mcp_config, f"--allowedTools={','.join(self.allowed_tools())}",
                *([f"--disallowedTools={','.join(denied)}"] if denied else []),
                "--settings", self.settings, "--append-system-prompt", self.system_prompt]

    def argv(self, model, prompt, resume=None):
        """The command line of one run; `resume` is the session id of the conversation to go on with."""
        argv = [self.claude, *self._flags(model)]
        if resume:
            argv.append(f"--resume={resume}")
        return argv + ["--", prompt]

    def session_argv(self, model, resume=None):
        """The command line of a long-lived session: turns arrive as stream-json user lines on stdin, and the
        tool calls not granted up front come back as can_use_tool control requests."""
        argv = [self.claude, *self._flags(model), "--input-format", "stream-json", "--permission-prompt-tool", "stdio"]
        if resume:
            argv.append(f"--resume={resume}")
        return argv

    def env(self):
        env = dict(os.environ)
        env.update({
            # without it the first request may go out before the MCP tools are connected
            "MCP_CONNECTION_NONBLOCKING": "0",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        })
        return env


class Reading:
    """What the lines of one turn say: how it goes (its conversation, a refused login, a compaction's
    report) and, once it is over, how it ended (`classify`). Both engines read a turn through one.

    `on_session(id)` is called as soon as claude names its conversation, so a
    harness that dies mid-turn still resumes it; `on_refused()` as soon as the
    API refuses the login, so the engine ends the turn instead of letting
    claude retry for minutes."""

    def __init__(self, prompt, on_session=None, on_refused=None):
        self.on_session, self.on_refused = on_session, on_refused
        self.cancelled = False
        self.hung = None  # the watchdog's reason, when it ended the turn
        self.result = None
        self.too_long = False
        self.session_id = None
        self.auth_refused = None  # the API's refusal of the login, from an api_retry line
        self.compacting = prompt.strip() == COMPACT
        self.compact_result, self.compact_error = None, None
        self.tools_running = set()  # tool_use ids with no result yet: a long build is silent, not hung

    def stderr(self, bus, text):
        if any(m in text.lower() for m in TOO_LONG_MARKERS):
            self.too_long = True
        bus.emit("note", text=text, stream="stderr")

    def stdout(self, bus, text, line=None):
        """One stdout line: to the bus as it came, and read. `line` is the text parsed, when the caller did.
        Returns the parsed line (None when not JSON)."""
        if line is None:
            try:
                line = json.loads(text)
            except ValueError:
                line = None
        if not isinstance(line, dict):
            bus.emit("note", text=text, stream="stdout")
            return None
        bus.emit("stream", line=line)
        bus.observe(line)
        self.read(line)
        return line

    def read(self, line):
        """What one stream-json line says about how the run goes."""
        kind, subtype = line.get("type"), line.get("subtype")
        if isinstance(line.get("session_id"), str) and line["session_id"] != self.session_id \
                and kind in ("system", "result"):
            self.session_id = line["session_id"]
            if self.on_session is not None:
                self.on_session(self.session_id)
        if kind in ("assistant", "user"):
            self._tools(kind, line)
        if kind == "result":
            self.result = line
        elif kind == "system" and subtype == "api_retry" and line.get("error_status") in AUTH_STATUSES:
            if self.auth_refused is None:
                self.auth_refused = (f"the API refused claude's login ({line.get('error_status')} "
                                     f"{line.get('error') or 'authentication failed'})")
                log.warning("%s; ending the turn instead of letting claude retry for minutes", self.auth_refused)
                if self.on_refused is not None:
                    self.on_refused()
        elif kind == "system" and subtype == "status" and line.get("compact_result"):
            self.compact_result, self.compact_error = line.get("compact_result"), line.get("compact_error")
        elif kind == "system" and subtype == "compact_boundary":
            self.compact_result = self.compact_result or "success"

    def _tools(self, kind, line):
        content = (line.get("message") or {}).get("content") if isinstance(line.get("message"), dict) else None
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            if kind == "assistant" and block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                self.tools_running.add(block["id"])
            elif kind == "user" and block.get("type") == "tool_result":
                self.tools_running.discard(block.get("tool_use_id"))

    def classify(self, code):
        """How the turn ended, claude's exit status `code` (0 for a session process's turn that said its result)."""
        outcome = self._classify(code)
        outcome.session_id = self.session_id
        return outcome

    def _classify(self, code):
        result = self.result or {}
        text = str(result.get("result") or "")
        if self.cancelled:
            return Outcome("cancelled", "the turn was cancelled", result)
        if self.hung:
            return Outcome("failed", self.hung, result)
        if self.auth_refused or result.get("api_error_status") in AUTH_STATUSES or (
                result.get("is_error") and any(m in text.lower() for m in AUTH_MARKERS)):
            return Outcome("auth_failed", self.auth_refused or f"the API refused claude's login: {text}", result)
        if code == 0 and result and not result.get("is_error"):
            if self.compacting and self.compact_result != "success":
                why = self.compact_error or text or "claude did not say it compacted anything"
                return Outcome("failed", f"compaction failed: {why}", result)
            return Outcome("ok", "", result)  # whatever stderr said on the way
        # The CLI says so in terminal_reason (its subtype stays "success");
        # older ones only in the text, so both are read.
        if (result.get("terminal_reason") == "prompt_too_long" or self.too_long
                or (result.get("is_error") and any(m in text.lower() for m in TOO_LONG_MARKERS))):
            return Outcome("prompt_too_long", text or "the prompt is too long", result)
        if result:
            why = text or result.get("subtype") or "an error"
            return Outcome("failed", f"claude ended the turn with {why} (exit {code})", result)
        return Outcome("failed", f"claude exited with code {code} without a result line", result)


class Run:
    """One claude process for one turn (the spawn engine); `wait()` pumps it to the end and classifies it."""

    def __init__(self, invocation, bus, model, prompt, resume=None, on_session=None, clock=time.monotonic):
        self.bus, self.clock = bus, clock
        self.last_life, self.waiting, self.over = clock(), 0, False  # for the hang watchdog
        self.reading = Reading(prompt, on_session, on_refused=lambda: gevent.spawn(self._stop))
        argv = invocation.argv(model, prompt, resume)
        log.info("turn: %s … (%d chars of prompt, resume=%s)", invocation.claude, len(prompt), resume)
        self.missing = None
        try:
            self.proc = subprocess.Popen(argv, cwd=invocation.state_dir, env=invocation.env(),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, preexec_fn=dies_with_harness())
        except OSError as e:
            self.proc = None
            self.spawn_error, self.missing = spawn_failure(invocation.claude, e)

    def cancel(self):
        """Stop the turn: SIGINT first (claude exits cleanly on it), then SIGKILL."""
        self.reading.cancelled = True
        self._stop()

    def hung(self):
        """The watchdog's: claude said nothing for too long; it is stopped like a cancel, not marked one."""
        self._stop()

    def _stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def _pump(self, stream, read, trim):
        """Each line to `read` as it comes (a stderr line keeps its indent), and the watchdog told of life."""
        for raw in stream:
            self.last_life = self.clock()
            text = trim(raw.decode(errors="replace"))
            if text:
                read(self.bus, text)

    def wait(self):
        if self.proc is None:
            if self.missing:
                return Outcome("claude_missing", self.missing)
            return Outcome("failed", self.spawn_error)
        err = gevent.spawn(self._pump, self.proc.stderr, self.reading.stderr, str.rstrip)
        self._pump(self.proc.stdout, self.reading.stdout, str.strip)
        code = self.proc.wait()
        err.join()
        return self.reading.classify(code)


def spawn_failure(claude, e):
    """(why claude could not be run, and the claude_missing reason when it is not there at all, else None)."""
    why = f"could not run {claude}: {e.strerror or e}"
    if isinstance(e, (FileNotFoundError, NotADirectoryError, PermissionError)):
        return why, f"claude not found at {claude} ({e.strerror or e})"
    return why, None

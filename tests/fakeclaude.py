#!/usr/bin/env python3
"""A fake `claude` CLI for the fast test tiers; standard library only.

Owns: enough of the real CLI's behaviour for the harness to drive it like
the real one -- the same invocation, the MCP handshake with the servers in
--mcp-config, stream-json on stdout, SIGINT to the MCP server on exit -- with
the "model" replaced by directives read from the prompt, one per line:

  FAKE: send <to> <body...>      call mcp__hyperhive__send {to, body: the rest of the line}
  FAKE: recv [max [wait]]        call mcp__hyperhive__recv
  FAKE: whoami                   call mcp__hyperhive__whoami
  FAKE: call <tool> [json]       call mcp__hyperhive__<tool> with these arguments
  FAKE: say <text...>            the final reply text (default: a summary); in a task, the
                                 sub-agent's reply, printed at once
  FAKE: task <type> <desc...>    call the Agent tool (Claude Code's Task): the directives up to
                                 `task-end` are its sub-agent's, their lines carry
                                 `parent_tool_use_id`, framed by the real CLI's `task_started`,
                                 `task_progress` and `task_notification` system lines
  FAKE: task-end [status]        the sub-agent ends (completed, failed or stopped; a task still
                                 open when the prompt ends is completed)
  FAKE: sleep <seconds>          sleep, so a test can kill a turn midway
  FAKE: spawn <seconds>          leave a `sleep <seconds>` running past the turn, as a
                                 Bash tool's `sleep N &` would (its pid: spawned.jsonl)
  FAKE: stderr <text...>         write a line to stderr
  FAKE: fail                     error result, exit 1
  FAKE: fail-once <key>          the same, the first time this key is seen (per cwd)
  FAKE: too-long                 "prompt is too long" result, exit 1 -- unless a
                                 /compact ran since (its marker is consumed)
  FAKE: bash <command...>        call Claude Code's Bash tool: run when --allowedTools grants
                                 Bash, else asked of the harness (can_use_tool, with
                                 --permission-prompt-tool stdio), else denied as the real CLI does
  FAKE: hang <seconds>           say nothing for that long, deaf to interrupts (a hung CLI)
  FAKE: exit <code>              the process dies on the spot, mid-turn
  FAKE: exit-once <key>          the same with code 3, the first time this key is seen (per cwd)
  FAKE: hang-once <key> <secs>   hang, the first time this key is seen (per cwd)

With --input-format stream-json the process lives on: every `user` line on
stdin is a turn (its own init line, the same session id throughout, one
MCP server for the process's life), and stdin also carries control
requests -- `interrupt` ends the running turn with the real CLI's
error_during_execution result (a `sleep` directive wakes for it),
`set_model` changes the model of the next turns (a replayed user line,
then the answer) -- and the answers to the can_use_tool requests the
process sends. Closing stdin ends it with exit 0.

Lines without "FAKE:" are ignored; an unknown directive fails the turn. The
prompt "/compact" succeeds as the real CLI's does (status lines, a
compact_boundary) and leaves the compacted marker -- unless
./.fakeclaude/compact-fails exists: then it fails as the real one does
(`compact_result: failed`, its text the error, yet `is_error: false`) and
the file is consumed.

Conversations are kept like the real CLI keeps them: a transcript per
session id under $HOME/.claude/projects/<cwd, every non-alphanumeric a
'-'>/<id>.jsonl (one line per prompt). `--resume <id>` goes on with one,
and with an id that has no transcript prints the real CLI's error result
("No conversation found with session ID: <id>") and exits 1.

Per-cwd state lives in ./.fakeclaude/: calls.jsonl (one line per
invocation, written before acting), done.jsonl (one line per turn that
ended well, written before its result line, so a harness can only have
acked what is there), session (the newest session id, what --continue
reuses), compacted (the marker), mcp-stderr.log.

With FAKE_CLAUDE_MCP=lazy the MCP server starts only when a directive uses
a tool (the init line says "pending"), so a soak's plain turns stay cheap.

`claude auth status` says logged in (api_key) when ANTHROPIC_API_KEY is set,
else logged in (claude.ai) when a fake login is recorded, else not (exit 1).
`claude auth login` prints the real CLI's lines over pipes (the URL on a
`visit:` line, then the prompt without a newline), reads one code line, and
accepts it when it equals FAKE_CLAUDE_LOGIN_CODE (unset: any `code#state`,
the shape the real CLI checks): then it records the login in
$HOME/.fakeclaude/login.json (the real CLI keeps its credentials under HOME
too) and exits 0; any other code gets the real invalid-code line, exit 1.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

VERSION = "2.1.0 (Claude Code, fake)"
SERVER = "hyperhive"
MCP_TIMEOUT = 300.0  # a recv may long-poll for 180s
BUILTIN_TOOLS = ["Agent", "Bash", "Edit", "Glob", "Grep", "Read", "Write"]
AGENT_TOOL, LEGACY_AGENT_TOOL = "Agent", "Task"  # 2.1.x renamed Task; a grant of Task still grants it
TASK_STATUSES = ("completed", "failed", "stopped")
# flags taking one value / every value up to the next flag (the real CLI's
# variadic flags swallow a following prompt; the harness must write `--`)
VALUE_FLAGS = {"--model", "--output-format", "--input-format", "--settings", "--append-system-prompt",
               "--system-prompt", "--permission-mode", "--resume", "-r", "--session-id",
               "--max-turns", "--fallback-model", "--permission-prompt-tool", "--setting-sources",
               "--agents", "--max-budget-usd"}
VARIADIC_FLAGS = {"--mcp-config", "--allowedTools", "--allowed-tools", "--disallowedTools",
                  "--disallowed-tools", "--add-dir", "--tools", "--betas"}
ALIASES = {"-p": "--print", "-c": "--continue", "--allowed-tools": "--allowedTools"}
LOGGED_ENV = ("MCP_CONNECTION_NONBLOCKING", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
              "ANTHROPIC_BASE_URL")


def too_long_result(session_id):
    """What the real CLI prints when the prompt does not fit the context window."""
    # Another engineer is measuring the real CLI; change only this function.
    return {"type": "result", "subtype": "success", "is_error": True, "duration_ms": 0,
            "num_turns": 1, "result": "Prompt is too long", "session_id": session_id,
            "total_cost_usd": 0, "usage": _usage(0, 0, 0, 0)}, 1


class Fail(Exception):
    """The turn ends with an error result and exit status 1."""


class Interrupted(Exception):
    pass


class NoConversation(Exception):
    """--resume of a session id with no transcript."""


def transcript(session_id):
    """Where the real CLI keeps a conversation of this working dir, under HOME."""
    import re

    project = re.sub(r"[^A-Za-z0-9]", "-", os.getcwd())
    return Path(os.environ.get("HOME") or ".") / ".claude" / "projects" / project / f"{session_id}.jsonl"


# -- argv --------------------------------------------------------------------------------

def parse_argv(argv):
    opts, positional, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=")
        name = ALIASES.get(name, name)
        if name in VARIADIC_FLAGS:
            values = [value] if eq else []
            while not eq and i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            opts.setdefault(name, []).extend(values)
        elif name in VALUE_FLAGS:
            if not eq:
                if i >= len(argv):
                    sys.exit(f"error: option '{name}' argument missing")
                value, i = argv[i], i + 1
            opts[name] = value
        else:
            opts[name] = value if eq else True  # unknown flags take no value
    return opts, positional


def allowed(tool, grants):
    """Whether --allowedTools grants a tool: its name, its server, or a trailing-* pattern."""
    for grant in (g.strip() for entry in grants for g in entry.replace(" ", ",").split(",")):
        if grant and (grant == tool or tool.startswith(grant + "__")
                      or (grant.endswith("*") and tool.startswith(grant[:-1]))):
            return True
    return False


# -- MCP client -----------------------------------------------------------------------------

class McpServer:
    def __init__(self, entry, stderr):
        env = dict(os.environ, **{k: str(v) for k, v in (entry.get("env") or {}).items()})
        self.proc = subprocess.Popen([entry["command"], *entry.get("args", [])], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self.replies, self.next_id = queue.Queue(), 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and "id" in msg and "method" not in msg:
                self.replies.put(msg)
        self.replies.put(None)

    def notify(self, method, params=None):
        self._write({"jsonrpc": "2.0", "method": method, **({"params": params} if params else {})})

    def request(self, method, params, timeout=MCP_TIMEOUT):
        """The reply's result, or raise Fail with the JSON-RPC error as the real CLI words it."""
        self.next_id += 1
        self._write({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Fail(f"MCP server {SERVER!r} did not answer {method} within {timeout:g}s") from None
            if reply is None:
                raise Fail(f"MCP server {SERVER!r} closed its connection")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise Fail(f"MCP error {reply['error'].get('code')}: {reply['error'].get('message')}")
                return reply["result"]

    def _write(self, msg):
        try:
            self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            raise Fail(f"MCP server {SERVER!r} closed its connection") from None

    def close(self):
        """Like the real CLI: SIGINT, then wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def read_mcp_config(values):
    servers = {}
    for value in values:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        servers.update(json.loads(text).get("mcpServers", {}))
    return servers


# -- one turn ---------------------------------------------------------------------------------

def _usage(inp, out, cache_read, cache_create):
    return {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": cache_read,
            "cache_creation_input_tokens": cache_create}


class Turn:
    def __init__(self, opts, prompt, state, stream=None):
        self.opts, self.prompt, self.state, self.stream = opts, prompt, state, stream
        self.model = stream.model if stream else opts.get("--model", "claude-fake")
        self.fmt = opts.get("--output-format", "text")
        self.grants = opts.get("--allowedTools", [])
        self.started = time.monotonic()
        self.session_id = self._session()
        self.mcp, self.tools, self.calls, self.denials = None, [], 0, []
        self.reply = None
        self.task = None  # the sub-agent running now (FAKE: task … task-end)
        self.lazy = None  # the server's entry while FAKE_CLAUDE_MCP=lazy has not started it yet

    def _session(self):
        path = self.state / "session"
        if self.stream and self.stream.session_id:  # a live process goes on with its conversation
            return self.stream.session_id
        resume = self.opts.get("--resume")
        if resume:
            if not transcript(resume).exists():
                raise NoConversation(resume)
            session_id = resume
        elif self.opts.get("--continue") and path.exists():
            session_id = path.read_text().strip()
        else:
            session_id = str(uuid.uuid4())
        path.write_text(session_id)
        return session_id

    def keep(self):
        """Add this turn's prompt to the conversation's transcript, as the real CLI keeps it."""
        kept = transcript(self.session_id)
        kept.parent.mkdir(parents=True, exist_ok=True)
        with open(kept, "a") as f:
            f.write(json.dumps({"type": "user", "prompt": self.prompt, "session_id": self.session_id}) + "\n")

    def history(self):
        """Every prompt of this conversation before this turn (what the model would be sent again)."""
        try:
            with open(transcript(self.session_id)) as f:
                return [json.loads(line)["prompt"] for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def emit(self, obj):
        if self.fmt != "stream-json":
            return
        if self.stream:  # the stdin reader answers control requests on stdout too
            write_line(obj)
        else:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def log_call(self, argv):
        record = {"time": time.time(), "pid": os.getpid(), "cwd": os.getcwd(), "argv": argv,
                  "prompt": self.prompt, "model": self.model, "stream": self.stream is not None,
                  "continue": bool(self.opts.get("--continue")), "resume": self.opts.get("--resume"),
                  "session_id": self.session_id, "history": self.history(),
                  "allowed_tools": self.grants, "mcp_config": self.opts.get("--mcp-config", []),
                  "settings": self.opts.get("--settings"),
                  "append_system_prompt": self.opts.get("--append-system-prompt"),
                  "env": {k: v for k, v in os.environ.items() if k.startswith("HIVE_") or k in LOGGED_ENV}}
        with open(self.state / "calls.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")

    def log_done(self):
        with open(self.state / "done.jsonl", "a") as log:
            log.write(json.dumps({"time": time.time(), "pid": os.getpid(), "prompt": self.prompt}) + "\n")

    def connect(self, servers):
        entry = servers.get(SERVER)
        if self.stream and self.stream.connected:  # the process's server, started by its first turn
            self.mcp, self.tools, self.lazy = self.stream.mcp, self.stream.tools, self.stream.lazy
            status = "connected" if self.mcp else ("pending" if self.lazy else "failed")
        elif entry and os.environ.get("FAKE_CLAUDE_MCP") == "lazy":
            # the soak's many turns: start the server only for a turn that uses a tool
            self.lazy, status = entry, "pending"
        else:
            status = self.start_mcp(entry) if entry else "failed"
        if self.stream:
            self.stream.connected = True
            self.stream.mcp, self.stream.tools, self.stream.lazy = self.mcp, self.tools, self.lazy
        servers = [{"name": SERVER, "status": status}] if entry else []
        self.emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": self.session_id,
                   "tools": BUILTIN_TOOLS + self.tools, "mcp_servers": servers, "model": self.model,
                   "permissionMode": self.opts.get("--permission-mode", "default"),
                   "apiKeySource": "ANTHROPIC_API_KEY" if os.environ.get("ANTHROPIC_API_KEY") else "none",
                   "claude_code_version": VERSION.split()[0], "uuid": str(uuid.uuid4())})

    def start_mcp(self, entry):
        """Start the server and list its tools; returns its status as the init line names it."""
        status = "failed"
        if entry:
            try:
                with open(self.state / "mcp-stderr.log", "ab") as stderr:
                    self.mcp = McpServer(entry, stderr)
                self.mcp.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                "clientInfo": {"name": "claude-code", "version": VERSION}},
                                 timeout=30)
                self.mcp.notify("notifications/initialized")
                listed = self.mcp.request("tools/list", {}, timeout=30)["tools"]
                self.tools = [f"mcp__{SERVER}__{t['name']}" for t in listed]
                status = "connected"
            except (OSError, Fail, KeyError, TypeError) as e:
                print(f"fakeclaude: MCP server {SERVER!r} failed to start: {e}", file=sys.stderr)
        return status

    def whose(self):
        """The fields that tell the session's own lines from a sub-agent's (as 2.1.197 prints them)."""
        if self.task is None:
            return {"parent_tool_use_id": None, "session_id": self.session_id}
        return {"parent_tool_use_id": self.task["id"], "session_id": self.session_id, "uuid": str(uuid.uuid4()),
                "subagent_type": self.task["type"], "task_description": self.task["description"]}

    def assistant(self, content, stop_reason):
        # a sub-agent's inference has a context of its own (its prompt, not the session's)
        usage = _usage(len(self.prompt) // 4 + 10, 10, 0, 0) if self.task is None else _usage(5000, 20, 0, 0)
        self.emit({"type": "assistant", "message": {
            "id": f"msg_fake_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant",
            "model": self.model, "content": content, "stop_reason": stop_reason, "usage": usage},
            **self.whose()})

    def tool_result(self, use_id, content, is_error, **extra):
        self.emit({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use_id, "content": content, "is_error": is_error}]},
            **self.whose(), **extra})

    def system(self, subtype, **fields):
        self.emit({"type": "system", "subtype": subtype, **fields, "uuid": str(uuid.uuid4()),
                   "session_id": self.session_id})

    def task_usage(self):
        return {"total_tokens": 5020 * self.task["inferences"], "tool_uses": self.task["calls"],
                "duration_ms": int((time.monotonic() - self.task["started"]) * 1000)}

    def start_task(self, subagent_type, description):
        """The Agent tool's call and its sub-agent, as the real CLI prints a foreground one."""
        if self.task is not None:
            raise Fail("fakeclaude: a task inside a task is not faked")
        self.calls += 1
        use_id = f"toolu_fake_{self.calls:02d}{uuid.uuid4().hex[:12]}"
        prompt = f"{description} (the sub-agent's prompt)"
        self.assistant([{"type": "tool_use", "id": use_id, "name": AGENT_TOOL, "input": {
            "description": description, "prompt": prompt, "subagent_type": subagent_type}}], "tool_use")
        if not (allowed(AGENT_TOOL, self.grants) or allowed(LEGACY_AGENT_TOOL, self.grants)):
            self.denials.append({"tool_name": AGENT_TOOL, "tool_use_id": use_id, "tool_input": {}})
            self.tool_result(use_id, f"Claude requested permissions to use {AGENT_TOOL}, but you haven't "
                             "granted it yet.", True)
            return
        self.task = {"id": use_id, "task_id": f"a{uuid.uuid4().hex[:16]}", "type": subagent_type,
                     "description": description, "prompt": prompt, "calls": 0, "inferences": 0,
                     "started": time.monotonic(), "text": None}
        self.system("task_started", task_id=self.task["task_id"], tool_use_id=use_id, description=description,
                    subagent_type=subagent_type, task_type="local_agent", prompt=prompt)

    def end_task(self, status="completed"):
        task = self.task
        if task is None:
            raise Fail("fakeclaude: task-end without a task")
        if task["text"] is None:
            task["text"] = f"fake sub-agent done after {task['calls']} tool call(s)"
            self.assistant([{"type": "text", "text": task["text"]}], "end_turn")
            task["inferences"] += 1
        usage = self.task_usage()
        self.task = None
        self.system("task_notification", task_id=task["task_id"], tool_use_id=task["id"], status=status,
                    output_file="", summary=task["description"], usage=usage)
        content = [{"type": "text", "text": task["text"]}]
        self.tool_result(task["id"], content, status != "completed", tool_use_result={
            "status": status, "prompt": task["prompt"], "agentId": task["task_id"], "content": content,
            "totalDurationMs": usage["duration_ms"], "totalTokens": usage["total_tokens"],
            "totalToolUseCount": usage["tool_uses"]})

    def use_tool(self, name, arguments):
        if self.lazy:
            entry, self.lazy = self.lazy, None
            self.start_mcp(entry)
            if self.stream:
                self.stream.mcp, self.stream.tools, self.stream.lazy = self.mcp, self.tools, None
        full = f"mcp__{SERVER}__{name}"
        self.calls += 1
        use_id = f"toolu_fake_{self.calls:02d}{uuid.uuid4().hex[:12]}"
        self.assistant([{"type": "tool_use", "id": use_id, "name": full, "input": arguments}], "tool_use")
        if self.task is not None:  # the real CLI reports a sub-agent's every tool call
            self.task["calls"] += 1
            self.task["inferences"] += 1
            self.system("task_progress", task_id=self.task["task_id"], tool_use_id=self.task["id"],
                        description=self.task["description"], subagent_type=self.task["type"],
                        usage=self.task_usage(), last_tool_name=full)
        # errors the CLI itself raises are plain strings, as the real one prints them
        if full not in self.tools:
            content, is_error = f"<tool_use_error>Error: No such tool available: {full}</tool_use_error>", True
        elif not allowed(full, self.grants):
            content, is_error = (f"Claude requested permissions to use {full}, "
                                 "but you haven't granted it yet."), True
            self.denials.append({"tool_name": full, "tool_use_id": use_id, "tool_input": arguments})
        else:
            try:
                result = self.mcp.request("tools/call", {"name": name, "arguments": arguments})
                content, is_error = result.get("content", []), bool(result.get("isError"))
            except Fail as e:
                content, is_error = str(e), True
        self.tool_result(use_id, content, is_error)

    def run(self):
        """Act on the prompt; returns (result line, exit status)."""
        if self.prompt.strip() == "/compact":
            fails = self.state / "compact-fails"
            self.emit({"type": "system", "subtype": "status", "status": "compacting", "session_id": self.session_id})
            if fails.exists():
                error = f"Error during compaction: {fails.read_text().strip() or 'API Error: 400'}"
                fails.unlink()
                self.emit({"type": "system", "subtype": "status", "status": None, "compact_result": "failed",
                           "compact_error": error, "session_id": self.session_id})
                self.assistant([{"type": "text", "text": error}], "stop_sequence")
                return self.result(error), 0
            (self.state / "compacted").write_text(self.session_id)
            self.emit({"type": "system", "subtype": "status", "status": None, "compact_result": "success",
                       "session_id": self.session_id})
            self.emit({"type": "system", "subtype": "compact_boundary", "session_id": self.session_id,
                       "compact_metadata": {"trigger": "manual", "pre_tokens": 1000}})
            return self.result(""), 0
        try:
            for line in self.prompt.splitlines():
                line = line.strip()
                if self.stream and self.stream.interrupted.is_set():
                    return self.interrupted(), 0
                if line.startswith("FAKE:"):
                    outcome = self.directive(line[len("FAKE:"):])
                    if outcome is not None:
                        return outcome
            if self.task is not None:
                self.end_task()
        except (Fail, ValueError) as e:  # ValueError: a directive's malformed number or JSON
            return self.result(str(e), "error_during_execution"), 1
        if self.stream and self.stream.interrupted.is_set():
            return self.interrupted(), 0
        text = self.reply if self.reply is not None else f"fake reply after {self.calls} tool call(s)"
        self.assistant([{"type": "text", "text": text}], "end_turn")
        return self.result(text), 0

    def interrupted(self):
        """What the real CLI prints when an interrupt ends a turn (2.1.197, measured)."""
        self.emit({"type": "user", "message": {"role": "user", "content": [
            {"type": "text", "text": "[Request interrupted by user]"}]}, **self.whose()})
        return self.result("", "error_during_execution")

    def bash(self, command):
        """Claude Code's Bash tool: granted, asked of the harness, or denied."""
        self.calls += 1
        use_id = f"toolu_fake_{self.calls:02d}{uuid.uuid4().hex[:12]}"
        arguments = {"command": command, "description": "a fake Bash call"}
        self.assistant([{"type": "tool_use", "id": use_id, "name": "Bash", "input": arguments}], "tool_use")
        if allowed("Bash", self.grants):
            verdict = {"behavior": "allow"}
        elif self.stream and self.opts.get("--permission-prompt-tool") == "stdio":
            verdict = self.stream.ask({"subtype": "can_use_tool", "tool_name": "Bash", "display_name": "Bash",
                                       "input": arguments, "tool_use_id": use_id, "description": "a fake Bash call",
                                       "permission_suggestions": []})
        else:
            verdict = {"behavior": "deny", "message": "Claude requested permissions to use Bash, but you haven't "
                                                      "granted it yet."}
            self.denials.append({"tool_name": "Bash", "tool_use_id": use_id, "tool_input": arguments})
        with open(self.state / "bash.jsonl", "a") as log:
            log.write(json.dumps({"command": command, "verdict": verdict, "pid": os.getpid()}) + "\n")
        if verdict.get("behavior") != "allow":
            self.tool_result(use_id, verdict.get("message") or "denied", True)
            return
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
        self.tool_result(use_id, (done.stdout + done.stderr).strip(), done.returncode != 0)

    def directive(self, text):
        verb, _, rest = text.strip().partition(" ")
        rest = rest.strip()
        words = rest.split()
        if verb == "send" and len(words) >= 2:
            to, _, body = rest.partition(" ")
            self.use_tool("send", {"to": to, "body": body.strip()})
        elif verb == "recv" and len(words) <= 2:
            self.use_tool("recv", dict(zip(("max", "wait_seconds"), map(int, words))))
        elif verb == "whoami" and not words:
            self.use_tool("whoami", {})
        elif verb == "call" and words:
            name, _, arguments = rest.partition(" ")
            self.use_tool(name, json.loads(arguments or "{}"))
        elif verb == "say" and self.task is not None:
            self.task["text"] = rest
            self.task["inferences"] += 1
            self.assistant([{"type": "text", "text": rest}], "end_turn")
        elif verb == "say":
            self.reply = rest
        elif verb == "task" and len(words) >= 2:
            self.start_task(words[0], rest.partition(" ")[2].strip())
        elif verb == "task-end" and len(words) <= 1 and (not words or words[0] in TASK_STATUSES):
            self.end_task(*words)
        elif verb == "sleep" and len(words) == 1:
            if self.stream:
                self.stream.interrupted.wait(float(words[0]))  # an interrupt wakes it
            else:
                time.sleep(float(words[0]))
        elif verb == "hang" and len(words) == 1:
            time.sleep(float(words[0]))
        elif verb == "exit" and len(words) == 1:
            sys.stdout.flush()
            os._exit(int(words[0]))
        elif verb in ("exit-once", "hang-once") and len(words) == (1 if verb == "exit-once" else 2):
            marker = self.state / f"{verb}-{words[0]}"
            if not marker.exists():
                marker.write_text("")
                if verb == "hang-once":
                    time.sleep(float(words[1]))
                else:
                    sys.stdout.flush()
                    os._exit(3)
        elif verb == "bash" and words:
            self.bash(rest)
        elif verb == "spawn" and len(words) == 1:
            child = subprocess.Popen(["sleep", str(float(words[0]))], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(self.state / "spawned.jsonl", "a") as log:
                log.write(json.dumps({"pid": child.pid, "time": time.time()}) + "\n")
        elif verb == "stderr":
            print(rest, file=sys.stderr, flush=True)
        elif verb == "fail":
            raise Fail("fake failure requested by the prompt")
        elif verb == "fail-once" and len(words) == 1:
            marker = self.state / f"failed-once-{words[0]}"
            if not marker.exists():
                marker.write_text("")
                raise Fail(f"fake failure requested once for {words[0]}")
        elif verb == "too-long":
            marker = self.state / "compacted"
            if not marker.exists():
                return too_long_result(self.session_id)
            marker.unlink()  # compaction buys room for one retry, as a real context refills
        else:
            raise Fail(f"fakeclaude: unknown directive {text.strip()!r}")
        return None

    def result(self, text, subtype="success"):
        is_error = subtype != "success"
        return {"type": "result", "subtype": subtype, "is_error": is_error,
                "duration_ms": int((time.monotonic() - self.started) * 1000), "duration_api_ms": 0,
                "num_turns": self.calls + 1, "result": text, "session_id": self.session_id,
                "total_cost_usd": 0, "permission_denials": self.denials,
                "usage": _usage(len(self.prompt) // 4 + 10, 10 * (self.calls + 1),
                                1000 if self.opts.get("--continue") else 0,
                                len(self.opts.get("--append-system-prompt") or "") // 4),
                "uuid": str(uuid.uuid4())}

    def close(self):
        if self.mcp and not self.stream:  # a live process keeps its server for its next turns
            self.mcp.close()


# -- a live process (--input-format stream-json) -------------------------------------------------

_OUT = threading.Lock()


def write_line(obj):
    with _OUT:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class Stream:
    """One long-lived process: its conversation, its MCP server, the turns and control requests on stdin."""

    def __init__(self, opts):
        self.opts = opts
        self.model = opts.get("--model", "claude-fake")
        self.session_id = None
        self.connected, self.mcp, self.tools, self.lazy = False, None, [], None
        self.turns = queue.Queue()
        self.interrupted = threading.Event()
        self.running = False
        self.answers = {}  # request_id -> Queue of the harness's control_response

    def read_stdin(self):
        for raw in sys.stdin:
            try:
                line = json.loads(raw)
            except ValueError:
                print(f"fakeclaude: not JSON on stdin: {raw[:200]!r}", file=sys.stderr, flush=True)
                continue
            kind = line.get("type")
            if kind == "user":
                content = (line.get("message") or {}).get("content")
                if isinstance(content, list):
                    content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
                self.turns.put(str(content or ""))
            elif kind == "control_request":
                self.control(line.get("request_id"), line.get("request") or {})
            elif kind == "control_response":
                response = line.get("response") or {}
                waiter = self.answers.get(response.get("request_id"))
                if waiter is not None:
                    waiter.put(response)
        self.turns.put(None)

    def control(self, rid, request):
        subtype = request.get("subtype")
        if subtype == "interrupt":
            if self.running:
                self.interrupted.set()
        elif subtype == "set_model":
            self.model = request.get("model") or self.model
            write_line({"type": "user", "message": {"role": "user", "content":
                        f"<local-command-stdout>Set model to {self.model}</local-command-stdout>"},
                        "session_id": self.session_id, "parent_tool_use_id": None, "isReplay": True})
        else:
            write_line({"type": "control_response", "response": {"subtype": "error", "request_id": rid,
                                                                  "error": f"unknown request {subtype!r}"}})
            return
        write_line({"type": "control_response", "response": {"subtype": "success", "request_id": rid}})

    def ask(self, request):
        """A can_use_tool request to the harness; its verdict ({behavior, message?})."""
        rid = str(uuid.uuid4())
        waiter = self.answers[rid] = queue.Queue()
        write_line({"type": "control_request", "request_id": rid, "request": request})
        try:
            response = waiter.get(timeout=MCP_TIMEOUT)
        except queue.Empty:
            return {"behavior": "deny", "message": "no answer to can_use_tool"}
        finally:
            self.answers.pop(rid, None)
        return response.get("response") or {"behavior": "deny", "message": str(response.get("error"))}

    def serve(self, opts, argv, servers, state):
        """Each user line a turn, until stdin closes."""
        threading.Thread(target=self.read_stdin, daemon=True).start()
        try:
            while True:
                prompt = self.turns.get()
                if prompt is None:
                    return 0
                self.interrupted.clear()
                self.running = True
                try:
                    turn = Turn(opts, prompt, state, stream=self)
                except NoConversation as e:
                    write_line({"type": "result", "subtype": "error_during_execution", "duration_ms": 0,
                                "is_error": True, "num_turns": 0, "session_id": e.args[0], "total_cost_usd": 0,
                                "usage": _usage(0, 0, 0, 0), "permission_denials": [],
                                "errors": [f"No conversation found with session ID: {e.args[0]}"]})
                    return 1
                self.session_id = turn.session_id
                turn.log_call(argv)
                turn.connect(servers)
                result, status = turn.run()
                turn.keep()
                if status == 0 and not result.get("is_error"):
                    turn.log_done()
                self.running = False
                write_line(result)
        finally:
            if self.mcp:
                self.mcp.close()


# -- entry points ---------------------------------------------------------------------------------

LOGIN_URL = ("https://claude.com/cai/oauth/authorize?code=true&client_id=fake-client&response_type=code"
             "&redirect_uri=https%3A%2F%2Fplatform.claude.com%2Foauth%2Fcode%2Fcallback"
             "&scope=user%3Ainference&code_challenge=fake-challenge&code_challenge_method=S256&state=fake-state")
INVALID_CODE = "Invalid code. Please make sure the full code was copied."


def login_record():
    return Path(os.environ.get("HOME") or ".") / ".fakeclaude" / "login.json"


def auth_status():
    if os.environ.get("ANTHROPIC_API_KEY"):
        print(json.dumps({"loggedIn": True, "authMethod": "api_key", "apiProvider": "firstParty"}))
        return 0
    if login_record().exists():
        print(json.dumps({"loggedIn": True, "authMethod": "claude.ai", "apiProvider": "firstParty"}))
        return 0
    print(json.dumps({"loggedIn": False, "authMethod": "none", "apiProvider": "firstParty"}))
    return 1


def auth_login():
    sys.stdout.write("Opening browser to sign in…\n")
    sys.stdout.write(f"If the browser didn't open, visit: {LOGIN_URL}\n")
    sys.stdout.write("Paste code here if prompted > ")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        print("\nLogin interrupted")
        return 1
    code = line.strip()
    wanted = os.environ.get("FAKE_CLAUDE_LOGIN_CODE")
    if wanted:
        good = code == wanted
    else:
        head, hash_sign, state = code.partition("#")
        good = bool(head and hash_sign and state)
    if not good:
        print(INVALID_CODE)
        return 1
    record = login_record()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"authMethod": "claude.ai", "at": time.time()}))
    print("Login successful.")
    return 0


def _interrupted(signum, frame):
    raise Interrupted(signum)


def main(argv):
    opts, positional = parse_argv(argv)
    if positional[:2] == ["auth", "status"]:
        return auth_status()
    if positional[:2] == ["auth", "login"]:
        return auth_login()
    if opts.get("--version") or opts.get("-v"):
        print(VERSION)
        return 0
    if not opts.get("--print"):
        print("fakeclaude: only --print mode is faked", file=sys.stderr)
        return 2
    fmt = opts.get("--output-format", "text")
    if fmt == "stream-json" and not opts.get("--verbose"):
        print("Error: When using --print, --output-format=stream-json requires --verbose", file=sys.stderr)
        return 1
    stream = opts.get("--input-format") == "stream-json"
    if stream and fmt != "stream-json":
        print("Error: --input-format=stream-json requires output-format=stream-json.", file=sys.stderr)
        return 1
    prompt = "" if stream else (" ".join(positional) if positional else
                                ("" if sys.stdin.isatty() else sys.stdin.read()))
    if not stream and not prompt.strip():
        print("Error: Input must be provided either through stdin or as a prompt argument "
              "when using --print", file=sys.stderr)
        return 1
    try:
        servers = read_mcp_config(opts.get("--mcp-config", []))
    except (OSError, ValueError, AttributeError) as e:
        print(f"Error: Invalid MCP configuration: {e}", file=sys.stderr)
        return 1
    state = Path.cwd() / ".fakeclaude"
    state.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    if stream:
        try:
            return Stream(opts).serve(opts, argv, servers, state)
        except Interrupted as e:
            return 128 + e.args[0]
    try:
        turn = Turn(opts, prompt, state)
    except NoConversation as e:  # what claude 2.1.197 prints (measured), and nothing else
        if fmt == "stream-json":
            print(json.dumps({"type": "result", "subtype": "error_during_execution", "duration_ms": 0,
                              "is_error": True, "num_turns": 0, "session_id": e.args[0], "total_cost_usd": 0,
                              "usage": _usage(0, 0, 0, 0), "permission_denials": [],
                              "errors": [f"No conversation found with session ID: {e.args[0]}"]}), flush=True)
        else:
            print(f"No conversation found with session ID: {e.args[0]}", file=sys.stderr)
        return 1
    turn.log_call(argv)
    try:
        turn.connect(servers)
        result, status = turn.run()
        turn.keep()
        if status == 0:
            turn.log_done()
    except Interrupted as e:
        return 128 + e.args[0]
    finally:
        turn.close()
    if fmt == "stream-json":
        turn.emit(result)
    elif fmt == "json":
        print(json.dumps(result))
    else:
        print(result["result"])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The MCP stdio server that claude spawns on every turn.

Owns the tool table the model sees (mcp__hyperhive__send, ...) and turns each
tool call into one request on the container's hive socket. It lives no longer
than the claude that started it: SIGINT or SIGTERM end it, and so does
claude's death (a parent-death signal, and stdin's end), without running
what the dead claude asked last.

Usage:
  hyperhive agent mcp [--socket PATH]
  hyperhive manager mcp [--socket PATH]

Options:
  --socket PATH  The container's hive socket (default: $HIVE_SOCKET).
"""

# claude starts this process on every turn, so it imports only the stdlib,
# the wire leaf and the stdlib-only socket client: no gevent, bottle or peewee.
import json
import os
import signal
import sys
from _thread import allocate_lock  # threading itself is imported at the first tool call

from docopt import DocoptExit, docopt

from hyperhive import __version__, jsonline, wire

SERVER_NAME = "hyperhive"
SERVER_VERSION = __version__
# Newest first: a client asking for one we do not know gets our newest.
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
ROLES = ("agent", "manager")
MANAGER = ("manager",)  # the tools only the manager has
CALL_TIMEOUT = 30.0  # seconds the core gets to answer a tool's request

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603)


# -- the tool table ---------------------------------------------------------------

class Tool:
    """One tool: what the model sees, the wire verb it becomes, how its answer reads.

    Its arguments are the verb's (`wire.VERBS`): their schema, limits and
    meanings are generated from there and checked by `wire.check_args`, so
    each limit is written once. `required` asks the model for arguments the
    verb would let it leave out (a description for the operator, say)."""

    __slots__ = ("name", "description", "verb", "format", "roles", "timeout", "required")

    def __init__(self, name, description, verb, format, roles=ROLES, timeout=lambda args: CALL_TIMEOUT,
                 required=()):
        self.name, self.description, self.verb, self.format = name, description, verb, format
        self.roles, self.timeout, self.required = roles, timeout, required

    def surface(self):
        return "manager" if self.roles == MANAGER else "agent"

    @property
    def input_schema(self):
        return wire.json_schema(self.verb, self.surface(), self.required)

    def listing(self):
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


def _format_sent(answer, args):
    return f"sent to {args['to']} (message id {answer.get('id')})"


def _format_recv(answer, args):
    messages = answer.get("messages") or []
    if not messages:
        return "(empty)"
    if len(messages) == 1:
        return wire.format_message(messages[0])
    return f"popped {len(messages)} messages\n\n" + "\n---\n".join(map(wire.format_message, messages))


def _format_whoami(answer, args):
    keys = ("name", "role", "hyperhive_rev") + (("operator_pronouns",) if answer.get("operator_pronouns") else ())
    return "\n".join(f"{key}: {answer.get(key)}" for key in keys)


def _format_asked(answer, args):
    to = args.get("to") or wire.OPERATOR
    whom = "the operator" if to == wire.OPERATOR else to
    text = (f"question {answer.get('id')} is with {whom}. Its answer arrives later in your inbox as a new "
            "message starting with [question_answered], which wakes you for a new turn: do not wait or poll "
            "for it now; go on with what does not depend on it, or end your turn.")
    if args.get("ttl_seconds"):
        text += f" If nobody answers within {wire.duration(args['ttl_seconds'])}, ttl-watchdog closes it unanswered."
    return text


def _format_answered(answer, args):
    asker = (answer.get("question") or {}).get("asker") or "the asker"
    return f"answered question {args['id']}; {asker} gets your answer in its inbox."


TOOLS = (
    Tool(
        "send",
        "Send a message to another agent by name, to `manager`, or to `operator` (the human "
        "running the hive). It is delivered to their inbox and they see it on their next turn; "
        "any answer arrives later in your own inbox as a new message, not as the result of this "
        "call. Returns the message id.",
        "send", _format_sent),
    Tool(
        "recv",
        "Pop messages from your inbox. The harness already hands you the message that woke you "
        "and says how many more are unread, so use this mid-turn: to read those unread messages "
        "(up to `max` at once) or to wait up to `wait_seconds` for a reply you expect. Answers "
        "\"(empty)\" when nothing is waiting. A message marked redelivered was in a turn that did "
        "not finish and may already be handled.",
        "recv", _format_recv,
        # the core may hold the call for wait_seconds before it answers
        timeout=lambda args: args["wait_seconds"] + CALL_TIMEOUT),
    Tool(
        "whoami",
        "Your own agent name, your role (agent or manager) and the hyperhive revision the hive runs.",
        "whoami", _format_whoami),
    Tool(
        "ask",
        "Ask a question that needs exactly one answer: a decision, an approval in words, a fact you cannot "
        "find out yourself. By default it goes to the operator (the human running the hive, who sees it on the "
        "dashboard); with `to` it goes to another agent or `manager`, who answers with their `answer` tool. "
        "Give `options` when the choices are known. This returns at once with the question's id; the answer "
        "arrives LATER in your inbox as a new message starting with `[question_answered]` (question id, your "
        "question, who answered, the answer), which wakes you for a new turn. Do not wait or poll for it in "
        "this turn: go on with what does not depend on it, or end your turn. With `ttl_seconds`, a question "
        "still open when it runs out is closed by `ttl-watchdog`, whose `[question_answered]` message says "
        "nobody answered in time. For news that needs no answer, use `send`.",
        "ask", _format_asked),
    Tool(
        "answer",
        "Answer a question another agent put to you with its `ask` tool: it reached your inbox as a message "
        "starting with `[question_asked]` that gives the question's id. Your answer goes to the asker's inbox "
        "as a `[question_answered]` message. A question is answered once; questions to the operator are the "
        "operator's alone.",
        "answer", _format_answered),
)


def _format_reminded(answer, args):
    r = answer.get("reminder") or {}
    text = (f"reminder {answer.get('id')} is set for {r.get('due_at')}. It arrives in your inbox then as a message "
            "starting with [reminder], which wakes you; nothing to wait for now.")
    if args.get("file_path"):
        text += f" The message is written to {args['file_path']} now; the reminder points there."
    return text


def _format_loose_ends(answer, args):
    ends = answer.get("loose_ends") or []
    if not ends:
        return "nothing is open: no pending approvals, open questions or reminders."
    lines = []
    for e in ends:
        kind = e.get("loose_end")
        if kind == "question":
            what = f"{e['asker']} asked {e['target']}: {_first_line(e.get('question'))}"
            if e.get("expires_at"):
                what += f" (expires {e['expires_at']})"
        elif kind == "reminder":
            what = f"{e['owner']}'s, due {e['due_at']}: {_first_line(e.get('message'))}"
            if e.get("failed_at"):
                what += f" — FAILED {e['failed_at']}: {e.get('error')}"
        else:
            what = f"{e.get('kind')} of {e.get('agent')}, {e.get('status')}: {_first_line(e.get('description'))}"
        lines.append(f"- {kind} {e.get('id')}: {what}")
    return "\n".join(lines) + "\n(cancel one with cancel_loose_end {kind, id})"


def _first_line(text, limit=120):
    line = (str(text or "").strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _format_cancelled(answer, args):
    return f"{args['kind']} {args['id']} withdrawn."


def _format_status(answer, args):
    text = answer.get("status_text")
    return f"status set: {text}" if text else "status cleared."


TOOLS += (
    Tool(
        "remind",
        "Leave a message for your future self: it is delivered to your own inbox when it comes due, as a new "
        "message starting with `[reminder]`, and wakes you for a turn. Give exactly one of `in_seconds` or "
        "`due_at` (RFC 3339 with a zone, like 2026-01-31T09:00:00Z). For a long payload, give `file_path` (in "
        "your state dir or the shared dir): the message is written there now and the reminder only points to it.",
        "remind", _format_reminded),
    Tool(
        "get_loose_ends",
        "What is still open about you: pending approvals about you, questions you asked that nobody answered "
        "yet, questions put to you that you have not answered, and your reminders that have not fired (or "
        "failed). The manager sees the whole hive's.", "get_loose_ends", _format_loose_ends),
    Tool(
        "cancel_loose_end",
        "Withdraw one of your loose ends: a question you asked (its asker is told it was cancelled), a "
        "reminder before it fires, or (manager only) a pending approval. The manager may withdraw anyone's.",
        "cancel_loose_end", _format_cancelled),
    Tool(
        "set_status",
        "Set your one-line status (what you are doing now), shown to the operator on the dashboard and your "
        "page while you run. An empty text clears it.",
        "set_status", _format_status),
)


def _format_id(what):
    return lambda answer, args: f"{what} (approval {answer.get('id')}); the operator decides. " \
        "The outcome arrives in your inbox as a [helper event]."


def _format_done(verb):
    return lambda answer, args: f"{verb}: {args['name']} done"


def _format_statuses(answer, args):
    rows = answer.get("agent_statuses") or []
    if not rows:
        return "(no agents)"
    lines = []
    for r in rows:
        extra = [f"model {r['active_model']}" if r.get("active_model") else None,
                 f"config {r['deployed_sha']}" if r.get("deployed_sha") else None,
                 "needs update" if r.get("needs_update") else None,
                 "needs login" if r.get("needs_login") else None,
                 (f"{'restarted' if r['running'] else 'being started again'} after {r['restart']['deaths']} "
                  f"death(s) in a row ({r['restart']['reason']})") if r.get("restart") else None,
                 f"status: {r['status_text']}" if r.get("status_text") else None]
        lines.append(f"{r['name']}: {r['state']}" + "".join(f", {e}" for e in extra if e))
    return "\n".join(lines)


TOOLS += (
    Tool(
        "request_apply_commit",
        "Ask the operator to deploy a change to an agent's config. First edit the agent's config repo "
        "(the git repo $HIVE_CONFIG_DIR/<agent>: agent.nix, and hive.json with model, env, "
        "extra_mcp), `git commit` it there, then call this with the commit's sha (7-40 hex chars; never a "
        "branch or tag name). The operator sees your description and the diff; if approved, the hive rebuilds "
        "the agent on that commit.",
        "request_apply_commit", _format_id("queued"), roles=MANAGER, required=("description",)),
    Tool(
        "request_init_config",
        "Step 1 of adding an agent: ask the operator to create its config repos from the template. "
        "Once approved, edit its config if needed and `git commit` it on main in $HIVE_CONFIG_DIR/<name>, "
        "then request_spawn: the agent starts on what you committed.",
        "request_init_config", _format_id("queued"), roles=MANAGER, required=("description",)),
    Tool(
        "request_spawn",
        "Step 2 of adding an agent (after request_init_config was approved): ask the operator to create "
        "and start it. The hive pins the commit main points to in its config repo now (or the commit_ref "
        "you give) and shows the operator the diff against the template; if approved, the agent starts on "
        "exactly that commit. Commit your edits before calling this: a commit made after it is not part "
        "of this spawn (deploy it later with request_apply_commit).",
        "request_spawn", _format_id("queued"), roles=MANAGER, required=("description",)),
    Tool(
        "update",
        "Ask the operator to update the pinned inputs of the hive's meta flake (nixos backend only).",
        "update", _format_id("queued"), roles=MANAGER, required=("description",)),
    Tool("agent_status", "Every agent's state: running/paused/stopped/failed, model, deployed config, status text.", "agent_status", _format_statuses, roles=MANAGER),
) + tuple(
    Tool(verb, text, verb, _format_done(verb), roles=MANAGER,
         timeout=lambda args: 180.0)
    for verb, text in (
        ("start", "Start a stopped or crashed agent on its deployed config."),
        ("stop", "Stop an agent after its running turn ends (not yourself); its messages wait for it."),
        ("restart", "Stop then start an agent on its deployed config, e.g. when it is stuck."),
        ("rebuild", "Re-apply an agent's deployed config and restart it."),
        ("kill", "Kill an agent's harness at once, cutting its turn; prefer stop or restart."),
    ))


def tools_for(role):
    """The tools of one role, by name, in table order."""
    return {tool.name: tool for tool in TOOLS if role in tool.roles}


def allowed_tools(role):
    """The names to grant claude with --allowedTools for this role's MCP server."""
    return [f"mcp__{SERVER_NAME}__{name}" for name in tools_for(role)]


# -- argument checking --------------------------------------------------------------

class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def check_arguments(tool, args):
    """A call's arguments checked as the core will check them (`wire.check_args`), defaults filled in."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, f"{tool.name}: arguments must be an object")
    try:
        return wire.check_args(tool.verb, args, tool.surface(), strict=True)
    except wire.HiveError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None
    finally:
        missing = [name for name in tool.required if name not in args]
        if missing:
            raise RpcError(INVALID_PARAMS, f"{tool.name}: missing argument {missing[0]!r}")


# -- the JSON-RPC server ----------------------------------------------------------------

class Server:
    """Newline-delimited JSON-RPC 2.0: request lines in, one answer line per request out.

    `parent` is the pid of the claude that started us; once it is gone we
    are an orphan, and an orphan acts for nobody: what its dead claude asked
    last is not done (the turn comes again, redelivered, to a new claude).
    """

    def __init__(self, role, socket_path, out_fd, parent=None):
        self.role, self.socket_path, self.out_fd = role, socket_path, out_fd
        self.parent = parent
        self.tools = tools_for(role)
        self.write_lock = allocate_lock()
        self.calls = []
        self.methods = {"initialize": self.initialize, "ping": lambda params: {},
                        "tools/list": self.list_tools, "tools/call": self.call_tool}

    def serve(self, lines):
        for line in lines:
            if self.orphaned():
                return
            if line.strip():
                self.handle(line)
        if self.orphaned():
            return  # stdin ended because claude died: leave its last calls unanswered
        # a client may write its last requests and close stdin at once: answer them
        for call in self.calls:
            call.join()

    def orphaned(self):
        return self.parent is not None and os.getppid() != self.parent

    def handle(self, line):
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError) as e:
            return self.send(None, error=RpcError(PARSE_ERROR, f"the line is not JSON: {e}"))
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
            msg_id = msg.get("id") if isinstance(msg, dict) else None
            return self.send(_valid_id(msg_id), error=RpcError(
                INVALID_REQUEST, "expected one JSON-RPC 2.0 object per line"))
        if "method" not in msg and ("result" in msg or "error" in msg):
            return  # an answer to a request we never make
        if "id" not in msg:
            return  # a notification: none of them needs anything from us
        msg_id, method, params = msg["id"], msg.get("method"), msg.get("params", {})
        if _valid_id(msg_id) is None or not isinstance(method, str):
            return self.send(_valid_id(msg_id), error=RpcError(
                INVALID_REQUEST, "a request needs a string or integer id and a method name"))
        handler = self.methods.get(method)
        if handler is None:
            return self.send(msg_id, error=RpcError(METHOD_NOT_FOUND, f"no method {method!r}"))
        if method == "tools/call":
            # a recv may wait minutes; pings and other calls must not queue behind it
            import threading

            call = threading.Thread(target=self.answer, args=(msg_id, handler, params), daemon=True)
            self.calls = [c for c in self.calls if c.is_alive()] + [call]
            call.start()
        else:
            self.answer(msg_id, handler, params)

    def answer(self, msg_id, handler, params):
        try:
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            self.send(msg_id, result=handler(params))
        except RpcError as e:
            self.send(msg_id, error=e)
        except Exception as e:  # a bug here must not take the whole turn's tools down
            print(f"hyperhive mcp: request {msg_id} failed: {e!r}", file=sys.stderr)
            self.send(msg_id, error=RpcError(INTERNAL_ERROR, f"the hyperhive MCP server failed: {e}"))

    def send(self, msg_id, result=None, error=None):
        reply = {"jsonrpc": "2.0", "id": msg_id}
        if error is not None:
            reply["error"] = {"code": error.code, "message": str(error)}
        else:
            reply["result"] = result
        try:
            data = json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        except UnicodeEncodeError:  # an id or sentence with a lone surrogate: escaped, the line stays UTF-8
            data = json.dumps(reply, separators=(",", ":")).encode() + b"\n"
        with self.write_lock:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.out_fd, view):]
            except OSError:
                pass  # the client is gone; stdin's EOF ends us

    # -- methods --

    def initialize(self, params):
        asked = params.get("protocolVersion")
        return {
            "protocolVersion": asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0],
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": SERVER_NAME, "version": SERVER_VERSION},
        }

    def list_tools(self, params):
        return {"tools": [tool.listing() for tool in self.tools.values()]}

    def call_tool(self, params):
        name = params.get("name")
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            raise RpcError(INVALID_PARAMS, f"unknown tool {name!r}; this server has {', '.join(self.tools)}")
        given = params.get("arguments") or {}
        args = check_arguments(tool, given)
        sent = {k: args[k] for k in given if args.get(k) is not None}  # the core fills in its own defaults
        try:
            answer = jsonline.call(self.socket_path, tool.verb, timeout=tool.timeout(args), **sent)
        except wire.HiveError as e:
            # the model reads this sentence and can act on it, so it is a result, not a protocol error
            return {"content": [{"type": "text", "text": str(e)}], "isError": True}
        text = tool.format(answer, args)
        for warning in answer.get(wire.WARNINGS) or ():  # done, but a step after it failed
            text += f"\n(warning: {warning})"
        return {"content": [{"type": "text", "text": text}], "isError": False}


def _valid_id(msg_id):
    return msg_id if isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool) else None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop(signum=None, frame=None):
    """End the server: the one way to break the blocking read of stdin. Once only: the stop
    signals are ignored from here on, so a second one (claude's SIGINT after its death's SIGHUP)
    cannot land in the cleanup or the interpreter's shutdown and print a traceback."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def prctl():
    """libc's prctl, or None where there is none (not Linux)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _watch_parent(sig):
    """Ask the kernel for `sig` when the claude that started us dies; False where it cannot.

    Without it (no Linux prctl) stdin's EOF still ends us once claude is gone.
    """
    call = prctl()
    return call is not None and call(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _hangup(parent):
    """The parent-death signal's handler: end at once if claude is gone.

    The kernel also sends it when the *thread* that started us exits while
    claude lives on; then our parent is unchanged and it is ignored.
    """
    def handler(signum, frame):
        if os.getppid() != parent:
            _stop()
    return handler


def main(argv):
    try:
        args = docopt(__doc__, argv=argv)
    except DocoptExit as e:
        print(e, file=sys.stderr)
        return 2
    role = "manager" if args["manager"] else "agent"
    socket_path = args["--socket"] or os.environ.get("HIVE_SOCKET")
    if not socket_path:
        print("hyperhive mcp: no hive socket; pass --socket PATH or set HIVE_SOCKET", file=sys.stderr)
        return 2
    out_fd = sys.stdout.fileno()
    # stdout carries the protocol; a stray print anywhere must not corrupt it
    sys.stdout = sys.stderr
    # Our own SIGINT handler, not Python's: a shell starts a background job
    # with SIGINT ignored, and Python keeps an ignored SIGINT as it found it,
    # so claude's SIGINT at the end of a turn would go unheard.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    parent = os.getppid()
    signal.signal(signal.SIGHUP, _hangup(parent))
    _watch_parent(signal.SIGHUP)
    try:
        try:
            server = Server(role, socket_path, out_fd, parent)
            if not server.orphaned():  # claude may have died before the watch was set
                server.serve(sys.stdin.buffer)
        finally:
            # a late signal during the interpreter's shutdown must not print a traceback
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
    except KeyboardInterrupt:
        pass  # claude sends SIGINT when its turn ends, or died: a normal exit either way
    return 0

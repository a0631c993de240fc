"""The MCP stdio server that claude spawns on every turn.

Owns the JSON-RPC 2.0 server over stdio that serves the tool table
(`tools.py`) and turns each tool call into one request on the container's
hive socket, and how this process ends. It lives no longer
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

from hyperhive import __version__, jsonline, verbs, wire
from hyperhive.harness.tools import SERVER_NAME, tools_for

SERVER_VERSION = __version__
# Newest first: a client asking for one we do not know gets our newest.
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603)


# -- argument checking --------------------------------------------------------------

class RpcError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def check_arguments(tool, args):
    """A call's arguments checked as the core will check them (`verbs.check_args`), defaults filled in."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, f"{tool.name}: arguments must be an object")
    try:
        return verbs.check_args(tool.verb, args, tool.surface(), strict=True)
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
        # claude sends SIGINT when its turn ends, or died: a normal exit either way, and at once. The
        # signal may have landed inside stdin's read, with its lock held, or beside a tool call's thread:
        # the interpreter's own shutdown could wait on either for good, so it is skipped
        sys.stderr.flush()
        os._exit(0)
    return 0

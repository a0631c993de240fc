"""Test helpers shared by the MCP and fake-claude tiers.

Owns: a fake core (a stdlib unix-socket server speaking the hive's JSON-line
wire and recording every request), a stdio JSON-RPC client for the MCP
server, and the command that starts that server. Every wait here is on a
condition with a deadline.
"""

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The MCP server is a process claude starts: the built pyz, as the harness names it.
MCP_CMD = [str(REPO / "build" / "runtime" / "bin" / "python"), str(REPO / "hyperhive.pyz")]
WAIT = 10.0  # the deadline of every wait in these tiers


def ok(**payload):
    return {"version": 1, "ok": True, **payload}


def refuse(error, code="bad_argument"):
    return {"version": 1, "ok": False, "error": error, "code": code}


DEFAULT_ANSWERS = {
    "send": ok(id=1),
    "recv": ok(messages=[]),
    "whoami": ok(name="alice", role="agent", hyperhive_rev="0123456789ab"),
}


def short_tmpdir():
    """A fresh directory with a short path: unix socket paths are capped near 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="hh-", dir="/tmp"))


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


class FakeCore:
    """A core socket that records requests and answers from a table.

    `answers` maps a verb to a response dict, or to a callable taking the
    request and returning one (it may block: every connection has a thread).
    `raw` holds each request line exactly as it arrived.
    """

    def __init__(self, path, answers=None):
        self.path = str(path)
        self.answers = dict(DEFAULT_ANSWERS, **(answers or {}))
        self.requests, self.raw = [], []
        self.cond = threading.Condition()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn, conn.makefile("rb") as reader:
            line = reader.readline()
            request = json.loads(line)
            with self.cond:
                self.raw.append(line)
                self.requests.append(request)
                self.cond.notify_all()
            answer = self.answers.get(request.get("cmd"), refuse("unknown verb", "unknown_verb"))
            if callable(answer):
                answer = answer(request)
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                pass  # the client gave up waiting

    def wait_requests(self, count, timeout=WAIT):
        """Wait until at least `count` requests arrived; returns them all."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"expected {count} requests within {timeout}s, got {self.requests}")
            return list(self.requests)

    def stop(self):
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class LineReader:
    """Drain a pipe into a queue on a thread, so a read can have a deadline."""

    def __init__(self, pipe):
        self.lines = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self.thread.start()

    def _pump(self, pipe):
        for line in iter(pipe.readline, b""):
            self.lines.put(line)
        self.lines.put(None)  # EOF

    def read(self, timeout=WAIT):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s") from None

    def rest(self, timeout=WAIT):
        """Everything up to EOF, as one bytes string."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the pipe was not closed within {timeout}s"
        chunks = []
        while True:
            line = self.lines.get_nowait()
            if line is None:
                return b"".join(chunks)
            chunks.append(line)


# claude's stand-in for McpClient(parent=True): starts the server on the same stdio, says its pid
# on stderr, then only waits, so killing it is claude dying mid-turn.
STAND_IN = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
os.write(2, f"{pid}\\n".encode())
while True:
    signal.pause()
"""


class McpClient:
    """The MCP server as a child process, spoken to over its stdio."""

    def __init__(self, socket_path=None, role="agent", extra_args=(), env=None, preexec_fn=None, parent=False):
        """`parent`: start the server under a stand-in for claude (a process that only waits, sharing
        these pipes), so a test can kill its parent while stdin stays open; `pid` is the server's."""
        child_env = {k: v for k, v in os.environ.items() if k != "HIVE_SOCKET"}
        if socket_path is not None:
            child_env["HIVE_SOCKET"] = str(socket_path)
        child_env.update(env or {})
        argv = MCP_CMD + [role, "mcp", *extra_args]
        if parent:
            argv = [sys.executable, "-c", STAND_IN, *argv]
        self.proc = subprocess.Popen(argv, cwd=REPO, env=child_env, preexec_fn=preexec_fn,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout = LineReader(self.proc.stdout)
        self.stderr = LineReader(self.proc.stderr)
        self.pid = int(self.stderr.read()) if parent else self.proc.pid
        self.next_id = 0

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def read(self, timeout=WAIT):
        line = self.stdout.read(timeout)
        assert line is not None, "the MCP server closed stdout"
        assert line.endswith(b"\n") and line.count(b"\n") == 1, line
        return json.loads(line)

    def request(self, method, params=None, timeout=WAIT):
        """Send one request and return its whole response object."""
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        reply = self.read(timeout)
        assert reply["id"] == self.next_id, reply
        return reply

    def initialize(self, version="2025-06-18"):
        reply = self.request("initialize", {"protocolVersion": version, "capabilities": {},
                                            "clientInfo": {"name": "test", "version": "0"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply

    def call(self, name, arguments=None, timeout=WAIT):
        params = {"name": name} if arguments is None else {"name": name, "arguments": arguments}
        return self.request("tools/call", params, timeout)

    def close_stdin(self):
        self.proc.stdin.close()

    def wait(self, timeout=WAIT):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        if self.pid != self.proc.pid:
            try:
                os.kill(self.pid, 9)  # the server under a stand-in, should it outlive it
            except ProcessLookupError:
                pass
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:
                pass


def wait_until(predicate, timeout=WAIT, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.01)

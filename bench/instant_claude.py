#!/usr/bin/env python3
"""The benchmarks' `claude`: the least of the CLI a harness needs, answered at once; stdlib only.

Owns the things a harness asks of claude, with no model and no MCP:

- `claude auth status` says logged in (so a harness boots into its
  long-poll instead of parking for a login).
- A spawned turn (`--print … -- PROMPT`, the harness's `--claude-mode
  spawn`) writes a `system/init` line and a successful `result` line of
  stream-json, then exits 0. Its session id is `instant-<pid>`: not a uuid,
  so the harness keeps none and never resumes.
- A session (`--input-format stream-json`, the harness's default mode)
  stays up and prints nothing until a line comes on stdin. Each `user` line
  is a turn: the same two lines at once, under one uuid session id for the
  process's life (the one of `--resume=<id>` when given). Its transcript
  is created under $HOME/.claude/projects/<cwd>/<id>.jsonl, as the real CLI
  keeps one, so the harness's next turn resumes it on this same process.
  A `control_request` (interrupt, set_model, …) is answered with success at
  once; EOF on stdin ends the process with exit 0.

Each turn appends one JSON line to `.instant-claude.jsonl` in the working
directory (the agent's state dir, where a harness runs claude):
`{"pid", "start", "exit"}` in unix seconds, `"mode": "session"` added for a
session's turns. A spawned turn's `start` is taken before any import but
`time`; a session turn's as soon as its user line was read. `exit` is taken
as soon as the result line is flushed (before the record is written). The
turn benchmark lines these up against the core's send and ack times.
"""

import time

STARTED = time.time()  # first: everything after it is the turn's own cost

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

RECORD = ".instant-claude.jsonl"


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")


def value(argv, flag, default=None):
    """`--flag V` or `--flag=V` before the `--` that starts a spawned turn's prompt."""
    head = argv[:argv.index("--")] if "--" in argv else argv
    for i, arg in enumerate(head):
        if arg == flag and i + 1 < len(head):
            return head[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return default


def answer(session, model):
    """One turn's output: init, then a successful result; returns the time it was flushed."""
    emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": session, "tools": [],
          "mcp_servers": [], "model": model})
    emit({"type": "result", "subtype": "success", "is_error": False, "duration_ms": 0, "num_turns": 1,
          "result": "done", "session_id": session, "total_cost_usd": 0,
          "usage": {"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": 0,
                    "cache_creation_input_tokens": 0}})
    sys.stdout.flush()
    return time.time()


def record(start, flushed, **extra):
    with open(RECORD, "a") as f:  # one short line per write: appends of concurrent turns never interleave
        f.write(json.dumps({"pid": os.getpid(), "start": start, "exit": flushed, **extra}) + "\n")


def turn(argv):
    record(STARTED, answer(f"instant-{os.getpid()}", value(argv, "--model", "haiku")))
    return 0


def new_id():
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def keep_transcript(session):
    """Where the real CLI keeps this conversation (the harness resumes only ids that have one)."""
    cwd = os.getcwd()
    project = "".join(c if c.isascii() and c.isalnum() else "-" for c in cwd)
    folder = os.path.join(os.environ.get("HOME") or cwd, ".claude", "projects", project)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{session}.jsonl"), "a") as f:
        f.write(json.dumps({"type": "summary", "sessionId": session}) + "\n")


def session(argv):
    """A long-lived session: each user line on stdin is one turn, answered at once; exit 0 at EOF."""
    model = value(argv, "--model", "haiku")
    sid = value(argv, "--resume") or new_id()
    kept = False
    stdin = sys.stdin.buffer
    while True:
        raw = stdin.readline()
        start = time.time()
        if not raw:
            return 0
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        kind = line.get("type") if isinstance(line, dict) else None
        if kind == "control_request":
            request = line.get("request") or {}
            if request.get("subtype") == "set_model" and request.get("model"):
                model = request["model"]
            emit({"type": "control_response",
                  "response": {"subtype": "success", "request_id": line.get("request_id")}})
            sys.stdout.flush()
        elif kind == "user":
            if not kept:
                keep_transcript(sid)
                kept = True
            record(start, answer(sid, model), mode="session")


def main(argv):
    if argv[:2] == ["auth", "status"]:
        print(json.dumps({"loggedIn": True, "authMethod": "api_key", "apiProvider": "firstParty"}))
        return 0
    if argv[:1] == ["auth"]:
        print("instant_claude: only `auth status` is faked", file=sys.stderr)
        return 1
    if value(argv, "--input-format") == "stream-json":
        return session(argv)
    return turn(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

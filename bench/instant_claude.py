#!/usr/bin/env python3
"""The benchmarks' `claude`: the least of the CLI a harness needs, answered at once; stdlib only.

Owns the two things a harness asks of claude, with no model and no MCP:
`claude auth status` says logged in (so a harness boots into its
long-poll instead of parking for a login), and a turn (`--print … -- PROMPT`)
writes a `system/init` line and a successful `result` line of stream-json,
then exits 0. Each turn appends one JSON line to `.instant-claude.jsonl` in
its working directory (the agent's state dir, where a harness runs claude):
`{"pid", "start", "exit"}`, unix seconds, `start` taken before any import
but `time` and `exit` after the last output line is flushed — what the turn
benchmark lines up against the core's send and ack times.
"""

import time

STARTED = time.time()  # first: everything after it is the turn's own cost

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

RECORD = ".instant-claude.jsonl"


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")


def turn(argv):
    model = argv[argv.index("--model") + 1] if "--model" in argv[:-1] else "haiku"
    session = f"instant-{os.getpid()}"
    emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": session, "tools": [],
          "mcp_servers": [], "model": model})
    emit({"type": "result", "subtype": "success", "is_error": False, "duration_ms": 0, "num_turns": 1,
          "result": "done", "session_id": session, "total_cost_usd": 0,
          "usage": {"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": 0,
                    "cache_creation_input_tokens": 0}})
    sys.stdout.flush()
    with open(RECORD, "a") as f:  # one short line per write: appends of concurrent turns never interleave
        f.write(json.dumps({"pid": os.getpid(), "start": STARTED, "exit": time.time()}) + "\n")
    return 0


def main(argv):
    if argv[:2] == ["auth", "status"]:
        print(json.dumps({"loggedIn": True, "authMethod": "api_key", "apiProvider": "firstParty"}))
        return 0
    if argv[:1] == ["auth"]:
        print("instant_claude: only `auth status` is faked", file=sys.stderr)
        return 1
    return turn(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

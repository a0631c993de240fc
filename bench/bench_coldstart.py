"""Cold starts of the short-lived roles, each against `python -c pass` on the same interpreter.

Owns two measurements: the MCP server (`hyperhive.pyz agent mcp`, which
claude spawns on every turn) until it answers `initialize`, and one admin CLI
verb (`hyperhive.pyz --socket host.sock list`) until it exits. Subject and
baseline runs alternate so drift of the machine hits both alike; the figure
is the median.
"""

import json
import os
import subprocess
import time

from common import PYTHON, Children, Row, median

INITIALIZE = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "hyperhive-bench", "version": "0"}}}).encode() + b"\n"


def python_pass():
    t0 = time.perf_counter()
    subprocess.run([PYTHON, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def mcp_once(pyz, socket_path):
    env = dict(os.environ, HIVE_SOCKET=socket_path)
    t0 = time.perf_counter()
    proc = Children.popen([PYTHON, pyz, "agent", "mcp"], env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(INITIALIZE)
        proc.stdin.flush()
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        proc.stdin.close()  # EOF on stdin is how the server learns the client is done
        proc.wait(10)
    finally:
        Children.stop(proc)
    try:
        answer = json.loads(line)
    except ValueError:
        raise RuntimeError(f"agent mcp answered {line[:200]!r}; stderr: {proc.stderr.read()[-500:]!r}") from None
    finally:
        proc.stdout.close()
        proc.stderr.close()
    if answer.get("id") != 1 or "result" not in answer:
        raise RuntimeError(f"agent mcp did not answer initialize: {answer}")
    return elapsed


def cli_once(pyz, host):
    t0 = time.perf_counter()
    done = subprocess.run([PYTHON, pyz, "--socket", host, "list"], capture_output=True, timeout=60)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"hyperhive list failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def compare(subject, n):
    ours, base = [], []
    subject()  # warm the page cache for both before timing
    python_pass()
    for _ in range(n):
        ours.append(subject())
        base.append(python_pass())
    return median(ours), median(base)


def run_mcp(pyz, tmp, n):
    # nothing listens there: initialize never touches the socket, only tool calls do
    ours, base = compare(lambda: mcp_once(pyz, os.path.join(tmp, "no-core.sock")), n)
    return [Row(f"MCP cold start to initialize (median, n={n})", ours, base, "s", max_ratio=2.5)]


def run_cli(pyz, host, n):
    ours, base = compare(lambda: cli_once(pyz, host), n)
    return [Row(f"admin CLI `list` to exit (median, n={n})", ours, base, "s", max_ratio=3)]

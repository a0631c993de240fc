"""Run hyperhive's benchmarks and print one table: each figure beside a baseline measured in the same run.

Benchmarks (targets from the issue):
  wake     operator `send` on host.sock -> an agent's parked long-poll `recv`
           answers, on a real core daemon with 50 idle pollers; baseline: a bare
           gevent queue server with as many pollers. Target: <= 1.5x, p99 <= 5 ms.
  broker   Broker.send x N then Broker.pop(r, 1) x N over sqlite, in process;
           baseline: raw sqlite3, same schema and pragmas. Target: >= 0.5x.
  mcp      `hyperhive.pyz agent mcp` from spawn to its `initialize` answer;
           baseline: `python -c pass`. Target: <= 2.5x.
  cli      `hyperhive.pyz --socket host.sock list` to exit, against the core;
           baseline: `python -c pass`. Target: <= 3x.
  fanout   one dashboard event (POST /op-send) until it reached all of 500 open
           /dashboard/stream pages; baseline: a bare bottle/pywsgi SSE fan-out
           with as many subscribers. Target: <= 1.5x.
  state    GET /api/state p99 with 50 agents and 100k messages in the database;
           baseline: a static asset from the same server. Target: <= 50 ms.
  rss      resident memory (VmRSS) of the core daemon and of one harness, idle in
           a hive of 50 agents whose harnesses all run and long-poll, in
           session mode (`--claude-mode session`), each with its live, idle
           claude (bench/instant_claude.py; not counted, its RSS is noted);
           baseline: a bare gevent + bottle + peewee server
           (bench/idle_baseline.py). Target: core <= 3x, harness <= 2x.
  cpu      CPU time of that hive (the core and every harness; the idle claudes
           noted beside it, not counted) over 60 s (10 s with --quick), as
           percent of one core; baseline: the bare server over the same
           window. Target: <= 2 % of one core (absolute: the baseline idles
           near zero, so no ratio is judged).
  turn     a harness's own time around one claude turn (bench/instant_claude.py,
           which answers at once), timed from the core, per claude mode.
           session (that hive): operator send -> claude read the user line,
           and claude's result line -> the turn's ack; baseline: the same
           claude kept running and fed user lines by a plain Python loop
           (line written -> read, result flushed -> read). spawn (a second
           hive of one agent with `--claude-mode spawn`): operator send ->
           claude started, and claude's exit -> the turn's ack; baseline: the
           same claude spawned from a plain Python loop (spawn -> started,
           exit -> reaped). Target, per mode: the sum <= 100 ms at p50.
  session  operator send -> the first Messages API request of the turn it
           wakes, p50 and p95, with the real claude CLI (tests/node) against an
           instant mock API, in a hive with `--claude-mode session` (one
           long-lived claude per agent) and one with `--claude-mode spawn` (a
           claude per turn); baseline: the bare long-lived CLI fed the same
           line on stdin. Target: session p50 <= 1.5x; spawn has none.
  nodes    a hive across hosts, on a throwaway PostgreSQL cluster (tests/pgcluster.py;
           skipped without PostgreSQL's server): operator send -> a parked
           long-poll recv answers, p50 and p95, on one core on PostgreSQL and
           across two cores on one PostgreSQL database (sent on node a, the
           recipient's recv parked on node b, woken by LISTEN/NOTIFY), rounds
           interleaved with the baseline: the same on one core on sqlite.
           Target: cross-node p50 <= 3x. Then Broker.send x N then
           Broker.pop(r, 1) x N on PostgreSQL, gevent-patched with the core's
           wait callback; baseline: raw psycopg2 running the broker's
           statements with the same callback. Target: >= 0.5x. Beside it,
           psycopg2 with that callback against blocking psycopg2, and psycopg 3
           (pip-installed into the temp dir for the run, when pip can) under
           gevent and plain against those, each with how long it stalls the
           gevent hub; no targets.

wake, cli, fanout and state share one hive whose harnesses are killed (the
benchmark must be the only reader of the agents' queues); rss, cpu and turn
share a second one, started after it, whose harnesses all stay up in session
mode with bench/instant_claude.py as their claude; turn starts its spawn-mode
hive of one agent beside it. (A pyz without `--claude-mode` runs its only
mode, the per-turn spawn, in that second hive, and turn has spawn rows only.)
nodes starts its cluster and four cores of a few agents each after those (the
agents' harnesses killed, as for wake), and stops them. session starts a hive
of one agent per claude mode, last, and is skipped when the CLI is not
installed.

Everything runs on unix sockets in a temp dir that is removed afterwards;
every child process is stopped, also on Ctrl-C. Exit status: 0 when every
benchmark ran, 1 when one failed to run, 2 with --strict and a missed target.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_broker  # noqa: E402
import bench_coldstart  # noqa: E402
import bench_dashboard  # noqa: E402
import bench_idle  # noqa: E402
import bench_nodes  # noqa: E402
import bench_session  # noqa: E402
import bench_turn  # noqa: E402
import bench_wake  # noqa: E402
from common import Children, Core, ensure_pyz, instant_claude, modes_of, on_sigterm_raise, rmtree, table  # noqa: E402

ALL = ("wake", "broker", "mcp", "cli", "fanout", "state", "rss", "cpu", "turn", "nodes", "session")
LIVE = ("rss", "cpu", "turn")  # the benchmarks of the hive whose harnesses stay up
# (wake rounds, broker messages, cold-start runs, fan-out rounds, state requests, idle CPU window in
# seconds, turns, real-CLI rounds): --quick keeps the whole run well under two minutes. nodes takes
# the wake rounds and the broker messages.
SIZES = {"full": (2000, 5000, 21, 50, 500, 60, 200, 30), "quick": (200, 500, 5, 10, 100, 10, 30, 10)}
BOOT_TIMEOUT = 300  # 50 harnesses starting at once on a small machine


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer iterations (CI smoke; < 2 min in all)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    p.add_argument("--only", metavar="NAMES", default=",".join(ALL),
                   help=f"comma-separated subset of: {', '.join(ALL)} (default: all)")
    p.add_argument("--agents", type=int, default=50, metavar="N",
                   help="agents of each hive: idle long-pollers for wake, live harnesses for rss/cpu/turn (default 50)")
    p.add_argument("--subscribers", type=int, default=500, metavar="N",
                   help="open dashboard streams for fanout (default 500)")
    p.add_argument("--pyz", metavar="PATH", help="benchmark this pyz as it is (default: the checkout's, built if missing, rebuilt into the temp dir if stale)")
    p.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    args = p.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(args.only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(ALL)}")
    return args


def raise_fd_limit(wanted):
    """500 streams need more descriptors than a shell's default 1024 (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def main(argv):
    args = parse_args(argv)
    on_sigterm_raise()
    rounds, messages, runs, fanouts, requests, window, turns, cli_rounds = SIZES["quick" if args.quick else "full"]
    raise_fd_limit(4 * args.subscribers + 256)
    tmp = tempfile.mkdtemp(prefix="hyperhive-bench-")
    rows, failures, skipped = [], [], []
    started = time.monotonic()

    def attempt(name, fn):
        print(f"· {name} …", file=sys.stderr, flush=True)
        try:
            rows.extend(fn())
        except Exception as e:  # one broken benchmark must not hide the others' figures
            failures.append(f"{name}: {e}")
            traceback.print_exc()

    try:
        pyz, note = ensure_pyz(tmp, args.pyz)
        if note:
            print(f"· {note}", file=sys.stderr)
        if "broker" in args.only:
            attempt("broker", lambda: bench_broker.run(tmp, messages))
        if "mcp" in args.only:
            attempt("mcp", lambda: bench_coldstart.run_mcp(pyz, tmp, runs))
        if {"wake", "cli", "fanout", "state"} & set(args.only):
            print(f"· starting a core with {args.agents} agents …", file=sys.stderr, flush=True)
            with Core(tmp, pyz, args.agents) as core:
                if "wake" in args.only:
                    attempt("wake", lambda: bench_wake.run(core, tmp, rounds))
                if "cli" in args.only:
                    attempt("cli", lambda: bench_coldstart.run_cli(pyz, core.host, runs))
                if "fanout" in args.only:
                    attempt("fanout", lambda: bench_dashboard.run_fanout(core, args.subscribers, fanouts))
                if "state" in args.only:  # last: it fills the database with 100k messages
                    attempt("state", lambda: bench_dashboard.run_state(core, requests))
        live = [name for name in LIVE if name in args.only]
        if live:
            print(f"· starting a hive of {args.agents} agents with live harnesses …", file=sys.stderr, flush=True)
            claude = instant_claude(tmp)
            mode = "session" if "session" in modes_of(pyz) else None
            try:
                with Core(tmp, pyz, args.agents, keep_harnesses=True, claude=claude, label="live",
                          claude_mode=mode) as hive:
                    hive.wait_serving(BOOT_TIMEOUT)
                    if "rss" in live:  # first: before any turn has grown a harness
                        attempt("rss", lambda: bench_idle.run_rss(hive, tmp))
                    if "cpu" in live:
                        attempt("cpu", lambda: bench_idle.run_cpu(hive, tmp, window))
                    if "turn" in live:
                        attempt("turn", lambda: bench_turn.run(hive, tmp, claude, turns, pyz, mode))
            except Exception as e:  # a hive that never came up must not hide the figures above
                failures.append(f"{', '.join(live)}: the live hive: {e}")
                traceback.print_exc()
        if "nodes" in args.only:  # after the hives above: its cores would disturb their figures
            why = bench_nodes.missing()
            if why:
                skipped.append(f"nodes: {why}")
            else:
                attempt("nodes", lambda: bench_nodes.run(tmp, pyz, rounds, messages))
        if "session" in args.only:  # last: its hives run the real CLI, which would disturb the figures above
            why = bench_session.missing()
            if why:
                skipped.append(f"session: {why}")
            else:
                attempt("session", lambda: bench_session.run(tmp, pyz, cli_rounds))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping children", file=sys.stderr)
        return 130
    finally:
        Children.stop_all()
        rmtree(tmp)

    print(table(rows))
    for failure in failures:
        print(f"FAILED {failure}")
    for skip in skipped:
        print(f"SKIPPED {skip}")
    print(f"({'quick' if args.quick else 'full'} run, {time.monotonic() - started:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "quick" if args.quick else "full", "rows": [r.as_dict() for r in rows],
                       "failures": failures, "skipped": skipped}, f, indent=2)
    if failures:
        return 1
    return 2 if args.strict and not all(r.met for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

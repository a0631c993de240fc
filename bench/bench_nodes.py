"""A hive across hosts (issue 17): cross-node wake latency, and the broker's throughput on PostgreSQL.

Owns the run's throwaway PostgreSQL cluster (tests/pgcluster.py's `Cluster`:
unprivileged, fsync off, on 127.0.0.1), the hives it starts on it, and the
throwaway copy of psycopg 3 it measures beside psycopg2 (installed with pip
into the run's temp dir, seen only by pg_worker.py; never a requirement).

wake: operator `send` on a host socket → the recipient's parked long-poll
`recv` answers (bench_wake's Target: a raw recv parked on each agent socket,
the agents' harnesses killed so the benchmark is their queues' only reader),
on three hives up side by side, rounds interleaved:

  sqlite       one core on sqlite, same node: the baseline
  postgresql   one core on a PostgreSQL database of its own, same node
  cross-node   two cores (nodes a and b) on one PostgreSQL database: sent on
               a's host socket to an agent of b, its recv parked on b's agent
               socket; b hears of the message through LISTEN/NOTIFY (the
               message table's trigger, channel hive_message)

  Target: cross-node p50 <= 3x same-node sqlite. The note says how long the
  send itself took to be answered on each, which a wake need not wait for.

throughput: N sends then N single-message pops (pg_worker.py, one process per
form, fresh database per block, blocks interleaved): hyperhive's Broker on
schema.open_core, gevent-patched with hyperhive.postgres's wait callback, as
the core runs it; against raw psycopg2 running the broker's own INSERT …
RETURNING id and UPDATE … FOR UPDATE SKIP LOCKED statements with the same
callback (target: >= 0.5x, the sqlite broker's), that against psycopg2 with
no callback (blocking), and psycopg 3 under gevent and plain against those,
when pip could install it. Each form also shows how long the gevent hub
stalls while it runs a 100 ms query: the issue asks which driver does not
block the hub.
"""

import contextlib
import json
import os
import select
import subprocess
import sys
import time

from bench_wake import Target
from common import BENCH, PYTHON, ROOT, Children, Core, Row, call, instant_claude, median, percentile

sys.path.append(os.path.join(ROOT, "tests"))  # appended: nothing of the tests shadows a module of ours
import pgcluster  # noqa: E402

AGENTS = 4  # pollers per hive; rounds go round them
WARMUP = 3  # rounds per poller before the timed ones: first statements, caches, plans
GAP = 0.002  # an idle hive between sends: we time a wake, not a burst
MAX_CROSS = 3.0
BLOCKS = 3  # interleaved blocks per form; the figure is the median block
MIN_BROKER = 0.5  # the sqlite broker's target against its raw driver
PIP_SECONDS = 180
WORKER_SECONDS = 600  # one request to a worker: a block of the full size takes seconds
WAKES = ("sqlite", "postgresql", "cross-node")


def missing():
    """Why this benchmark cannot run here (None when it can)."""
    return pgcluster.missing()


def run(tmp, pyz, rounds, messages, agents=AGENTS):
    """Rows of both halves, on one cluster started here and closed (with every hive on it) however it ends."""
    why = missing()
    if why:
        raise RuntimeError(why)
    site, skipped = install_psycopg3(tmp)
    cluster = pgcluster.Cluster()
    try:
        cluster.start()
        return wake(tmp, pyz, cluster, rounds, agents) + throughput(cluster, messages, site, skipped)
    finally:
        cluster.close()


# -- wake latency ----------------------------------------------------------------------------------

def on(url, node):
    return ["--database", url, "--node", node]


def wake(tmp, pyz, cluster, rounds, agents):
    claude = instant_claude(tmp)  # the manager's harness stays up: let it idle in its long-poll
    solo = cluster.url(cluster.create_database("nodes_solo"))
    shared = cluster.url(cluster.create_database("nodes_shared"))
    times = {key: [] for key in WAKES}
    answered = {key: [] for key in WAKES}
    with contextlib.ExitStack() as hives:
        start = lambda *a, **kw: hives.enter_context(Core(tmp, pyz, *a, claude=claude, **kw))
        sqlite = start(agents, label="nodes-sqlite")
        pg = start(agents, label="nodes-pg", extra_args=on(solo, "solo"))
        a = start(0, label="nodes-a", extra_args=on(shared, "a"))
        b = start(agents, label="nodes-b", extra_args=on(shared, "b"))
        nodes = {r["name"]: r["node"] for r in call(a.host, "agent_status", timeout=30)["agent_statuses"]}
        if any(nodes.get(name) != "b" for name in b.names):
            raise RuntimeError(f"node a sees the recipients on other nodes than b: {nodes}")
        targets = {
            "sqlite": Target(sqlite.host, [sqlite.socket(n) for n in sqlite.names]),
            "postgresql": Target(pg.host, [pg.socket(n) for n in pg.names]),
            "cross-node": Target(a.host, [b.socket(n) for n in b.names]),
        }
        try:
            for t in targets.values():
                t.arm()
            warm = WARMUP * agents
            for i in range(warm + rounds):
                k = i % agents
                for key, t in targets.items():
                    elapsed = t.round(k, b.names[k], f"wake-{key}-{i}")
                    if i >= warm:
                        times[key].append(elapsed)
                        answered[key].append(t.answered)
                    time.sleep(GAP)
        finally:
            for t in targets.values():
                t.close()
    p = {key: (percentile(v, 50), percentile(v, 95)) for key, v in times.items()}
    ms = lambda s: f"{s * 1000:.2f} ms"
    note = ("baseline: same-node sqlite; the send itself was answered after (p50) "
            + ", ".join(f"{key} {ms(percentile(answered[key], 50))}" for key in WAKES)
            + "; worst wake: " + ", ".join(f"{key} {ms(max(times[key]))}" for key in WAKES))
    label = f"wake {{}} {{}} ({agents} pollers each, n={rounds})"
    return [
        Row(label.format("same-node postgresql", "p50"), p["postgresql"][0], p["sqlite"][0], "s"),
        Row(label.format("same-node postgresql", "p95"), p["postgresql"][1], p["sqlite"][1], "s"),
        Row(label.format("cross-node a→b", "p50"), p["cross-node"][0], p["sqlite"][0], "s", max_ratio=MAX_CROSS),
        Row(label.format("cross-node a→b", "p95"), p["cross-node"][1], p["sqlite"][1], "s", note=note),
    ]


# -- throughput ------------------------------------------------------------------------------------

def install_psycopg3(tmp):
    """(a directory holding psycopg 3 for this run only, "") or (None, the sentence why not)."""
    site = os.path.join(tmp, "psycopg3")
    argv = [PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", site,
            "psycopg[binary]"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_SECONDS, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"psycopg 3 not measured: pip did not install psycopg[binary] within {PIP_SECONDS} s"
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if "is ignored" not in line][-3:]
        return None, (f"psycopg 3 not measured: `pip install psycopg[binary]` failed ({done.returncode}): "
                      + " / ".join(tail))
    return site, ""


class Worker:
    """One pg_worker.py process: a form of talking to PostgreSQL, asked one JSON line at a time."""

    def __init__(self, form, site=None):
        self.form = form
        argv = [PYTHON, os.path.join(BENCH, "pg_worker.py"), form] + ([site] if site else [])
        self.proc = Children.popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = self._read(60)["ready"]

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self._read(WORKER_SECONDS)
        if "error" in answer:
            raise RuntimeError(f"the {self.form} worker, asked {request['op']}: {answer['error']}")
        return answer

    def _read(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            code = self.proc.poll()
            raise RuntimeError(f"the {self.form} worker did not answer within {timeout} s"
                               + (f" (it exited with {code})" if code is not None else ""))
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        Children.stop(self.proc)


def throughput(cluster, n, site, skipped):
    forms = ["broker", "psycopg2-green", "psycopg2"] + (["psycopg3-green", "psycopg3"] if site else [])
    rates = {form: [] for form in forms}
    workers = {}
    try:
        for form in forms:
            workers[form] = Worker(form, site if form.startswith("psycopg3") else None)
        broker = workers["broker"]
        statements = None
        for b in range(BLOCKS):
            for form in forms:
                db = cluster.create_database(f"tp_{b}_{form.replace('-', '_')}")  # each block: an empty queue
                url = cluster.url(db)
                made = broker.ask(op="schema", url=url)  # the broker's own tables, indexes and trigger
                statements = statements or {"insert": made["insert"], "pop": made["pop"]}
                rates[form].append(workers[form].ask(op="run", url=url, n=n, **statements)["rate"])
                cluster.drop_database(db)
        stall = {form: workers[form].ask(op="stall", url=cluster.url("postgres"))["stall"] for form in forms}
    finally:
        for worker in workers.values():
            worker.close()
    fig = {form: median(r) for form, r in rates.items()}
    ms = lambda s: f"{s * 1000:.1f} ms"
    stalls = ("the hub's longest stall while each ran a 100 ms query: "
              + ", ".join(f"{form} {ms(stall[form])}" for form in forms))
    versions = "; ".join(f"{form}: {workers[form].version}" for form in forms if form.endswith("-green"))
    size = f"(n={n}×{BLOCKS})"
    rows = [
        Row(f"postgresql broker send+pop vs raw psycopg2, both with the wait callback {size}", fig["broker"],
            fig["psycopg2-green"], "msg/s", min_ratio=MIN_BROKER,
            note="the raw driver runs the broker's own statements, one autocommitted statement each; " + versions),
        Row(f"postgresql raw psycopg2: with the gevent wait callback vs blocking {size}", fig["psycopg2-green"],
            fig["psycopg2"], "msg/s", note=stalls + (f"; {skipped}" if skipped else "")),
    ]
    if site:
        rows += [
            Row(f"postgresql raw psycopg 3 under gevent vs psycopg2 with the wait callback {size}",
                fig["psycopg3-green"], fig["psycopg2-green"], "msg/s"),
            Row(f"postgresql raw psycopg 3 vs psycopg2, both blocking {size}", fig["psycopg3"], fig["psycopg2"],
                "msg/s"),
        ]
    return rows

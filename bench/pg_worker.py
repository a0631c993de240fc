"""A worker of the PostgreSQL throughput benchmark (bench_nodes.py): one driver, in one form, in a process of its own.

usage: pg_worker.py FORM [SITE]

FORM is how the process talks to PostgreSQL:
  broker          hyperhive's Broker on schema.open_core(url), gevent-patched, psycopg2 waiting through
                  hyperhive.postgres's wait callback: the core's own way
  psycopg2-green  raw psycopg2, gevent-patched, with that same wait callback
  psycopg2        raw psycopg2, no gevent patch and no callback: every statement blocks the process
  psycopg3-green  raw psycopg 3, gevent-patched (psycopg >= 3.1.14 then waits through the patched select)
  psycopg3        raw psycopg 3 in a plain process (its C wait function)
SITE is a directory appended to sys.path (where the benchmark installed psycopg 3 for this run only).

Reads one JSON request a line on stdin and answers one JSON line on stdout:
  {"op": "schema", "url"}   (broker only) make the hive's tables, indexes and triggers as the core does;
                            answers the broker's insert and pop statements as PostgreSQL gets them
  {"op": "run", "url", "n", "insert", "pop"}
                            n sends then n single-message pops to one recipient; answers msgs/s (n over
                            the whole time). The raw forms run the statements given, one autocommitted
                            statement each, as the broker does.
  {"op": "stall", "url"}    the longest the gevent hub went without running a 1 ms ticker greenlet while
                            this form ran `SELECT pg_sleep(0.1)`: ~1 ms when the driver yields, ~100 ms
                            when it blocks the hub
"""

import json
import sys
import time

FORMS = ("broker", "psycopg2-green", "psycopg2", "psycopg3-green", "psycopg3")
SLEEP = 0.1  # the query the stall check runs beside its ticker


def now_ms():
    return int(time.time() * 1000)


class Broker:
    def __init__(self):
        from hyperhive.core.broker import Broker as Inner

        class NullHub:
            def publish(self, kind, **data):
                pass

        self.broker = Inner(NullHub())
        self.db = None

    def _open(self, url):
        from hyperhive.schema import open_core

        if self.db is not None:
            self.db.close()
        self.db = open_core(url)

    def schema(self, url):
        from hyperhive.core.broker import _INSERT_PG, _POP_PG
        from hyperhive.schema import sql

        self._open(url)
        statements = {"insert": sql(_INSERT_PG), "pop": sql(_POP_PG)}
        self.db.close()
        self.db = None
        return statements

    def run(self, url, n, **_):
        self._open(url)
        try:
            t0 = time.perf_counter()
            for i in range(n):
                self.broker.send("operator", "alice", f"message {i}")
            for i in range(n):
                if len(self.broker.pop("alice", 1)) != 1:
                    raise RuntimeError("the broker popped nothing from a queue that has messages")
            return n / (time.perf_counter() - t0)
        finally:
            self.db.close()
            self.db = None

    def stall(self, url):
        from hyperhive.schema import core_db

        self._open(url)
        try:
            return longest_stall(lambda: core_db.execute_sql("SELECT pg_sleep(%s)", (SLEEP,)).fetchall())
        finally:
            self.db.close()
            self.db = None


class Raw:
    def __init__(self, connect):
        self.connect = connect

    def run(self, url, n, insert, pop):
        conn = self.connect(url)
        try:
            cur = conn.cursor()
            t0 = time.perf_counter()
            for i in range(n):
                cur.execute(insert, ("operator", "alice", f"message {i}", now_ms(), None, None, "[]"))
                cur.fetchone()
            for i in range(n):
                cur.execute(pop, (now_ms(), "alice", 1, "alice"))
                if len(cur.fetchall()) != 1:
                    raise RuntimeError("the raw pop found nothing in a queue that has messages")
            return n / (time.perf_counter() - t0)
        finally:
            conn.close()

    def stall(self, url):
        conn = self.connect(url)
        try:
            cur = conn.cursor()
            return longest_stall(lambda: (cur.execute("SELECT pg_sleep(%s)", (SLEEP,)), cur.fetchall()))
        finally:
            conn.close()


def longest_stall(query):
    """Seconds of the longest gap between two ticks of a greenlet that sleeps 1 ms, while `query()` runs."""
    import gevent

    gaps, last, done = [], [time.perf_counter()], []

    def ticker():
        while not done:
            gevent.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

    g = gevent.spawn(ticker)
    gevent.sleep(0.005)  # the ticker runs before the query starts
    query()
    gevent.sleep(0.005)  # and ticks once more after it, so a gap spanning the query is counted
    done.append(True)
    g.join()
    return max(gaps)


def psycopg2_connect(url):
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def psycopg3_connect(url):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def make(form):
    """The worker for a form; patches gevent first where the form is green (before any driver is imported)."""
    if form.endswith("-green") or form == "broker":
        from gevent import monkey

        monkey.patch_all()
    if form == "broker":
        return Broker()
    if form.startswith("psycopg2"):
        if form.endswith("-green"):
            from hyperhive import postgres

            postgres.green()
        return Raw(psycopg2_connect)
    import psycopg  # noqa: F401 - imported before gevent: the plain form must pick the C wait function

    return Raw(psycopg3_connect)


def version(form):
    if form.startswith("psycopg3"):
        import psycopg

        return f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__})"
    import psycopg2

    return f"psycopg2 {psycopg2.__version__.split()[0]}"


def main(argv):
    form = argv[0]
    if form not in FORMS:
        raise SystemExit(f"pg_worker.py: unknown form {form!r}; known: {', '.join(FORMS)}")
    if len(argv) > 1:
        sys.path.append(argv[1])
    worker = make(form)
    print(json.dumps({"ready": version(form)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "schema":
                answer = worker.schema(req["url"])
            elif req["op"] == "run":
                answer = {"rate": worker.run(req["url"], req["n"], insert=req.get("insert"), pop=req.get("pop"))}
            elif req["op"] == "stall":
                answer = {"stall": worker.stall(req["url"])}
            else:
                raise ValueError(f"unknown op {req['op']!r}")
        except Exception as e:  # the benchmark raises it with the form's name
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # hyperhive from the checkout
    main(sys.argv[1:])

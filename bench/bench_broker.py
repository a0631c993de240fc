"""Broker throughput: N sends then N single-message pops through hyperhive.core.broker.Broker, in process.

Owns the comparison with raw sqlite3 doing the same rows in the same file
layout: the baseline's database is created by the same `open_core` (same
tables, same partial indexes), opened with the same pragmas, and does one
transaction per send and per pop like the broker. Runs alternate in blocks
so drift of the machine hits both alike.
"""

import os
import sqlite3
import time

from common import Row, median

BLOCKS = 3  # alternating (broker, raw) blocks; the figure is the median block


class NullHub:
    def publish(self, kind, **data):
        pass


def broker_block(path, n):
    from hyperhive.core.broker import Broker
    from hyperhive.schema import open_core

    db = open_core(path)
    broker = Broker(NullHub())
    try:
        t0 = time.perf_counter()
        for i in range(n):
            broker.send("operator", "alice", f"message {i}")
        for i in range(n):
            if len(broker.pop("alice", 1)) != 1:
                raise RuntimeError("the broker popped nothing from a queue that has messages")
        return n / (time.perf_counter() - t0)
    finally:
        db.close()


def raw_block(path, n):
    from hyperhive.schema import PRAGMAS, open_core

    open_core(path).close()  # the same schema and indexes as the broker's file
    con = sqlite3.connect(path, isolation_level=None)
    for key, value in PRAGMAS.items():
        con.execute(f"PRAGMA {key} = {value}")
    try:
        t0 = time.perf_counter()
        for i in range(n):
            now = int(time.time() * 1000)
            con.execute("BEGIN")
            con.execute("INSERT INTO message (sender, recipient, body, sent_at, delivered_at, acked_at, "
                        "redelivered, file_refs) VALUES (?, ?, ?, ?, NULL, NULL, 0, '[]')",
                        ("operator", "alice", f"message {i}", now))
            con.execute("COMMIT")
        for i in range(n):
            now = int(time.time() * 1000)
            con.execute("BEGIN")
            rows = con.execute("SELECT id, sender, recipient, body, sent_at, delivered_at, acked_at, redelivered, "
                               "file_refs FROM message WHERE recipient = ? AND delivered_at IS NULL "
                               "ORDER BY id LIMIT 1", ("alice",)).fetchall()
            con.execute(f"UPDATE message SET delivered_at = ? WHERE id IN ({','.join('?' * len(rows))})",
                        (now, *[r[0] for r in rows]))
            con.execute("COMMIT")
            if len(rows) != 1:
                raise RuntimeError("the raw pop found nothing in a queue that has messages")
        return n / (time.perf_counter() - t0)
    finally:
        con.close()


def run(tmp, n):
    ours, raw = [], []
    for b in range(BLOCKS):
        # a fresh file per block: each block starts from the same empty queue
        ours.append(broker_block(os.path.join(tmp, f"broker-{b}.db"), n))
        raw.append(raw_block(os.path.join(tmp, f"raw-{b}.db"), n))
    return [Row(f"broker send+pop (n={n}×{BLOCKS})", median(ours), median(raw), "msg/s", min_ratio=0.5)]

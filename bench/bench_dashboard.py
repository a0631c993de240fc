"""The dashboard: one event fanned out to 500 SSE pages, and the cold-load snapshot under a big hive.

Owns two measurements against the real core's dashboard (logged in with
the operator's cookie, as a browser is):

- fanout: POST /op-send → the `sent` event has reached every one of N open
  `/dashboard/stream` connections; baseline: sse_baseline.py (bare bottle on
  pywsgi) with as many subscribers, POST /publish. Rounds alternate between
  the two servers. Target: <= 1.5x.
- state: GET /api/state with the core's agents and 100k messages in the
  database; baseline: GET of a static asset on the same server (the least
  a request costs there). Target: p99 <= 50 ms.
"""

import http.client
import json
import os
import selectors
import socket
import sqlite3
import subprocess
import time
import urllib.parse

from common import BENCH, PYTHON, Children, Row, call, median, percentile

MARK = b"fanout-"


class Subscribers:
    """N raw HTTP connections to an SSE route, read by one selector loop."""

    def __init__(self, port, path, n, headers=""):
        self.socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
                      f"{headers}\r\n".encode())
            self.socks.append(s)
        for s in self.socks:  # the headers and the hello: every stream is live before we start
            if b"\r\n\r\n" not in s.recv(65536):
                s.recv(65536)
            s.setblocking(False)
        self.selector = selectors.DefaultSelector()
        for s in self.socks:
            self.selector.register(s, selectors.EVENT_READ)

    def wait_all(self, marker, timeout=30.0):
        """Read until every connection has carried `marker`; return when the last one did."""
        waiting = set(self.socks)
        seen = {}
        deadline = time.monotonic() + timeout
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} of {len(self.socks)} streams never got the event")
            for key, _ in self.selector.select(timeout=1.0):
                s = key.fileobj
                data = seen.get(s, b"") + s.recv(65536)
                seen[s] = data[-4096:]
                if marker in data and s in waiting:
                    waiting.discard(s)
                    seen[s] = b""
        return time.perf_counter()

    def close(self):
        for s in self.socks:
            s.close()


def _post(port, path, body, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", **(headers or {})})
        res = conn.getresponse()
        data = res.read()
        if res.status != 200:
            raise RuntimeError(f"POST {path}: {res.status} {data[:200]!r}")
    finally:
        conn.close()


def _get(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        res = conn.getresponse()
        res.read()
        took = time.perf_counter() - t0
        if res.status != 200:
            raise RuntimeError(f"GET {path}: {res.status}")
        return took
    finally:
        conn.close()


def dashboard_of(core):
    """(port, headers) of a session logged in through a login URL, as a browser is."""
    url = urllib.parse.urlsplit(call(core.host, "login_url")["url"])
    conn = http.client.HTTPConnection("127.0.0.1", url.port, timeout=30)
    try:
        conn.request("GET", f"{url.path}?{url.query}")
        res = conn.getresponse()
        res.read()
    finally:
        conn.close()
    cookie = res.getheader("Set-Cookie").split(";")[0]
    key = urllib.parse.urlsplit(res.getheader("Location")).fragment.partition("hive-key=")[2]
    return url.port, {"Cookie": cookie, "X-Hive-Key": key, "Origin": f"http://127.0.0.1:{url.port}"}


def run_fanout(core, subscribers, rounds):
    port, headers = dashboard_of(core)
    baseline = Children.popen([PYTHON, os.path.join(BENCH, "sse_baseline.py")], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE)
    try:
        base_port = int(baseline.stdout.readline().split()[1])
        ours = Subscribers(port, "/dashboard/stream", subscribers,
                           f"Cookie: {headers['Cookie']}\r\nX-Hive-Key: {headers['X-Hive-Key']}\r\n")
        bare = Subscribers(base_port, "/stream", subscribers)
        to = core.names[0]
        times = {"ours": [], "bare": []}
        try:
            for i in range(rounds):
                marker = MARK + str(i).encode()
                t0 = time.perf_counter()
                _post(port, "/op-send", {"to": to, "body": marker.decode()}, headers)
                times["ours"].append(ours.wait_all(marker) - t0)
                t0 = time.perf_counter()
                _post(base_port, "/publish", {"to": to, "body": marker.decode()})
                times["bare"].append(bare.wait_all(marker) - t0)
        finally:
            ours.close()
            bare.close()
    finally:
        Children.stop(baseline)
    return [Row(f"dashboard fan-out to {subscribers} (median)", median(times["ours"]), median(times["bare"]),
                "s", max_ratio=1.5, note=f"{rounds} rounds; op-send until the last of {subscribers} "
                                         "streams has the event; baseline: bare bottle/pywsgi fan-out")]


def fill_messages(core, count):
    """Put `count` messages in the core's database, as months of a busy hive would."""
    names = core.names + ["operator", "manager"]
    now = int(time.time() * 1000)
    con = sqlite3.connect(os.path.join(core.state, "hive.db"), timeout=30)
    try:
        rows = [(names[i % len(names)], names[(i * 7 + 3) % len(names)], f"message {i} **bold**",
                 now - (count - i) * 1000, now - (count - i) * 1000, now - (count - i) * 1000, 0, "[]")
                for i in range(count)]
        con.executemany("INSERT INTO message (sender, recipient, body, sent_at, delivered_at, acked_at, "
                        "redelivered, file_refs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.commit()
    finally:
        con.close()


def run_state(core, requests, messages=100_000):
    port, headers = dashboard_of(core)
    fill_messages(core, messages)
    _get(port, "/api/state", headers)  # warm: the first load renders every inbox row's markdown once
    ours, base = [], []
    for _ in range(requests):
        ours.append(_get(port, "/api/state", headers))
        base.append(_get(port, "/static/favicon.svg", headers))
    p99 = percentile(ours, 99)
    return [Row(f"/api/state p99 ({len(core.names)} agents, {messages // 1000}k messages)", p99,
                percentile(base, 99), "s", max_value=0.050,
                note=f"{requests} requests; baseline: a static asset from the same server")]

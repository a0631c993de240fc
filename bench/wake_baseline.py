"""The wake-latency baseline: the least a gevent JSON-lines server can do for send → recv.

Owns nothing of hyperhive: one unix socket for the operator (`send`) and one
per recipient (`recv`), one request per connection, a gevent Queue per
recipient (send puts, recv blocks on get). No database, no validation: the
floor the core's wake path is measured against.

  python bench/wake_baseline.py RUN_DIR NAME...   (prints "ready" once listening)
"""

import json
import os
import sys

from gevent import monkey

monkey.patch_all()  # the core patches too, so both servers run on the same event loop

import gevent  # noqa: E402
from gevent.queue import Empty, Queue  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

queues = {}
next_id = [0]


def answer(sock, obj):
    sock.sendall(json.dumps({"version": 1, "ok": True, **obj}, separators=(",", ":")).encode() + b"\n")


def host(sock, _address):
    with sock, sock.makefile("rb") as reader:
        req = json.loads(reader.readline())
        next_id[0] += 1
        queues[req["to"]].put({"id": next_id[0], "from": "operator", "body": req["body"]})
        answer(sock, {"id": next_id[0]})


def agent(name):
    def handle(sock, _address):
        with sock, sock.makefile("rb") as reader:
            req = json.loads(reader.readline())
            messages = []
            try:
                messages.append(queues[name].get(timeout=req.get("wait_seconds", 0)))
                while len(messages) < req.get("max", 1):
                    messages.append(queues[name].get_nowait())
            except Empty:
                pass
            answer(sock, {"messages": messages})
    return handle


def main(run_dir, names):
    os.makedirs(os.path.join(run_dir, "agents"), exist_ok=True)
    servers = [StreamServer(_listen(os.path.join(run_dir, "host.sock")), host)]
    for name in names:
        queues[name] = Queue()
        servers.append(StreamServer(_listen(os.path.join(run_dir, "agents", f"{name}.sock")), agent(name)))
    for server in servers:
        server.start()
    print("ready", flush=True)
    gevent.wait()  # until SIGTERM ends the process


def _listen(path):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    return sock


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

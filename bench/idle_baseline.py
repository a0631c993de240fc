"""The idle baseline: hyperhive's stack serving, with none of hyperhive's code, doing nothing.

Owns nothing of hyperhive: gevent monkey-patched as the harness is, bottle
and peewee imported, one peewee SqliteDatabase (WAL, as the core and the
harness open theirs) with one table in RUN_DIR, a one-route bottle app on
gevent's pywsgi on a loopback port, and a gevent StreamServer answering a
JSON line on a unix socket in RUN_DIR. Its resident memory and its CPU
while idle are the floor the core's and a harness's are measured against.

  python bench/idle_baseline.py RUN_DIR   (prints "port <n>" once serving; SIGTERM ends it)
"""

import json
import os
import socket
import sys

from gevent import monkey

monkey.patch_all()  # before anything else, as hyperhive.py does for its serving roles

import bottle  # noqa: E402
import gevent  # noqa: E402
import peewee  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

db = peewee.SqliteDatabase(None, pragmas={"journal_mode": "wal", "synchronous": "normal"})


class Note(peewee.Model):
    body = peewee.TextField()

    class Meta:
        database = db


app = bottle.Bottle()


@app.get("/")
def index():
    return {"ok": True, "notes": Note.select().count()}


def answer(sock, _address):
    with sock, sock.makefile("rb") as reader:
        reader.readline()
        sock.sendall(json.dumps({"version": 1, "ok": True}).encode() + b"\n")


def main(run_dir):
    os.makedirs(run_dir, exist_ok=True)
    db.init(os.path.join(run_dir, "idle.sqlite"))
    db.connect()
    db.create_tables([Note])
    Note.create(body="the table is used, so its pages are read")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(run_dir, "idle.sock"))
    listener.listen(128)
    web = WSGIServer(("127.0.0.1", 0), app, log=None)
    for server in (web, StreamServer(listener, answer)):
        server.start()
    print(f"port {web.server_port}", flush=True)
    gevent.wait()  # until SIGTERM ends the process


if __name__ == "__main__":
    main(sys.argv[1])

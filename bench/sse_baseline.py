"""The SSE fan-out baseline: the least a bottle app on gevent's pywsgi can do to fan one event out.

Owns nothing of hyperhive: `GET /stream` parks a subscriber on a gevent
Queue of its own; `POST /publish` puts one JSON frame on every queue. No
login, no database, no history: the floor the dashboard's stream is
measured against.

  python bench/sse_baseline.py   (prints "port <n>" once listening on 127.0.0.1; SIGTERM ends it)
"""

import json

from gevent import monkey

monkey.patch_all()  # the core patches its sockets too: both servers run on the same loop

import bottle  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from gevent.queue import Queue  # noqa: E402

app = bottle.Bottle()
subscribers = set()
seq = [0]


@app.get("/stream")
def stream():
    bottle.response.set_header("Content-Type", "text/event-stream")
    queue = Queue()
    subscribers.add(queue)

    def frames():
        try:
            yield "retry: 2000\n\n"
            while True:
                yield queue.get()
        finally:
            subscribers.discard(queue)

    return frames()


@app.post("/publish")
def publish():
    seq[0] += 1
    body = bottle.request.json or {}
    frame = f"id: {seq[0]}\ndata: {json.dumps({'seq': seq[0], 'kind': 'sent', 'message': body})}\n\n"
    for queue in list(subscribers):
        queue.put(frame)
    return {"ok": True}


if __name__ == "__main__":
    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    print(f"port {server.server_port}", flush=True)
    server.serve_forever()

"""Calling a WSGI app in-process, the way a server would: for the route tests of both web surfaces."""

import io
import json
import urllib.parse


class Response:
    def __init__(self, status, headers, chunks):
        self.status = int(status.split()[0])
        self.headers = {k.lower(): v for k, v in headers}
        self.header_list = headers
        self._chunks = chunks

    @property
    def body(self):
        if not hasattr(self, "_body"):
            try:
                self._body = b"".join(self._chunks)
            finally:
                self.close()
        return self._body

    @property
    def text(self):
        return self.body.decode()

    def json(self):
        return json.loads(self.body)

    def stream(self):
        """The body chunk by chunk (an SSE stream never ends by itself: close() it)."""
        for chunk in self._chunks:
            yield chunk

    def close(self):
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def events(self, count):
        """The first `count` SSE data payloads (comments and retry lines skipped), then close."""
        out, buf = [], b""
        it = iter(self._chunks)
        try:
            while len(out) < count:
                buf += next(it)
                while b"\n\n" in buf and len(out) < count:
                    block, buf = buf.split(b"\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line
                                  and not line.startswith(":"))
                    if "data" in fields:
                        out.append(dict(json.loads(fields["data"]), _id=fields.get("id")))
        finally:
            self.close()
        return out


def call(app, method, path, headers=None, body=None, host="127.0.0.1:7000", scheme="http"):
    """One request. `body` may be a dict (sent as JSON), bytes or str."""
    path, _, query = path.partition("?")
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    body = body or b""
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": urllib.parse.unquote(path), "QUERY_STRING": query,
        "SERVER_NAME": host.split(":")[0], "SERVER_PORT": host.split(":")[1], "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": host, "wsgi.url_scheme": scheme, "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0), "wsgi.multithread": False,
        "wsgi.multiprocess": False, "wsgi.run_once": False, "CONTENT_LENGTH": str(len(body)),
    }
    for key, value in headers.items():
        key = key.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        else:
            environ[f"HTTP_{key}"] = value
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"], seen["headers"] = status, response_headers

    chunks = app(environ, start_response)
    # a generator's start_response runs at its first chunk: pull it now, keep it at the front
    it = iter(chunks)
    if "status" not in seen:
        first = next(it, b"")
        rest = it

        def joined():
            yield first
            yield from rest

        gen = joined()
        gen_close = getattr(chunks, "close", None)

        class Chunks:
            def __iter__(self):
                return gen

            def __next__(self):
                return next(gen)

            def close(self):
                gen.close()
                if gen_close:
                    gen_close()

        chunks = Chunks()
    return Response(seen["status"], seen["headers"], chunks)

"""A real git server for the forge mirror's tests: `git http-backend` behind a WSGI app with basic auth.

Like a Forgejo that creates a repo on its first push: `<url>/<name>.git` is a bare repo under
`root`, made when a push with the right credential first reaches it. A request without the right
`user:token` gets 401, as a forge answers. It serves from a process of its own (stdlib wsgiref,
`python gitforge.py ROOT PORT USER:TOKEN`), so nothing the test process holds (its threads, its
descriptors) can slow or cut its answers, and can be stopped and started again on the same port, to
play a forge that is down. Every request is logged to `ROOT/requests.log` (`requests` reads it).
"""

import base64
import os
import socket
import socketserver
import subprocess
import sys
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

USER, TOKEN = "hive", "s3cret-forge-token"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):  # one line per request on stderr would bury pytest's output
        pass


class _Threaded(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def git_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
    return env


class GitForge:
    def __init__(self, root, port=None, user=USER, token=TOKEN):
        self.root, self.port = str(root), port or free_port()
        self.credential = f"{user}:{token}"
        self.server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hive"

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        self.server = subprocess.Popen([sys.executable, __file__, self.root, str(self.port), self.credential])
        deadline = time.monotonic() + 30
        while True:  # up once it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the test forge did not come up on port {self.port}") from None
                time.sleep(0.02)

    def stop(self):
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)
            self.server = None

    @property
    def requests(self):
        """(method, path, status) of every request so far, refused ones too."""
        try:
            with open(os.path.join(self.root, "requests.log")) as f:
                return [(m, p, int(s)) for m, p, s in (line.split() for line in f)]
        except FileNotFoundError:
            return []

    def refs(self, name):
        """{ref: sha} of name's repo on the forge (tags peeled to nothing: the tag object's own sha)."""
        repo = os.path.join(self.root, f"{name}.git")
        if not os.path.isdir(repo):
            return {}
        out = subprocess.run(["git", "-C", repo, "for-each-ref", "--format=%(refname) %(objectname)"],
                             capture_output=True, text=True, check=True, env=git_env()).stdout
        return dict(line.split() for line in out.splitlines())

    def app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        given = environ.get("HTTP_AUTHORIZATION", "")
        wanted = "Basic " + base64.b64encode(self.credential.encode()).decode()
        if given != wanted or not path.startswith("/hive/"):
            self._log(environ["REQUEST_METHOD"], path, 401)
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="forge"'),
                                                ("Content-Type", "text/plain")])
            return [b"bad credential\n"]
        rel = path[len("/hive"):]
        name = rel.split("/")[1]
        repo = os.path.join(self.root, name)
        if name.endswith(".git") and not os.path.isdir(repo):  # push-to-create, as a Forgejo may
            subprocess.run(["git", "init", "-q", "--bare", repo], check=True, env=git_env())
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        env = dict(git_env(), GIT_PROJECT_ROOT=self.root, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=rel,
                   REQUEST_METHOD=environ["REQUEST_METHOD"], QUERY_STRING=environ.get("QUERY_STRING", ""),
                   CONTENT_TYPE=environ.get("CONTENT_TYPE", ""), CONTENT_LENGTH=str(len(body)),
                   REMOTE_USER=self.credential.split(":")[0], REMOTE_ADDR="127.0.0.1", GATEWAY_INTERFACE="CGI/1.1")
        if environ.get("HTTP_CONTENT_ENCODING"):
            env["HTTP_CONTENT_ENCODING"] = environ["HTTP_CONTENT_ENCODING"]
        done = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        headers, status = [], "200 OK"
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = value.strip()
            elif key:
                headers.append((key, value.strip()))
        self._log(environ["REQUEST_METHOD"], path, int(status.split()[0]))
        start_response(status, headers)
        return [payload]

    def _log(self, method, path, status):
        with open(os.path.join(self.root, "requests.log"), "a") as f:
            f.write(f"{method} {path or '-'} {status}\n")

    def serve(self):
        server = make_server("127.0.0.1", self.port, self.app, server_class=_Threaded, handler_class=_Quiet)
        server.serve_forever()


if __name__ == "__main__":
    root, port, credential = sys.argv[1:]
    user, _, token = credential.partition(":")
    GitForge(root, int(port), user, token).serve()

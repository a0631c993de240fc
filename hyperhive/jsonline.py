"""JSON lines over unix stream sockets: the one client and the one server.

The client is stdlib only (the CLI and the MCP server must start fast, so
even `socket` is imported on first use); the
server is gevent's StreamServer, imported only by serving roles. One request
per connection: read one line, answer one line (or a stream of lines for a
streaming verb), close. A bad frame gets the one error shape and the server
keeps serving everyone else.
"""

import errno
import os
import stat
import time

from hyperhive import verbs, wire

READ_TIMEOUT = 30.0  # a client whose request line has not all arrived by then is dropped
# A client that stops reading its answer for this long loses it: the server stops writing,
# frees the answer and says so in its log, rather than holding it for a reader that never comes.
SEND_TIMEOUT = 30.0
REFUSAL_LOG_SECONDS = 60.0  # a socket at its connection cap says so in the log at most this often


class Unreachable(wire.HiveError):
    """Nobody is listening at the socket path (down, or never started)."""

    def __init__(self, path, why):
        super().__init__(f"nothing is serving at {path} ({why})", "unavailable")
        self.path = path


# -- client ----------------------------------------------------------------------

def connect(path, timeout):
    import socket  # here, not at the top: the MCP server answers `initialize` without it

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except FileNotFoundError:
        sock.close()
        raise Unreachable(path, "no socket file") from None
    except ConnectionRefusedError:
        sock.close()
        raise Unreachable(path, "connection refused") from None
    except PermissionError:
        sock.close()
        raise wire.HiveError(f"permission denied on {path}; the admin socket is for root and the admin group",
                             "forbidden") from None
    except OSError as e:
        sock.close()
        raise Unreachable(path, e.strerror or str(e)) from None
    return sock


def _read_line(reader, path):
    line = reader.readline(wire.MAX_ANSWER + 1)
    if not line:
        raise Unreachable(path, "the server closed the connection without answering")
    if not line.endswith(b"\n"):
        raise wire.HiveError(f"the answer from {path} was cut off", "unavailable")
    return wire.decode(line, wire.MAX_ANSWER)


def call(path, verb, timeout=30.0, **args):
    """Send one request and return the ok response (a dict) or raise HiveError."""
    sock = connect(path, timeout)
    try:
        try:
            sock.sendall(wire.request(verb, **args))
        except (BrokenPipeError, ConnectionResetError) as e:
            # A server at its connection cap answers with a sentence and hangs up without
            # reading: that sentence, when it is there, says more than the broken pipe.
            refused = _leftover_answer(sock)
            if refused is None:
                raise Unreachable(path, e.strerror) from None
            return wire.result(refused)
        with sock.makefile("rb") as reader:
            return wire.result(_read_line(reader, path))
    except TimeoutError:
        raise wire.HiveError(f"{path} did not answer {verb!r} within {timeout:g}s", "unavailable") from None
    except (BrokenPipeError, ConnectionResetError) as e:
        raise Unreachable(path, e.strerror) from None
    finally:
        sock.close()


def _leftover_answer(sock):
    """The one answer line already waiting on a socket the server has closed, or None."""
    try:
        with sock.makefile("rb") as reader:
            line = reader.readline(wire.MAX_LINE + 1)
        return wire.decode(line, wire.MAX_ANSWER) if line.endswith(b"\n") else None
    except (OSError, wire.HiveError):
        return None


def stream(path, verb, timeout=None, **args):
    """Subscribe: returns once the server acked, then iterate for each later frame.

    `timeout` bounds each wait for a frame (None: wait as long as it takes).
    """
    sock = connect(path, timeout)
    try:
        sock.sendall(wire.request(verb, **args))
        reader = sock.makefile("rb")
        wire.result(_read_line(reader, path))  # the ack: subscribed from here on
    except BaseException:
        sock.close()
        raise

    def frames():
        try:
            while True:
                line = reader.readline(wire.MAX_ANSWER + 1)
                if not line:
                    return
                yield wire.result(wire.decode(line, wire.MAX_ANSWER))
        finally:
            reader.close()
            sock.close()

    return frames()


# -- server ----------------------------------------------------------------------

def unbind(path):
    """Remove a socket file this server bound; gone already is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def bind(path, mode):
    """Bind a listening unix socket at path, replacing a stale one.

    A socket file nobody answers on is left from a crashed run and is
    replaced; one that answers belongs to a live server and is refused.
    """
    import socket

    path = str(path)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise wire.HiveError(f"{path} exists and is not a socket; move it away", "conflict")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            os.unlink(path)
            import logging  # server side only: the CLI and MCP server never pay for it

            logging.getLogger(__name__).info("replaced stale socket %s", path)
        else:
            raise wire.HiveError(f"another server is already listening at {path}", "conflict")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask gives the socket exactly `mode` as bind creates it. No chmod after: an agent may
    # write the directory, and a link it swapped in by then would pass the chmod on to its target.
    old = os.umask(0o777 & ~mode)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(128)
    return listener


class Server:
    """Serve one socket surface: `dispatch(obj, gone) -> dict | iterator of dicts`.

    `gone` is an Event set when the client hangs up before its answer is
    written; a long-poll waits on it so that a dead client never takes a
    message it cannot receive. dispatch raises HiveError for a request it
    refuses; anything else it raises is logged and answered as an internal
    error.

    `max_connections` caps what one client may hold open at once (an agent's
    socket is all one agent's): past it a connection is answered with a
    sentence at once and closed, so descriptors stay bounded however many
    connections the other side opens.
    """

    def __init__(self, path, dispatch, mode=0o660, name=None, max_connections=None):
        from gevent.server import StreamServer

        self.path = str(path)
        self.name = name or os.path.basename(self.path)
        self.dispatch = dispatch
        self.max_connections = max_connections
        self.open_connections = 0
        self._refused = 0  # refusals not yet told in the log
        self._refusal_logged_at = None
        self.listener = bind(self.path, mode)
        self.server = StreamServer(self.listener, self._handle)

    def start(self):
        self.server.start()
        return self

    def stop(self, timeout=1.0):
        self.server.stop(timeout=timeout)
        unbind(self.path)

    def _handle(self, sock, _address):
        self.open_connections += 1
        try:
            if self.max_connections is not None and self.open_connections > self.max_connections:
                self._refuse(sock)
            else:
                self._serve(sock)
        finally:
            self.open_connections -= 1

    def _serve(self, sock):
        import gevent
        from gevent.event import Event

        gone = Event()
        watcher = None
        try:
            line = self._read(sock)
            if line and any(f'"{verb}"'.encode() in line for verb in verbs.WAITING_VERBS):
                # A client sends one line, then only waits: any later read that
                # returns is its hang-up. (A false positive only costs a
                # greenlet, so a substring test is enough.)
                watcher = gevent.spawn(_hang_up, sock)
                watcher.link(lambda _: gone.set())
            answer = self._answer(line, gone)
            sock.settimeout(SEND_TIMEOUT)  # from here on a client that stops reading loses its answer
            if isinstance(answer, dict):
                sock.sendall(wire.encode(answer))
            else:
                self._stream(sock, answer, gone)
        except TimeoutError:
            self._log().warning("%s: stopped writing to a client that read nothing for %gs; its answer was "
                                "dropped", self.name, SEND_TIMEOUT)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing to tell it
        finally:
            if watcher is not None:
                watcher.kill(block=False)
            sock.close()

    def _refuse(self, sock):
        """Tell a client past the cap why, without waiting on it, and hang up."""
        text = (f"{self.name} already has {self.max_connections} connections open, the most one socket serves "
                "at once; close connections you hold (only one recv waits at a time, every other verb answers "
                "at once) and try again")
        try:
            sock.settimeout(0.0)  # never wait on a client we refuse
            sock.send(wire.encode(wire.error(text, "unavailable")))
            # What it already sent is read and dropped: a request left unread would turn the
            # sentence into a reset on its side.
            for _ in range(wire.MAX_LINE // 65536 + 1):
                if not sock.recv(65536):
                    break
        except OSError:
            pass  # nothing more to say to it; the log says it below
        finally:
            sock.close()
        self._refused += 1
        now = time.monotonic()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= REFUSAL_LOG_SECONDS:
            self._log().warning("%s: refused %d connection(s) past its cap of %d open at once: whoever runs there "
                                "holds too many (said at most once a minute)", self.name, self._refused,
                                self.max_connections)
            self._refused, self._refusal_logged_at = 0, now

    @staticmethod
    def _log():
        import logging  # server side only: the CLI and MCP server never pay for it

        return logging.getLogger(__name__)

    @staticmethod
    def _stream(sock, frames, gone):
        """Write a streaming answer until the client hangs up."""
        import gevent

        me = gevent.getcurrent()
        gone.rawlink(lambda _: me.kill(block=False))
        try:
            for frame in frames:
                sock.sendall(wire.encode(frame))
        finally:
            frames.close()

    @staticmethod
    def _read(sock):
        """The request line, or None when it has not all arrived within READ_TIMEOUT.

        One deadline for the whole line: a client trickling a byte at a time
        cannot hold its connection longer than one that sends nothing."""
        import gevent

        with gevent.Timeout(READ_TIMEOUT, False):
            with sock.makefile("rb") as reader:
                return reader.readline(wire.MAX_LINE + 1)
        return None

    def _answer(self, line, gone):
        try:
            if line is None:
                raise wire.HiveError(f"no request line arrived within {READ_TIMEOUT:g}s", "bad_frame")
            if len(line) > wire.MAX_LINE:
                raise wire.HiveError(f"the request line is over {wire.MAX_LINE} bytes (1 MiB); send less", "bad_frame")
            if not line.endswith(b"\n"):
                raise wire.HiveError("the request was cut off before its newline; send one JSON object and a newline",
                                     "bad_frame")
            return self.dispatch(wire.decode(line), gone)
        except wire.HiveError as e:
            return wire.error_of(e)
        except Exception as e:
            disk = wire.storage_failure(e)
            if disk is not None:  # the operator's problem, not a bug: one line, no traceback
                self._log().error("%s: %s", self.name, disk)
                return wire.error_of(disk)
            self._log().exception("%s: request failed", self.name)
            return wire.error("the server failed on this request; its log has the details", "internal")


def _hang_up(sock):
    """Return once the client hangs up (or sends past its one line, which no client does)."""
    while True:
        try:
            return sock.recv(1) or None
        except TimeoutError:
            continue  # the send timeout set for the answer is not a hang-up
        except OSError:
            return None

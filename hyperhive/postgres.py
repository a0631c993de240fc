"""PostgreSQL for a hive of several cores: the connection a core runs its statements on, and the
one it hears the others on.

Owns psycopg2 inside a gevent process: a wait callback makes every statement
yield to the hub while the server works (psycopg2 then speaks to the server
asynchronously), so one slow query never stalls a socket. A core has one
statement connection (`Database`, what `schema.core_db` holds): a lock gives
it to one greenlet at a time, for a statement or for a whole transaction, as
sqlite's single connection is used. Lost, it is opened again by the next
statement; the statement that found it lost is refused as `unavailable` (it
may or may not have run: the caller that got the error sends again, and
whatever was answered ok is committed). A core's notices come on a second
connection (`Listener`) that LISTENs, notices its own loss within seconds
(TCP keepalives, and a ping when quiet) and reconnects by itself, telling
its handlers so they catch up on what they may have missed.

Imported only by a core started on a postgresql:// database: nothing else
needs psycopg2.
"""

import logging
import time

import gevent
import gevent.event
import peewee as pw
import psycopg2
import psycopg2.extensions
from gevent.lock import RLock
from gevent.socket import wait_read, wait_write

from hyperhive import wire

log = logging.getLogger(__name__)

# libpq's own: a peer that vanished (a cut network) is noticed after idle + interval * count seconds when the
# connection is quiet, and after tcp_user_timeout when a statement's bytes go unanswered (else TCP retries
# for a quarter of an hour, holding the connection and every request waiting on it)
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
              "tcp_user_timeout": 10000, "connect_timeout": 5}
# libpq's connect_timeout is the caller's to enforce on an asynchronous connection: these are ours
CONNECT_SECONDS = 5.0
LISTEN_PING_SECONDS = 5.0  # a quiet listener asks the server this often whether it is still there
PING_TIMEOUT_SECONDS = 10.0
RECONNECT_FIRST, RECONNECT_MOST = 0.2, 5.0  # the listener's backoff between attempts, doubling


def gevent_wait(conn, timeout=None):
    """psycopg2's wait callback: poll the connection, waiting on its socket through the gevent hub.

    Never closes the connection itself: psycopg2 holds the connection's mutex while it calls this, and a
    close from here waits on that mutex forever, hub and all. Interrupted (a timeout, a killed greenlet),
    it leaves the connection mid-statement; `Database` closes it once the statement has unwound."""
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            wait_read(conn.fileno(), timeout=timeout)
        elif state == psycopg2.extensions.POLL_WRITE:
            wait_write(conn.fileno(), timeout=timeout)
        else:
            raise psycopg2.OperationalError(f"unexpected state from psycopg2's poll: {state}")


def green():
    """Make every psycopg2 connection of this process wait through gevent (idempotent)."""
    psycopg2.extensions.set_wait_callback(gevent_wait)


def redacted(url):
    """The URL as a log may show it: no password, should one be in it after all."""
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':', 1)[0]}@{tail}"


def said(e):
    """The first line of what the driver said (libpq's messages run on over several)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def unavailable(e, what):
    """The sentence for a request the database could not serve."""
    first = said(e)
    return wire.HiveError(f"the hive's database could not {what}: {first}; the core reconnects by itself, so "
                          "send again in a moment (whatever was answered ok is kept)", "unavailable")


class _Held:
    """A transaction of `db` with its lock held from begin to commit: no other greenlet's statement
    lands inside it."""

    def __init__(self, db, inner):
        self.db, self.inner = db, inner

    def __enter__(self):
        self.db.lock.acquire()
        try:
            self.db.alive()
            return self.inner.__enter__()
        except (pw.OperationalError, pw.InterfaceError) as e:  # BEGIN on a connection the server dropped
            self.db.lost(e)
            self.db.lock.release()
            raise unavailable(e, "begin a transaction") from None
        except BaseException:
            self.db.lock.release()
            raise

    def __exit__(self, kind, value, tb):
        try:
            return self.inner.__exit__(kind, value, tb)
        except (pw.OperationalError, pw.InterfaceError) as e:
            self.db.lost(e)
            raise unavailable(e, "finish a transaction") from None
        finally:
            self.db.lock.release()


class Database(pw.PostgresqlDatabase):
    """One connection per core, lent to one greenlet at a time; its loss and return are logged."""

    def __init__(self, url):
        super().__init__(url, thread_safe=False, **KEEPALIVES)
        self.url = url
        self.lock = RLock()
        self.lost_at = None  # monotonic, while the connection is lost

    def alive(self):
        """Open the connection again when it was lost (outside a transaction only)."""
        if self._state.conn is not None and self._state.conn.closed:
            self._state.reset()
        if self.is_closed():
            try:
                with gevent.Timeout(CONNECT_SECONDS, pw.OperationalError(
                        f"no answer to a connection within {CONNECT_SECONDS:g} s")):
                    self.connect()
            except (pw.OperationalError, pw.InterfaceError) as e:
                self._state.reset()
                self.lost(e)
                raise unavailable(e, "be reached") from None
            if self.lost_at is not None:
                took = time.monotonic() - self.lost_at
                self.lost_at = None
                log.warning("reconnected to the database after %.1f s", took)

    def broken(self):
        conn = self._state.conn
        return conn is None or bool(conn.closed)

    def lost(self, e, quiet=False):
        """The connection is no more (or is mid-statement for nobody): closed, and opened again by the next
        statement. `quiet`: a statement its greenlet gave up on, not a lost server."""
        if self.lost_at is None and not quiet:
            self.lost_at = time.monotonic()
            log.warning("lost the connection to the database (%s); reconnecting", said(e))
        conn, self._state.conn = self._state.conn, None
        self._state.reset()
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def execute_sql(self, sql, params=None):
        with self.lock:
            if self.in_transaction():  # _Held minds the connection for the whole transaction
                return super().execute_sql(sql, params)
            self.alive()
            try:
                return super().execute_sql(sql, params)
            except (pw.OperationalError, pw.InterfaceError) as e:
                if self.broken():  # a deadlock or a cancelled statement leaves the connection as it was
                    self.lost(e)
                raise unavailable(e, "run a statement") from None
            except BaseException as e:
                if not isinstance(e, pw.DatabaseError):  # a timeout or a kill mid-statement
                    self.lost(e, quiet=True)
                raise

    def atomic(self, *args, **kwargs):
        return _Held(self, super().atomic(*args, **kwargs))


class Listener:
    """LISTEN on `channels` on a connection of its own; `handle(channel, payload)` gets each notice, and
    `handle(None, None)` after every (re)connect, when notices may have been missed."""

    def __init__(self, url, channels, handle):
        self.url, self.channels, self.handle = url, tuple(channels), handle
        self.conn = None
        self.connected = gevent.event.Event()  # set while it listens
        self._greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self.run)
        return self

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()
        self._close()

    def _close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:
                pass

    def _connect(self):
        with gevent.Timeout(CONNECT_SECONDS, psycopg2.OperationalError(
                f"no answer to a connection within {CONNECT_SECONDS:g} s")):
            conn = psycopg2.connect(self.url, **KEEPALIVES)
        conn.autocommit = True
        with conn.cursor() as cur:
            for channel in self.channels:
                cur.execute(f'LISTEN "{channel}"')
        self.conn = conn

    def run(self):
        delay, lost_at = RECONNECT_FIRST, None
        while True:
            try:
                self._connect()
            except psycopg2.Error as e:
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning("cannot listen for the other cores' notices (%s); trying again", said(e))
                gevent.sleep(delay)
                delay = min(delay * 2, RECONNECT_MOST)
                continue
            if lost_at is not None:
                log.warning("listening for the other cores' notices again after %.1f s",
                            time.monotonic() - lost_at)
            delay, lost_at = RECONNECT_FIRST, None
            self.connected.set()
            self._dispatch(None, None)  # whatever was said while nobody listened
            try:
                self._listen()
            except (psycopg2.Error, OSError, gevent.Timeout) as e:
                lost_at = time.monotonic()
                log.warning("lost the connection the other cores' notices come on (%s); reconnecting", said(e))
            self.connected.clear()
            self._close()

    def _listen(self):
        conn = self.conn
        while True:
            try:
                wait_read(conn.fileno(), timeout=LISTEN_PING_SECONDS)
            except TimeoutError:  # quiet: a cut network says nothing, so ask
                with gevent.Timeout(PING_TIMEOUT_SECONDS), conn.cursor() as cur:
                    cur.execute("SELECT 1")
            conn.poll()
            while conn.notifies:
                notice = conn.notifies.pop(0)
                self._dispatch(notice.channel, notice.payload)

    def _dispatch(self, channel, payload):
        try:
            self.handle(channel, payload)
        except Exception:
            log.exception("handling the notice %s %r failed", channel, payload)

"""Who may use the web: the operator's browser sessions, one-time login tokens, each agent's page secret.

The operator never types a secret: `login-url` mints a token good once for
ten minutes, and the login route trades it for a session. A session is two
random values, stored only as hashes in the core's database with an expiry,
listed (`sessions`) and revocable (`logout`):

- the cookie (`hive_session`, HttpOnly, SameSite=Strict), which a browser
  sends on its own -- so it opens only what holds no data: the pages' shells
  and their assets;
- the key, handed to the page once in the login redirect's URL fragment
  (never sent to a server, never in a Referer) and kept in the origin's
  localStorage; every data route, action and event stream also needs it
  (`X-Hive-Key`, or `?key=` on a GET, which EventSource cannot send as a
  header).

Why two: cookies ignore ports, so a link or redirect to another port of the
dashboard's host (where an agent may listen) carries the cookie along; the
key is bound to the dashboard's exact origin, so what leaks opens nothing.
Each agent's page answers only a request carrying that agent's own secret,
kept beside its socket where only its sandbox and the core can read it.
"""

import hashlib
import hmac
import logging
import os
import secrets
import stat
import time

from hyperhive import files, wire
from hyperhive.core import planted
from hyperhive.schema import WebSession, core_db

log = logging.getLogger(__name__)

COOKIE = "hive_session"
KEY_HEADER = "X-Hive-Key"
KEY_PARAM = "key"
TOKEN_SECONDS = 600
SESSION_SECONDS = 7 * 24 * 3600  # a session ends a week after its login, or when it is logged out
SEEN_EVERY_MS = 60_000  # a session's last_seen_at is written at most this often
SECRET_BYTES = 32  # 256 bits
WEB_SECRET = "web.secret"
WEB_SOCKET = "web.sock"
MAX_USER_AGENT = 200


def _read(path):
    """The file's text if it is a plain file of ours; never follows a link, never waits on a fifo.

    An agent's socket directory is writable from inside its container: what
    lies there may be a trap laid for the core, which runs with more rights.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("%s is not a plain file (%s); replacing it", path, e.strerror)
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:  # checked on the fd: fdopen refuses a directory
        os.close(fd)
        log.warning("%s is not a small plain file; replacing it", path)
        return None
    with os.fdopen(fd) as f:
        return f.read()


def _read_or_create(path, mode=0o600):
    """The secret in `path`, written first (`mode`, atomically) if there is none."""
    secret = (_read(path) or "").strip()
    if len(secret) >= 2 * SECRET_BYTES:
        return secret
    if os.path.lexists(path):
        log.warning("%s held no usable secret; writing a new one", path)
    secret = secrets.token_hex(SECRET_BYTES)
    moved = planted.clear(os.path.dirname(path), os.path.basename(path), only_dirs=True)
    if moved:  # a directory is the one thing os.replace cannot put a file over
        log.warning("%s", moved)
    files.replace(path, secret + "\n", mode)
    return secret


def _hash(value):
    return hashlib.sha256(value.encode()).hexdigest()


def session_row(session, current=None):
    """A session as `sessions` answers it (never its cookie or key)."""
    return {"id": session.id, "created_at": wire.iso(session.created_at), "expires_at": wire.iso(session.expires_at),
            "last_seen_at": wire.iso(session.last_seen_at), "remote": session.remote,
            "user_agent": session.user_agent, "current": current is not None and session.id == current.id}


class Auth:
    """`clock()` is unix seconds (the sessions' times), `tick()` a monotonic one (the login tokens')."""

    def __init__(self, clock=time.time, tick=time.monotonic):
        self.clock, self.tick = clock, tick
        self._tokens = {}  # token -> expiry (tick)

    def _now_ms(self):
        return int(self.clock() * 1000)

    # -- logging in ---------------------------------------------------------------------

    def mint(self):
        """A one-time login token."""
        now = self.tick()
        self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
        token = secrets.token_urlsafe(SECRET_BYTES)
        self._tokens[token] = now + TOKEN_SECONDS
        return token

    def redeem(self, token):
        """True once for a live token; it is gone either way."""
        expiry = self._tokens.pop(token or "", None)
        return expiry is not None and expiry > self.tick()

    def open_session(self, remote="", user_agent=""):
        """A new session: (cookie value, key, its row). Only the hashes are stored."""
        cookie, key = secrets.token_urlsafe(SECRET_BYTES), secrets.token_urlsafe(SECRET_BYTES)
        now = self._now_ms()
        with core_db.atomic():
            session = WebSession.create(cookie_hash=_hash(cookie), key_hash=_hash(key), created_at=now,
                                        expires_at=now + SESSION_SECONDS * 1000, last_seen_at=now,
                                        remote=str(remote or "")[:64],
                                        user_agent=" ".join(str(user_agent or "").split())[:MAX_USER_AGENT])
        log.info("the operator logged in from %s (session %d)", session.remote or "somewhere", session.id)
        return cookie, key, session

    # -- checking -------------------------------------------------------------------------

    def session(self, cookie, key=None, need_key=True):
        """The live session a request's cookie (and key, when the route holds data) belongs to, or None."""
        if not cookie or (need_key and not key):
            return None
        session = WebSession.get_or_none(WebSession.cookie_hash == _hash(cookie))
        now = self._now_ms()
        if session is None or session.revoked_at is not None or session.expires_at <= now:
            return None
        if need_key and not hmac.compare_digest(_hash(key), session.key_hash):
            return None
        if session.last_seen_at is None or now - session.last_seen_at >= SEEN_EVERY_MS:
            WebSession.update(last_seen_at=now).where(WebSession.id == session.id).execute()
            session.last_seen_at = now
        return session

    # -- listing and ending ---------------------------------------------------------------------

    def still_live(self, session_id):
        """Whether a session has been neither logged out nor let expire (an open stream asks now and then)."""
        return WebSession.get_or_none((WebSession.id == session_id) & WebSession.revoked_at.is_null()
                                      & (WebSession.expires_at > self._now_ms())) is not None

    def sessions(self, current=None):
        now = self._now_ms()
        live = (WebSession.select().where(WebSession.revoked_at.is_null() & (WebSession.expires_at > now))
                .order_by(WebSession.id))
        return [session_row(s, current) for s in live]

    def logout(self, session_id=None):
        """End one session (or, with None, every one); returns how many ended."""
        now = self._now_ms()
        query = WebSession.update(revoked_at=now).where(WebSession.revoked_at.is_null() & (WebSession.expires_at > now))
        if session_id is not None:
            if WebSession.get_or_none(WebSession.id == session_id) is None:
                raise wire.HiveError(f"there is no session {session_id}; `sessions` lists them", "not_found")
            query = query.where(WebSession.id == session_id)
        with core_db.atomic():
            ended = query.execute()
        if session_id is not None and not ended:
            raise wire.HiveError(f"session {session_id} has already ended", "conflict")
        log.info("logged out %s", f"session {session_id}" if session_id is not None else f"{ended} session(s)")
        return ended

    def sweep(self):
        """Forget sessions that ended more than a day ago."""
        cutoff = self._now_ms() - 24 * 3600 * 1000
        return WebSession.delete().where((WebSession.expires_at < cutoff) | (WebSession.revoked_at < cutoff)).execute()

    # -- agents' pages ------------------------------------------------------------------

    @staticmethod
    def agent_secret(socket_dir):
        """The agent's page secret, created with its socket directory and kept across restarts."""
        # 0640: the socket dir is setgid to the agent's group, so its harness (a uid of its own)
        # reads a secret the core writes anew while it runs
        return _read_or_create(os.path.join(socket_dir, WEB_SECRET), 0o640)

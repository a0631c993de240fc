"""Who may use the web: the operator's secret, one-time login tokens, each agent's page secret.

The operator's secret lives in `<state-dir>/operator.secret` (0600, in a
0700 directory no sandbox can see) and is what the dashboard's cookie holds.
The operator never types it: `login-url` mints a token good once for ten
minutes, and the login route trades it for the cookie. Each agent's page
answers only a request carrying that agent's own secret, kept beside its
socket where only its sandbox and the core can read it.
"""

import hmac
import logging
import os
import secrets
import stat
import time

log = logging.getLogger(__name__)

COOKIE = "hive_operator"
TOKEN_SECONDS = 600
SECRET_BYTES = 32  # 256 bits
WEB_SECRET = "web.secret"
WEB_SOCKET = "web.sock"


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
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
            log.warning("%s is not a small plain file; replacing it", path)
            return None
        return f.read()


def _read_or_create(path):
    """The secret in `path`, written first (0600, atomically) if there is none."""
    secret = (_read(path) or "").strip()
    if len(secret) >= 2 * SECRET_BYTES:
        return secret
    if os.path.lexists(path):
        log.warning("%s held no usable secret; writing a new one", path)
    secret = secrets.token_hex(SECRET_BYTES)
    tmp = f"{path}.{secrets.token_hex(8)}.tmp"
    # O_EXCL|O_NOFOLLOW: a link planted at the temp name is not followed
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.replace(tmp, path)  # replaces whatever was at path, a link included, never its target
    return secret


class Auth:
    def __init__(self, state_dir, clock=time.monotonic):
        self.clock = clock
        self.secret = _read_or_create(os.path.join(state_dir, "operator.secret"))
        self._tokens = {}  # token -> expiry (clock)

    # -- the operator -------------------------------------------------------------

    def mint(self):
        """A one-time login token."""
        now = self.clock()
        self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
        token = secrets.token_urlsafe(SECRET_BYTES)
        self._tokens[token] = now + TOKEN_SECONDS
        return token

    def redeem(self, token):
        """True once for a live token; it is gone either way."""
        expiry = self._tokens.pop(token or "", None)
        return expiry is not None and expiry > self.clock()

    def is_operator(self, cookie):
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.secret.encode())

    # -- agents' pages ------------------------------------------------------------------

    @staticmethod
    def agent_secret(socket_dir):
        """The agent's page secret, created with its socket directory and kept across restarts."""
        return _read_or_create(os.path.join(socket_dir, WEB_SECRET))

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
import time

log = logging.getLogger(__name__)

COOKIE = "hive_operator"
TOKEN_SECONDS = 600
SECRET_BYTES = 32  # 256 bits
WEB_SECRET = "web.secret"
WEB_SOCKET = "web.sock"


def _read_or_create(path):
    """The secret in `path`, written first (0600, atomically) if there is none."""
    try:
        with open(path) as f:
            secret = f.read().strip()
        if len(secret) >= 2 * SECRET_BYTES:
            return secret
        log.warning("%s held no usable secret; writing a new one", path)
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(SECRET_BYTES)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.replace(tmp, path)
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

"""Claude's login for one harness: the probe, the parked state, and the page's `claude auth login`.

Owns how the harness decides that claude can run turns (its binary is there;
an API key in its environment, else the JSON of `claude auth status`; and
not a login the API refused), the login state the turn loop waits on before
it receives anything (told to the core with `report_login`, shown on the
agent's page as its `status`), the record of a refusal (a turn the API
answered 401/403: the loop parks until that login works again, checked
against the API for a key, or until the operator logs in anew), and which
`claude auth login` the page drives (the child itself is `loginsession.py`).

Facts of the real CLI (2.1.x, measured): `auth status` prints
`{"loggedIn": false, "authMethod": "none", …}` and exits 1 when there is no
login. A turn without a login ends with the result `Not logged in · Please
run /login`.
"""

import hashlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request

import gevent
import gevent.event

from hyperhive import binaries, files, wire
from hyperhive.harness.loginsession import LoginSession

log = logging.getLogger(__name__)

# Any of these, non-empty, is a login claude uses without `auth login`.
KEY_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
STATUS_TIMEOUT = 20.0
REPROBE_SECONDS = 30.0
PARK_SLICE = 1.0  # the parked loop's sleep: short, so a login that just succeeded is seen at once
REFUSED_FILE = os.path.join(".hyperhive", "login-refused")
VERIFY_TIMEOUT = 10.0
API_URL = "https://api.anthropic.com"


def verify_key(env, timeout=VERIFY_TIMEOUT):
    """Whether the API takes the key in env: (True, ""), (False, why) or (None, why) when it cannot tell.

    `GET /v1/models` costs nothing and answers 401/403 for a key it refuses,
    as the Messages API does; it goes where claude goes (ANTHROPIC_BASE_URL).
    """
    headers = {"anthropic-version": "2023-06-01", "accept": "application/json"}
    if (env.get("ANTHROPIC_API_KEY") or "").strip():
        var, headers["x-api-key"] = "ANTHROPIC_API_KEY", env["ANTHROPIC_API_KEY"].strip()
    elif (env.get("ANTHROPIC_AUTH_TOKEN") or "").strip():
        var, headers["authorization"] = "ANTHROPIC_AUTH_TOKEN", f"Bearer {env['ANTHROPIC_AUTH_TOKEN'].strip()}"
    elif (env.get("CLAUDE_CODE_OAUTH_TOKEN") or "").strip():
        var = "CLAUDE_CODE_OAUTH_TOKEN"
        headers.update(authorization=f"Bearer {env[var].strip()}", **{"anthropic-beta": "oauth-2025-04-20"})
    else:
        return None, "no key is set to check"
    url = (env.get("ANTHROPIC_BASE_URL") or API_URL).rstrip("/") + "/v1/models?limit=1"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout):
            return True, ""
    except urllib.error.HTTPError as e:
        said = _api_message(e)
        if e.code in (401, 403):
            return False, (f"the API refuses the key in {var} ({e.code}: {said}); turns resume by themselves once it "
                           "takes the key again (a new key needs a restart of the agent)")
        return None, f"{url} answered {e.code} ({said}), which does not say whether the key is good"
    except (OSError, ValueError) as e:  # URLError is an OSError; a bad base URL a ValueError
        return None, f"could not ask {url} whether the key is good: {getattr(e, 'reason', None) or e}"


def _api_message(error):
    try:
        body = json.loads(error.read(64 * 1024))
        return str(body["error"]["message"])[:200]
    except (OSError, ValueError, KeyError, TypeError):
        return error.reason or "no reason given"


# -- the probe ----------------------------------------------------------------------------

def probe(claude, env, run=subprocess.run, cwd=None, timeout=STATUS_TIMEOUT):
    """Whether claude has a valid session: (logged_in, note). The note is for a person; "" when logged in."""
    for var in KEY_VARS:
        if (env.get(var) or "").strip():
            return True, ""
    argv = [claude, "auth", "status"]
    try:
        done = run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return _not_logged_in(f"`{claude} auth status` did not answer within {timeout:g}s; check that the "
                              "claude CLI runs in this agent's container")
    except OSError as e:
        return _not_logged_in(f"could not run `{claude} auth status`: {e.strerror or e}; check the claude "
                              "binary the harness is given (--claude or HIVE_CLAUDE_BIN)")
    out = _text(done.stdout).strip()
    try:
        answer = json.loads(out)
        logged_in = answer["loggedIn"]
        if not isinstance(logged_in, bool):
            raise TypeError("loggedIn is not true or false")
    except (ValueError, KeyError, TypeError) as e:
        said = (out or _text(done.stderr).strip() or "nothing")[:200]
        return _not_logged_in(f"`{claude} auth status` exited {done.returncode} without the login JSON "
                              f"({e}); it said: {said}")
    if logged_in:
        return True, ""
    # exit 1 with loggedIn false is the CLI's ordinary "not logged in"
    return False, (f"claude is not logged in (auth method {answer.get('authMethod') or 'none'}); "
                   "log it in on the agent's page")


def _not_logged_in(note):
    log.warning("counting claude as not logged in: %s", note)
    return False, note


def _text(data):
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


# -- the harness's login state -------------------------------------------------------------

class Login:
    """Whether this harness may run turns, and the page's login session.

    `logged_in` is None until the first probe (nothing is claimed), then
    True or False; `missing` is the sentence while claude's binary is not
    there. The core hears every change (and the first answer, so a core that
    thought otherwise learns); the page hears a `status_changed` on every
    flip and on every login action. The turn loop calls `ready()` before
    each recv; while not logged in that waits one PARK_SLICE of the
    injected `sleep` and probes again every `reprobe` seconds, and at once
    (before the next slice) after a login session ended well.

    A turn the API refused (`refused()`) is recorded with a fingerprint of
    the login it used (the key, or claude's credentials file), also on disk
    so a restart does not spend a turn to learn it again. While the same
    login is in place the probe asks the API about a key (`verify`) and
    takes a credentials login as refused until the operator logs in anew.
    """

    def __init__(self, claude, env, cwd, client, bus, sleep=time.sleep, run=subprocess.run,
                 session=LoginSession, reprobe=REPROBE_SECONDS, locate=binaries.locate_claude, verify=verify_key,
                 state_dir=None):
        self.claude, self.env, self.cwd = claude, env, cwd
        self.client, self.bus, self.sleep, self.run = client, bus, sleep, run
        self.new_session, self.reprobe = session, reprobe
        self.locate, self.verify = locate, verify
        self.refused_path = os.path.join(state_dir, REFUSED_FILE) if state_dir else None
        self.refusal = self._load_refusal()
        self.logged_in = None
        self.missing = None
        self.note = ""
        self.session = None
        self.reported = None  # what the core was last told: (logged_in, missing)
        self.waited = 0.0
        self.recheck = False  # probe at the next chance: a login ended well, or a turn says claude is gone

    @property
    def status(self):
        """online | needs_login_idle | needs_login_in_progress | claude_missing (the page's words)."""
        if self.missing:
            return "claude_missing"
        if self.logged_in is not False:
            return "online"
        return "needs_login_in_progress" if self.session is not None else "needs_login_idle"

    def view(self):
        """The session for the page's snapshot, or None."""
        session = self.session
        return session.view() if session is not None else None

    # -- the loop's side ----------------------------------------------------------------

    def check(self):
        """Probe now; tell the core and the page what changed. Returns whether turns may run."""
        missing = self.locate(self.claude, self.env)
        if missing:
            logged_in, note = False, missing
        else:
            logged_in, note = probe(self.claude, self.env, run=self.run, cwd=self.cwd)
            if logged_in and self.refusal is not None:
                logged_in, note = self._past_refusal()
        before = self.status
        self.logged_in, self.note, self.missing = logged_in, note, missing
        self.waited, self.recheck = 0.0, False
        if logged_in and self.session is not None:
            session, self.session = self.session, None
            if not session.finished:
                gevent.spawn(self._cancel, session)  # logged in some other way: its prompt is moot
        if (logged_in, bool(missing)) != self.reported:
            self._report(logged_in, note, bool(missing))
        if self.status != before:
            self.bus.emit("status_changed", status=self.status)
            if logged_in:
                self.bus.note("claude is logged in; turns run")
            elif missing:
                self.bus.note(f"{missing}. The turn loop waits until it is there.")
            else:
                self.bus.note(f"claude needs a login: {note}. The turn loop waits until it has one.")
        return logged_in

    def _report(self, logged_in, note, missing):
        try:
            self.client.call("report_login", logged_in=logged_in, **({"note": note} if note else {}),
                             **({"claude_missing": True} if missing else {}))
            self.reported = (logged_in, missing)
        except wire.HiveError as e:  # a refusal, not an outage (call retries those): the loop goes on
            log.error("the core refused report_login: %s", e)
            self.bus.note(f"could not tell the core about claude's login: {e}")

    def ready(self):
        """Whether the loop may recv now. While not logged in, waits one slice (and maybe probes)."""
        if self.logged_in is None or self.recheck:
            if self.check():
                return True
        elif self.logged_in:
            return True
        self.sleep(PARK_SLICE)
        self.waited += PARK_SLICE
        if self.recheck or self.waited >= self.reprobe:
            return self.check()
        return False

    def gone(self, why):
        """A turn could not start claude: check (and park) before the next recv."""
        log.warning("%s; checking claude before the next message", why)
        self.recheck = True

    def refused(self, why):
        """A turn the API refused: park on this login until it works again. Reported at once."""
        self.refusal = {"login": self._fingerprint(), "why": why, "at": int(time.time())}
        self._save_refusal()
        log.warning("%s; parking the turn loop until this login works again", why)
        self.check()

    # -- the refusal ------------------------------------------------------------------------

    def _past_refusal(self):
        """(logged_in, note) for a login that probes fine but was refused by the API before."""
        refusal = self.refusal
        if refusal.get("login") != self._fingerprint():
            self._clear_refusal("the login changed since the API refused it")
            return True, ""
        if not refusal["login"].startswith("credentials:"):
            verdict, why = self.verify(self.env)
            if verdict:
                self._clear_refusal("the API takes the key again")
                return True, ""
            if verdict is None:  # the API cannot tell: a turn may find out, and parks again if refused
                log.warning("cannot check the refused key (%s); letting a turn try it", why)
                return True, ""
            return False, why
        return False, (f"{refusal.get('why') or 'the API refused the login'}; log claude in again on the "
                       "agent's page")

    def _fingerprint(self):
        """Which login claude uses now: a key's (hashed), else its credentials file's (hashed)."""
        for var in KEY_VARS:
            value = (self.env.get(var) or "").strip()
            if value:
                return f"{var}:{hashlib.sha256(value.encode()).hexdigest()[:16]}"
        path = os.path.join(self.env.get("HOME") or self.cwd, ".claude", ".credentials.json")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                data = f.read(256 * 1024)
        except OSError:
            data = b""
        return f"credentials:{hashlib.sha256(data).hexdigest()[:16]}"

    def _load_refusal(self):
        if not self.refused_path:
            return None
        try:
            fd = os.open(self.refused_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                refusal = json.loads(f.read(4096))
            return refusal if isinstance(refusal, dict) and isinstance(refusal.get("login"), str) else None
        except (OSError, ValueError):
            return None

    def _save_refusal(self):
        if not self.refused_path:
            return
        try:
            os.makedirs(os.path.dirname(self.refused_path), exist_ok=True)
            files.replace(self.refused_path, json.dumps(self.refusal), 0o600)
        except OSError as e:  # the refusal still holds in memory; a restart spends one turn to learn it again
            log.error("could not record the API's refusal in %s: %s", self.refused_path, e)

    def _clear_refusal(self, why):
        log.info("%s; turns run", why)
        self.bus.note(f"{why}; turns run again")
        self.refusal = None
        if self.refused_path:
            try:
                os.unlink(self.refused_path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.error("could not remove %s: %s", self.refused_path, e)

    # -- the page's side ----------------------------------------------------------------

    def start(self):
        """The page's "log in": keeps a running session, replaces a finished one."""
        if self.logged_in is None:
            raise wire.HiveError("the harness has not checked claude's login yet; try again in a moment",
                                 "conflict")
        if self.logged_in:
            raise wire.HiveError("claude is already logged in; there is nothing to log in to", "conflict")
        if self.session is None or self.session.finished:
            self.session = self.new_session(self.claude, self.env, self.cwd, on_exit=self._ended)
            self.bus.note("login started: claude auth login is waiting for the sign-in code")
        self.bus.emit("status_changed", status=self.status)
        return self.session

    def submit_code(self, code):
        session = self.session
        if session is None:
            raise wire.HiveError("no login session is running; press log in first", "conflict")
        session.submit_code(code)
        self.bus.emit("status_changed", status=self.status)

    def cancel(self):
        """Drop the session (stopped in the background: its grace must not hold up the page)."""
        session, self.session = self.session, None
        if session is not None:
            session.cancelled = True  # before it can end on its own: its note says cancelled
            gevent.spawn(self._cancel, session)
            self.bus.note("login cancelled")
        self.bus.emit("status_changed", status=self.status)

    def close(self):
        """At the harness's exit: a running `claude auth login` must not outlive it."""
        session, self.session = self.session, None
        if session is not None:
            self._cancel(session)

    @staticmethod
    def _cancel(session):
        try:
            session.cancel()
        except Exception:
            log.exception("stopping claude auth login failed")

    def _ended(self, session):
        if session is not self.session:
            return  # cancelled or replaced: nobody waits on it
        self.bus.note(session.exit_note)
        if session.exit_code == 0:
            self.recheck = True  # the parked loop probes at its next slice

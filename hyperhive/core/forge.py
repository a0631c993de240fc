"""The forge mirror: every agent's applied config repo pushed to a git remote of its own.

Owns the schedule of those pushes: which agents wait for one, the backoff of
one that failed, and what each agent's last push came to (its row's `forge`).
The pushes themselves are git's, in `core/gitrepos.py` (`Repos.push`); the
credential is read here, from the file `--forge-credential-file` names, at
each push, and handed to that one push only.

Best effort by design: a push runs in its own greenlet (git itself in the
thread pool), never on the path of the request that moved the refs, and a
forge that is down or refuses is logged and shown, never an error of a
deploy. One push waits per agent however many changes come; a change during
a push makes one more.
"""

import base64
import logging
import os
import stat
import time

from hyperhive import wire

log = logging.getLogger(__name__)
FIRST_RETRY_SECONDS = 5.0
MAX_RETRY_SECONDS = 300.0


def retry_delay(failures):
    """Seconds until the next try after this many failed pushes in a row: 5 s, doubling, at most 5 min."""
    return min(FIRST_RETRY_SECONDS * 2 ** max(failures - 1, 0), MAX_RETRY_SECONDS)


def check_url(url):
    """The forge base URL as given to `--forge-url`, without a trailing slash; a sentence when it cannot be."""
    if url is None:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        raise wire.HiveError(f"--forge-url must be an http:// or https:// URL (each agent's repo is "
                             f"<URL>/<name>.git), got {url!r}")
    if "@" in rest.split("/", 1)[0]:
        raise wire.HiveError("--forge-url must not carry a user or token: the core would show it in `urls` and "
                             "the log; put user:token in the file --forge-credential-file names")
    return url.rstrip("/")


def read_credential(path):
    """The Authorization header for `user:token` in path, read now; a sentence when it cannot be used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise wire.HiveError(f"cannot read the forge credential file {path}: {e.strerror}; write user:token "
                             "there, readable by the core alone (mode 0600)", "unavailable") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise wire.HiveError(f"the forge credential file {path} is not a plain file only its owner can read "
                                 f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it", "forbidden")
        text = f.read(4096).decode(errors="replace").strip()
    user, sep, token = text.partition(":")
    if not sep or not user or not token or any(c in text for c in "\r\n"):
        raise wire.HiveError(f"the forge credential file {path} must hold one line, user:token", "bad_argument")
    return "Authorization: Basic " + base64.b64encode(text.encode()).decode()


class Forge:
    """The mirror's schedule. `url` None: no forge, nothing is pushed and rows say null.

    `changed(name)` (the repos' refs_changed) marks an agent due now; `step()` pushes every agent due at
    `clock()` and returns; `run(stopping)` is the greenlet calling step whenever something is due."""

    def __init__(self, repos, url=None, credential_file=None, clock=time.time):
        self.repos, self.url, self.credential_file, self.clock = repos, check_url(url), credential_file, clock
        if credential_file is not None and self.url is None:
            raise wire.HiveError("--forge-credential-file needs --forge-url: the credential is for that forge")
        self.due = {}  # name -> unix seconds its push is due: one entry however many changes asked
        self.failures = {}  # name -> failed pushes in a row
        self.shown = {}  # name -> its row's forge field
        self._wake = None  # the run loop's Event, set by a change

    def repo_url(self, name):
        return f"{self.url}/{wire.check_name(name)}.git"

    def changed(self, name):
        """name's applied refs moved: push it as soon as the push under way (if any) is done."""
        if self.url is None:
            return
        self.due[name] = self.clock()  # a change tries at once, even while backing off: the forge may be back
        if self._wake is not None:
            self._wake.set()

    def everyone(self):
        """At the core's start: every applied repo is due, so the forge catches up on what it missed."""
        for name in self.repos.applied_names():
            self.changed(name)

    def state(self, name):
        """An agent row's `forge`: null without a forge, else {repo, pushed_sha, pushed_at, error, retry_at}."""
        if self.url is None:
            return None
        return dict(self.shown.get(name) or {"repo": self.repo_url(name), "pushed_sha": None, "pushed_at": None,
                                            "error": None, "retry_at": None})

    def next_due(self):
        """Unix seconds of the earliest push due, or None when none waits."""
        return min(self.due.values(), default=None)

    def step(self):
        """Push every agent whose push is due now; return how many were tried."""
        now = self.clock()
        ready = sorted(name for name, at in self.due.items() if at <= now)
        for name in ready:
            del self.due[name]  # first: a change while it pushes is due again, for one more push
            self._push(name)
        return len(ready)

    def _push(self, name):
        try:
            header = read_credential(self.credential_file) if self.credential_file else None
            sha = self.repos.push(name, self.repo_url(name), header)
        except wire.HiveError as e:
            if e.code == "not_found":  # purged meanwhile: there is nothing left to mirror
                log.info("forge: %s has no applied config repo any more; nothing to push", name)
                self.failures.pop(name, None)
                self.shown.pop(name, None)
                return
            self._failed(name, self._why(e))
            return
        caught_up = self.failures.pop(name, 0)
        if caught_up:
            log.info("forge: %s's applied config repo is mirrored again after %d failed push(es)", name, caught_up)
        self.shown[name] = {"repo": self.repo_url(name), "pushed_sha": sha, "pushed_at": wire.iso(self._ms()),
                            "error": None, "retry_at": None}

    def _failed(self, name, why):
        failures = self.failures[name] = self.failures.get(name, 0) + 1
        retry = self.clock() + retry_delay(failures)
        self.due[name] = min(self.due.get(name, retry), retry)
        log.warning("forge: %s; its deploys go on, and the core tries again in %gs (or at its next change)",
                    why, retry_delay(failures))
        last = self.shown.get(name) or {}
        self.shown[name] = {"repo": self.repo_url(name), "pushed_sha": last.get("pushed_sha"),
                            "pushed_at": last.get("pushed_at"), "error": why, "retry_at": wire.iso(int(retry * 1000))}

    def _why(self, error):
        """git's words, and what the operator can do about them."""
        text = str(error)
        # 401 makes git ask for a user, which it may not (no terminal); 403 is a user who may not push there
        if any(s in text for s in ("could not read Username", "Authentication failed", "returned error: 401",
                                         "returned error: 403")):
            where = f"the credential in {self.credential_file}" if self.credential_file else "no credential"
            return f"{text} (the forge refused {where}: check its user:token and that the user may push there)"
        if "returned error: 404" in text or "not found" in text:
            return f"{text} (there is no such repo on the forge: create it, or let the forge create repos on push)"
        if "rejected" in text:
            return (f"{text} (the forge holds history this agent's applied repo does not, e.g. from an agent of "
                    "the same name that was purged: the core never overwrites it; move that forge repo aside)")
        return text

    def _ms(self):
        return int(self.clock() * 1000)

    def run(self, stopping):
        """The mirror's greenlet: push what is due, then wait for the next due push or a change."""
        from gevent.event import Event

        self._wake = Event()
        self.everyone()
        while not stopping.is_set():
            self._wake.clear()
            try:
                self.step()
            except Exception:  # a bug, not a forge's failure: logged, and the loop goes on
                log.exception("forge: the mirror's step failed; trying again at the next change")
            due = self.next_due()
            self._wake.wait(None if due is None else max(0.0, due - self.clock()))

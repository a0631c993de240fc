"""Claude's conversation for one agent: the session id every turn resumes, kept across harness restarts.

Owns the file the id lives in (`.hyperhive/session` in the agent's state
dir), where claude keeps that conversation's transcript (so a resume of a
conversation that is gone is seen before a turn is spent on it), and how
claude says a resumed conversation does not exist.

Why an id and not `--continue`: `--continue` picks the newest conversation
in the working directory, which a compaction or any stray `claude` run there
can change; `--resume <id>` names ours. The id comes from claude's own
`system/init` line, so whatever claude calls the conversation is what the
next turn resumes. Only "new session" (the operator's) forgets it.

The state dir is the agent's to write: the file is read without following a
link, bounded, and taken only when it is a session id (it becomes an
argument of claude's command line).
"""

import logging
import os
import re

from hyperhive import files

log = logging.getLogger(__name__)

ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FILE = os.path.join(".hyperhive", "session")
# claude 2.1.197 with --resume of an id it has no transcript for: an error result whose
# `errors` say "No conversation found with session ID: <id>", exit 1
GONE_MARKER = "no conversation found with session id"


def transcript_dir(home, cwd):
    """Where claude keeps the transcripts of conversations run in cwd: every non-alphanumeric becomes '-'."""
    return os.path.join(home, ".claude", "projects", re.sub(r"[^A-Za-z0-9]", "-", cwd))


def says_gone(outcome):
    """Whether a failed run says the conversation it resumed does not exist."""
    result = outcome.result if isinstance(outcome.result, dict) else {}
    said = " ".join(str(e) for e in result.get("errors") or ()) + f" {result.get('result') or ''} {outcome.reason}"
    return GONE_MARKER in said.lower()


class Session:
    """The persisted session id of one agent. `home` and `cwd` are claude's (HOME and its working dir)."""

    def __init__(self, state_dir, home=None, cwd=None):
        self.path = os.path.join(state_dir, FILE)
        self.home = home or state_dir
        self.cwd = cwd or state_dir

    def current(self):
        """The id to resume, or None (never started, forgotten, or the file is not an id)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read the session id at %s (%s); the next turn starts a fresh conversation",
                        self.path, e)
            return None
        with os.fdopen(fd, "rb") as f:
            text = f.read(128).decode(errors="replace").strip()
        if not ID.fullmatch(text):
            log.warning("%s does not hold a session id; the next turn starts a fresh conversation", self.path)
            return None
        return text

    def save(self, session_id):
        """Keep the id claude named (from its init line); anything else is not kept."""
        if not isinstance(session_id, str) or not ID.fullmatch(session_id) or session_id == self.current():
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        files.replace(self.path, session_id + "\n", 0o600)

    def forget(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def transcripts(self, session_id):
        """The places claude may keep this conversation: under the working dir as given and as resolved."""
        cwds = dict.fromkeys((self.cwd, os.path.realpath(self.cwd)))
        return [os.path.join(transcript_dir(self.home, cwd), f"{session_id}.jsonl") for cwd in cwds]

    def exists(self, session_id):
        return any(os.path.lexists(path) for path in self.transcripts(session_id))

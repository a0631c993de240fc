"""The wire contract shared by core, harness, MCP server and CLI.

Owns the limits and reserved names, the error vocabulary (`HiveError` and its
codes), the checks of names, typed numbers, times and status lines, the
response shapes (the field order of each row) and the JSON-line framing. The
verbs and their arguments are in `verbs.py`, which stands on this module.
Standard library only, and imports nothing of ours: it is the leaf every other
side stands on, so core and harness never need each other.
"""

import errno
import json
import re
import time

VERSION = 1
MAX_LINE = 1024 * 1024  # a request line longer than this is refused, not read on
# An answer is longer than a request can be: a recv may carry one message the core composed
# around two bodies (a question and its answer, each quoted). A client reads up to this much.
MAX_ANSWER = 16 * 1024 * 1024
# What a listing or a recv batch packs into one answer, in characters of bodies: past it a
# recv hands over fewer messages (always at least one) and a listing stops, saying so.
ANSWER_BUDGET = 1024 * 1024
# A body longer than this is cut, with a marker, where messages are listed (inbox, recent,
# the dashboard's live events); recv always hands a message over whole.
LISTED_BODY_MAX = 32 * 1024
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")  # always fullmatch: "$" would let a trailing "\n" in
MANAGER = "manager"
OPERATOR = "operator"
# Principals that are not agents; no agent may take one of these names.
RESERVED_NAMES = frozenset({MANAGER, OPERATOR, "core", "hive", "system", "ttl-watchdog", "reminder"})
# Shown above a message whose earlier turn did not end well (it failed, was
# cancelled, or the harness died in it) and that is delivered again.
REDELIVERED_BANNER = "[redelivered: a turn that had this message did not finish — it may already be handled]"
# The file in an agent's state dir where the harness persists its model; the
# core reads it for `active_model` and writes it when a config sets a model.
MODEL_FILE = "hyperhive-model"
# The operator's pronouns, from the core's environment: in every agent's prompt and `whoami`.
PRONOUNS_ENV = "HIVE_OPERATOR_PRONOUNS"
RECV_MAX_WAIT = 180
RECV_MAX_BATCH = 32
MAX_BODY = 512 * 1024
# A question's choices: a few short labels the answerer may pick (buttons on the dashboard).
MAX_OPTIONS = 10
MAX_OPTION = 100
QUESTION_MAX_TTL = 7 * 24 * 3600  # seconds
# Who closes a question nobody answered before its ttl ran out; the sender of that answer.
TTL_WATCHDOG = "ttl-watchdog"
# The sender of a reminder that came due.
REMINDER = "reminder"
REMINDER_MAX_SECONDS = 365 * 24 * 3600  # how far ahead a reminder may be set
REMINDER_LATE_SECONDS = 300  # a due_at this far in the past is refused as a mistake, not fired at once
MAX_PENDING_REMINDERS = 500  # per owner
MAX_STATUS = 200  # characters of an agent's one-line status
MAX_INT = 2 ** 63 - 1  # the largest integer SQLite stores: an id or count past it is refused, not a crash
LOOSE_END_KINDS = ("question", "reminder", "approval")
# A tool call the agent's permission policy says to ask about (an approval of kind tool_use): its input
# as compact JSON is at most this many bytes, one call waits at most this long per ask_tool_use, and
# one agent has at most this many waiting at once (parallel calls of one turn).
TOOL_INPUT_MAX = 16 * 1024
TOOL_USE_MAX_WAIT = 300

# The harness's engine (harness/engine.py), set by serve's options and carried to each harness in its
# environment: the modes, and per limit its attribute, variable, option, least value and default.
CLAUDE_MODES = ("session", "spawn")
CLAUDE_MODE_ENV = "HIVE_CLAUDE_MODE"
ENGINE_LIMITS = (("hang_seconds", "HIVE_HANG_SECONDS", "--hang-seconds", 1, 300),
                 ("recycle_turns", "HIVE_RECYCLE_TURNS", "--recycle-turns", 1, 200),
                 ("recycle_rss_mb", "HIVE_RECYCLE_RSS_MB", "--recycle-rss-mb", 64, 2048),
                 ("recycle_idle_seconds", "HIVE_RECYCLE_IDLE", "--recycle-idle", 60, 21600))
ENGINE_ENV = (CLAUDE_MODE_ENV, *(key for _, key, _, _, _ in ENGINE_LIMITS))
TOOL_USE_PENDING_MAX = 8

# Error vocabulary: code -> HTTP status, one table for every surface.
ERROR_STATUS = {
    "bad_frame": 400,      # not JSON, not an object, too long, truncated
    "unknown_verb": 400,
    "bad_argument": 400,   # missing, mistyped or out-of-range argument
    "unauthorized": 401,   # a page asked for without the operator's login
    "not_found": 404,
    "forbidden": 403,
    "conflict": 409,       # the thing exists / is mid-transition / already done
    "unavailable": 503,    # a peer (core, container, process) is down
    "internal": 500,
}


class HiveError(Exception):
    """An error a person can act on; `str(e)` is the sentence shown to them."""

    def __init__(self, message, code="bad_argument"):
        assert code in ERROR_STATUS, code
        super().__init__(message)
        self.code = code

    @property
    def status(self):
        return ERROR_STATUS[self.code]


STORAGE_FAILURE = "the hive's state disk "  # how every storage_failure sentence starts


def storage_failure(exc):
    """The HiveError for a write the state disk refused (full, read-only, failing); None for anything else.

    sqlite says it in words, the OS in an errno; either way the person who
    can fix it needs to hear "disk", not "internal error". The cause may sit
    down the exception's chain: when sqlite's COMMIT fails on a full disk,
    peewee's rollback raises "cannot rollback - no transaction is active"
    from it, so every `__cause__` and `__context__` is read, not just the top.
    One of our own sentences (a core's answer read by a harness) is itself.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, HiveError) and str(exc).startswith(STORAGE_FAILURE):
            return exc
        state = _disk_state(exc)
        if state is not None:
            return HiveError(f"{STORAGE_FAILURE}{state}, so this was not done; free space or make it writable, "
                             f"then try again ({exc})", "unavailable")
        exc = exc.__cause__ or exc.__context__
    return None


def _disk_state(exc):
    number, text = getattr(exc, "errno", None), str(exc).lower()
    if number in (errno.ENOSPC, errno.EDQUOT) or "database or disk is full" in text:
        return "is full"
    if number == errno.EROFS or "readonly database" in text:
        return "is read-only"
    if number == errno.EIO or "disk i/o error" in text:
        return "failed a read or write (I/O error)"
    return None


# -- names ------------------------------------------------------------------

def check_name(name, what="agent name"):
    """Validate an agent name where it enters; returns it unchanged."""
    if not isinstance(name, str):
        raise HiveError(f"{what} must be a string, got {type_name(name)}")
    if not NAME_RE.fullmatch(name):
        raise HiveError(
            f"{what} {cut(name)!r} is not valid: use 1-31 characters, a lowercase "
            "letter first, then lowercase letters, digits or '-'")
    return name


def check_options(options, where="options"):
    """A question's choices: a list of up to MAX_OPTIONS distinct, short, non-empty strings."""
    if not isinstance(options, (list, tuple)):
        raise HiveError(f'{where} must be a list of short strings, like ["yes", "no"]; got {type_name(options)}')
    if len(options) > MAX_OPTIONS:
        raise HiveError(f"{where} lists {len(options)} choices; the limit is {MAX_OPTIONS}: "
                        "offer fewer, or leave them out and let the answer be free text")
    seen = []
    for i, option in enumerate(options, 1):
        if not isinstance(option, str):
            raise HiveError(f"{where}: choice {i} must be a string, got {type_name(option)}")
        option = option.strip()
        if not option:
            raise HiveError(f"{where}: choice {i} is empty")
        if "\n" in option:
            raise HiveError(f"{where}: choice {i} spans several lines; a choice is one short line "
                            "(put the detail in the question)")
        if len(option) > MAX_OPTION:
            raise HiveError(f"{where}: choice {i} is {len(option)} characters; a choice is at most "
                            f"{MAX_OPTION} (put the detail in the question)")
        if option in seen:
            raise HiveError(f"{where}: {option!r} is listed twice")
        seen.append(option)
    return seen


def check_agent_name(name):
    """A name a new agent may take: valid and not one of the principals."""
    check_name(name)
    if name in RESERVED_NAMES:
        raise HiveError(f"{name!r} is reserved for the hive itself; pick another agent name")
    return name


# -- numbers a person types ------------------------------------------------------

def whole_number(raw, what, lo=0, hi=MAX_INT):
    """A whole number from `lo` to `hi` that a person typed: a CLI argument, a page's query
    parameter, a URL's part, a form's field. Every surface reads them here, so each refuses in
    the one sentence: "<what> must be a whole number of <lo> or more[ and at most <hi>], got
    '<what was typed>'".

    Text is read as Python's int() reads it (spaces around it, a sign, `_` between digits); an
    int (a JSON body's, a default) is taken as it is. Past `hi`, SQLite's largest integer
    unless told, is refused: a lookup of it would fail, not miss."""
    number = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    elif isinstance(raw, str):
        try:
            number = int(raw)
        except ValueError:  # not a number, or more digits than int() reads (4300)
            pass
    if number is not None and lo <= number <= hi:
        return number
    bounds = f"of {lo} or more" + (f" and at most {hi}" if hi < MAX_INT or (number or 0) > hi else "")
    given = repr(cut(raw)) if isinstance(raw, str) else number if number is not None else type_name(raw)
    raise HiveError(f"{what} must be a whole number {bounds}, got {given}")


def cut(text, limit=40):
    """Text a person sent, short enough to quote back in a sentence."""
    return text if len(text) <= limit else text[:limit] + "…"


# -- values the wire carries ------------------------------------------------------

def type_name(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_when(value, where="the time"):
    """An instant as unix seconds: from RFC 3339 text with a zone (the wire's format) or a unix number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        if not 0 < value < 2 ** 40:
            raise HiveError(f"{where} as a number is unix seconds; {value} is out of range")
        return float(value)
    if not isinstance(value, str):
        raise HiveError(f"{where} must be an RFC 3339 time like \"2026-01-31T09:00:00Z\" or unix seconds, "
                        f"got {type_name(value)}")
    from datetime import datetime

    text = value.strip()
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" and text else text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise HiveError(f"{where} {cut(text)!r} is not an RFC 3339 time with a zone, like \"2026-01-31T09:00:00Z\" "
                        "(or give in_seconds instead)")
    return when.timestamp()


def check_status_text(text):
    """An agent's status line as stored: one trimmed line of at most MAX_STATUS characters ("" clears it)."""
    if not isinstance(text, str):
        raise HiveError(f"set_status: 'text' must be a string, got {type_name(text)}")
    text = " ".join(text.split())
    if len(text) > MAX_STATUS:
        raise HiveError(f"set_status: the status is {len(text)} characters; keep it to one line of at most "
                        f"{MAX_STATUS} (put the detail in a message or a file)")
    return text


# -- payload shapes -----------------------------------------------------------------
# Field order of the rows answered on the wire; tests and clients check against these.

MESSAGE_FIELDS = ("id", "from", "body", "sent_at", "redelivered", "file_refs")
# inbox/recent rows also say who a message went to. A row whose body was cut at
# LISTED_BODY_MAX also carries `body_chars`, the whole body's length in characters.
LISTED_MESSAGE_FIELDS = MESSAGE_FIELDS + ("to", "delivered_at", "acked_at", "cancelled_at")
STATUS_FIELDS = ("name", "state", "running", "failed", "needs_update", "needs_login", "paused",
                 "parent", "deployed_sha", "active_model", "status_text", "status_set_at",
                 "url", "pending_reminders", "role", "last_turn_at", "claude_missing", "restart", "forge",
                 "node", "node_alive")
# `node` is the core that runs the agent, `node_alive` whether that core's heartbeat is recent (a hive of
# several cores); another node's agent is shown as its node last published it, its `url` on that node's dashboard.
# `restart` is null, or {deaths, reason, next_at} while a harness that died on its own is
# being started again by the core (next_at null once it runs again, until it has run a while).
# `forge` is null without a forge mirror, else {repo, pushed_sha, pushed_at, error, retry_at}.
# `tool`, `input` (an object) and `rule` (the ask rule it matched) are a tool_use approval's, null for the
# other kinds.
APPROVAL_FIELDS = ("id", "agent", "kind", "commit_ref", "fetched_sha", "requested_at",
                   "status", "resolved_at", "note", "description", "tool", "input", "rule")
# `target` is an agent's name, `manager` or `operator`; answered_* are null while it is open.
# `note` says what became of the answer when it could not be delivered. The host's
# `questions` rows and the dashboard's events add `question_html`.
# A reminder is pending while fired_at and failed_at are both null. `file_path` is as
# its owner named it; `error` says what went wrong when it fired or failed.
REMINDER_FIELDS = ("id", "owner", "message", "due_at", "file_path", "created_at", "fired_at",
                   "failed_at", "error")
QUESTION_FIELDS = ("id", "asker", "target", "question", "options", "asked_at", "expires_at",
                   "answered_at", "answer", "answered_by", "note")


def format_message(message):
    """A delivered message as the model reads it (wake prompt and recv tool alike)."""
    text = f"from: {message.get('from')}\n\n{message.get('body')}"
    return f"{REDELIVERED_BANNER}\n{text}" if message.get("redelivered") else text


def duration(seconds):
    """A span as a person says it: '45 seconds', '10 minutes', '1 day 2 hours'."""
    seconds = max(0, int(round(seconds)))
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
    return " ".join(parts[:2]) or "0 seconds"


def iso(ms):
    """Unix milliseconds as RFC 3339 UTC (the wire's one time format), or None."""
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


# -- framing ----------------------------------------------------------------------

def encode(obj):
    """One JSON object as one compact line (bytes, newline-terminated)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8: escaped as \udXXX, the line stays valid
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def request(verb, **args):
    return encode({"cmd": verb, **args})


def ok(**payload):
    return {"version": VERSION, "ok": True, **payload}


# An ok answer may carry `warnings`: sentences for steps that failed after the
# verb's effect was committed (the effect happened; do not retry it for them), or
# for what a listing left out to stay within its bounds.
WARNINGS = "warnings"


def error(message, code="bad_argument"):
    return {"version": VERSION, "ok": False, "error": message, "code": code}


def error_of(exc):
    return error(str(exc), exc.code)


def decode(line, limit=MAX_LINE):
    """Parse one request/response line (bytes or str) into a dict, or raise HiveError."""
    if len(line) > limit:
        raise HiveError(f"the line is {len(line)} bytes; the limit is {limit} ({limit // 1024 // 1024} MiB)",
                        "bad_frame")
    if isinstance(line, bytes):
        try:
            line = line.decode()
        except UnicodeDecodeError as e:
            raise HiveError(f"the line is not UTF-8 ({e.reason} at byte {e.start})", "bad_frame") from None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise HiveError(f"the line is not valid JSON: {e}", "bad_frame") from None
    if not isinstance(obj, dict):
        raise HiveError(f"a frame must be a JSON object, got {type_name(obj)}", "bad_frame")
    return obj


def result(response):
    """Return a response's payload, raising HiveError for an error response."""
    if not response.get("ok"):
        raise HiveError(str(response.get("error") or "the server answered an error without a sentence"),
                        response.get("code") if response.get("code") in ERROR_STATUS else "internal")
    return response

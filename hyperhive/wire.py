"""The wire contract shared by core, harness, MCP server and CLI.

Owns the verbs of the three socket surfaces (host, agent, manager), their
argument shapes, the error vocabulary, the response shapes and the JSON-line
framing. Standard library only, and imports nothing of ours: it is the leaf
every other side stands on, so core and harness never need each other.
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
        raise HiveError(f"{what} must be a string, got {_type_name(name)}")
    if not NAME_RE.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise HiveError(
            f"{what} {shown!r} is not valid: use 1-31 characters, a lowercase "
            "letter first, then lowercase letters, digits or '-'")
    return name


def check_options(options, where="options"):
    """A question's choices: a list of up to MAX_OPTIONS distinct, short, non-empty strings."""
    if not isinstance(options, (list, tuple)):
        raise HiveError(f'{where} must be a list of short strings, like ["yes", "no"]; got {_type_name(options)}')
    if len(options) > MAX_OPTIONS:
        raise HiveError(f"{where} lists {len(options)} choices; the limit is {MAX_OPTIONS}: "
                        "offer fewer, or leave them out and let the answer be free text")
    seen = []
    for i, option in enumerate(options, 1):
        if not isinstance(option, str):
            raise HiveError(f"{where}: choice {i} must be a string, got {_type_name(option)}")
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


# -- argument shapes -----------------------------------------------------------

class Arg:
    """One argument of a verb: its kind, whether required, its default, its limits and what it means.

    `lo`/`hi` bound a number, or a string's length; `help` is the sentence a
    model reads about it in the MCP tool built from the verb (`json_schema`).
    """

    __slots__ = ("name", "kind", "required", "default", "lo", "hi", "choices", "help")

    def __init__(self, name, kind, required=True, default=None, lo=None, hi=None, choices=(), help=""):
        self.name, self.kind, self.required = name, kind, required
        self.default, self.lo, self.hi, self.choices, self.help = default, lo, hi, choices, help


def _type_name(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _coerce(verb, arg, value, strict=False):
    where = f"{verb}: {arg.name!r}"
    if arg.kind == "str" or arg.kind == "text":
        if not isinstance(value, str):
            raise HiveError(f"{where} must be a string, got {_type_name(value)}")
        try:
            value.encode()  # a lone surrogate (\ud800 in JSON) is no text: SQLite and UTF-8 refuse it
        except UnicodeEncodeError as e:
            raise HiveError(f"{where} is not valid text: character {e.start + 1} is a lone UTF-16 surrogate") from None
        if arg.kind == "text":
            if not value.strip():
                raise HiveError(f"{where} must not be empty")
            if len(value) > MAX_BODY:
                raise HiveError(f"{where} is {len(value)} characters; the limit is {MAX_BODY}")
        elif arg.lo is not None and len(value) < arg.lo:
            raise HiveError(f"{where} must be at least {arg.lo} characters, got {len(value)}")
        elif arg.hi is not None and len(value) > arg.hi:
            raise HiveError(f"{where} is {len(value)} characters; the limit is {arg.hi}")
        return value
    if arg.kind == "name":
        return check_name(value, f"{where}:")
    if arg.kind == "bool":
        if not isinstance(value, bool):
            raise HiveError(f"{where} must be true or false, got {_type_name(value)}")
        return value
    if arg.kind in ("int", "clamp"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise HiveError(f"{where} must be a number, got {_type_name(value)}")
        if arg.kind == "clamp" and not strict:  # documented as clamped on a socket, never refused (an infinity too)
            return int(max(arg.lo, min(arg.hi, value)))
        if value in (float("inf"), float("-inf")):  # 1e400 in JSON: int() of it would raise
            raise HiveError(f"{where} must be a finite number, got {value}")
        value = int(value)
        hi = MAX_INT if arg.hi is None else arg.hi
        if (arg.lo is not None and value < arg.lo) or value > hi:
            raise HiveError(f"{where} must be between {arg.lo} and {hi}, got {value}")
        return value
    if arg.kind == "scope":
        if not isinstance(value, dict) or not isinstance(value.get("agent_names"), list):
            raise HiveError(f"{where} must be an object like {{\"agent_names\": [\"alice\"]}}")
        names = value["agent_names"]
        if not names:
            raise HiveError(f"{where} names no agents; an empty scope is never 'everything'")
        return [check_name(n, f"{where}: agent name") for n in names]
    if arg.kind == "options":
        return check_options(value, where)
    if arg.kind == "ids":
        if not isinstance(value, list) or not value or len(value) > RECV_MAX_BATCH:
            raise HiveError(f"{where} must be a list of 1 to {RECV_MAX_BATCH} message ids, like [12, 13]")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_INT:
                raise HiveError(f"{where}: {str(item)[:40]!r} is not a message id (a whole number from 1)")
        return list(dict.fromkeys(value))
    if arg.kind == "when":
        return parse_when(value, where)
    if arg.kind == "choice":
        if value not in arg.choices:
            raise HiveError(f"{where} must be one of {', '.join(arg.choices)}, got {str(value)[:40]!r}")
        return value
    raise AssertionError(arg.kind)


def parse_when(value, where="the time"):
    """An instant as unix seconds: from RFC 3339 text with a zone (the wire's format) or a unix number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        if not 0 < value < 2 ** 40:
            raise HiveError(f"{where} as a number is unix seconds; {value} is out of range")
        return float(value)
    if not isinstance(value, str):
        raise HiveError(f"{where} must be an RFC 3339 time like \"2026-01-31T09:00:00Z\" or unix seconds, "
                        f"got {_type_name(value)}")
    from datetime import datetime

    text = value.strip()
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" and text else text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise HiveError(f"{where} {shown!r} is not an RFC 3339 time with a zone, like \"2026-01-31T09:00:00Z\" "
                        "(or give in_seconds instead)")
    return when.timestamp()


def check_status_text(text):
    """An agent's status line as stored: one trimmed line of at most MAX_STATUS characters ("" clears it)."""
    if not isinstance(text, str):
        raise HiveError(f"set_status: 'text' must be a string, got {_type_name(text)}")
    text = " ".join(text.split())
    if len(text) > MAX_STATUS:
        raise HiveError(f"set_status: the status is {len(text)} characters; keep it to one line of at most "
                        f"{MAX_STATUS} (put the detail in a message or a file)")
    return text


# -- verbs -----------------------------------------------------------------------
# verb -> (args, one-line help). Surfaces list which verbs they answer.

_NAME = Arg("name", "name", help="The agent's name.")
_WAIT = Arg("wait_seconds", "clamp", False, 0, 0, RECV_MAX_WAIT,
            help="How long to wait for the first message; 0 returns at once.")
_MAX = Arg("max", "clamp", False, 1, 1, RECV_MAX_BATCH, help="Most messages to pop in this call.")
_WHY = Arg("description", "str", False, "", help="What this changes and why, for the operator who decides.")
_SHA = "the commit's sha in the agent's proposed repo (7-40 hex chars; never a branch or tag name)"

VERBS = {
    # host (operator) verbs
    "list": ((), "names of every agent"),
    "agent_status": ((), "one status row per agent"),
    "subscribe_agent_status": ((), "stream a status row whenever an agent changes"),
    "urls": ((), "the hive's public addresses"),
    "pending": ((), "approvals waiting for the operator"),
    "start": ((Arg("scope", "scope"),), "start the agents named in scope"),
    "stop": ((Arg("scope", "scope"), Arg("graceful", "bool", False, True)),
             "stop the agents named in scope"),
    "restart": ((_NAME,), "stop then start an agent"),
    "rebuild": ((_NAME,), "re-apply an agent's config and restart it"),
    "kill": ((_NAME,), "kill an agent's harness at once"),
    "set_paused": ((_NAME, Arg("paused", "bool")), "park or resume an agent's turn loop"),
    "spawn": ((_NAME,), "create and start a new agent"),
    "destroy": ((_NAME, Arg("purge", "bool", False, False)),
                "remove an agent; its state stays as a tombstone unless purge"),
    "inbox": ((Arg("limit", "int", False, 20, 1, 1000), Arg("before", "int", False, None, 1),
               Arg("unread", "bool", False, False), Arg("only_from", "str", False)),
              "messages addressed to you (the operator, on host.sock), newest first; `before` pages back, "
              "`unread` and `only_from` filter"),
    "mark_read": ((Arg("ids", "ids", False),), "mark messages to you read (without ids: every unread one)"),
    # shared by host and agent surfaces
    "send": ((Arg("to", "name", help="Recipient: an agent's name, `manager`, or `operator`."),
              Arg("body", "text", help="The message text (markdown is fine).")), "send a message"),
    # agent verbs
    "recv": ((_WAIT, _MAX), "pop messages addressed to you"),
    "ack_turn": ((), "mark every message popped since the last ack as handled"),
    "cancel_turn": ((), "the operator cancelled the running turn: mark its messages handled as cancelled and "
                        "tell their senders"),
    "retry_cancelled": ((Arg("ids", "ids"),), "queue messages of yours a cancelled turn had, again"),
    "requeue_inflight": ((), "put popped-but-unacked messages back, flagged redelivered"),
    "recent": ((Arg("limit", "int", False, 20, 1, 200),),
               "recent messages to or from you, newest first"),
    "operator_msg": ((Arg("body", "text"),), "a message from the operator via your web page"),
    "whoami": ((), "your name, role and the hyperhive revision"),
    # questions: one answer comes back to the asker's inbox as a [question_answered] message
    "ask": ((Arg("question", "text", help="The question, with the context the answerer needs (markdown is fine)."),
             Arg("to", "name", False, help="An agent's name or `manager`; leave it out to ask the operator."),
             Arg("options", "options", False, (), help=f"Up to {MAX_OPTIONS} short choices the answerer may pick "
                                                       "from (they may still answer in their own words)."),
             Arg("ttl_seconds", "int", False, None, 1, QUESTION_MAX_TTL,
                 help="Close the question unanswered after this many seconds (at most 7 days); by default it "
                      "waits until answered.")),
            "ask the operator (or, with `to`, another agent) a question"),
    "answer": ((Arg("id", "int", True, None, 1, help="The question's id, from `[question_asked]`."),
                Arg("answer", "text", help="Your answer: one of the offered choices, or your own words.")),
               "answer a question put to you"),
    "cancel_question": ((Arg("id", "int", True, None, 1),),
                        "withdraw an open question; its asker is told it was cancelled"),
    "questions": ((), "questions waiting for the operator's answer"),
    # config as code
    "approve": ((Arg("id", "int", True, None, 1),), "approve a pending approval"),
    "deny": ((Arg("id", "int", True, None, 1), Arg("reason", "str", False, "")),
             "deny a pending approval, with a reason"),
    "request_spawn": ((_NAME, _WHY, Arg("commit_ref", "str", False,
                                        help=f"Optional: {_SHA} to start on. Default: main as it is now.")),
                      "queue an approval to create and start an agent on a pinned commit of its proposed config"),
    "request_apply_commit": ((Arg("agent", "name", help="The agent's name."), Arg("commit_ref", "str", help=_SHA),
                              _WHY),
                             "queue an approval to deploy a commit of an agent's proposed config"),
    "request_init_config": ((_NAME, _WHY), "queue an approval to seed a new agent's config repos from the template"),
    "update": ((_WHY,), "queue an approval to update the meta flake's inputs"),
    "tombstones": ((), "agents destroyed without purge, whose state is kept"),
    "update_meta": ((), "update the meta flake's inputs now (nixos backend)"),
    "login_url": ((), "a one-time URL that logs a browser in to the dashboard"),
    "sessions": ((), "the browsers logged in to the dashboard"),
    "logout": ((Arg("id", "int", False, None, 1),), "end one dashboard session (or, without an id, every one)"),
    "get_loose_ends": ((), "what is still open about you: approvals, questions, reminders"),
    "cancel_loose_end": ((Arg("kind", "choice", choices=LOOSE_END_KINDS, help="question, reminder or approval."),
                          Arg("id", "int", True, None, 1, help="Its id, from get_loose_ends.")),
                         "withdraw one of your loose ends (the manager: anyone's)"),
    "remind": ((Arg("message", "text", help="What you want to be told then, with the context you will need."),
                Arg("due_at", "when", False, help="Deliver it at this time (RFC 3339 with a zone)."),
                Arg("in_seconds", "int", False, None, 1, REMINDER_MAX_SECONDS,
                    help="Deliver it this many seconds from now."),
                Arg("file_path", "str", False, help="Absolute path of a file to write the message to now "
                                                     "(its directory must exist).")),
               "have a message delivered to your own inbox later"),
    "count_pending_reminders": ((), "how many of your reminders have not come due yet"),
    "set_status": ((Arg("text", "str", help=f"One short line (at most {MAX_STATUS} characters), or empty to clear."),),
                   "your one-line status on the dashboard (\"\" clears it)"),
    "report_login": ((Arg("logged_in", "bool"), Arg("note", "str", False, ""),
                      Arg("claude_missing", "bool", False, False)),
                     "the harness says whether claude has a valid login (or no binary to run at all)"),
    "purge_tombstone": ((_NAME,), "delete a tombstone's state and config for good"),
}

# Where a surface takes a verb with other arguments than the table's: the
# manager names one agent where the operator names a scope.
SURFACE_ARGS = {
    ("manager", "start"): (_NAME,),
    ("manager", "stop"): (_NAME, Arg("graceful", "bool", False, True,
                                     help="Wait for its running turn to end first (the default); false cuts it.")),
}

HOST_VERBS = ("list", "agent_status", "subscribe_agent_status", "urls", "pending",
              "start", "stop", "restart", "rebuild", "kill", "set_paused", "spawn",
              "destroy", "send", "inbox", "mark_read", "approve", "deny", "request_spawn", "tombstones", "purge_tombstone",
              "update_meta", "login_url", "sessions", "logout", "questions", "answer", "cancel_question")
AGENT_VERBS = ("send", "recv", "ack_turn", "cancel_turn", "retry_cancelled", "requeue_inflight", "recent",
               "inbox", "operator_msg", "whoami", "get_loose_ends", "cancel_loose_end", "ask", "answer", "cancel_question",
               "remind", "count_pending_reminders", "set_status", "report_login")
MANAGER_VERBS = AGENT_VERBS + ("agent_status", "request_apply_commit", "request_init_config",
                               "request_spawn", "start", "stop", "restart", "rebuild", "kill", "update")
SURFACES = {"host": HOST_VERBS, "agent": AGENT_VERBS, "manager": MANAGER_VERBS}
STREAMING_VERBS = frozenset({"subscribe_agent_status"})
# Verbs that may wait on the server: their connections are watched for a hang-up.
WAITING_VERBS = STREAMING_VERBS | {"recv"}


def args_of(verb, surface=None):
    """The arguments `verb` takes on `surface` (the manager names one agent where the operator names a scope)."""
    return SURFACE_ARGS.get((surface, verb), VERBS[verb][0])


def check_args(verb, obj, surface=None, strict=False):
    """The verb's arguments from a decoded object, checked and coerced, defaults filled in.

    The one validator of every argument, whichever surface it came by (a
    socket, or an MCP tool call with `strict`: an argument the verb does not
    take is refused there, where a socket ignores unknown keys, and a number
    past the range its schema declares is refused, where a socket clamps it)."""
    spec = args_of(verb, surface)
    if strict:
        unknown = sorted(set(obj) - {arg.name for arg in spec})
        if unknown:
            takes = ", ".join(arg.name for arg in spec) or "no arguments"
            raise HiveError(f"{verb}: unknown argument {', '.join(map(repr, unknown))}; it takes {takes}")
    args = {}
    for arg in spec:
        if arg.name in obj and obj[arg.name] is not None:
            args[arg.name] = _coerce(verb, arg, obj[arg.name], strict)
        elif arg.required:
            raise HiveError(f"{verb}: missing argument {arg.name!r}")
        else:
            args[arg.name] = arg.default
    return args


def json_schema(verb, surface=None, required=()):
    """The JSON schema of a verb's arguments, as an MCP tool declares them: every limit from the table above.

    `required` adds arguments a tool asks for though the verb lets them go (a description, say)."""
    properties = {}
    for arg in args_of(verb, surface):
        prop = dict(_KIND_SCHEMAS[arg.kind](arg))
        if arg.help:
            prop["description"] = arg.help
        if not arg.required and arg.default not in (None, ()):
            prop["default"] = arg.default
        properties[arg.name] = prop
    needed = [arg.name for arg in args_of(verb, surface) if arg.required] + [n for n in required if n in properties]
    return {"type": "object", "properties": properties, "required": list(dict.fromkeys(needed)),
            "additionalProperties": False}


def _number_schema(arg):
    schema = {"type": "integer"}
    if arg.lo is not None:
        schema["minimum"] = arg.lo
    schema["maximum"] = MAX_INT if arg.hi is None else arg.hi
    return schema


def _string_schema(arg):
    schema = {"type": "string"}
    if arg.lo is not None:
        schema["minLength"] = arg.lo
    if arg.hi is not None:
        schema["maxLength"] = arg.hi
    return schema


_KIND_SCHEMAS = {
    "str": _string_schema,
    "text": lambda arg: {"type": "string", "minLength": 1, "maxLength": MAX_BODY},
    "name": lambda arg: {"type": "string", "pattern": f"^{NAME_RE.pattern}$"},
    "bool": lambda arg: {"type": "boolean"},
    "int": _number_schema,
    "clamp": _number_schema,
    "options": lambda arg: {"type": "array", "maxItems": MAX_OPTIONS,
                            "items": {"type": "string", "minLength": 1, "maxLength": MAX_OPTION}},
    "when": lambda arg: {"type": "string", "minLength": 1},
    "choice": lambda arg: {"type": "string", "enum": list(arg.choices)},
    "ids": lambda arg: {"type": "array", "minItems": 1, "maxItems": RECV_MAX_BATCH,
                        "items": {"type": "integer", "minimum": 1}},
    "scope": lambda arg: {"type": "object", "properties": {"agent_names": {
        "type": "array", "minItems": 1, "items": {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}}},
        "required": ["agent_names"]},
}


def parse_request(obj, surface):
    """Check a decoded request against a surface; returns (verb, args dict)."""
    if not isinstance(obj, dict):
        raise HiveError(f"a request must be a JSON object, got {_type_name(obj)}", "bad_frame")
    verb = obj.get("cmd")
    if not isinstance(verb, str):
        raise HiveError("a request needs a \"cmd\" string naming the verb", "bad_frame")
    allowed = SURFACES[surface]
    if verb not in allowed:
        shown = verb if len(verb) <= 40 else verb[:40] + "…"
        raise HiveError(f"unknown verb {shown!r} on the {surface} socket; known: {', '.join(sorted(allowed))}",
                        "unknown_verb")
    return verb, check_args(verb, obj, surface)


# -- payload shapes -----------------------------------------------------------------
# Field order of the rows answered on the wire; tests and clients check against these.

MESSAGE_FIELDS = ("id", "from", "body", "sent_at", "redelivered", "file_refs")
# inbox/recent rows also say who a message went to. A row whose body was cut at
# LISTED_BODY_MAX also carries `body_chars`, the whole body's length in characters.
LISTED_MESSAGE_FIELDS = MESSAGE_FIELDS + ("to", "delivered_at", "acked_at", "cancelled_at")
STATUS_FIELDS = ("name", "state", "running", "failed", "needs_update", "needs_login", "paused",
                 "parent", "deployed_sha", "active_model", "status_text", "status_set_at",
                 "url", "pending_reminders", "role", "last_turn_at", "claude_missing", "restart", "forge")
# `restart` is null, or {deaths, reason, next_at} while a harness that died on its own is
# being started again by the core (next_at null once it runs again, until it has run a while).
# `forge` is null without a forge mirror, else {repo, pushed_sha, pushed_at, error, retry_at}.
APPROVAL_FIELDS = ("id", "agent", "kind", "commit_ref", "fetched_sha", "requested_at",
                   "status", "resolved_at", "note", "description")
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
        raise HiveError(f"a frame must be a JSON object, got {_type_name(obj)}", "bad_frame")
    return obj


def result(response):
    """Return a response's payload, raising HiveError for an error response."""
    if not response.get("ok"):
        raise HiveError(str(response.get("error") or "the server answered an error without a sentence"),
                        response.get("code") if response.get("code") in ERROR_STATUS else "internal")
    return response

"""The verbs of the three socket surfaces (host, agent, manager) and their arguments.

Owns the verb table (`VERBS`: each verb's arguments, their kinds, limits and
help), which surface answers which verb, the one validator of every argument
(`check_args`, for a socket and an MCP tool call alike), the JSON schema an MCP
tool declares for a verb, and the check of a decoded request. Standard library
only; it stands on `wire` (errors, limits, names, values), the leaf it shares
with core and harness, so the two still never need each other.
"""

import json

from hyperhive.wire import (LOOSE_END_KINDS, MAX_BODY, MAX_INT, MAX_OPTION, MAX_OPTIONS, MAX_STATUS, NAME_RE,
                            QUESTION_MAX_TTL, RECV_MAX_BATCH, RECV_MAX_WAIT, REMINDER_MAX_SECONDS, TOOL_INPUT_MAX,
                            TOOL_USE_MAX_WAIT, HiveError, check_name, check_options, cut, parse_when, type_name)

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


def _coerce(verb, arg, value, strict=False):
    where = f"{verb}: {arg.name!r}"
    if arg.kind == "str" or arg.kind == "text":
        if not isinstance(value, str):
            raise HiveError(f"{where} must be a string, got {type_name(value)}")
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
            raise HiveError(f"{where} must be true or false, got {type_name(value)}")
        return value
    if arg.kind in ("int", "clamp"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise HiveError(f"{where} must be a number, got {type_name(value)}")
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
    if arg.kind == "object":  # `hi` bounds its size as compact JSON, in bytes
        if not isinstance(value, dict):
            raise HiveError(f"{where} must be a JSON object, got {type_name(value)}")
        try:
            size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        except (UnicodeEncodeError, RecursionError, ValueError) as e:
            raise HiveError(f"{where} cannot be stored as JSON ({type(e).__name__}): {cut(str(e), 80)}") from None
        if arg.hi is not None and size > arg.hi:
            raise HiveError(f"{where} is {size} bytes as JSON; the limit is {arg.hi} ({arg.hi // 1024} KiB)")
        return value
    if arg.kind == "choice":
        if value not in arg.choices:
            raise HiveError(f"{where} must be one of {', '.join(arg.choices)}, got {str(value)[:40]!r}")
        return value
    raise AssertionError(arg.kind)


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
    "recent": ((Arg("limit", "int", False, 20, 1, 200, help="How many messages at most, newest first (1-200)."),),
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
    "approve": ((Arg("id", "int", True, None, 1),
                 Arg("always", "bool", False, False, help="A tool_use approval only: allow this call, and ask the "
                                                          "manager to add its rule to the agent's permissions.allow")),
                "approve a pending approval"),
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
    # the harness, for a tool call its permission policy says to ask about; answered as the operator decides
    "ask_tool_use": ((Arg("tool", "str", True, None, 1, 128, help="The tool's name, e.g. Bash."),
                      Arg("input", "object", True, None, None, TOOL_INPUT_MAX, help="The call's input, as claude "
                                                                                      "gave it."),
                      Arg("tool_use_id", "str", True, None, 1, 128, help="claude's id of the call: asking again "
                                                                          "with it finds the same approval."),
                      Arg("rule", "str", True, None, 0, 256, help="The ask rule it matched, e.g. Bash(git push:*)."),
                      Arg("wait_seconds", "int", False, 0, 0, TOOL_USE_MAX_WAIT,
                          help="How long to wait for the operator's decision; 0 answers at once.")),
                     "ask the operator to approve a tool call; answers the approval, pending until decided"),
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
               "inbox", "operator_msg", "whoami", "get_loose_ends", "cancel_loose_end", "ask", "answer",
               "remind", "count_pending_reminders", "set_status", "report_login", "ask_tool_use")
MANAGER_VERBS = AGENT_VERBS + ("agent_status", "request_apply_commit", "request_init_config",
                               "request_spawn", "start", "stop", "restart", "rebuild", "kill", "update")
SURFACES = {"host": HOST_VERBS, "agent": AGENT_VERBS, "manager": MANAGER_VERBS}
STREAMING_VERBS = frozenset({"subscribe_agent_status"})
# Verbs that may wait on the server: their connections are watched for a hang-up.
WAITING_VERBS = STREAMING_VERBS | {"recv", "ask_tool_use"}


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
    "object": lambda arg: {"type": "object"},
    "ids": lambda arg: {"type": "array", "minItems": 1, "maxItems": RECV_MAX_BATCH,
                        "items": {"type": "integer", "minimum": 1}},
    "scope": lambda arg: {"type": "object", "properties": {"agent_names": {
        "type": "array", "minItems": 1, "items": {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}}},
        "required": ["agent_names"]},
}


def parse_request(obj, surface):
    """Check a decoded request against a surface; returns (verb, args dict)."""
    if not isinstance(obj, dict):
        raise HiveError(f"a request must be a JSON object, got {type_name(obj)}", "bad_frame")
    verb = obj.get("cmd")
    if not isinstance(verb, str):
        raise HiveError("a request needs a \"cmd\" string naming the verb", "bad_frame")
    allowed = SURFACES[surface]
    if verb not in allowed:
        raise HiveError(f"unknown verb {cut(verb)!r} on the {surface} socket; known: {', '.join(sorted(allowed))}",
                        "unknown_verb")
    return verb, check_args(verb, obj, surface)

"""The MCP tools the model sees (mcp__hyperhive__send, ...): the tool table.

Owns each tool's name, the description the model reads, the wire verb it
becomes, which roles have it, how long the core may take and how its answer
reads back to the model. Each tool's arguments are its verb's (`verbs.VERBS`),
so their schema and limits are written once, there. `mcp.py` serves this
table over stdio; claude's invocation grants it (`allowed_tools`).
"""

# loaded by the MCP server on every turn: the stdlib and our stdlib-only leaves only
from hyperhive import verbs, wire

SERVER_NAME = "hyperhive"  # the MCP server's name in claude's config: tools are mcp__<SERVER_NAME>__<tool>
ROLES = ("agent", "manager")
MANAGER = ("manager",)  # the tools only the manager has
CALL_TIMEOUT = 30.0  # seconds the core gets to answer a tool's request


# -- the tool table ---------------------------------------------------------------

class Tool:
    """One tool: what the model sees, the wire verb it becomes, how its answer reads.

    Its arguments are the verb's (`verbs.VERBS`): their schema, limits and
    meanings are generated from there and checked by `verbs.check_args`, so
    each limit is written once. `required` asks the model for arguments the
    verb would let it leave out (a description for the operator, say)."""

    __slots__ = ("name", "description", "verb", "format", "roles", "timeout", "required")

    def __init__(self, name, description, verb, format, roles=ROLES, timeout=lambda args: CALL_TIMEOUT,
                 required=()):
        self.name, self.description, self.verb, self.format = name, description, verb, format
        self.roles, self.timeout, self.required = roles, timeout, required

    def surface(self):
        return "manager" if self.roles == MANAGER else "agent"

    @property
    def input_schema(self):
        return verbs.json_schema(self.verb, self.surface(), self.required)

    def listing(self):
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


def _format_sent(answer, args):
    return f"sent to {args['to']} (message id {answer.get('id')})"


def _format_recv(answer, args):
    messages = answer.get("messages") or []
    if not messages:
        return "(empty)"
    if len(messages) == 1:
        return wire.format_message(messages[0])
    return f"popped {len(messages)} messages\n\n" + "\n---\n".join(map(wire.format_message, messages))


def _format_recent(answer, args):
    messages = answer.get("messages") or []
    if not messages:
        return "(no messages yet)"
    rows = []
    for m in messages:
        body = m.get("body")
        if m.get("body_chars"):
            body += f"\n[cut: the body has {m['body_chars']} characters]"
        rows.append(f"message {m.get('id')} from {m.get('from')} to {m.get('to')} at {m.get('sent_at')}\n\n{body}")
    return f"{len(messages)} messages, newest first\n\n" + "\n---\n".join(rows)


def _format_whoami(answer, args):
    keys = ("name", "role", "hyperhive_rev") + (("operator_pronouns",) if answer.get("operator_pronouns") else ())
    return "\n".join(f"{key}: {answer.get(key)}" for key in keys)


def _format_asked(answer, args):
    to = args.get("to") or wire.OPERATOR
    whom = "the operator" if to == wire.OPERATOR else to
    text = (f"question {answer.get('id')} is with {whom}. Its answer arrives later in your inbox as a new "
            "message starting with [question_answered], which wakes you for a new turn: do not wait or poll "
            "for it now; go on with what does not depend on it, or end your turn.")
    if args.get("ttl_seconds"):
        text += f" If nobody answers within {wire.duration(args['ttl_seconds'])}, ttl-watchdog closes it unanswered."
    return text


def _format_answered(answer, args):
    asker = (answer.get("question") or {}).get("asker") or "the asker"
    return f"answered question {args['id']}; {asker} gets your answer in its inbox."


TOOLS = (
    Tool(
        "send",
        "Send a message to another agent by name, to `manager`, or to `operator` (the human "
        "running the hive). It is delivered to their inbox and they see it on their next turn; "
        "any answer arrives later in your own inbox as a new message, not as the result of this "
        "call. Returns the message id.",
        "send", _format_sent),
    Tool(
        "recv",
        "Pop messages from your inbox. The harness already hands you the message that woke you "
        "and says how many more are unread, so use this mid-turn: to read those unread messages "
        "(up to `max` at once) or to wait up to `wait_seconds` for a reply you expect. Answers "
        "\"(empty)\" when nothing is waiting. A message marked redelivered was in a turn that did "
        "not finish and may already be handled.",
        "recv", _format_recv,
        # the core may hold the call for wait_seconds before it answers
        timeout=lambda args: args["wait_seconds"] + CALL_TIMEOUT),
    Tool(
        "recent",
        "Read your recent conversation again: the messages sent to you or by you, newest first, those already "
        "handled included (recv pops only what is unread and marks it yours). Use it after a new session or a "
        "compaction to recall what was said; long bodies are cut here.",
        "recent", _format_recent),
    Tool(
        "whoami",
        "Your own agent name, your role (agent or manager) and the hyperhive revision the hive runs.",
        "whoami", _format_whoami),
    Tool(
        "ask",
        "Ask a question that needs exactly one answer: a decision, an approval in words, a fact you cannot "
        "find out yourself. By default it goes to the operator (the human running the hive, who sees it on the "
        "dashboard); with `to` it goes to another agent or `manager`, who answers with their `answer` tool. "
        "Give `options` when the choices are known. This returns at once with the question's id; the answer "
        "arrives LATER in your inbox as a new message starting with `[question_answered]` (question id, your "
        "question, who answered, the answer), which wakes you for a new turn. Do not wait or poll for it in "
        "this turn: go on with what does not depend on it, or end your turn. With `ttl_seconds`, a question "
        "still open when it runs out is closed by `ttl-watchdog`, whose `[question_answered]` message says "
        "nobody answered in time. For news that needs no answer, use `send`.",
        "ask", _format_asked),
    Tool(
        "answer",
        "Answer a question another agent put to you with its `ask` tool: it reached your inbox as a message "
        "starting with `[question_asked]` that gives the question's id. Your answer goes to the asker's inbox "
        "as a `[question_answered]` message. A question is answered once; questions to the operator are the "
        "operator's alone.",
        "answer", _format_answered),
)


def _format_reminded(answer, args):
    r = answer.get("reminder") or {}
    text = (f"reminder {answer.get('id')} is set for {r.get('due_at')}. It arrives in your inbox then as a message "
            "starting with [reminder], which wakes you; nothing to wait for now.")
    if args.get("file_path"):
        text += f" The message is written to {args['file_path']} now; the reminder points there."
    return text


def _format_loose_ends(answer, args):
    ends = answer.get("loose_ends") or []
    if not ends:
        return "nothing is open: no pending approvals, open questions or reminders."
    lines = []
    for e in ends:
        kind = e.get("loose_end")
        if kind == "question":
            what = f"{e['asker']} asked {e['target']}: {_first_line(e.get('question'))}"
            if e.get("expires_at"):
                what += f" (expires {e['expires_at']})"
        elif kind == "reminder":
            what = f"{e['owner']}'s, due {e['due_at']}: {_first_line(e.get('message'))}"
            if e.get("failed_at"):
                what += f" — FAILED {e['failed_at']}: {e.get('error')}"
        else:
            what = f"{e.get('kind')} of {e.get('agent')}, {e.get('status')}: {_first_line(e.get('description'))}"
        lines.append(f"- {kind} {e.get('id')}: {what}")
    return "\n".join(lines) + "\n(cancel one with cancel_loose_end {kind, id})"


def _first_line(text, limit=120):
    line = (str(text or "").strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _format_cancelled(answer, args):
    return f"{args['kind']} {args['id']} withdrawn."


def _format_status(answer, args):
    text = answer.get("status_text")
    return f"status set: {text}" if text else "status cleared."


TOOLS += (
    Tool(
        "remind",
        "Leave a message for your future self: it is delivered to your own inbox when it comes due, as a new "
        "message starting with `[reminder]`, and wakes you for a turn. Give exactly one of `in_seconds` or "
        "`due_at` (RFC 3339 with a zone, like 2026-01-31T09:00:00Z). For a long payload, give `file_path` (in "
        "your state dir or the shared dir): the message is written there now and the reminder only points to it.",
        "remind", _format_reminded),
    Tool(
        "get_loose_ends",
        "What is still open about you: pending approvals about you, questions you asked that nobody answered "
        "yet, questions put to you that you have not answered, and your reminders that have not fired (or "
        "failed). The manager sees the whole hive's.", "get_loose_ends", _format_loose_ends),
    Tool(
        "cancel_loose_end",
        "Withdraw one of your loose ends: a question you asked (its asker is told it was cancelled), a "
        "reminder before it fires, or (manager only) a pending approval. The manager may withdraw anyone's.",
        "cancel_loose_end", _format_cancelled),
    Tool(
        "set_status",
        "Set your one-line status (what you are doing now), shown to the operator on the dashboard and your "
        "page while you run. An empty text clears it.",
        "set_status", _format_status),
)


def _format_id(what):
    return lambda answer, args: f"{what} (approval {answer.get('id')}); the operator decides. " \
        "The outcome arrives in your inbox as a [helper event]."


def _format_done(verb):
    return lambda answer, args: f"{verb}: {args['name']} done"


def _format_statuses(answer, args):
    rows = answer.get("agent_statuses") or []
    if not rows:
        return "(no agents)"
    lines = []
    for r in rows:
        extra = [f"model {r['active_model']}" if r.get("active_model") else None,
                 f"config {r['deployed_sha']}" if r.get("deployed_sha") else None,
                 "needs update" if r.get("needs_update") else None,
                 "needs login" if r.get("needs_login") else None,
                 (f"{'restarted' if r['running'] else 'being started again'} after {r['restart']['deaths']} "
                  f"death(s) in a row ({r['restart']['reason']})") if r.get("restart") else None,
                 f"status: {r['status_text']}" if r.get("status_text") else None]
        lines.append(f"{r['name']}: {r['state']}" + "".join(f", {e}" for e in extra if e))
    return "\n".join(lines)


TOOLS += (
    Tool(
        "request_apply_commit",
        "Ask the operator to deploy a change to an agent's config. First edit the agent's config repo "
        "(the git repo $HIVE_CONFIG_DIR/<agent>: agent.nix, and hive.json with model, env, "
        "extra_mcp), `git commit` it there, then call this with the commit's sha (7-40 hex chars; never a "
        "branch or tag name). The operator sees your description and the diff; if approved, the hive rebuilds "
        "the agent on that commit.",
        "request_apply_commit", _format_id("queued"), roles=MANAGER, required=("description",)),
    Tool(
        "request_init_config",
        "Step 1 of adding an agent: ask the operator to create its config repos from the template. "
        "Once approved, edit its config if needed and `git commit` it on main in $HIVE_CONFIG_DIR/<name>, "
        "then request_spawn: the agent starts on what you committed.",
        "request_init_config", _format_id("queued"), roles=MANAGER, required=("description",)),
    Tool(
        "request_spawn",
        "Step 2 of adding an agent (after request_init_config was approved): ask the operator to create "
        "and start it. The hive pins the commit main points to in its config repo now (or the commit_ref "
        "you give) and shows the operator the diff against the template; if approved, the agent starts on "
        "exactly that commit. Commit your edits before calling this: a commit made after it is not part "
        "of this spawn (deploy it later with request_apply_commit).",
        "request_spawn", _format_id("queued"), roles=MANAGER, required=("description",)),
    Tool(
        "update",
        "Ask the operator to update the pinned inputs of the hive's meta flake (nixos backend only).",
        "update", _format_id("queued"), roles=MANAGER, required=("description",)),
    Tool("agent_status", "Every agent's state: running/paused/stopped/failed, model, deployed config, status text.", "agent_status", _format_statuses, roles=MANAGER),
) + tuple(
    Tool(verb, text, verb, _format_done(verb), roles=MANAGER,
         timeout=lambda args: 180.0)
    for verb, text in (
        ("start", "Start a stopped or crashed agent on its deployed config."),
        ("stop", "Stop an agent after its running turn ends (not yourself); its messages wait for it."),
        ("restart", "Stop then start an agent on its deployed config, e.g. when it is stuck."),
        ("rebuild", "Re-apply an agent's deployed config and restart it."),
        ("kill", "Kill an agent's harness at once, cutting its turn; prefer stop or restart."),
    ))


def tools_for(role):
    """The tools of one role, by name, in table order."""
    return {tool.name: tool for tool in TOOLS if role in tool.roles}


def allowed_tools(role):
    """The names to grant claude with --allowedTools for this role's MCP server."""
    return [f"mcp__{SERVER_NAME}__{name}" for name in tools_for(role)]

"""Every kind of event the hive streams, each defined once with its fields.

Two streams: the dashboard's (`DASHBOARD`, the core's hub, `/dashboard/stream`)
and an agent page's (`LIVE`, the harness's bus, `/agent/<name>/events/stream`).
Every event is `{seq, kind, …}` (live events also carry `at`, unix ms); the
fields below are the rest. The publishers assert their kind is listed here;
docs/web.md's tables and the pages' switches are tested to name exactly these
kinds, so a new kind is added here first. Standard library only.
"""

from typing import NamedTuple


class Kind(NamedTuple):
    name: str
    means: str
    fields: tuple  # ((field, what it holds), …)


def _table(*kinds):
    return {k.name: k for k in kinds}


DASHBOARD = _table(
    Kind("sent", "a message was stored",
         (("message", "a `<message>`; a body past 32 KiB characters is cut, with `body_chars`"),)),
    Kind("delivered", "messages reached their recipient's turn",
         (("recipient", "whose"), ("ids", "the message ids now delivered"))),
    Kind("read", "the operator read messages",
         (("recipient", "whose (`operator`)"), ("ids", "the message ids now read"))),
    Kind("cancelled", "the operator cancelled a turn: its messages are handled, `cancelled_at` set",
         (("recipient", "whose"), ("ids", "the turn's message ids"))),
    Kind("requeued", "cancelled messages the operator queued again",
         (("recipient", "whose"), ("ids", "the message ids queued again"))),
    Kind("approval_added", "an approval waits for the operator", (("approval", "an approvals row with its `diff`"),)),
    Kind("approval_resolved", "an approval left `pending`",
         (("approval", "the row: `status` is one of `states.RESOLVED`, with `note`"),)),
    Kind("question_added", "a question to the operator (never an agent-to-agent one)",
         (("question", "a questions row"),)),
    Kind("question_resolved", "a question to the operator was closed",
         (("question", "the row closed: `answer`, `answered_by` (`operator`, `ttl-watchdog`, `core`, "
                       "or the asker for a withdrawal; cancels answer `[cancelled by <who>]`)"),)),
    Kind("transient_set", "an agent began an operation",
         (("name", "the agent"), ("transient", "one of `states.TRANSIENTS`"))),
    Kind("transient_cleared", "an agent's operation ended", (("name", "the agent"),)),
    Kind("container_state_changed", "an agent's container row changed", (("container", "a containers row"),)),
    Kind("container_removed", "an agent was destroyed", (("name", "the agent"),)),
    Kind("tombstones_changed", "the destroyed agents kept on a node's disk changed",
         (("tombstones", "the full list"), ("node", "whose disk (each node keeps its own)"))),
    Kind("meta_inputs_changed", "a node's meta flake's inputs changed",
         (("meta_inputs", "the full list, or null"), ("node", "whose meta flake (each node has its own)"))),
    Kind("nodes_changed", "a core of the hive joined, went silent or came back",
         (("nodes", "every node: `name`, `url`, `alive`, `silent_seconds`, …, as `/api/state`'s `nodes`"),)),
)

LIVE = _table(
    Kind("turn_start", "a turn began",
         (("from", "who sent the first message"), ("body", "its body"), ("body_html", "its body rendered"),
          ("unread", "messages still queued"), ("redelivered", "whether an earlier turn had it"),
          ("ids", "the message ids of the turn"), ("file_refs", "the refs of every message of the turn, in order"))),
    Kind("stream", "one line claude printed",
         (("line", "claude's stream-json object; prose blocks gain `html` / `input_html`"),)),
    Kind("note", "the harness says something",
         (("text", "what"), ("stream", "`stderr`/`stdout` for the CLI's own output, `operator` for an operator's "
                                       "action; absent for the harness's own notes"))),
    Kind("turn_end", "a turn ended",
         (("ok", "whether it ended well"), ("note", "why not, or null"),
          ("outcome", "one of `states.OUTCOMES`"), ("ids", "the message ids the turn had"))),
    Kind("status_changed", "the login status changed", (("status", "one of `states.LOGIN_STATUSES`"),)),
    Kind("model_changed", "the model changed", (("model", "its name"),)),
    Kind("token_usage_changed", "a turn's token counts arrived",
         (("ctx", "the context's token counts, or null"), ("cost", "the turn's billed token counts, or null"))),
    Kind("turn_state_changed", "the turn loop's state changed",
         (("state", "one of `states.TURN_STATES`"), ("since_unix", "when it entered it (unix s)"))),
    Kind("status_text_changed", "the agent's status line changed (a `set_status` the core took)",
         (("text", "the line, or null when cleared"), ("set_at", "when, or null"))),
)

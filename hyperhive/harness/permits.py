"""Claude's tool calls the harness is asked about, and who decides them: the agent's policy, else the operator.

Owns the answer to a session's `can_use_tool` control request (harness/
engine.py hands each one here) and how the policy shapes claude's grants.
A call reaches the harness only when claude was not told to allow it up
front, so the grants are shaped for that (`grants`): every tool an `ask`
rule names leaves `--allowedTools`, every `deny` rule goes to
`--disallowedTools` (claude enforces those itself, in both modes), and the
`allow` rules join the default grants (claude's own tools, the hive's, the
extra servers').

Per call (`Permits.__call__`), the policy's verdict (deny beats ask beats
allow): `deny` is answered with the rule that denied it; `ask` becomes a
pending `tool_use` approval on the core (`ask_tool_use`, long-polled until
the operator allows it once, always, or denies it with a reason, which
reaches the model as the denial's message); the turn waits meanwhile, and
the hang watchdog knows it is waiting, not hung. With no rule matching, a
tool in the default grants is allowed and any other denied, as claude's own
`--print` mode would. Claude's `AskUserQuestion` becomes the hive's `ask` to
the operator: the question goes on the dashboard and the agent's page, and
the answer comes as a message, as every answer in the hive does; the tool
call itself is answered at once with where the answer will come.

In `spawn` mode nothing can wait on the operator mid-call (claude's stdin is
not a channel), so `ask` rules deny there too (`--disallowedTools`), and the
harness says so at its start.
"""

import fnmatch
import logging

from hyperhive import permissions, wire

log = logging.getLogger(__name__)

ASK_WAIT = 60  # one long poll of ask_tool_use; the harness asks again until the operator decides
ASK_USER_QUESTION = "AskUserQuestion"


def tool_name(rule):
    """The tool a rule names: `Bash(git push:*)` -> `Bash`."""
    return rule.split("(", 1)[0]


def grants(default, policy, mode):
    """(--allowedTools, --disallowedTools) for claude in this mode under this policy."""
    prompted = set(policy.tool_names("ask")) if mode == "session" else set()
    allowed = [g for g in [*default, *policy.allow] if tool_name(g) not in prompted]
    denied = [*policy.deny, *([] if mode == "session" else policy.ask)]
    return list(dict.fromkeys(allowed)), list(dict.fromkeys(denied))


def granted(tool, default):
    """Whether the default grants cover a tool: its name, its server (`mcp__notes`), or a glob."""
    return any(tool == g or tool.startswith(g + "__") or fnmatch.fnmatchcase(tool, g) for g in default)


class Permits:
    """Decides claude's tool calls for one agent. `client` is the harness's CoreClient, `bus` its event bus."""

    def __init__(self, policy, default, client, bus):
        self.policy, self.default, self.client, self.bus = policy, list(default), client, bus

    def __call__(self, turn, request):
        tool = str(request.get("tool_name") or "")
        tool_input = request.get("input") if isinstance(request.get("input"), dict) else {}
        if tool == ASK_USER_QUESTION:
            return self._question(tool_input)
        decision = self.policy.decide(tool, tool_input)
        if decision.verdict == "deny":
            return deny(f"this agent's permission policy denies it ({decision.rule})")
        if decision.verdict == "ask":
            return self._operator(turn, tool, tool_input, str(request.get("tool_use_id") or ""), decision.rule)
        if decision.verdict == "allow" or granted(tool, self.default):
            return allow(tool_input)
        return deny(f"{tool} is not granted to this agent; ask the operator (the manager can grant it in the "
                    "agent's config)")

    def _operator(self, turn, tool, tool_input, tool_use_id, rule):
        """A pending tool_use approval, waited on until the operator decides; the turn waits meanwhile."""
        if turn is not None:
            turn.waiting += 1
        try:
            first = True
            while True:
                try:
                    answer = self.client.call("ask_tool_use", timeout=ASK_WAIT + 30, tool=tool, input=tool_input,
                                              tool_use_id=tool_use_id, rule=rule, wait_seconds=ASK_WAIT)
                except wire.HiveError as e:
                    log.warning("ask_tool_use for %s: %s", tool, e)
                    self.bus.note(f"could not ask the operator about {permissions.summary(tool, tool_input)}: {e}")
                    return deny(f"the operator could not be asked ({e})")
                approval = answer.get("approval") or {}
                status = approval.get("status")
                if first:
                    first = False
                    if status == "pending":
                        self.bus.note(f"waiting for the operator to allow {permissions.summary(tool, tool_input)} "
                                      f"(approval #{approval.get('id')}, rule {rule})")
                if status == "approved":
                    self.bus.note(f"the operator allowed {permissions.summary(tool, tool_input)}")
                    return allow(tool_input)
                if status == "denied":
                    why = approval.get("note") or "no reason given"
                    self.bus.note(f"the operator denied {permissions.summary(tool, tool_input)}: {why}")
                    return deny(f"the operator denied this call: {why}")
                if status != "pending":
                    return deny(f"the approval was {status or 'lost'}: {approval.get('note') or 'the turn ended'}")
                if turn is not None and turn.over:
                    return deny("the turn ended before the operator decided")
        finally:
            if turn is not None:
                turn.waiting -= 1

    def _question(self, tool_input):
        """Claude's AskUserQuestion as the hive's ask: one question to the operator per question asked."""
        asked = []
        for q in (tool_input.get("questions") or [])[:4]:
            if not isinstance(q, dict) or not isinstance(q.get("question"), str):
                continue
            options = list(dict.fromkeys(str(o.get("label"))[:wire.MAX_OPTION] for o in q.get("options") or []
                                         if isinstance(o, dict) and o.get("label")))[:wire.MAX_OPTIONS]
            try:
                answer = self.client.call("ask", question=q["question"][:wire.MAX_BODY], to=wire.OPERATOR,
                                          options=options)
                asked.append(f"#{answer.get('id')}")
            except wire.HiveError as e:
                return deny(f"the question could not be asked through the hive: {e}")
        if not asked:
            return deny("AskUserQuestion needs at least one question")
        self.bus.note(f"claude's AskUserQuestion went to the operator as question {', '.join(asked)}")
        return deny(f"Asked the operator through the hive as question {', '.join(asked)}. The answer comes as a "
                    "message in a later turn; go on with other work or end this turn.")


def allow(tool_input):
    return {"behavior": "allow", "updatedInput": tool_input}


def deny(message):
    return {"behavior": "deny", "message": message}

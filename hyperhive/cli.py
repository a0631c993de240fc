"""hyperhive: a hive of long-lived Claude Code agents. The admin CLI and the map of roles.

Usage:
  hyperhive serve [--help] [<serve-option>...]
  hyperhive agent (serve | mcp)
  hyperhive manager (serve | mcp)
  hyperhive [options] list
  hyperhive [options] status
  hyperhive [options] send NAME BODY
  hyperhive [options] inbox [--limit N] [--before ID] [--unread] [--from NAME]
  hyperhive [options] read (MESSAGE... | --all)
  hyperhive [options] spawn NAME
  hyperhive [options] start NAME...
  hyperhive [options] stop NAME... [--now]
  hyperhive [options] restart NAME
  hyperhive [options] rebuild NAME
  hyperhive [options] kill NAME
  hyperhive [options] destroy NAME [--purge]
  hyperhive [options] pause NAME
  hyperhive [options] resume NAME
  hyperhive [options] pending
  hyperhive [options] approve ID [--always]
  hyperhive [options] deny ID [--reason TEXT]
  hyperhive [options] questions
  hyperhive [options] answer ID TEXT
  hyperhive [options] cancel-question ID
  hyperhive [options] request-spawn NAME [--commit SHA]
  hyperhive [options] tombstones
  hyperhive [options] purge NAME
  hyperhive [options] urls
  hyperhive [options] login-url
  hyperhive [options] sessions
  hyperhive [options] logout (ID | --all)
  hyperhive -h | --help | --version

Roles:
  serve           the core daemon, hive-c0re (`hyperhive serve --help` for its options)
  agent serve     an agent's harness: the turn loop that drives claude (hive-ag3nt)
  agent mcp       the agent's MCP server, spawned by claude on every turn
  manager serve   the manager's harness (hive-m1nd)
  manager mcp     the manager's MCP server

Verbs (one request on the core's admin socket):
  list            names of every agent
  status          one row per agent: state, model, login, parent, status text
  send            send BODY to NAME as the operator
  inbox           messages to the operator, newest first (unread marked *; --before ID pages back),
                  and who sent how many
  read            mark messages to the operator read (unread ones are never swept)
  spawn           create and start an agent
  start, stop     start or stop agents (stop waits for a running turn unless --now)
  restart         stop then start an agent
  rebuild         re-apply an agent's config and restart it
  kill            kill an agent's harness at once
  destroy         remove an agent; its state stays as a tombstone unless --purge
  pause, resume   park an agent's turn loop (its messages wait) or let it run again
  pending         approvals waiting for the operator
  approve, deny   decide an approval (deny tells the manager --reason; a tool call's deny tells its agent);
                  approve --always allows a tool call and asks the manager to allow its rule for good
  questions       questions agents asked the operator, waiting for an answer
  answer          answer question ID with TEXT (also an agent's question to a peer, in its stead)
  cancel-question  withdraw question ID; its asker is told it was cancelled
  request-spawn   queue an approval to create and start NAME from its proposed config (at --commit SHA,
                  else its main as it is now)
  tombstones      agents destroyed without --purge, whose state is kept
  purge           delete a tombstone's state and config for good
  urls            the hive's addresses
  login-url       a one-time link that logs a browser in to the dashboard (10 minutes, once)
  sessions        the browsers logged in to the dashboard
  logout          end dashboard session ID (from `sessions`), or --all of them

Options:
  --socket PATH   the core's admin socket (env HIVE_HOST_SOCKET, else <state-dir>/run/host.sock)
  --json          print the core's raw answer instead of a table
  --limit N       how many messages [default: 20]
  --before ID     only messages older than message ID
  --unread        only messages not yet read
  --from NAME     only messages from NAME
  --now           do not wait for a running turn to finish
  --purge         also delete the agent's state dir
  --reason TEXT   why an approval is denied [default: ]
  --always        (a tool_use approval) allow this call, and have the manager allow its rule from now on
  --commit SHA    a commit of the agent's proposed config repo (7-40 hex characters)
  --all           every session
"""

import json
import sys

from hyperhive import jsonline, settings, states, verbs, wire

LONG = 180.0  # lifecycle verbs wait for a harness to stop (its turn may be finishing)
# Unicode categories a terminal must never be handed raw: controls (C0, DEL, C1: escape sequences, OSC 52
# clipboard writes, carriage returns and backspaces that overwrite a line), invisible format characters
# (bidi overrides and isolates that reorder what is shown, zero-width characters and joiners, tag
# characters), line and paragraph separators, and lone surrogates.
HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text):
    """Text as the operator's terminal may print it: every character of HIDDEN spelled out (`\\x1b`,
    `\\r`, `\\u202e`), visible and inert. Agents write status lines, messages, questions and approval
    descriptions; every human output of the CLI passes through here (`--json` is escaped by JSON)."""
    text = str(text)
    if text.isprintable():  # the common case: one pass in C
        return text
    import unicodedata

    out = []
    for ch in text:
        if ch.isprintable() or unicodedata.category(ch) not in HIDDEN:
            out.append(ch)
        elif ch in NAMED:
            out.append(NAMED[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else
                       f"\\U{code:08x}")
    return "".join(out)


def _table(rows, columns):
    cells = [[shown("" if r.get(c) is None else r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _status_table(answer, sent):
    rows = [dict(r, model=r.get("active_model"), status=r.get("claude_missing") or r.get("status_text"),
                 login="claude missing" if r.get("claude_missing") else "needed" if r.get("needs_login") else "",
                 node=(r.get("node") or "") + ("" if r.get("node_alive", True) else " (silent)"))
            for r in answer["agent_statuses"]]
    columns = ["name", "state", "model", "login", "parent", "status"]
    if len({r.get("node") for r in answer["agent_statuses"]}) > 1:  # a hive across hosts: where each runs
        columns.insert(2, "node")
    return _table(rows, columns) if rows else "(no agents)"


def _messages_table(answer):
    rows = [dict(m, body=m["body"].replace("\n", " ")[:100], id=f"{m['id']}{'' if m.get('acked_at') else '*'}")
            for m in answer["messages"]]
    return _table(rows, ["id", "sent_at", "from", "body"]) if rows else "(no messages)"


def _inbox(answer, sent):
    text = _messages_table(answer)
    senders = answer.get("senders") or []
    if senders:
        text += "\n\n" + "  ".join(f"{s['name']}: {s['unread']} unread, {s['last_hour']} in the last hour"
                                   for s in senders)
    return text


def _approvals_table(answer, sent):
    """The pending approvals, then each one's diff whole: what approving it deploys."""
    approvals = answer["approvals"]
    if not approvals:
        return "(no pending approvals)"
    text = _table(approvals, ["id", "agent", "kind", "commit_ref", "requested_at", "description"])
    for a in approvals:
        if a["kind"] == "tool_use":  # no diff: the call itself, as the agent's claude would make it
            text += (f"\n\n=== approval {a['id']}: tool_use of {a['agent']}: {a['tool']}, asked by the rule "
                     f"{a['rule'] or '(none)'}\n{json.dumps(a['input'], indent=2, ensure_ascii=False)}")
            continue
        text += f"\n\n=== approval {a['id']}: {a['kind']} of {a['agent']} at {a['commit_ref']}\n{a['diff'].rstrip()}"
    return text


def _questions_table(answer, sent):
    rows = [dict(q, options=" | ".join(q["options"]), question=" ".join(q["question"].split())[:100])
            for q in answer["questions"]]
    return _table(rows, ["id", "asker", "asked_at", "expires_at", "options", "question"]) \
        if rows else "(no open questions)"


def _sessions_table(answer, sent):
    return _table(answer["sessions"], ["id", "created_at", "last_seen_at", "expires_at", "remote", "user_agent"]) \
        if answer["sessions"] else "(no sessions)"


def _approved(answer, sent):
    approval = answer["approval"]
    return f"approval {sent['id']}: {approval['status']}" + (f" ({approval['note']})" if approval["note"] else "")


def _approval_failed(answer):
    return answer["approval"]["status"] == states.FAILED_APPROVAL


# -- the commands ------------------------------------------------------------------------

class Command:
    """One CLI command: the wire verb it sends, its arguments built from docopt's (`build(args)`), how
    the answer reads (`show(answer, sent)`, given what was sent) and how long the core may take."""

    __slots__ = ("verb", "show", "build", "timeout", "failed")

    def __init__(self, verb, show, build=lambda args: {}, timeout=30, failed=lambda answer: False):
        """`failed(answer)`: an answer the core gave that still means the command did not do its work (an
        approved config that could not start): the CLI says it on stderr and exits 1."""
        self.verb, self.show, self.build, self.timeout, self.failed = verb, show, build, timeout, failed


def _said(text):
    """A formatter that prints the same words whatever the answer."""
    return lambda answer, sent: text


def _name(args):
    return {"name": args["NAME"][0]}


def _scope(args):
    return {"scope": {"agent_names": args["NAME"]}}


def _number(text, what, verb, arg):
    """A number the operator typed for `arg` of `verb`: read by wire's one parser, within the bounds the
    verb takes (an `ids` list's are whole numbers from 1), so a bad one is refused here in its sentence."""
    spec = next(a for a in verbs.args_of(verb, "host") if a.name == arg)
    lo = 1 if spec.kind == "ids" else spec.lo or 0
    return wire.whole_number(text, what, lo, wire.MAX_INT if spec.hi is None else spec.hi)


# command (the usage's word) -> Command: the one place a command's verb, arguments, printing and timeout are
# written; tests/test_cli.py holds it to the usage lines above, one entry a command
COMMANDS = {
    "list": Command("list", lambda answer, sent: "\n".join(answer["agents"]) or "(no agents)"),
    "status": Command("agent_status", _status_table),
    "send": Command("send", lambda answer, sent: f"sent (message {answer['id']})",
                    lambda args: {"to": args["NAME"][0], "body": args["BODY"]}),
    "inbox": Command("inbox", _inbox, lambda args: {
        "limit": _number(args["--limit"], "--limit", "inbox", "limit"),
        "before": None if args["--before"] is None else _number(args["--before"], "--before", "inbox", "before"),
        "unread": args["--unread"], "only_from": args["--from"]}),
    "read": Command("mark_read", lambda answer, sent: f"marked {len(answer['read'])} message(s) read",
                    lambda args: {"ids": None if args["--all"] else
                                  [_number(i, "message id", "mark_read", "ids") for i in args["MESSAGE"]]}),
    "spawn": Command("spawn", _said("spawn: done"), _name, LONG),
    "start": Command("start", _said("started"), _scope, LONG),
    "stop": Command("stop", _said("stopped"), lambda args: dict(_scope(args), graceful=not args["--now"]), LONG),
    "restart": Command("restart", _said("restart: done"), _name, LONG),
    "rebuild": Command("rebuild", _said("rebuild: done"), _name, LONG),
    "kill": Command("kill", _said("kill: done"), _name, LONG),
    "destroy": Command("destroy", _said("destroyed"), lambda args: dict(_name(args), purge=args["--purge"]), LONG),
    "pause": Command("set_paused", _said("paused"), lambda args: dict(_name(args), paused=True)),
    "resume": Command("set_paused", _said("resumed"), lambda args: dict(_name(args), paused=False)),
    "pending": Command("pending", _approvals_table),
    "approve": Command("approve", _approved,
                       lambda args: {"id": _number(args["ID"], "approval id", "approve", "id"),
                                     **({"always": True} if args["--always"] else {})}, LONG,
                       failed=_approval_failed),
    "deny": Command("deny", lambda answer, sent: f"approval {sent['id']}: denied",
                    lambda args: {"id": _number(args["ID"], "approval id", "deny", "id"),
                                  "reason": args["--reason"]}),
    "questions": Command("questions", _questions_table),
    "answer": Command("answer", lambda answer, sent: f"question {sent['id']}: answered; "
                                                     f"{answer['question']['asker']} has the answer in its inbox",
                      lambda args: {"id": _number(args["ID"], "question id", "answer", "id"), "answer": args["TEXT"]}),
    "cancel-question": Command("cancel_question", lambda answer, sent: f"question {sent['id']}: cancelled; "
                                                                       f"{answer['question']['asker']} was told",
                               lambda args: {"id": _number(args["ID"], "question id", "cancel_question", "id")}),
    "request-spawn": Command("request_spawn", lambda answer, sent: f"queued approval {answer['id']}",
                             lambda args: dict(_name(args), **({"commit_ref": args["--commit"]} if args["--commit"]
                                                               else {}))),
    "tombstones": Command("tombstones", lambda answer, sent: "\n".join(answer["tombstones"]) or "(no tombstones)"),
    "purge": Command("purge_tombstone", lambda answer, sent: f"purged {sent['name']}", _name),
    "urls": Command("urls", lambda answer, sent: "\n".join(f"{k}: {v or '-'}" for k, v in answer["urls"].items())),
    "login-url": Command("login_url", lambda answer, sent: answer["url"]),
    "sessions": Command("sessions", _sessions_table),
    "logout": Command("logout", lambda answer, sent: f"ended {answer['ended']} session(s)",
                      lambda args: {"id": None if args["--all"] else
                                    _number(args["ID"], "session id", "logout", "id")}),
}


def request_for(args):
    """(the Command, the arguments it sends) for docopt's dict of a command line: the table's entry for the
    one command word docopt set. A dict naming none is a usage line the table lacks: a bug, not a typo."""
    words = [word for word in COMMANDS if args.get(word)]
    if len(words) != 1:
        raise AssertionError(f"the usage let through a command line the CLI's table does not know: {words or args}")
    command = COMMANDS[words[0]]
    return command, command.build(args)


def parse(argv):
    """docopt's dict for argv, from the usage lines of argv's command alone (`usage.parse`)."""
    from hyperhive import __version__, usage

    return usage.parse(__doc__, argv, COMMANDS, version=f"hyperhive {__version__}")


ROLES = ("serve", "agent", "manager")


def _section(name):
    """The lines of one section of this usage text ("Verbs", "Options"), below its heading line."""
    return __doc__.split(f"\n{name}", 1)[1].split("\n", 1)[1].split("\n\n", 1)[0].splitlines()


def _entries(lines):
    """A section's entries: (the words its head names, its lines), a line indented deeper continuing one."""
    entries = []
    for line in lines:
        if line.startswith("    ") and entries:
            entries[-1][1].append(line)
        else:
            head = line.strip().split("  ")[0]
            entries.append(({w.strip() for w in head.split(",")}, [line]))
    return entries


def help_of(word):
    """One command's help: its usage lines, what it does, and the options it takes."""
    from hyperhive import usage

    lines = [line for line in __doc__.split("Usage:", 1)[1].split("\n\n", 1)[0].splitlines()
             if usage.command_of(line) == word]
    named = set()
    for line in lines:
        named.update(token.strip("[]()|.") for token in line.split() if token.strip("[]()|.").startswith("--"))
    said = [text for words, texts in _entries(_section("Verbs")) if word in words for text in texts]
    options = [text for words, texts in _entries(_section("Options")) for text in texts
               if {w.split()[0] for w in words} & (named | {"--socket", "--json"})]
    return "\n".join(["Usage:", *lines, "", *said, "", "Options:", *options])


def _unknown(word):
    """The one line for a command word the CLI does not have, with the nearest it does."""
    import difflib

    near = difflib.get_close_matches(word, list(COMMANDS) + list(ROLES), n=1)
    hint = f"did you mean {near[0]}?" if near else "`hyperhive --help` lists the verbs"
    return f"hyperhive: unknown verb {shown(word)!r}; {hint}"


def main(argv):
    from hyperhive import usage

    word, helped = usage.command_word(__doc__, argv)
    if word is not None and word not in COMMANDS and word not in ROLES:
        print(_unknown(word), file=sys.stderr)
        return 2
    if word in COMMANDS and helped:
        print(help_of(word))
        return 0
    args = parse(argv)
    if args["serve"] or args["agent"] or args["manager"]:
        # hyperhive.py routes roles before the CLI; only a mistyped one lands here
        print(f"hyperhive: {' '.join(argv)!r} is not a role; see `hyperhive --help`", file=sys.stderr)
        return 2
    path = args["--socket"] or settings.default_host_socket()
    try:
        command, sent = request_for(args)
        answer = jsonline.call(path, command.verb, timeout=command.timeout, **sent)
    except jsonline.Unreachable:
        print(f"hive-c0re is not running at {path}", file=sys.stderr)
        return 1
    except wire.HiveError as e:
        print(f"hyperhive: {shown(e)}", file=sys.stderr)
        return 1
    # a table's cells are escaped before their widths are taken; this pass covers every other answer
    print(json.dumps(answer, indent=2) if args["--json"] else
          "\n".join(map(shown, command.show(answer, sent).split("\n"))),
          file=sys.stderr if command.failed(answer) and not args["--json"] else sys.stdout)
    if command.failed(answer):
        return 1
    for warning in answer.get(wire.WARNINGS) or ():  # done, but a step after it failed: say so, still exit 0
        print(f"hyperhive: warning: {shown(warning)}", file=sys.stderr)
    return 0

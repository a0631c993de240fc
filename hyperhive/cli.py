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
  hyperhive [options] approve ID
  hyperhive [options] deny ID [--reason TEXT]
  hyperhive [options] questions
  hyperhive [options] answer ID TEXT
  hyperhive [options] cancel-question ID
  hyperhive [options] request-spawn NAME
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
  approve, deny   decide an approval (deny tells the manager --reason)
  questions       questions agents asked the operator, waiting for an answer
  answer          answer question ID with TEXT (also an agent's question to a peer, in its stead)
  cancel-question withdraw question ID; its asker is told it was cancelled
  request-spawn   queue an approval to create and start NAME from its config
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
  --all           every session
"""

import json
import sys

from hyperhive import jsonline, settings, wire

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


def _status_table(answer):
    rows = [dict(r, model=r.get("active_model"), status=r.get("claude_missing") or r.get("status_text"),
                 login="claude missing" if r.get("claude_missing") else "needed" if r.get("needs_login") else "")
            for r in answer["agent_statuses"]]
    return _table(rows, ["name", "state", "model", "login", "parent", "status"]) if rows else "(no agents)"


def _messages_table(answer):
    rows = [dict(m, body=m["body"].replace("\n", " ")[:100], id=f"{m['id']}{'' if m.get('acked_at') else '*'}")
            for m in answer["messages"]]
    return _table(rows, ["id", "sent_at", "from", "body"]) if rows else "(no messages)"


def _inbox(answer):
    text = _messages_table(answer)
    senders = answer.get("senders") or []
    if senders:
        text += "\n\n" + "  ".join(f"{s['name']}: {s['unread']} unread, {s['last_hour']} in the last hour"
                                   for s in senders)
    return text


def _approvals_table(answer):
    return _table(answer["approvals"], ["id", "agent", "kind", "commit_ref", "requested_at", "description"]) \
        if answer["approvals"] else "(no pending approvals)"


def _questions_table(answer):
    rows = [dict(q, options=" | ".join(q["options"]), question=" ".join(q["question"].split())[:100])
            for q in answer["questions"]]
    return _table(rows, ["id", "asker", "asked_at", "expires_at", "options", "question"]) \
        if rows else "(no open questions)"


def _sessions_table(answer):
    return _table(answer["sessions"], ["id", "created_at", "last_seen_at", "expires_at", "remote", "user_agent"]) \
        if answer["sessions"] else "(no sessions)"


def _id(args, what):
    try:
        return int(args["ID"])
    except ValueError:
        raise wire.HiveError(f"{what} id is a number, got {args['ID']!r}") from None


def request_for(args):
    """(verb, wire arguments, formatter, timeout) for parsed CLI arguments."""
    name = args["NAME"][0] if args["NAME"] else None
    if args["list"]:
        return "list", {}, lambda a: "\n".join(a["agents"]) or "(no agents)", 30
    if args["status"]:
        return "agent_status", {}, _status_table, 30
    if args["send"]:
        return "send", {"to": name, "body": args["BODY"]}, lambda a: f"sent (message {a['id']})", 30
    if args["inbox"]:
        try:
            limit = int(args["--limit"])
        except ValueError:
            raise wire.HiveError(f"--limit must be a number, got {args['--limit']!r}") from None
        try:
            before = int(args["--before"]) if args["--before"] else None
        except ValueError:
            raise wire.HiveError(f"--before is a message id (a number), got {args['--before']!r}") from None
        return "inbox", {"limit": limit, "before": before, "unread": args["--unread"], "only_from": args["--from"]}, \
            _inbox, 30
    if args["read"]:
        try:
            ids = None if args["--all"] else [int(i) for i in args["MESSAGE"]]
        except ValueError:
            raise wire.HiveError(f"message ids are numbers, got {' '.join(args['MESSAGE'])!r}") from None
        return "mark_read", {"ids": ids}, lambda a: f"marked {len(a['read'])} message(s) read", 30
    if args["pending"]:
        return "pending", {}, _approvals_table, 30
    if args["approve"] or args["deny"]:
        approval_id = _id(args, "an approval")
        if args["approve"]:
            return "approve", {"id": approval_id}, lambda a: f"approval {approval_id}: {a['approval']['status']}" + \
                (f" ({a['approval']['note']})" if a["approval"]["note"] else ""), LONG
        return "deny", {"id": approval_id, "reason": args["--reason"]}, \
            lambda a: f"approval {approval_id}: denied", 30
    if args["questions"]:
        return "questions", {}, _questions_table, 30
    if args["answer"]:
        question_id = _id(args, "a question")
        return "answer", {"id": question_id, "answer": args["TEXT"]}, \
            lambda a: f"question {question_id}: answered; {a['question']['asker']} has the answer in its inbox", 30
    if args["cancel-question"]:
        question_id = _id(args, "a question")
        return "cancel_question", {"id": question_id}, \
            lambda a: f"question {question_id}: cancelled; {a['question']['asker']} was told", 30
    if args["request-spawn"]:
        return "request_spawn", {"name": name}, lambda a: f"queued approval {a['id']}", 30
    if args["tombstones"]:
        return "tombstones", {}, lambda a: "\n".join(a["tombstones"]) or "(no tombstones)", 30
    if args["purge"]:
        return "purge_tombstone", {"name": name}, lambda a: f"purged {name}", 30
    if args["urls"]:
        return "urls", {}, lambda a: "\n".join(f"{k}: {v or '-'}" for k, v in a["urls"].items()), 30
    if args["login-url"]:
        return "login_url", {}, lambda a: a["url"], 30
    if args["sessions"]:
        return "sessions", {}, _sessions_table, 30
    if args["logout"]:
        session = None if args["--all"] else _id(args, "a session")
        return "logout", {"id": session}, lambda a: f"ended {a['ended']} session(s)", 30
    if args["start"]:
        return "start", {"scope": {"agent_names": args["NAME"]}}, lambda a: "started", LONG
    if args["stop"]:
        return ("stop", {"scope": {"agent_names": args["NAME"]}, "graceful": not args["--now"]},
                lambda a: "stopped", LONG)
    if args["destroy"]:
        return "destroy", {"name": name, "purge": args["--purge"]}, lambda a: "destroyed", LONG
    if args["pause"] or args["resume"]:
        return "set_paused", {"name": name, "paused": bool(args["pause"])}, \
            lambda a: "paused" if args["pause"] else "resumed", 30
    for verb in ("spawn", "restart", "rebuild", "kill"):
        if args[verb]:
            return verb, {"name": name}, lambda a, v=verb: f"{v}: done", LONG
    raise AssertionError("docopt let through a command this CLI does not know")


def main(argv):
    from docopt import docopt

    from hyperhive import __version__

    args = docopt(__doc__, argv=argv, version=f"hyperhive {__version__}")
    if args["serve"] or args["agent"] or args["manager"]:
        # hyperhive.py routes roles before the CLI; only a mistyped one lands here
        print(f"hyperhive: {' '.join(argv)!r} is not a role; see `hyperhive --help`", file=sys.stderr)
        return 2
    path = args["--socket"] or settings.default_host_socket()
    try:
        verb, wire_args, fmt, timeout = request_for(args)
        answer = jsonline.call(path, verb, timeout=timeout, **wire_args)
    except jsonline.Unreachable:
        print(f"hive-c0re is not running at {path}", file=sys.stderr)
        return 1
    except wire.HiveError as e:
        print(f"hyperhive: {shown(e)}", file=sys.stderr)
        return 1
    # a table's cells are escaped before their widths are taken; this pass covers every other answer
    print(json.dumps(answer, indent=2) if args["--json"] else "\n".join(map(shown, fmt(answer).split("\n"))))
    for warning in answer.get(wire.WARNINGS) or ():  # done, but a step after it failed: say so, still exit 0
        print(f"hyperhive: warning: {shown(warning)}", file=sys.stderr)
    return 0

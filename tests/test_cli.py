"""The admin CLI: its table without a core, then as the operator runs it, a real subprocess against a real core.

The unit tier holds the command table (`cli.COMMANDS`) to the usage text: every
command line the usage allows, expanded from the usage itself, parses to exactly
docopt's whole-text answer (`usage.parse`); each command sends the frame an
outside client would (caught by a recording fake of the socket call); a number
the operator mistypes is refused in wire's one sentence before anything is sent.

The process tier runs `python hyperhive.py --socket <host.sock> VERB ...` and checks
what a person sees: the tables and their columns, the `--json` answers,
the lifecycle verbs really changing the agent (read back over the socket),
and the failures: one plain sentence on stderr, exit 1, never a traceback,
and exactly `hive-c0re is not running at <path>` when nobody serves the socket.
"""

import itertools
import json
import os
import re
import socket
import sqlite3
import subprocess

import docopt
import pytest

from conftest import pyz_argv, wait_until
from fakecore import remove_tree, short_tmpdir
from hyperhive import __version__, cli, usage, verbs, wire

# -- the table, without a core ------------------------------------------------------

USAGE = cli.__doc__.split("Usage:")[1].split("\n\n")[0]
OPTIONS = cli.__doc__.split("Options:")[1]
SAMPLES = {"N": "5", "ID": "7", "MESSAGE": "3", "SHA": "abc1234", "PATH": "/tmp/h-sock"}  # else the word, lowered


def command_lines():
    """(command, usage line) for every line of the usage that names a command of the table's kind."""
    for line in USAGE.strip().splitlines():
        word = usage.command_of(line)
        if word and "[options]" in line:
            yield word, line.split(None, 1)[1]


def tokens(line):
    return re.findall(r"\.\.\.|[()\[\]|]|[^\s()\[\]|.]+", line)


def expand(toks):
    """Every argv (as a list of words) a usage pattern allows, once for each choice and each optional part,
    with repeated arguments given once and twice and `[options]` as none, one, or all of its options."""
    alternatives, current, i = [], [[]], 0
    while i < len(toks):
        tok = toks[i]
        if tok in ("(", "["):
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(toks[j], 0)
                j += 1
            inner = expand(toks[i + 1:j - 1])
            if toks[j:j + 1] == ["..."]:
                inner, j = inner + [a + b for a, b in itertools.product(inner, inner)], j + 1
            part = inner + [[]] if tok == "[" and [] not in inner else inner
            i = j
        elif tok == "|":
            alternatives += current
            current, i = [[]], i + 1
            continue
        elif tok == "options":
            part = [[]] + [[flag] + ([SAMPLES.get(arg, arg.lower())] if arg else []) for flag, arg in unnamed()]
            part.append([w for option in part for w in option])
            i += 1
        else:
            word = SAMPLES.get(tok, tok.lower()) if tok.isupper() else tok
            part, i = [[word]], i + 1
            if toks[i:i + 1] == ["..."]:
                part, i = [[word], [word, word + "2"]], i + 1
        current = [a + b for a, b in itertools.product(current, part)]
    return alternatives + current


def unnamed():
    """What `[options]` stands for: each option of the Options section that no usage line names."""
    named = set(re.findall(r"--[a-z-]+", USAGE))
    return [(flag, arg) for flag, arg in re.findall(r"^  (--[a-z-]+)(?: ([A-Z]+))?", OPTIONS, re.M)
            if flag not in named]


def argvs():
    for word, line in command_lines():
        for argv in expand(tokens(line)):
            assert "..." not in " ".join(argv), argv  # a repeat is read as one, never as a word
            yield word, argv
            if argv[0].startswith("--"):  # docopt takes options anywhere: the same line, options after the command
                yield word, argv[argv.index(word):] + argv[:argv.index(word)]


def whole(argv):
    """docopt's answer for the CLI's whole usage text: what `cli.parse` must give."""
    return docopt.docopt(cli.__doc__, argv=argv, version=f"hyperhive {__version__}")


def test_the_table_has_exactly_the_usages_commands():
    lines = [word for word, _ in command_lines()]
    assert sorted(set(lines)) == sorted(cli.COMMANDS), "a usage line without a table entry, or an entry no line uses"
    assert len(lines) == len(set(lines)), "a command on two usage lines"
    assert set(cli.COMMANDS) >= {"list", "request-spawn", "logout"} and len(cli.COMMANDS) >= 25


@pytest.mark.parametrize("word", sorted(cli.COMMANDS))
def test_each_command_line_parses_to_docopts_whole_text_answer(word):
    lines = [argv for w, argv in argvs() if w == word]
    assert lines, word
    for argv in lines:
        assert cli.parse(argv) == whole(argv), argv


def outcome(parse, argv):
    try:
        return "parsed", parse(argv)
    except docopt.DocoptExit as e:
        return "refused", str(e)


@pytest.mark.parametrize("word", sorted(cli.COMMANDS))
def test_a_line_off_the_usage_gets_docopts_own_answer(word):
    """Too few words, too many, an option of another command's line, one nobody knows: docopt's refusal (its
    usage text) where it refuses, its dict where it takes the line after all."""
    for argv in ([word, "--bogus"], [word], [word, "a", "b", "c", "d"], ["--json", word, "--now", "--purge", "--all"],
                 [word, "7", "--limit", "3"], ["--socket"]):
        assert outcome(cli.parse, argv) == outcome(whole, argv), argv
    assert outcome(cli.parse, [word, "--bogus"])[0] == "refused"


def test_help_and_version_are_docopts_own(capsys):
    for argv in (["--version"], ["-h"], ["--help"]):
        with pytest.raises(SystemExit) as theirs:
            whole(argv)
        said = capsys.readouterr().out
        with pytest.raises(SystemExit) as ours:
            cli.parse(argv)
        assert (ours.value.code, capsys.readouterr().out) == (theirs.value.code, said), argv


@pytest.mark.parametrize("word", sorted(cli.COMMANDS))
def test_a_commands_help_is_its_usage_what_it_does_and_its_options(word, recorder, capsys):
    assert cli.main(["--socket", "/s", word, "--help"]) == 0 and recorder.sent == []
    text = capsys.readouterr().out
    lines = [line for line in USAGE.splitlines() if usage.command_of(line) == word]
    assert lines and all(line in text for line in lines)
    said = text.split("\n\n")[1]
    assert word in [w.strip() for w in said.strip().split("  ")[0].split(",")]  # the Verbs entry that names it
    for option in {"--socket", "--json"} | set(re.findall(r"--[a-z]+", " ".join(lines))):
        assert re.search(rf"^  {option} ", text, re.M), (word, option)
    assert "Roles:" not in text  # its own help, not the whole usage


@pytest.mark.parametrize("typed, nearest", [("spwan", "spawn"), ("aprove", "approve"), ("stat", "start"),
                                             ("request-spwn", "request-spawn"), ("sevre", "serve")])
def test_a_mistyped_verb_is_one_line_with_the_nearest(typed, nearest, recorder, capsys):
    assert cli.main(["--socket", "/s", typed, "alice"]) == 2 and recorder.sent == []
    out, err = capsys.readouterr()
    assert out == "" and err == f"hyperhive: unknown verb {typed!r}; did you mean {nearest}?\n"


def test_a_verb_like_nothing_points_at_the_help(recorder, capsys):
    assert cli.main(["xyzzy"]) == 2 and recorder.sent == []
    assert capsys.readouterr().err == "hyperhive: unknown verb 'xyzzy'; `hyperhive --help` lists the verbs\n"


def test_pending_prints_each_diff_and_json_carries_it(recorder, capsys):
    recorder.ANSWERS = dict(Recorder.ANSWERS, pending={"approvals": [
        {"id": 3, "agent": "alice", "kind": "apply_commit", "commit_ref": "abc1234", "requested_at": "t",
         "description": "sonnet", "diff": "-model haiku\n+model sonnet\n"},
        {"id": 4, "agent": "bob", "kind": "spawn", "commit_ref": "def5678", "requested_at": "t",
         "description": "new", "diff": "+\x1b[31mred\n"},
        {"id": 5, "agent": "carol", "kind": "tool_use", "commit_ref": None, "requested_at": "t",
         "description": "Bash: git push", "diff": "", "tool": "Bash", "rule": "Bash(git push:*)",
         "input": {"command": "git push\x1b[2J", "description": "push"}}]})
    assert cli.main(["--socket", "/s", "pending"]) == 0
    out = capsys.readouterr().out
    assert "=== approval 3: apply_commit of alice at abc1234\n-model haiku\n+model sonnet\n" in out
    assert "=== approval 4: spawn of bob at def5678\n+\\x1b[31mred" in out  # escaped like every other output
    assert ("=== approval 5: tool_use of carol: Bash, asked by the rule Bash(git push:*)\n{\n"
            '  "command": "git push\\u001b[2J",\n  "description": "push"\n}') in out
    assert cli.main(["--socket", "/s", "--json", "pending"]) == 0
    assert json.loads(capsys.readouterr().out)["approvals"][0]["diff"] == "-model haiku\n+model sonnet\n"


def test_an_approval_that_failed_exits_non_zero_saying_why(recorder, capsys):
    recorder.ANSWERS = dict(Recorder.ANSWERS, approve={"approval": {"status": "failed", "note": "HOME is the hive's"}})
    assert cli.main(["--socket", "/s", "approve", "7"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "approval 7: failed (HOME is the hive's)\n"


class Recorder:
    """A fake of `jsonline.call`: records each request the CLI would send and answers it from `answers`."""

    ANSWERS = {
        "list": {"agents": ["alice", "bob"]},
        "agent_status": {"agent_statuses": [{"name": "alice", "state": "paused", "running": True, "paused": True,
                                             "active_model": "haiku", "parent": "core", "status_text": "busy"}]},
        "send": {"id": 11}, "inbox": {"messages": [], "senders": []}, "mark_read": {"read": [3, 4]},
        "pending": {"approvals": []}, "questions": {"questions": []}, "sessions": {"sessions": []},
        "approve": {"approval": {"status": "approved", "note": ""}},
        "answer": {"question": {"asker": "bob"}}, "cancel_question": {"question": {"asker": "bob"}},
        "request_spawn": {"id": 2}, "tombstones": {"tombstones": ["carol"]}, "logout": {"ended": 1},
        "urls": {"urls": {"domain": None, "home": "http://hive:7000/", "forge": None}},
        "login_url": {"url": "http://hive:7000/login/secret"},
    }

    def __init__(self):
        self.sent = []

    def __call__(self, path, verb, timeout=None, **args):
        self.sent.append((verb, args))
        return wire.ok(**self.ANSWERS.get(verb, {}))


@pytest.fixture
def recorder(monkeypatch):
    fake = Recorder()
    monkeypatch.setattr(cli.jsonline, "call", fake)
    return fake


# argv -> the frame an outside client of host.sock sends for it (these frames are kept byte-compatible)
FRAMES = {
    "list": ("list", {}),
    "status": ("agent_status", {}),
    "send alice hi": ("send", {"to": "alice", "body": "hi"}),
    "inbox": ("inbox", {"limit": 20, "before": None, "unread": False, "only_from": None}),
    "inbox --limit 5 --before 9 --unread --from bob": ("inbox", {"limit": 5, "before": 9, "unread": True,
                                                                 "only_from": "bob"}),
    "read 3 4": ("mark_read", {"ids": [3, 4]}),
    "read --all": ("mark_read", {"ids": None}),
    "spawn alice": ("spawn", {"name": "alice"}),
    "start alice bob": ("start", {"scope": {"agent_names": ["alice", "bob"]}}),
    "stop alice": ("stop", {"scope": {"agent_names": ["alice"]}, "graceful": True}),
    "stop alice bob --now": ("stop", {"scope": {"agent_names": ["alice", "bob"]}, "graceful": False}),
    "restart alice": ("restart", {"name": "alice"}),
    "rebuild alice": ("rebuild", {"name": "alice"}),
    "kill alice": ("kill", {"name": "alice"}),
    "destroy alice": ("destroy", {"name": "alice", "purge": False}),
    "destroy alice --purge": ("destroy", {"name": "alice", "purge": True}),
    "pause alice": ("set_paused", {"name": "alice", "paused": True}),
    "resume alice": ("set_paused", {"name": "alice", "paused": False}),
    "pending": ("pending", {}),
    "approve 7": ("approve", {"id": 7}),
    "approve 7 --always": ("approve", {"id": 7, "always": True}),
    "deny 7": ("deny", {"id": 7, "reason": ""}),
    "deny 7 --reason later": ("deny", {"id": 7, "reason": "later"}),
    "questions": ("questions", {}),
    "answer 7 yes": ("answer", {"id": 7, "answer": "yes"}),
    "cancel-question 7": ("cancel_question", {"id": 7}),
    "request-spawn alice": ("request_spawn", {"name": "alice"}),
    "request-spawn alice --commit abc1234": ("request_spawn", {"name": "alice", "commit_ref": "abc1234"}),
    "tombstones": ("tombstones", {}),
    "purge carol": ("purge_tombstone", {"name": "carol"}),
    "urls": ("urls", {}),
    "login-url": ("login_url", {}),
    "sessions": ("sessions", {}),
    "logout 4": ("logout", {"id": 4}),
    "logout --all": ("logout", {"id": None}),
}
# host verbs no command sends, and why
NOT_COMMANDS = {"subscribe_agent_status": "a stream for outside clients that watch; `status` is its one-shot form",
                "update_meta": "the dashboard's meta-update button (dashboard.py acts through host.sock)"}


def test_every_command_has_a_frame_here():
    assert {line.split()[0] for line in FRAMES} == set(cli.COMMANDS)


@pytest.mark.parametrize("line", sorted(FRAMES))
def test_each_command_sends_its_verb_and_arguments(line, recorder, capsys):
    assert cli.main(["--socket", "/nowhere/host.sock"] + line.split()) == 0
    verb, args = FRAMES[line]
    assert recorder.sent == [(verb, args)]
    assert verbs.parse_request({"cmd": verb, **args}, "host")[0] == verb  # host.sock takes it as it is
    out, err = capsys.readouterr()
    assert out.strip() and err == "", (out, err)


def test_json_prints_the_cores_answer(recorder, capsys):
    assert cli.main(["--socket", "/s", "--json", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == wire.ok(agents=["alice", "bob"])


def test_every_host_verb_is_a_command_or_said_why_not():
    sent = {command.verb for command in cli.COMMANDS.values()}
    assert sent <= set(verbs.HOST_VERBS), "a command sends what host.sock does not answer"
    assert set(verbs.HOST_VERBS) - sent == set(NOT_COMMANDS)


def test_the_status_table_prints_the_rows_state(recorder, capsys):
    """The core computes an agent's state once; the CLI prints it as the row says, never from the flags."""
    assert cli.main(["--socket", "/s", "status"]) == 0
    table = capsys.readouterr().out
    assert header(table) == ["NAME", "STATE", "MODEL", "LOGIN", "PARENT", "STATUS"]
    assert rows(table) == [["alice", "paused", "haiku", "core", "busy"]]


def numbered(line):
    """Where a FRAMES line has a number the operator typed: the indexes of its words."""
    return [i for i, w in enumerate(line.split()) if w.isdigit()]


NUMBER_SENTENCE = re.compile(r"(--limit|--before|approval id|question id|message id|session id) must be a whole "
                             r"number of (0|1) or more( and at most \d+)?, got .+")


@pytest.mark.parametrize("line", sorted(line for line in FRAMES if numbered(line)))
def test_a_bad_number_is_wires_one_sentence_and_nothing_is_sent(line, recorder, capsys):
    for i in numbered(line):
        for bad in ("x", "0", "1.5", "", str(2 ** 63)):  # (a negative one docopt reads as an option)
            argv = line.split()
            argv[i] = bad
            assert cli.main(["--socket", "/s"] + argv) == 1, argv
            out, err = capsys.readouterr()
            sentence = err.removeprefix("hyperhive: ").rstrip("\n")
            assert out == "" and NUMBER_SENTENCE.fullmatch(sentence), (argv, err)
            assert sentence.endswith(f"got {bad!r}")
    assert recorder.sent == []


def test_the_number_sentences_are_wires():
    def refused(argv):
        with pytest.raises(wire.HiveError) as e:
            cli.request_for(cli.parse(argv))
        return str(e.value)

    def wires(*args):
        with pytest.raises(wire.HiveError) as e:
            wire.whole_number(*args)
        return str(e.value)

    assert refused(["approve", "x"]) == wires("x", "approval id", 1) == \
        "approval id must be a whole number of 1 or more, got 'x'"
    assert refused(["inbox", "--limit", "0"]) == wires("0", "--limit", 1, 1000)
    assert refused(["read", "3", "x"]) == wires("x", "message id", 1)
    assert refused(["logout", str(2 ** 63)]) == wires(str(2 ** 63), "session id", 1)


def test_request_for_refuses_a_line_the_table_does_not_know():
    with pytest.raises(AssertionError):
        cli.request_for(cli.parse(["agent", "serve"]))
    with pytest.raises(AssertionError):
        cli.request_for({})


# -- the process tier: a real core ---------------------------------------------------


def run_cli(socket_path, *args, timeout=120):
    return subprocess.run(pyz_argv("--socket", socket_path, *args), capture_output=True, text=True,
                          timeout=timeout)


def ok_out(hive, *args):
    """Run a verb that must succeed; its stdout."""
    done = run_cli(hive.host_sock, *args)
    assert done.returncode == 0 and done.stderr == "", (args, done.returncode, done.stderr)
    return done.stdout


def refused(hive, *args):
    """Run a verb that must fail; its one stderr line."""
    done = run_cli(hive.host_sock, *args)
    assert done.returncode == 1, (args, done.returncode, done.stdout, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def header(table):
    return table.splitlines()[0].split()


def rows(table):
    return [line.split() for line in table.splitlines()[1:]]


def manager_ready(hive):
    wait_until(lambda: (hive.row("manager") or {}).get("running") and hive.row("manager")["active_model"],
               20, "the manager harness to run and persist its model")


# -- reading ----------------------------------------------------------------------

def test_list_names_every_agent(hive):
    assert ok_out(hive, "list") == "manager\n"


def test_status_table_and_json(hive):
    manager_ready(hive)
    table = ok_out(hive, "status")
    assert header(table) == ["NAME", "STATE", "MODEL", "LOGIN", "PARENT", "STATUS"]
    [manager] = [r for r in rows(table) if r[0] == "manager"]
    assert manager == ["manager", "running", "haiku", "core"]  # no login needed, no status text

    answer = json.loads(ok_out(hive, "--json", "status"))
    assert answer["ok"] is True and answer["version"] == 1
    [row] = answer["agent_statuses"]
    assert list(row) == list(wire.STATUS_FIELDS)
    assert row["name"] == "manager" and row["running"] is True


def test_send_says_the_message_id_and_the_core_has_it(hive):
    out = ok_out(hive, "send", "manager", "hi")
    match = re.fullmatch(r"sent \(message (\d+)\)\n", out)
    assert match, out
    con = sqlite3.connect(f"file:{hive.state_dir}/hive.db?mode=ro", uri=True)
    try:
        row = con.execute("select sender, recipient, body from message where id=?",
                          (int(match.group(1)),)).fetchone()
    finally:
        con.close()
    assert row == ("operator", "manager", "hi")
    second = ok_out(hive, "send", "manager", "hi again")
    assert second == f"sent (message {int(match.group(1)) + 1})\n"


def test_inbox_table_and_json(hive):
    assert ok_out(hive, "inbox") == "(no messages)\n"
    ok_out(hive, "send", "manager", "FAKE: send operator first-reply")
    wait_until(lambda: hive.call("inbox")["messages"], 30, "the manager's first reply")
    ok_out(hive, "send", "manager", "FAKE: send operator second-reply")
    wait_until(lambda: len(hive.call("inbox")["messages"]) == 2, 30, "the manager's second reply")

    out = ok_out(hive, "inbox")
    table, _, senders = out.partition("\n\n")
    assert header(table) == ["ID", "SENT_AT", "FROM", "BODY"]
    assert [(r[2], r[3]) for r in rows(table)] == [("manager", "second-reply"), ("manager", "first-reply")]
    assert all(r[0].endswith("*") for r in rows(table)), "unread ones are starred"
    assert senders == "manager: 2 unread, 2 in the last hour\n"
    first = rows(table)[1][0].rstrip("*")
    assert ok_out(hive, "read", first) == "marked 1 message(s) read\n"
    assert [r[0].endswith("*") for r in rows(ok_out(hive, "inbox").partition("\n\n")[0])] == [True, False]
    assert ok_out(hive, "read", "--all") == "marked 1 message(s) read\n"
    assert ok_out(hive, "inbox", "--unread") == "(no messages)\n\nmanager: 0 unread, 2 in the last hour\n"

    answer = json.loads(ok_out(hive, "--json", "inbox", "--limit", "1"))
    [newest] = answer["messages"]
    assert newest["from"] == "manager" and newest["body"] == "second-reply" and newest["to"] == "operator"


def test_pending_and_urls(hive):
    assert ok_out(hive, "pending") == "(no pending approvals)\n"
    assert ok_out(hive, "urls") == f"domain: -\nhome: {hive.url}\nforge: -\n"


def test_questions_answer_and_cancel(hive):
    assert ok_out(hive, "questions") == "(no open questions)\n"
    ship = hive.agent_call("manager", "ask", question="Ship v2\nnow?", options=["yes", "no"])["id"]
    logs = hive.agent_call("manager", "ask", question="Drop old logs?", ttl_seconds=3600)["id"]

    table = ok_out(hive, "questions")
    assert header(table) == ["ID", "ASKER", "ASKED_AT", "EXPIRES_AT", "OPTIONS", "QUESTION"]
    assert [(r[0], r[1]) for r in rows(table)] == [(str(ship), "manager"), (str(logs), "manager")]
    assert table.splitlines()[1].endswith("yes | no  Ship v2 now?")
    listed = json.loads(ok_out(hive, "--json", "questions"))["questions"]
    assert [q["id"] for q in listed] == [ship, logs] and listed[1]["expires_at"]

    assert ok_out(hive, "answer", str(ship), "yes, ship it") == \
        f"question {ship}: answered; manager has the answer in its inbox\n"
    assert ok_out(hive, "cancel-question", str(logs)) == f"question {logs}: cancelled; manager was told\n"
    assert ok_out(hive, "questions") == "(no open questions)\n"
    assert f"question {ship} is already closed" in refused(hive, "answer", str(ship), "no")
    assert "there is no question 999" in refused(hive, "cancel-question", "999")
    assert "question id must be a whole number of 1 or more, got 'x'" in refused(hive, "answer", "x", "yes")
    mine = [m for m in hive.agent_call("manager", "recent", limit=20)["messages"]
            if m["body"].startswith("[question_answered]")]
    assert sorted(m["body"].splitlines()[0] for m in mine) == sorted([
        f"[question_answered] Your question {ship} to the operator was answered by the operator.",
        f"[question_answered] Your question {logs} to the operator was cancelled by the operator; it has no "
        "answer. Ask again if you still need one."])


def hidden(text):
    """The characters of text a terminal would act on or hide (a table's own line breaks aside)."""
    import unicodedata

    return [ch for ch in text if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")]


def test_what_agents_write_reaches_the_terminal_escaped_never_raw(hive):
    """An agent writes status lines, messages, questions and approval descriptions: an OSC 52 clipboard
    write, a clear screen, carriage returns that overwrite a row, bidi overrides. Every table shows them
    spelled out (`\\x1b`), each agent's text on its own row; `--json` carries them as they are."""
    manager_ready(hive)
    osc52, clear = "\x1b]52;c;cm0gLXJmIH4K\x07", "\x1b[2J\x1b[H"
    status = f"busy{osc52}{clear}"
    body = "hi\rmanager  running  fake row\x08\x08\u202eevil\u2066\u200d\x9b31m"
    question = f"Ship?{osc52}\u202e"
    description = "fix\x1b]0;pwned\x07\rX\U000e0041"
    hive.agent_call("manager", "set_status", text=status)
    hive.agent_call("manager", "send", to="operator", body=body)
    hive.agent_call("manager", "ask", question=question, options=["yes\x1b[1A", "no"])
    hive.agent_call("manager", "request_init_config", name="newbie", description=description)
    wait_until(lambda: hive.call("inbox")["messages"], 10, "the manager's message")
    tables = {verb: ok_out(hive, verb) for verb in ("status", "inbox", "pending", "questions")}
    for verb, table in tables.items():
        assert hidden(table) == [], (verb, table)
        assert len(table.split("\n\n")[0].splitlines()) == 2, (verb, table)  # the header and the one row
    assert tables["inbox"].split("\n\n")[1] == "manager: 1 unread, 1 in the last hour\n"  # the senders' summary
    assert "busy\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2J\\x1b[H" in tables["status"]
    assert "hi\\rmanager  running  fake row\\x08\\x08\\u202eevil\\u2066\\u200d\\x9b31m" in tables["inbox"]
    assert "yes\\x1b[1A | no  Ship?\\x1b]52;c;cm0gLXJmIH4K\\x07\\u202e" in tables["questions"]
    assert "fix\\x1b]0;pwned\\x07\\rX\\U000e0041" in tables["pending"]
    # the raw answers are JSON, which escapes them itself, and carry the text as the agent wrote it
    raw = {verb: ok_out(hive, "--json", verb) for verb in ("status", "inbox", "pending", "questions")}
    assert all(hidden(text) == [] for text in raw.values())
    assert json.loads(raw["status"])["agent_statuses"][0]["status_text"] == status
    assert json.loads(raw["inbox"])["messages"][0]["body"] == body
    assert json.loads(raw["questions"])["questions"][0]["question"] == question
    assert json.loads(raw["pending"])["approvals"][0]["description"] == description


# -- lifecycle ----------------------------------------------------------------------

def test_spawn_pause_resume_stop_start_destroy(hive):
    assert ok_out(hive, "spawn", "x") == "spawn: done\n"
    assert ok_out(hive, "list") == "manager\nx\n"
    assert hive.row("x")["running"]

    assert ok_out(hive, "pause", "x") == "paused\n"
    assert hive.row("x")["paused"]
    assert ["x", "paused"] == [r for r in rows(ok_out(hive, "status")) if r[0] == "x"][0][:2]
    assert ok_out(hive, "resume", "x") == "resumed\n"
    assert not hive.row("x")["paused"]

    assert ok_out(hive, "stop", "x") == "stopped\n"
    row = hive.row("x")
    assert not row["running"] and not row["failed"]
    assert ["x", "stopped"] == [r for r in rows(ok_out(hive, "status")) if r[0] == "x"][0][:2]
    assert ok_out(hive, "start", "x") == "started\n"
    assert hive.row("x")["running"]

    assert ok_out(hive, "destroy", "x", "--purge") == "destroyed\n"
    assert ok_out(hive, "list") == "manager\n"
    assert not os.path.exists(hive.home("x"))


# -- failures -----------------------------------------------------------------------

def test_a_bad_name_is_one_sentence_on_stderr(hive):
    line = refused(hive, "spawn", "Bad")
    assert line.startswith("hyperhive: ") and "'Bad' is not valid" in line
    assert "no agent named 'ghost'" in refused(hive, "pause", "ghost")
    assert "reserved" in refused(hive, "spawn", "operator")
    assert "--limit must be a whole number of 1 or more and at most 1000, got 'lots'" in \
        refused(hive, "inbox", "--limit", "lots")
    assert ok_out(hive, "list") == "manager\n"  # nothing was created


def test_a_down_daemon_is_one_exact_sentence(tmp_path):
    missing = str(tmp_path / "nope" / "host.sock")
    done = run_cli(missing, "list", timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"hive-c0re is not running at {missing}\n")


def test_a_stale_socket_of_a_dead_daemon_is_the_same_sentence():
    tmp = short_tmpdir()
    try:
        path = str(tmp / "host.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)  # bound, never listening: what a crashed core leaves
        stale.close()
        done = run_cli(path, "status", timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", f"hive-c0re is not running at {path}\n")
    finally:
        remove_tree(tmp)

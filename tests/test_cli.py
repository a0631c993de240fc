"""The admin CLI as the operator runs it: a real subprocess against a real core daemon.

Every test runs `python hyperhive.py --socket <host.sock> VERB ...` and checks
what a person sees: the tables and their columns, the `--json` answers,
the lifecycle verbs really changing the agent (read back over the socket),
and the failures: one plain sentence on stderr, exit 1, never a traceback,
and exactly `hive-c0re is not running at <path>` when nobody serves the socket.
"""

import json
import os
import re
import socket
import sqlite3
import subprocess

from conftest import pyz_argv, wait_until
from fakecore import remove_tree, short_tmpdir
from hyperhive import wire


def cli(socket_path, *args, timeout=120):
    return subprocess.run(pyz_argv("--socket", socket_path, *args), capture_output=True, text=True,
                          timeout=timeout)


def ok_out(hive, *args):
    """Run a verb that must succeed; its stdout."""
    done = cli(hive.host_sock, *args)
    assert done.returncode == 0 and done.stderr == "", (args, done.returncode, done.stderr)
    return done.stdout


def refused(hive, *args):
    """Run a verb that must fail; its one stderr line."""
    done = cli(hive.host_sock, *args)
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
    assert "a question id is a number, got 'x'" in refused(hive, "answer", "x", "yes")
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
    body = f"hi\rmanager  running  fake row\x08\x08\u202eevil\u2066\u200d\x9b31m"
    question = f"Ship?{osc52}\u202e"
    description = f"fix\x1b]0;pwned\x07\rX\U000e0041"
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
    assert "--limit must be a number" in refused(hive, "inbox", "--limit", "lots")
    assert ok_out(hive, "list") == "manager\n"  # nothing was created


def test_a_down_daemon_is_one_exact_sentence(tmp_path):
    missing = str(tmp_path / "nope" / "host.sock")
    done = cli(missing, "list", timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"hive-c0re is not running at {missing}\n")


def test_a_stale_socket_of_a_dead_daemon_is_the_same_sentence():
    tmp = short_tmpdir()
    try:
        path = str(tmp / "host.sock")
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)  # bound, never listening: what a crashed core leaves
        stale.close()
        done = cli(path, "status", timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (1, "", f"hive-c0re is not running at {path}\n")
    finally:
        remove_tree(tmp)

"""Real processes: a core, its manager and agents on the process backend, with the fake claude.

Every harness here is a real `hyperhive.py agent serve` child that runs
tests/fakeclaude.py, which speaks MCP over stdio to our real MCP server,
which speaks to the core over the agent's real unix socket.
"""

import concurrent.futures
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from conftest import FAKE_CLAUDE, Hive, kill_harnesses, pyz_argv, running, wait_until
from hyperhive import jsonline, wire
from hyperhive.core.containers.process import ProcessBackend, leftovers


def inbox_bodies(hive):
    return [m["body"] for m in hive.call("inbox", limit=50)["messages"]]


# -- the daemon ---------------------------------------------------------------------

@pytest.fixture(params=["session", "spawn"])
def any_mode(request, tmp_path):
    """A started hive whose harnesses run claude in one engine mode: the turn loop keeps its promises in both."""
    with running(Hive(tmp_path / "state", env={"ANTHROPIC_API_KEY": "test-key"},
                      extra_args=["--pass-env", "ANTHROPIC_API_KEY", "--claude-mode", request.param])) as h:
        h.mode = request.param
        yield h


def test_host_socket_mode_and_manager_ensured(hive):
    assert stat.S_IMODE(os.stat(hive.host_sock).st_mode) == 0o660
    assert hive.call("list")["agents"] == ["manager"]
    wait_until(lambda: hive.row("manager")["running"] and hive.row("manager")["active_model"], 20,
               "the manager harness to run")
    row = hive.row("manager")
    assert list(row) == list(wire.STATUS_FIELDS)
    assert row["active_model"] == "haiku" and row["parent"] == "core" and row["pending_reminders"] == 0


def test_second_daemon_on_the_same_state_dir_is_refused(hive):
    second = subprocess.run(pyz_argv("serve", "--state-dir", hive.state_dir, "--backend", "process"),
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert "already serving" in second.stderr and "Traceback" not in second.stderr
    assert hive.call("list")["ok"]


def test_stale_socket_is_replaced_and_sigterm_is_clean(tmp_path):
    h = Hive(tmp_path / "state")
    os.makedirs(h.run_dir)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(h.host_sock)  # bound, never listening: what a crashed run leaves
    stale.close()
    h.start()
    try:
        wait_until(lambda: h.harness_pid("manager"), 20, "the manager's pidfile")
        manager_pid = h.harness_pid("manager")
        assert h.stop() == 0
        assert "Traceback" not in h.log()
        assert not os.path.exists(h.host_sock)
        wait_until(lambda: not os.path.exists(f"/proc/{manager_pid}") or
                   open(f"/proc/{manager_pid}/stat").read().split(")")[1].split()[0] == "Z",
                   10, "the manager harness to be stopped with the core")
    finally:
        kill_harnesses(h.state_dir)


def test_bad_frames_get_one_error_shape_and_the_server_keeps_serving(hive):
    hive.spawn("a")
    hive.call("set_paused", name="a", paused=True)  # keep a's queue for this test's own long-poll
    poller = jsonline.call  # a long-poll held open across all the bad frames
    import threading

    got = {}
    t = threading.Thread(target=lambda: got.update(poller(hive.sock("a"), "recent", limit=1)))
    t.start()
    cases = [
        (b"not json\n", "not valid JSON"),
        (b'{"cmd":"list"', "cut off"),
        (b'{"cmd":"frobnicate"}\n', "unknown verb"),
        (b'{"cmd":"send","to":7,"body":"x"}\n', "must be a string"),
        (b'{"cmd":"send","to":"a"}\n', "missing argument"),
        (b'{"cmd":"spawn","name":"../../etc"}\n', "not valid"),
        (b'{"cmd":"stop","scope":{"agent_names":[]}}\n', "never 'everything'"),
        (b"[" * 5000 + b"\n", "not valid JSON"),
        (b'{"cmd":"list","pad":"' + b"x" * (wire.MAX_LINE + 10) + b'"}\n', "1 MiB"),
    ]
    for data, fragment in cases:
        answer = hive.raw(hive.host_sock, data)
        assert answer["version"] == 1 and answer["ok"] is False, data[:40]
        assert fragment in answer["error"], (data[:40], answer)
    answer = hive.raw(hive.sock("a"), b'{"cmd":"spawn","name":"x"}\n')
    assert answer["code"] == "unknown_verb" and "agent socket" in answer["error"]
    t.join(10)
    assert got["ok"] and hive.call("list")["ok"]


def test_urls_and_pending_answer_real_shapes(hive):
    # home is the dashboard the core serves (the URL it logged); domain and forge are not configured here
    assert hive.call("urls")["urls"] == {"domain": None, "home": hive.url, "forge": None}
    assert hive.call("pending")["approvals"] == []


# -- lifecycle ----------------------------------------------------------------------

def test_spawn_validates_names(hive):
    for bad, fragment in (("Alice", "not valid"), ("manager", "reserved"), ("operator", "reserved"),
                          ("a" * 40, "not valid")):
        with pytest.raises(wire.HiveError, match=fragment):
            hive.call("spawn", name=bad)
    hive.spawn("a")
    with pytest.raises(wire.HiveError, match="already exists"):
        hive.call("spawn", name="a")


def test_lifecycle_rows_are_truthful(hive):
    hive.spawn("a")
    row = hive.row("a")
    assert row["running"] and not row["failed"] and row["parent"] == "operator"
    pid = hive.harness_pid("a")
    hive.call("stop", scope={"agent_names": ["a"]}, graceful=True)
    row = hive.row("a")
    assert not row["running"] and not row["failed"]
    assert not os.path.exists(f"/proc/{pid}/cmdline") or not open(f"/proc/{pid}/cmdline").read()
    hive.call("start", scope={"agent_names": ["a"]})
    assert hive.row("a")["running"]
    first = hive.harness_pid("a")
    hive.call("restart", name="a")
    assert hive.row("a")["running"] and hive.harness_pid("a") != first
    hive.call("kill", name="a")
    row = hive.row("a")
    assert not row["running"] and row["failed"]  # meant to run, but not running
    hive.call("start", scope={"agent_names": ["a"]})
    assert hive.row("a")["running"]


def test_scope_naming_an_unknown_agent_touches_nothing(hive):
    hive.spawn("a")
    with pytest.raises(wire.HiveError, match="no agent named 'ghost'"):
        hive.call("stop", scope={"agent_names": ["a", "ghost"]})
    assert hive.row("a")["running"]


def test_destroy_keeps_a_tombstone_and_purge_removes_it(hive):
    hive.spawn("a", "b")
    hive.call("destroy", name="a")
    assert "a" not in hive.call("list")["agents"]
    assert os.path.isdir(hive.home("a"))
    with pytest.raises(wire.HiveError, match="no agent named 'a'"):
        hive.call("send", to="a", body="hello?")
    hive.call("destroy", name="b", purge=True)
    assert not os.path.exists(hive.home("b"))
    assert not os.path.exists(hive.sock("b"))
    with pytest.raises(wire.HiveError, match="cannot be destroyed"):
        hive.call("destroy", name="manager")


def test_pause_parks_the_loop_and_is_idempotent(hive):
    hive.spawn("a")
    hive.call("set_paused", name="a", paused=True)
    hive.call("set_paused", name="a", paused=True)
    assert hive.row("a")["paused"]
    hive.call("send", to="a", body="FAKE: send operator handled-after-resume")
    hive.call("set_paused", name="a", paused=False)
    hive.call("set_paused", name="a", paused=False)
    assert not hive.row("a")["paused"]
    wait_until(lambda: "handled-after-resume" in inbox_bodies(hive), 20, "a to handle the message after resume")


def test_pause_holds_messages(hive):
    hive.spawn("a")
    hive.call("set_paused", name="a", paused=True)
    mid = hive.call("send", to="a", body="FAKE: send operator should-wait")["id"]
    # the core holds a paused agent's queue: its own recv gets nothing
    assert hive.agent_call("a", "recv", wait_seconds=0)["messages"] == []
    assert hive.db_rows("select delivered_at from message where id=?", mid) == [(None,)]
    assert hive.claude_calls("a") == []


def test_pass_env_and_claude_path_reach_the_harness(hive):
    hive.spawn("a")
    pid = hive.harness_pid("a")
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    assert env[b"ANTHROPIC_API_KEY"] == b"test-key"
    assert env[b"HIVE_CLAUDE_BIN"].decode().endswith("fakeclaude.py")
    assert env[b"HIVE_NAME"] == b"a" and env[b"HIVE_SOCKET"].decode() == hive.sock("a")


# -- turns ------------------------------------------------------------------------

def test_operator_to_a_to_b_to_operator(any_mode):
    any_mode.spawn("a", "b")
    any_mode.call("send", to="a", body="FAKE: send b FAKE: send operator pong from b")
    wait_until(lambda: "pong from b" in inbox_bodies(any_mode), 30, "b's answer in the operator's inbox")
    [a_call] = any_mode.claude_calls("a")
    assert a_call["prompt"].startswith("from: operator\n\n")
    assert a_call["model"] == "haiku" and a_call["continue"] is False
    assert "mcp__hyperhive__send" in ",".join(a_call["allowed_tools"]).split(",")
    assert a_call["env"]["MCP_CONNECTION_NONBLOCKING"] == "0"
    [b_call] = any_mode.claude_calls("b")
    assert b_call["prompt"].startswith("from: a\n\n")
    msg = [m for m in any_mode.call("inbox")["messages"] if m["body"] == "pong from b"][0]
    assert msg["from"] == "b"
    # both turns ended well, so every message to an agent is acked; b's answer waits unread for the operator
    wait_until(lambda: any_mode.db_rows("select recipient, count(*) from message where acked_at is null "
                                    "group by recipient") == [("operator", 1)], 10, "every agent's message to be acked")
    any_mode.call("mark_read", ids=[msg["id"]])
    assert any_mode.db_rows("select count(*) from message where acked_at is null") == [(0,)]


def test_the_conversation_survives_restarts_rebuilds_and_crashes_and_only_new_session_drops_it(any_mode):
    any_mode.spawn("a")

    def turn(word):
        calls = len(any_mode.claude_calls("a"))
        any_mode.call("send", to="a", body=f"FAKE: send operator {word}")
        wait_until(lambda: word in inbox_bodies(any_mode), 30, f"the turn that says {word}")
        return any_mode.claude_calls("a")[calls]

    first = turn("one")
    assert first["history"] == []
    session = first["session_id"]
    second = turn("two")
    assert second["session_id"] == session
    # a session's turns are lines written to one claude; a spawn's, one claude each
    assert (second["pid"] == first["pid"]) == (any_mode.mode == "session") and second["stream"] == (any_mode.mode == "session")
    any_mode.call("restart", name="a")
    assert turn("three")["session_id"] == session, "a restart keeps the conversation"
    any_mode.call("rebuild", name="a")
    assert turn("four")["session_id"] == session, "a rebuild keeps it"
    os.kill(any_mode.harness_pid("a"), signal.SIGKILL)
    wait_until(lambda: any_mode.row("a")["failed"] or not any_mode.row("a")["running"], 30, "the crash to be seen")
    any_mode.call("start", scope={"agent_names": ["a"]})
    fifth = turn("five")
    assert fifth["session_id"] == session, "so does a crash"
    assert [p.split("\n\n", 1)[1] for p in fifth["history"]] == [f"FAKE: send operator {w}" for w in
                                                                   ("one", "two", "three", "four")]
    status, _ = any_mode.dashboard("POST", "/agent/a/api/new-session", {})
    assert status == 200
    sixth = turn("six")
    assert sixth["resume"] is None and sixth["session_id"] != session and sixth["history"] == []
    assert turn("seven")["session_id"] == sixth["session_id"]


def test_failed_turn_is_not_acked_and_comes_again_flagged(any_mode):
    any_mode.spawn("a")
    mid = any_mode.call("send", to="a", body="FAKE: fail")["id"]
    wait_until(lambda: len(any_mode.claude_calls("a")) == 2, 30, "the failed turn to be tried again")
    first, again = any_mode.claude_calls("a")[:2]
    assert first["prompt"].startswith("from: operator") and again["prompt"].startswith(
        wire.REDELIVERED_BANNER + "\nfrom: operator")
    assert again["time"] - first["time"] >= 2.0  # the backoff, not a hot loop
    assert any_mode.db_rows("select redelivered, acked_at from message where id=?", mid) == [(1, None)]


def test_kill_mid_turn_redelivers_with_the_banner(any_mode):
    any_mode.spawn("a")
    any_mode.call("send", to="a", body="FAKE: sleep 60\nFAKE: send operator survived")
    wait_until(lambda: len(any_mode.claude_calls("a")) == 1, 20, "the slow turn to start")
    os.killpg(any_mode.harness_pid("a"), signal.SIGKILL)
    wait_until(lambda: any_mode.row("a")["failed"], 10, "the core to see the harness gone")
    any_mode.call("start", scope={"agent_names": ["a"]})
    # the second attempt sleeps too; the banner is in its prompt
    wait_until(lambda: len(any_mode.claude_calls("a")) == 2, 20, "the redelivered turn")
    assert any_mode.claude_calls("a")[1]["prompt"].startswith(wire.REDELIVERED_BANNER)


def test_cancel_means_stop_the_sender_is_told_and_retry_runs_it_again_on_purpose(any_mode):
    any_mode.spawn("a", "b")
    any_mode.call("send", to="b", body="FAKE: send a FAKE: sleep 60")  # b asks a for a turn that runs long
    wait_until(lambda: any_mode.claude_calls("a"), 30, "a's long turn to start")
    mid = any_mode.db_rows("select id from message where sender='b' and recipient='a'")[0][0]
    wait_until(lambda: any_mode.dashboard("GET", "/agent/a/api/state")[1]["turn_state"] == "thinking", 30, "a to think")
    assert any_mode.dashboard("POST", "/agent/a/api/cancel", {})[0] == 200
    wait_until(lambda: any_mode.db_rows("select acked_at is not null, cancelled_at is not null from message where id=?",
                                    mid) == [(1, 1)], 30, "the message to be handled as cancelled")
    told = wait_until(lambda: any_mode.db_rows("select body from message where sender='core' and recipient='b'"), 30,
                      "b to be told")
    assert told[0][0].startswith(f"[cancelled] the operator cancelled a's turn before it finished, so your message "
                                 f"#{mid} to a is marked handled without an answer")
    any_mode.call("send", to="a", body="FAKE: send operator after-cancel")
    wait_until(lambda: "after-cancel" in inbox_bodies(any_mode), 30, "a's next message")
    assert [c["prompt"].split("\n\n", 1)[1] for c in any_mode.claude_calls("a")] == [
        "FAKE: sleep 60", "FAKE: send operator after-cancel"], "the cancelled message did not run again"
    history = any_mode.dashboard("GET", "/dashboard/history")[1]["events"]
    assert [e["message"]["cancelled_at"] is not None for e in history if e["message"]["id"] == mid] == [True]
    events = any_mode.dashboard("GET", "/agent/a/events/history")[1]["events"]
    [cancelled] = [e for e in events if e["kind"] == "turn_end" and e["outcome"] == "cancelled"]
    assert cancelled["ids"] == [mid]
    status, answer = any_mode.dashboard("POST", "/agent/a/api/retry", {"ids": [mid]})
    assert (status, answer["requeued"]) == (200, [mid])
    again = wait_until(lambda: any_mode.claude_calls("a")[2:], 30, "the retried message to run")
    assert again[0]["prompt"] == f"{wire.REDELIVERED_BANNER}\nfrom: b\n\nFAKE: sleep 60"
    assert any_mode.dashboard("POST", "/agent/a/api/retry", {"ids": [mid]})[0] == 409, "not cancelled any more"
    wait_until(lambda: any_mode.dashboard("GET", "/agent/a/api/state")[1]["turn_state"] == "thinking", 30, "a to think")
    assert any_mode.dashboard("POST", "/agent/a/api/cancel", {})[0] == 200


def test_prompt_too_long_compacts_and_retries_once(any_mode):
    any_mode.spawn("a")
    any_mode.call("send", to="a", body="FAKE: too-long\nFAKE: send operator fits-now")
    wait_until(lambda: "fits-now" in inbox_bodies(any_mode), 20, "the retried turn")
    prompts = [c["prompt"] for c in any_mode.claude_calls("a")]
    assert prompts[1] == "/compact" and len(prompts) == 3
    first, compact, retry = any_mode.claude_calls("a")
    assert compact["session_id"] == retry["session_id"] == first["session_id"], \
        "compacted and retried on the same conversation"


def test_a_failed_compaction_is_a_failed_turn_with_its_reason(any_mode):
    any_mode.spawn("a")
    fails = os.path.join(any_mode.home("a"), "state", ".fakeclaude", "compact-fails")
    os.makedirs(os.path.dirname(fails), exist_ok=True)
    with open(fails, "w") as f:
        f.write("API Error: 400 compaction exploded")
    mid = any_mode.call("send", to="a", body="FAKE: too-long\nFAKE: send operator fits-now")["id"]
    wait_until(lambda: "fits-now" in inbox_bodies(any_mode), 60, "the turn to run once compaction works again")
    prompts = [c["prompt"] for c in any_mode.claude_calls("a")]
    assert prompts[:2] == [prompts[0], "/compact"] and prompts[2].startswith(wire.REDELIVERED_BANNER), \
        "no blind retry after the failed compaction: the turn failed and its message came again"
    db = os.path.join(any_mode.home("a"), "state", "hyperhive-events.sqlite")
    with sqlite3.connect(db) as con:
        ends = [json.loads(d) for (d,) in con.execute("select data from event where kind='turn_end' order by seq")]
    assert ends[0]["ok"] is False and ends[0]["outcome"] == "failed"
    assert ends[0]["note"] == "compaction failed: Error during compaction: API Error: 400 compaction exploded"
    assert any_mode.db_rows("select redelivered from message where id=?", mid) == [(1,)]


def test_stderr_and_stream_lines_reach_the_event_history(hive):
    hive.spawn("a")
    hive.call("send", to="a", body="FAKE: stderr something odd\nFAKE: send operator done")
    wait_until(lambda: "done" in inbox_bodies(hive), 20, "the turn")
    db = os.path.join(hive.home("a"), "state", "hyperhive-events.sqlite")

    def kinds():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return [json.loads(d) for (d,) in con.execute("select data from event order by seq")]
        finally:
            con.close()

    events = wait_until(lambda: [e for e in kinds() if e["kind"] == "turn_end"] and kinds(), 10, "turn_end")
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    names = [e["kind"] for e in events]
    for kind in ("turn_start", "stream", "note", "turn_end", "turn_state_changed", "token_usage_changed"):
        assert kind in names, kind
    assert any(e["kind"] == "note" and e["text"] == "something odd" for e in events)
    assert [e for e in events if e["kind"] == "turn_end"][-1]["ok"] is True


# -- crashes of the core ------------------------------------------------------------

def test_answered_sends_survive_kill_9_of_the_core(tmp_path):
    h = Hive(tmp_path / "state")
    h.start()
    try:
        h.call("spawn", name="a")
        h.call("set_paused", name="a", paused=True)  # nobody consumes: we count rows
        ids = [h.call("send", to="a", body=f"m{i}")["id"] for i in range(50)]
        h.kill9()
        rows = h.db_rows("select id from message where recipient='a' order by id")
        assert [r[0] for r in rows] == ids
    finally:
        kill_harnesses(h.state_dir)


def test_harnesses_outlive_a_core_crash_and_reconnect(tmp_path):
    h = Hive(tmp_path / "state", env={"ANTHROPIC_API_KEY": "k"}, extra_args=["--pass-env", "ANTHROPIC_API_KEY"])
    h.start()
    try:
        h.call("spawn", name="a")
        wait_until(lambda: h.row("a")["active_model"], 20, "a to boot")
        pid = h.harness_pid("a")
        h.kill9()
        wait_until(lambda: "core unreachable" in open(os.path.join(h.home("a"), "harness.log")).read(), 30,
                   "the harness to notice the core is gone and say so")
        h.start()
        assert h.harness_pid("a") == pid  # adopted, not restarted
        assert "adopted a's running harness" in h.log()
        h.call("send", to="a", body="FAKE: send operator after-crash")
        wait_until(lambda: "after-crash" in inbox_bodies(h), 60, "the harness to reconnect and take the turn")
    finally:
        h.stop()
        kill_harnesses(h.state_dir)


def test_subscribe_agent_status_streams_changes(hive):
    frames = jsonline.stream(hive.host_sock, "subscribe_agent_status", timeout=30)
    hive.spawn("a")
    hive.call("set_paused", name="a", paused=True)
    seen = []
    for frame in frames:
        seen.extend(frame["agent_statuses"])
        if any(r["name"] == "a" and r["paused"] for r in seen):
            break
    frames.close()
    assert all(list(r) == list(wire.STATUS_FIELDS) for r in seen)
    assert any(r["name"] == "a" and r["running"] for r in seen)


# -- what a dead harness leaves behind: nothing ------------------------------------------

def harness_group(hive, name):
    """(leader pid, its start time) as the pidfile records the harness's group."""
    return harness_group_at(hive.home(name))


def harness_group_at(home):
    with open(os.path.join(home, "harness.pid")) as f:
        pid, started = map(int, f.read().split())
    return pid, started


def alive(pid):
    """Whether pid runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def pongs(hive):
    return inbox_bodies(hive).count("pong")


def test_a_harness_killed_alone_mid_turn_takes_claude_along_and_one_ping_gets_one_pong(tmp_path):
    h = Hive(tmp_path / "state", env={"ANTHROPIC_API_KEY": "test-key"}, extra_args=["--pass-env", "ANTHROPIC_API_KEY"])
    with running(h):
        h.spawn("a")
        h.call("send", to="a", body="FAKE: sleep 4\nFAKE: send operator pong")
        wait_until(lambda: len(h.claude_calls("a")) == 1, 20, "the turn to start")
        group = harness_group(h, "a")
        claude = h.claude_calls("a")[0]["pid"]
        assert claude in leftovers(*group)
        h.kill9()  # no core to clean up after the harness: what follows is the harness's own doing
        os.kill(group[0], signal.SIGKILL)  # the harness alone, not its group
        # well before its sleep ends, claude is gone, and its MCP server with it
        wait_until(lambda: not alive(claude) and not leftovers(*group), 2, "claude and its MCP server to die")
        h.start()
        wait_until(lambda: h.good_turns("a"), 30, "the redelivered turn")
        assert h.claude_calls("a")[-1]["prompt"].startswith(wire.REDELIVERED_BANNER)
        wait_until(lambda: pongs(h) >= 1, 10, "the pong")
        assert pongs(h) == 1 and len(h.good_turns("a")) == 1


def test_what_claude_left_running_is_killed_before_the_next_harness_starts(hive):
    hive.spawn("a")
    hive.call("send", to="a", body="FAKE: spawn 120\nFAKE: send operator pong")
    wait_until(lambda: pongs(hive) == 1, 20, "the turn")
    path = os.path.join(hive.home("a"), "state", ".fakeclaude", "spawned.jsonl")
    [left] = [json.loads(line)["pid"] for line in open(path)]
    group = harness_group(hive, "a")
    assert left in leftovers(*group)  # claude ended; its background process did not
    os.kill(group[0], signal.SIGKILL)
    try:
        wait_until(lambda: hive.row("a")["restart"], 10, "the core to see the death")
        wait_until(lambda: hive.row("a")["running"], 30, "the harness back")
        assert not alive(left) and not leftovers(*group)
        assert harness_group(hive, "a") != group
    finally:
        if alive(left):
            os.kill(left, signal.SIGKILL)


def test_a_harness_that_died_on_its_own_comes_back_by_itself_and_handles_what_queued(hive):
    hive.spawn("a")
    pid = hive.harness_pid("a")
    os.killpg(pid, signal.SIGKILL)
    row = wait_until(lambda: (lambda r: r if r["restart"] else None)(hive.row("a")), 10, "the core to see the death")
    assert row["restart"]["deaths"] == 1 and "killed by SIGKILL" in row["restart"]["reason"]
    hive.call("send", to="a", body="FAKE: send operator handled after the restart")
    wait_until(lambda: "handled after the restart" in inbox_bodies(hive), 30, "the queued message handled")
    assert hive.harness_pid("a") != pid and hive.row("a")["running"]
    told = [m for m in hive.call("inbox", limit=50)["messages"] if m["from"] == "core"]
    assert len(told) == 1 and told[0]["body"].startswith("[helper event] harness_crash: a's harness stopped")


def test_a_start_first_kills_what_is_left_of_the_last_harness(tmp_path):
    from hyperhive.core.containers import Launch

    script = tmp_path / "harness.py"
    # a harness that leaves a child in its group (as claude's tools may), then dies
    script.write_text("import subprocess, sys, time\n"
                      "child = subprocess.Popen(['sleep', '120'])\n"
                      "open(sys.argv[1], 'w').write(str(child.pid))\n"
                      "time.sleep(120)\n")
    home = tmp_path / "home"
    home.mkdir()
    told = tmp_path / "child.pid"
    launch = Launch("a", "agent", [sys.executable, str(script), str(told)], dict(os.environ),
                    str(home / "state"), str(home), str(home / "harness.log"))
    backend = ProcessBackend()
    first = backend.start(launch)
    try:
        child = int(wait_until(lambda: told.exists() and told.read_text(), 10, "the child"))
        group = harness_group_at(str(home))
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: not backend.running("a", str(home)), 10, "the harness gone")
        assert alive(child) and leftovers(*group) == [child]
        second = backend.start(launch)
        assert not alive(child) and not leftovers(*group) and second != first
    finally:
        backend.kill("a", str(home))
        if told.exists() and alive(int(told.read_text())):
            os.kill(int(told.read_text()), signal.SIGKILL)


def test_a_reused_pid_number_is_not_the_old_group(tmp_path):
    # a pidfile whose leader's number now belongs to a process that started later: not ours to kill
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = int(open(f"/proc/{other.pid}/stat").read().rsplit(")", 1)[1].split()[19])
        assert leftovers(other.pid, started) == [other.pid]
        assert leftovers(other.pid, started - 1) == []
        (tmp_path / "harness.pid").write_text(f"{other.pid} {started - 1}\n")
        assert ProcessBackend().sweep("a", str(tmp_path)) == 0 and alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_leftovers_that_will_not_die_stop_the_start_with_a_sentence(tmp_path, monkeypatch):
    from hyperhive.core.containers import process

    stuck = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        started = int(open(f"/proc/{stuck.pid}/stat").read().rsplit(")", 1)[1].split()[19])
        (tmp_path / "harness.pid").write_text(f"{stuck.pid} {started}\n")
        monkeypatch.setattr(process.os, "kill", lambda pid, sig: None)  # as a process stuck in the kernel
        now = [0.0]
        backend = ProcessBackend(clock=lambda: now[0])
        monkeypatch.setattr(process.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
        with pytest.raises(wire.HiveError) as e:
            backend.sweep("a", str(tmp_path))
        assert e.value.code == "unavailable" and f"pids {stuck.pid}" in str(e.value)
        assert "survived SIGKILL for 10s" in str(e.value) and alive(stuck.pid)
    finally:
        monkeypatch.undo()  # os.kill is everyone's
        stuck.kill()
        stuck.wait()


# -- stopping mid-turn ----------------------------------------------------------------

def test_graceful_stop_lets_the_running_turn_finish_and_ack(any_mode):
    any_mode.spawn("a")
    mid = any_mode.call("send", to="a", body="FAKE: sleep 2\nFAKE: send operator finished-before-stop")["id"]
    wait_until(lambda: len(any_mode.claude_calls("a")) == 1, 20, "the turn to start")
    any_mode.call("stop", scope={"agent_names": ["a"]}, graceful=True)
    assert "finished-before-stop" in inbox_bodies(any_mode)
    assert any_mode.db_rows("select acked_at is not null from message where id=?", mid) == [(1,)]
    assert not any_mode.row("a")["running"]


def test_stop_now_cuts_the_turn_and_leaves_it_for_redelivery(any_mode):
    any_mode.spawn("a")
    mid = any_mode.call("send", to="a", body="FAKE: sleep 60\nFAKE: send operator never")["id"]
    wait_until(lambda: len(any_mode.claude_calls("a")) == 1, 20, "the turn to start")
    any_mode.call("stop", scope={"agent_names": ["a"]}, graceful=False)
    assert not any_mode.row("a")["running"]
    # cut off: requeued by the stopping harness, or still in flight for its next boot; never acked
    assert any_mode.db_rows("select acked_at from message where id=?", mid) == [(None,)]
    assert "never" not in inbox_bodies(any_mode)


# -- the DESIGN table's frames, byte for byte ------------------------------------------

@pytest.mark.parametrize("frame, key", [
    (b'{"cmd":"list"}\n', "agents"),
    (b'{"cmd":"agent_status"}\n', "agent_statuses"),
    (b'{"cmd":"urls"}\n', "urls"),
    (b'{"cmd":"pending"}\n', "approvals"),
    (b'{"cmd":"inbox","limit":5}\n', "messages"),
    (b'{"cmd":"send","to":"manager","body":"hello"}\n', "id"),
    (b'{"cmd":"set_paused","name":"manager","paused":false}\n', None),
    (b'{"cmd":"start","scope":{"agent_names":["manager"]}}\n', None),
])
def test_design_frames_are_answered(hive, frame, key):
    answer = hive.raw(hive.host_sock, frame)
    assert answer["version"] == 1 and answer["ok"] is True, answer
    if key:
        assert key in answer


# -- the agent surface ------------------------------------------------------------------

def test_agent_socket_verbs_and_identity(hive):
    hive.spawn("a", "b")
    hive.call("set_paused", name="b", paused=True)
    assert hive.agent_call("a", "whoami") == {"version": 1, "ok": True, "name": "a", "role": "agent",
                                              "hyperhive_rev": hive.agent_call("a", "whoami")["hyperhive_rev"],
                                              "operator_pronouns": None, "status_text": None,
                                              "status_set_at": None}
    assert hive.agent_call("manager", "whoami")["role"] == "manager"
    # a request cannot say who sent it: the socket does
    mid = hive.agent_call("a", "send", to="b", body="hi b", **{"from": "operator", "sender": "manager"})["id"]
    assert hive.db_rows("select sender, recipient from message where id=?", mid) == [("a", "b")]
    with pytest.raises(wire.HiveError, match="yourself"):
        hive.agent_call("a", "send", to="a", body="me")
    with pytest.raises(wire.HiveError, match="unknown verb 'spawn'"):
        hive.agent_call("a", "spawn", name="c")
    # operator_msg from a's own page reaches only a
    hive.call("set_paused", name="a", paused=True)
    oid = hive.agent_call("a", "operator_msg", body="from your page")["id"]
    assert hive.db_rows("select sender, recipient from message where id=?", oid) == [("operator", "a")]
    recent = hive.agent_call("a", "recent", limit=10)["messages"]
    assert [m["body"] for m in recent] == ["from your page", "hi b"]
    assert hive.agent_call("manager", "agent_status")["agent_statuses"]


def test_run_dir_and_the_claude_from_the_environment(tmp_path):
    run_dir = tmp_path / "sockets"
    h = Hive(tmp_path / "state", claude=None, run_dir=run_dir,
             env={"HIVE_CLAUDE_BIN": FAKE_CLAUDE, "ANTHROPIC_API_KEY": "k"},
             extra_args=["--pass-env", "ANTHROPIC_API_KEY"])  # logged in, so the turn runs
    h.start()
    try:
        assert os.path.exists(run_dir / "host.sock") and not os.path.exists(os.path.join(h.state_dir, "run"))
        assert stat.S_IMODE(os.stat(run_dir / "host.sock").st_mode) == 0o660
        h.call("spawn", name="a")
        assert h.agent_call("a", "whoami")["name"] == "a"  # its socket is under --run-dir too
        assert h.sock("a").startswith(str(run_dir))
        with open(f"/proc/{h.harness_pid('a')}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        assert env[b"HIVE_CLAUDE_BIN"].decode() == FAKE_CLAUDE
        h.call("send", to="a", body="FAKE: send operator claude-from-env")
        wait_until(lambda: "claude-from-env" in inbox_bodies(h), 30, "a turn run by the env's claude")
    finally:
        h.stop()
        kill_harnesses(h.state_dir)


# -- tool calls the operator decides -----------------------------------------------------------------

def test_a_tool_call_waits_for_the_operators_decision_over_the_sockets(hive):
    """Issue 16, item 7, the core's side on the built pyz: what a harness does for a call its policy asks
    about (ask_tool_use on its own socket, waiting) and what the operator does (approve, --always, deny)."""
    hive.spawn("a", "b")
    # stopped, their sockets still serve: what is asked below is asked as their harnesses would, and no
    # turn of theirs ends (acks) meanwhile
    hive.call("stop", scope={"agent_names": ["a", "b"]}, graceful=False)
    push = {"tool": "Bash", "input": {"command": "git push origin main", "description": "push"},
            "rule": "Bash(git push:*)"}

    def ask(who, tool_use_id, wait_seconds=0):
        return hive.agent_call(who, "ask_tool_use", tool_use_id=tool_use_id, wait_seconds=wait_seconds,
                               timeout=wait_seconds + 30, **push)["approval"]

    def waiting_of(who):
        return [x for x in hive.call("pending")["approvals"] if x["kind"] == "tool_use" and x["agent"] == who]

    def always_asked(approval_id):
        return hive.db_rows("SELECT body FROM message WHERE sender = 'core' AND recipient = 'manager' "
                            "AND body LIKE ?", f"[helper event] always_allow:%(approval {approval_id})%")

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # a waits; the operator allows it always: the waiter hears it within its wait, the manager is asked
        waiter = pool.submit(ask, "a", "toolu_1", 60)
        [row] = wait_until(lambda: waiting_of("a"), 10, "a's tool call to wait for the operator")
        assert (row["tool"], row["input"], row["rule"], row["status"]) == ("Bash", push["input"], push["rule"],
                                                                           "pending")
        assert not waiter.done()
        decided_at = time.monotonic()
        assert hive.call("approve", id=row["id"], always=True)["approval"]["status"] == "approved"
        got = waiter.result(timeout=10)
        assert got["status"] == "approved" and got["id"] == row["id"] and time.monotonic() - decided_at < 5
        [(event,)] = wait_until(lambda: always_asked(row["id"]), 10, "the manager's always_allow helper event")
        assert "Add \"Bash(git push:*)\" to a's permissions.allow" in event
        # asked again with the same id (a harness that reconnected): the same approval, decided
        assert ask("a", "toolu_1") == got and len([x for x in hive.db_rows("SELECT id FROM approval WHERE "
                                                                            "tool_use_id = 'toolu_1'")]) == 1
        # deny with a reason: the reason is what the waiter hears
        waiter = pool.submit(ask, "a", "toolu_2", 60)
        [row] = wait_until(lambda: waiting_of("a"), 10, "a's second tool call")
        assert hive.call("deny", id=row["id"], reason="use the staging remote")["approval"]["status"] == "denied"
        got = waiter.result(timeout=10)
        assert (got["status"], got["note"]) == ("denied", "use the staging remote")
        assert always_asked(row["id"]) == []  # a plain decision is a's business, not the manager's

    # b cannot see, wait on or decide a's: the same id from b is b's own call, and deciding is the operator's
    mine = ask("a", "toolu_3")
    theirs = ask("b", "toolu_3")
    assert theirs["id"] != mine["id"] and theirs["agent"] == "b"
    assert not [e for e in hive.agent_call("b", "get_loose_ends")["loose_ends"] if e.get("kind") == "tool_use"]
    for verb in ("approve", "deny"):
        with pytest.raises(wire.HiveError, match=f"unknown verb '{verb}' on the agent socket"):
            hive.agent_call("b", verb, id=mine["id"])
    # at most 8 of one agent's wait at once: the 9th is refused with a sentence
    for n in range(4, 11):
        ask("a", f"toolu_{n}")
    assert len(waiting_of("a")) == wire.TOOL_USE_PENDING_MAX
    with pytest.raises(wire.HiveError, match="a already has 8 tool calls waiting for the operator's approval") as e:
        ask("a", "toolu_11")
    assert e.value.code == "conflict"
    # the turn that made them ends: every one still waiting is cancelled, saying why; b's wait on
    assert hive.agent_call("a", "ack_turn")["ok"]
    assert waiting_of("a") == [] and [x["id"] for x in waiting_of("b")] == [theirs["id"]]
    cancelled = ask("a", "toolu_3")
    assert (cancelled["status"], cancelled["note"]) == ("cancelled", "a's turn ended (it finished) before the "
                                                                      "operator decided")

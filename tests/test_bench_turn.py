"""The turn benchmark's claude (bench/instant_claude.py) in both modes, and the benchmark in its quickest form.

instant_claude is held to the stream-json shapes the harness reads; the
benchmark runs two timed rounds per claude mode on one-agent hives (about
fifteen seconds) and says what it measured. No figure is judged: that is
bench/run.py's table.
"""

import json
import os
import subprocess
import sys

from conftest import PYZ, ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_turn  # noqa: E402
from common import Children, Core, instant_claude  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "instant_claude.py")
SESSION_ARGV = ["--print", "--output-format", "stream-json", "--verbose", "--model", "haiku",
                "--input-format", "stream-json", "--permission-prompt-tool", "stdio"]


def user(text):
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}}) + "\n"


def records(directory):
    with open(os.path.join(directory, ".instant-claude.jsonl")) as f:
        return [json.loads(line) for line in f]


def converse(directory, stdin, *extra):
    done = subprocess.run([sys.executable, "-I", "-S", SCRIPT, *SESSION_ARGV, *extra], cwd=directory,
                          env=dict(os.environ, HOME=str(directory)), input=stdin, capture_output=True, text=True,
                          timeout=30)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_a_session_answers_each_user_line_and_every_control_request_then_exits_0_at_eof(tmp_path):
    control = json.dumps({"type": "control_request", "request_id": "r1",
                          "request": {"subtype": "set_model", "model": "opus"}}) + "\n"
    code, lines = converse(tmp_path, user("one") + control + user("two"))
    assert code == 0
    assert [(x["type"], x.get("subtype") or x["response"]["subtype"]) for x in lines] == [
        ("system", "init"), ("result", "success"), ("control_response", "success"), ("system", "init"),
        ("result", "success")]
    assert lines[2]["response"]["request_id"] == "r1"
    assert lines[3]["model"] == "opus"
    sid = lines[0]["session_id"]
    assert len({x["session_id"] for x in lines if "session_id" in x}) == 1
    assert len(sid) == 36 and sid.count("-") == 4  # a uuid: the harness keeps it
    kept = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / ".claude" / "projects") for f in fs]
    assert [os.path.basename(p) for p in kept] == [f"{sid}.jsonl"]  # so the harness resumes it on this process
    turns = records(tmp_path)
    assert len(turns) == 2 and all(t["mode"] == "session" and t["start"] <= t["exit"] for t in turns)

    code, lines = converse(tmp_path, user("three"), f"--resume={sid}")
    assert code == 0 and {x["session_id"] for x in lines} == {sid}


def test_a_spawned_turn_is_as_before(tmp_path):
    done = subprocess.run([sys.executable, "-I", "-S", SCRIPT, "--print", "--output-format", "stream-json",
                           "--verbose", "--model", "sonnet", "--", "hello"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [x["type"] for x in lines] == ["system", "result"] and lines[0]["model"] == "sonnet"
    assert lines[1]["session_id"].startswith("instant-")
    (turn,) = records(tmp_path)
    assert "mode" not in turn and turn["start"] <= turn["exit"]


def test_the_turn_benchmark_times_both_modes_against_their_bare_loops(sockdir):
    tmp = str(sockdir)
    claude = instant_claude(tmp)
    try:
        with Core(tmp, PYZ, 1, keep_harnesses=True, claude=claude, label="live", claude_mode="session") as hive:
            hive.wait_serving(120)
            rows = bench_turn.run(hive, tmp, claude, 2, PYZ, "session")
    finally:
        Children.stop_all()
    halves = {"session": ("send → claude read the line", "claude's result → ack"),
              "spawn": ("send → claude started", "claude exit → ack")}
    assert [r.name for r in rows] == [f"turn overhead, {m}: {h} (p50, n=2)"
                                      for m in ("session", "spawn") for h in halves[m] + ("sum of both",)]
    assert all(r.value > 0 for r in rows)
    assert [r.has_target for r in rows] == [False, False, True] * 2
    assert [r.shown_ratio() == "–" for r in rows] == [True] * 3 + [False] * 3
    assert "one claude process ran every timed turn" in rows[2].note

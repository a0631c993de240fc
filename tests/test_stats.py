"""Turn statistics over a real agent sqlite in tmp_path, with an injected `now`.

Proves: the three windows and their bucket sizes; buckets are whole UTC
hours/days ending with the one holding `now`, a turn lands in the bucket
its start falls in, turns before the window or after `now` are left out;
p50/p95 are nearest-rank, averages rounded; ctx is input + cache_read +
cache_creation of the last inference and turns without one are left out of
it; cost components are summed; top tools (10 at most), wake mix and
result mix are counted and ordered by count then name; an empty window
answers zeros and empty lists; an unknown window is a sentence.
"""

import json
import os

import pytest

from hyperhive import wire
from hyperhive.harness import stats
from hyperhive.schema import TurnStat, agent_db, open_agent

HOUR, DAY = 3600, 86400
# 2026-01-10 12:30:00 UTC: half past the hour, so hour buckets start at 12:00
NOW = 1_768_048_200
assert NOW % DAY == 12 * HOUR + 30 * 60


@pytest.fixture(autouse=True)
def db(tmp_path):
    open_agent(os.path.join(tmp_path, "events.sqlite"))
    yield
    agent_db.close()


def turn(at, duration_ms=1000, wake="operator", result="ok", ctx=(None, None, None), cost=(0, 0, 0, 0),
         tools=None, open_after=(None, None)):
    """One TurnStat row started at unix second `at`."""
    return TurnStat.create(
        started_at=at * 1000, ended_at=at * 1000 + duration_ms, duration_ms=duration_ms, model="haiku",
        wake_from=wake, result_kind=result,
        ctx_input_tokens=ctx[0], ctx_cache_read_tokens=ctx[1], ctx_cache_creation_tokens=ctx[2],
        cost_input_tokens=cost[0], cost_output_tokens=cost[1], cost_cache_read_tokens=cost[2],
        cost_cache_creation_tokens=cost[3], tools=json.dumps(tools or {}),
        tool_call_count=sum((tools or {}).values()), open_loose_ends=open_after[0],
        pending_reminders=open_after[1])


def test_percentile_is_nearest_rank():
    values = list(range(1, 21))  # 1..20
    assert stats.percentile(values, 50) == 10  # rank ceil(10) = 10
    assert stats.percentile(values, 95) == 19  # rank ceil(19) = 19
    assert stats.percentile([7], 95) == 7
    assert stats.percentile([1, 2, 3], 50) == 2  # rank ceil(1.5) = 2
    assert stats.percentile([1, 2, 3], 95) == 3
    assert stats.percentile([10, 20, 30, 40, 50], 50) == 30  # rank ceil(2.5) = 3, no interpolation
    assert stats.percentile(list(range(1, 101)), 95) == 95
    assert stats.percentile([], 50) is None


def test_an_empty_window_answers_zeros_and_empty_lists():
    turn(NOW - 3 * DAY)  # outside 24h
    snap = stats.snapshot("24h", now=NOW)
    assert snap["turns"] == 0
    assert snap["buckets"] == [] and snap["top_tools"] == [] and snap["wake_mix"] == [] \
        and snap["result_mix"] == []
    assert snap["duration"] == {"p50_ms": None, "p95_ms": None, "avg_ms": None}
    assert snap["ctx"] == {"avg": None, "max": None}
    assert snap["cost"] == {"input": 0, "output": 0, "cache_read": 0, "cache_creation": 0}


def test_an_unknown_window_is_a_sentence():
    with pytest.raises(wire.HiveError, match="window must be 24h, 7d or 30d") as e:
        stats.snapshot("1y", now=NOW)
    assert e.value.status == 400


@pytest.mark.parametrize("window, size, start", [
    ("24h", HOUR, NOW - 30 * 60 - 23 * HOUR),
    ("7d", DAY, NOW - 12 * HOUR - 30 * 60 - 6 * DAY),
    ("30d", DAY, NOW - 12 * HOUR - 30 * 60 - 29 * DAY),
])
def test_windows_are_whole_buckets_ending_with_the_one_holding_now(window, size, start):
    snap = stats.snapshot(window, now=NOW)
    assert (snap["window"], snap["bucket_seconds"], snap["start"], snap["end"]) == (window, size, start, NOW)


def test_bucket_boundaries_and_the_window_edges():
    first = NOW - 30 * 60 - 23 * HOUR  # the 24h window's first bucket, 13:00 the day before
    turn(first - 1, duration_ms=1)  # a second too early: not counted
    turn(first, duration_ms=10)  # the first second of the first bucket
    turn(first + HOUR - 1, duration_ms=20)  # its last second
    turn(first + HOUR, duration_ms=30)  # the next bucket
    turn(NOW, duration_ms=40)  # at now: counted, in the last bucket
    turn(NOW + 1, duration_ms=50)  # after now: not counted
    snap = stats.snapshot("24h", now=NOW)
    assert snap["turns"] == 4
    assert [(b["start"], b["turns"], b["avg_ms"]) for b in snap["buckets"]] == [
        (first, 2, 15), (first + HOUR, 1, 30), (NOW - 30 * 60, 1, 40)]


def test_daily_buckets_for_7d():
    today = NOW - NOW % DAY
    turn(today - 6 * DAY + 5)
    turn(today - 6 * DAY + DAY - 1)
    turn(today + 1)
    turn(today - 7 * DAY + 1)  # before the 7 days
    snap = stats.snapshot("7d", now=NOW)
    assert [(b["start"], b["turns"]) for b in snap["buckets"]] == [(today - 6 * DAY, 2), (today, 1)]
    assert stats.snapshot("30d", now=NOW)["turns"] == 4


def test_exact_aggregates():
    base = NOW - 10 * 60  # all in the current hour's bucket
    durations = [100, 200, 300, 400, 500, 600, 700, 800, 900, 10_000]
    for i, d in enumerate(durations):
        turn(base + i, duration_ms=d,
             wake="alice" if i < 6 else ("operator" if i < 9 else None),
             result="ok" if i != 3 else "failed",
             ctx=(100 * i, 1000, 10) if i < 8 else (None, None, None),
             cost=(1, 2, 3, 4),
             tools={"mcp__hyperhive__send": 1, "Bash": i} if i < 5 else {"Read": 2})
    snap = stats.snapshot("24h", now=NOW)
    assert snap["turns"] == 10
    # nearest rank: p50 = rank 5 = 500, p95 = rank ceil(9.5) = 10 = 10000; avg 14500 / 10 = 1450
    assert snap["duration"] == {"p50_ms": 500, "p95_ms": 10_000, "avg_ms": 1450}
    # ctx of turns 0..7: 1010 + 100*i; avg = 1010 + 350 = 1360; max = 1010 + 700
    assert snap["ctx"] == {"avg": 1360, "max": 1710}
    assert snap["cost"] == {"input": 10, "output": 20, "cache_read": 30, "cache_creation": 40}
    # Read: 2 * 5 = 10; Bash: 0+1+2+3+4 = 10; send: 5. Bash before Read on a tie (by name);
    # the Bash calls of turn 0 are 0 and add nothing
    assert snap["top_tools"] == [["Bash", 10], ["Read", 10], ["mcp__hyperhive__send", 5]]
    assert snap["wake_mix"] == [["alice", 6], ["operator", 3], ["unknown", 1]]
    assert snap["result_mix"] == [["ok", 9], ["failed", 1]]
    [bucket] = snap["buckets"]
    assert bucket == {"start": NOW - 30 * 60, "turns": 10, "p50_ms": 500, "p95_ms": 10_000, "avg_ms": 1450,
                      "ctx_avg": 1360, "ctx_max": 1710,
                      "cost": {"input": 10, "output": 20, "cache_read": 30, "cache_creation": 40},
                      "open_loose_ends": None, "pending_reminders": None}


def test_the_backlog_is_what_the_newest_turn_that_knew_it_left_open():
    turn(NOW - 3 * HOUR, open_after=(5, 2))
    turn(NOW - 3 * HOUR + 60, open_after=(4, 1))
    turn(NOW - 3 * HOUR + 120)  # the core did not answer after this one: unknown, not zero
    turn(NOW - 60, open_after=(0, 3))
    snap = stats.snapshot("24h", now=NOW)
    assert [(b["open_loose_ends"], b["pending_reminders"]) for b in snap["buckets"]] == [(4, 1), (0, 3)]
    assert snap["backlog"] == {"open_loose_ends": 0, "pending_reminders": 3}


def test_top_tools_keeps_the_ten_most_called():
    turn(NOW - 60, tools={f"tool{i:02d}": i + 1 for i in range(15)})
    top = stats.snapshot("24h", now=NOW)["top_tools"]
    assert len(top) == 10
    assert top[0] == ["tool14", 15] and top[-1] == ["tool05", 6]


def test_a_row_with_unreadable_tools_still_counts_as_a_turn():
    row = turn(NOW - 60, tools={"Bash": 1})
    TurnStat.update(tools="not json").where(TurnStat.id == row.id).execute()
    turn(NOW - 30, tools={"Bash": 2})
    snap = stats.snapshot("24h", now=NOW)
    assert snap["turns"] == 2 and snap["top_tools"] == [["Bash", 2]]


def test_the_default_window_is_24h():
    assert stats.snapshot(now=NOW)["window"] == "24h"

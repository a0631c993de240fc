"""Turn statistics for the agent's /stats page: `TurnStat` rows aggregated over a window.

Owns the windows (24h in hourly buckets, 7d and 30d in daily buckets), the
bucket alignment, and how each figure is computed from the `turn_stat`
rows in the agent's sqlite. Who writes those rows is not this module's
business; it only reads them.

How the figures are made, so a number on the page can be checked by hand:

- Buckets are whole UTC hours (24h) or days (7d, 30d). A window is the N
  buckets ending with the one that holds `now` (24 hours, 7 or 30 days), so
  it reaches back between N-1 and N bucket lengths; `start` says where.
  A turn belongs to the bucket its `started_at` falls in; turns that start
  after `now` are not counted. Only buckets with turns are listed.
- p50/p95 are nearest-rank percentiles: the value at rank ceil(p/100 * n)
  of the n sorted durations. Averages are rounded to the nearest integer.
- ctx of a turn is its last inference's input + cache_read + cache_creation
  tokens (the size of the context); turns with none of the three are left
  out of the ctx figures.
- cost components are summed (a missing component counts 0).
- open_loose_ends / pending_reminders of a bucket are what the last turn in
  it that could ask the core reported after it ended (what was still open
  then); `backlog` is the same for the whole window: the newest known.
- top_tools: calls per tool summed from each turn's `tools` JSON, the 10
  most called. wake_mix and result_mix count turns by `wake_from` and
  `result_kind`. Each list is sorted by count, highest first, then by name.
"""

import json
import logging
import math
import time
from collections import Counter

from hyperhive import wire
from hyperhive.schema import TurnStat

log = logging.getLogger(__name__)

HOUR, DAY = 3600, 86400
WINDOWS = {"24h": (24, HOUR), "7d": (7, DAY), "30d": (30, DAY)}  # window -> (buckets, bucket seconds)
TOP_TOOLS = 10
COST_PARTS = ("input", "output", "cache_read", "cache_creation")
UNKNOWN = "unknown"  # a turn without a wake sender (e.g. an operator's compaction)

_COLUMNS = (TurnStat.started_at, TurnStat.duration_ms, TurnStat.wake_from, TurnStat.result_kind,
            TurnStat.ctx_input_tokens, TurnStat.ctx_cache_read_tokens, TurnStat.ctx_cache_creation_tokens,
            TurnStat.cost_input_tokens, TurnStat.cost_output_tokens, TurnStat.cost_cache_read_tokens,
            TurnStat.cost_cache_creation_tokens, TurnStat.tools, TurnStat.open_loose_ends,
            TurnStat.pending_reminders)


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (None when it is empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def average(values):
    return int(round(sum(values) / len(values))) if values else None


def bounds(window, now):
    """(first bucket start, bucket seconds, bucket count) in unix seconds for a window name."""
    if window not in WINDOWS:
        raise wire.HiveError("window must be 24h, 7d or 30d")
    count, size = WINDOWS[window]
    last = int(now) // size * size
    return last - (count - 1) * size, size, count


def _row(values):
    (started_at, duration_ms, wake_from, result_kind, ctx_in, ctx_read, ctx_create,
     cost_in, cost_out, cost_read, cost_create, tools, loose_ends, reminders) = values
    ctx_parts = (ctx_in, ctx_read, ctx_create)
    return {
        "started_at": started_at,
        "duration_ms": int(duration_ms or 0),
        "wake_from": wake_from or UNKNOWN,
        "result_kind": result_kind,
        "ctx": None if all(v is None for v in ctx_parts) else sum(int(v or 0) for v in ctx_parts),
        "cost": dict(zip(COST_PARTS, (int(v or 0) for v in (cost_in, cost_out, cost_read, cost_create)))),
        "tools": tools,
        "open_loose_ends": loose_ends,
        "pending_reminders": reminders,
    }


def _tool_calls(row):
    try:
        tools = json.loads(row["tools"] or "{}")
        if not isinstance(tools, dict):
            raise ValueError("not an object")
        return {str(name): int(calls) for name, calls in tools.items()}
    except (ValueError, TypeError) as e:
        log.warning("a turn_stat row from %s has unreadable tools %r (%s); its tools are not counted",
                    row["started_at"], row["tools"], e)
        return {}


def _figures(rows):
    """Duration, ctx and cost figures of a group of rows (a bucket or the whole window)."""
    durations = sorted(r["duration_ms"] for r in rows)
    ctx = [r["ctx"] for r in rows if r["ctx"] is not None]
    cost = {part: sum(r["cost"][part] for r in rows) for part in COST_PARTS}
    return {"p50_ms": percentile(durations, 50), "p95_ms": percentile(durations, 95),
            "avg_ms": average(durations), "ctx_avg": average(ctx), "ctx_max": max(ctx) if ctx else None,
            "cost": cost, **_backlog(rows)}


def _backlog(rows):
    """What the newest rows (in start order) that know it say was left open after their turn."""
    found = {}
    for key in ("open_loose_ends", "pending_reminders"):
        known = [r[key] for r in rows if r[key] is not None]
        found[key] = known[-1] if known else None
    return found


def _ranked(counter, limit=None):
    ranked = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return [[name, count] for name, count in ranked[:limit]]


def rows_between(start_ms, end_ms):
    query = (TurnStat.select(*_COLUMNS)
             .where((TurnStat.started_at >= start_ms) & (TurnStat.started_at <= end_ms))
             .order_by(TurnStat.started_at).tuples())
    return [_row(values) for values in query]


def snapshot(window="24h", now=None):
    """The /api/stats answer for a window name ("24h", "7d" or "30d") as of `now` (unix seconds)."""
    now = time.time() if now is None else now
    start, size, _count = bounds(window, now)
    rows = rows_between(start * 1000, int(now * 1000))
    by_bucket = {}
    for row in rows:
        by_bucket.setdefault(start + (row["started_at"] // 1000 - start) // size * size, []).append(row)
    buckets = []
    for bucket_start in sorted(by_bucket):
        group = by_bucket[bucket_start]
        buckets.append({"start": bucket_start, "turns": len(group), **_figures(group)})
    whole = _figures(rows)
    tools, wakes, results = Counter(), Counter(), Counter()
    for row in rows:
        tools.update(_tool_calls(row))
        wakes[row["wake_from"]] += 1
        results[row["result_kind"]] += 1
    return {
        "window": window, "bucket_seconds": size, "start": start, "end": int(now), "turns": len(rows),
        "buckets": buckets,
        "duration": {k: whole[k] for k in ("p50_ms", "p95_ms", "avg_ms")},
        "ctx": {"avg": whole["ctx_avg"], "max": whole["ctx_max"]},
        "backlog": {k: whole[k] for k in ("open_loose_ends", "pending_reminders")},
        "cost": whole["cost"],
        "top_tools": _ranked(+tools, TOP_TOOLS),  # +: drops tools counted 0 or less
        "wake_mix": _ranked(wakes),
        "result_mix": _ranked(results),
    }

"""The agent's live event bus over a real sqlite file in tmp_path.

Proves: `seq` is monotonic and continues from the file after a reopen;
history pages oldest-first below `before=`; prune keeps the newest
HISTORY_CAP events and drops those older than 7 days; observe() turns
claude's stream-json into one `token_usage_changed` (ctx from the last
inference of the session, never a sub-agent's; cost from the result line),
and a restarted bus starts with the last turn's usage; turn state and model changes emit
their events (only on change) and the model persists in its file.
"""

import json
import os

import pytest

from fakes import Clock
from hyperhive.harness import bus as busmod
from hyperhive.harness.bus import Bus
from hyperhive.harness.claude import Outcome
from hyperhive.schema import Event, TurnStat, agent_db, now_ms, open_agent

DAY_MS = 24 * 3600 * 1000


def open_bus(state_dir, clock=None):
    open_agent(os.path.join(state_dir, "events.sqlite"))
    return Bus(str(state_dir), **({"clock": clock} if clock else {}))


@pytest.fixture
def bus(tmp_path):
    b = open_bus(tmp_path)
    yield b
    agent_db.close()


class Heard:
    """Every event a subscription to the bus got, read as a list (what came since is taken at each look)."""

    def __init__(self, sub):
        self.sub, self.got = sub, []

    def _all(self):
        while self.sub.queue.qsize():
            self.got.append(self.sub.queue.get_nowait())
        return self.got

    def __iter__(self):
        return iter(self._all())

    def __eq__(self, other):
        return self._all() == other


def recorder(b):
    return Heard(b.fanout.subscribe())


def stored_seqs():
    return [e.seq for e in Event.select(Event.seq).order_by(Event.seq)]


# -- seq and history ------------------------------------------------------------------

def test_seq_is_monotonic_and_continues_after_reopening_the_file(tmp_path):
    b = open_bus(tmp_path)
    assert [b.note(f"n{i}")["seq"] for i in range(3)] == [1, 2, 3]
    agent_db.close()

    again = open_bus(tmp_path)  # a restarted harness on the same file
    try:
        assert again.seq == 3
        assert again.emit("status_changed", status="back")["seq"] == 4
        assert [e["seq"] for e in again.history()] == [1, 2, 3, 4]
        assert [e.get("text") for e in again.history()][:3] == ["n0", "n1", "n2"]
    finally:
        agent_db.close()


def test_seq_stays_monotonic_after_prune_removed_everything_and_a_restart(tmp_path):
    b = open_bus(tmp_path)
    for i in range(3):
        b.note(f"n{i}")
    Event.update(at=now_ms() - 8 * DAY_MS).execute()  # a week of silence
    assert b.prune() == (2, 0)
    assert [e["seq"] for e in b.history()] == [3]  # only the high-water mark is kept
    agent_db.close()
    again = open_bus(tmp_path)
    try:
        assert again.note("after the restart")["seq"] > 3
    finally:
        agent_db.close()


def test_history_is_oldest_first_and_pages_below_before(bus):
    for i in range(10):
        bus.note(f"n{i}")
    newest = bus.history(limit=3)
    assert [e["seq"] for e in newest] == [8, 9, 10]
    assert [e["text"] for e in newest] == ["n7", "n8", "n9"]
    assert [e["seq"] for e in bus.history(limit=3, before=8)] == [5, 6, 7]
    assert [e["seq"] for e in bus.history(limit=3, before=2)] == [1]
    assert bus.history(limit=3, before=1) == []
    assert [e["seq"] for e in bus.history()] == list(range(1, 11))


def test_emitted_event_is_stored_whole_and_fanned_out(bus):
    seen = recorder(bus)
    event = bus.emit("turn_end", ok=True, note=None)
    assert seen == [event]
    assert event["kind"] == "turn_end" and event["ok"] is True and isinstance(event["at"], int)
    assert bus.history() == [event]
    row = Event.get(Event.seq == event["seq"])
    assert json.loads(row.data) == event and row.kind == "turn_end" and row.at == event["at"]


def test_a_subscriber_that_falls_behind_is_dropped_and_the_others_still_hear(bus, monkeypatch):
    monkeypatch.setattr(bus.fanout, "queue_size", 2)
    slow = bus.fanout.subscribe()
    seen = recorder(bus)
    bus.note("one")
    assert [e["seq"] for e in seen] == [1]
    bus.note("two")
    bus.note("three")  # slow has not read one or two
    assert list(slow.events(0)) == [], "dropped: its stream ends rather than waiting"
    assert [e["seq"] for e in seen] == [1, 2, 3]


def test_unknown_kind_is_refused(bus):
    with pytest.raises(AssertionError):
        bus.emit("no_such_kind")
    assert bus.history() == []


# -- pruning ------------------------------------------------------------------------

def test_prune_keeps_only_the_newest_history_cap_events(bus):
    cap, every = busmod.HISTORY_CAP, busmod.PRUNE_EVERY
    total = cap + every + 50
    with agent_db.atomic():
        for i in range(total):
            bus.note(f"n{i}")
    # emit prunes as it goes: the table never holds more than the cap and one batch
    assert cap < len(stored_seqs()) <= cap + every
    bus.prune()
    assert cap == 2000
    assert stored_seqs() == list(range(total - cap + 1, total + 1))
    assert bus.history(limit=1)[0]["text"] == f"n{total - 1}"
    # seq keeps counting from where it was, not from the row count
    assert bus.note("after")["seq"] == total + 1


def test_prune_drops_events_older_than_seven_days(bus):
    for i in range(5):
        bus.note(f"n{i}")
    now = now_ms()
    Event.update(at=now - 8 * DAY_MS).where(Event.seq <= 2).execute()
    Event.update(at=now - 7 * DAY_MS + 60_000).where(Event.seq == 3).execute()  # a minute inside the window
    assert bus.prune() == (2, 0)
    assert stored_seqs() == [3, 4, 5]
    assert bus.prune() == (0, 0)


def test_the_sweep_drops_turn_stats_older_than_ninety_days_and_says_how_many(bus, caplog):
    now = 1_800_000_000.0
    for age_days in (91, 90.5, 89, 1):
        started = int((now - age_days * 86400) * 1000)
        TurnStat.create(started_at=started, ended_at=started + 1000, duration_ms=1000, result_kind="ok")
    with caplog.at_level("INFO", logger="hyperhive.harness.bus"):
        assert bus.prune(now=now) == (0, 2)
    assert sorted(round((now * 1000 - t.started_at) / 86400_000) for t in TurnStat.select()) == [1, 89]
    assert "sweep: removed 0 events" in caplog.text and "and 2 turn stats older than 90 days" in caplog.text


# -- token usage ----------------------------------------------------------------------

def assistant(input_tokens, cache_read, cache_creation, output=7):
    return {"type": "assistant", "message": {"role": "assistant", "content": [], "usage": {
        "input_tokens": input_tokens, "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation, "output_tokens": output}}}


def test_observe_reports_ctx_of_the_last_inference_and_cost_of_the_result(bus):
    seen = recorder(bus)
    bus.observe(assistant(10, 1000, 200))
    bus.observe({"type": "user", "message": {"content": []}})
    bus.observe(assistant(12, 1500, 30))  # the last inference is the context size now
    assert seen == []  # usage is final only on the result line
    bus.observe({"type": "result", "subtype": "success", "is_error": False, "result": "ok", "usage": {
        "input_tokens": 22, "output_tokens": 40, "cache_read_input_tokens": 2500,
        "cache_creation_input_tokens": 230}})
    [event] = seen
    assert event["kind"] == "token_usage_changed"
    assert event["ctx"] == 12 + 1500 + 30
    assert event["cost"] == {"input_tokens": 22, "output_tokens": 40, "cache_read_input_tokens": 2500,
                             "cache_creation_input_tokens": 230, "total": 22 + 40 + 2500 + 230}
    assert bus.usage == {"ctx": event["ctx"], "cost": event["cost"]}
    assert bus.history()[-1] == event


def test_observe_tolerates_missing_usage_fields(bus):
    seen = recorder(bus)
    bus.observe({"type": "assistant", "message": {"usage": {"input_tokens": 5}}})
    bus.observe({"type": "result", "usage": {"output_tokens": 3}})
    [event] = seen
    assert event["ctx"] == 5
    assert event["cost"]["total"] == 3 and event["cost"]["input_tokens"] == 0


def result(inp, out, read, create):
    return {"type": "result", "subtype": "success", "is_error": False, "result": "ok", "usage": {
        "input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": read,
        "cache_creation_input_tokens": create}}


def test_a_sub_agents_inference_is_not_the_sessions_context(bus):
    seen = recorder(bus)
    bus.begin_turn("operator")
    bus.observe(assistant(10, 1000, 200))
    sub = dict(assistant(90000, 0, 0), parent_tool_use_id="toolu_task01")  # the Task's own context
    bus.observe(sub)
    bus.observe(result(1, 2, 3, 4))
    [event] = seen
    assert event["ctx"] == 10 + 1000 + 200
    row = bus.end_turn(Outcome("ok"))
    assert (row.ctx_input_tokens, row.ctx_cache_read_tokens) == (10, 1000)


def test_a_restarted_bus_starts_with_the_last_turns_usage(tmp_path):
    b = open_bus(tmp_path)
    assert b.usage == {"ctx": None, "cost": None}  # no turn yet: nothing to show
    b.begin_turn("operator")
    b.observe(assistant(12, 1500, 30))
    b.observe(result(22, 40, 2500, 230))
    event = b.history()[-1]
    b.end_turn(Outcome("ok"))
    b.begin_turn("operator")  # a turn that died before its result line reported no usage
    b.observe(assistant(99, 99, 99))
    b.end_turn(Outcome("failed", "killed"))
    agent_db.close()

    again = open_bus(tmp_path)
    try:
        assert again.usage == {"ctx": event["ctx"], "cost": event["cost"]}
        assert again.usage["ctx"] == 12 + 1500 + 30 and again.usage["cost"]["total"] == 22 + 40 + 2500 + 230
        again.observe(result(1, 1, 1, 1))  # a result without an inference keeps the context it had
        assert again.usage["ctx"] == 12 + 1500 + 30
    finally:
        agent_db.close()


def test_a_restarted_bus_without_any_turn_shows_no_usage(tmp_path):
    b = open_bus(tmp_path)
    b.note("a harness that never ran a turn")
    b.begin_turn("operator")
    b.end_turn(Outcome("failed", "no result line"))
    agent_db.close()
    again = open_bus(tmp_path)
    try:
        assert again.usage == {"ctx": None, "cost": None}
    finally:
        agent_db.close()


# -- turn state ------------------------------------------------------------------------

def test_turn_state_changes_emit_with_since_unix_only_on_change(tmp_path):
    clock = Clock(1_700_000_000.75)
    b = open_bus(tmp_path, clock)
    try:
        seen = recorder(b)
        b.set_turn_state("idle")  # already idle
        assert seen == []
        clock.t = 1_700_000_010.9
        b.set_turn_state("thinking")
        clock.t = 1_700_000_020.0
        b.set_turn_state("thinking")  # no change: no event, since stays
        assert b.turn_state_since == 1_700_000_010
        clock.t = 1_700_000_030.2
        b.set_turn_state("compacting")
        b.set_turn_state("idle")
        assert [(e["kind"], e["state"], e["since_unix"]) for e in seen] == [
            ("turn_state_changed", "thinking", 1_700_000_010),
            ("turn_state_changed", "compacting", 1_700_000_030),
            ("turn_state_changed", "idle", 1_700_000_030)]
        with pytest.raises(AssertionError):
            b.set_turn_state("napping")
    finally:
        agent_db.close()


# -- model ------------------------------------------------------------------------

def test_model_defaults_to_haiku(bus, tmp_path):
    assert bus.model() == "haiku"
    (tmp_path / busmod.MODEL_FILE).write_text("\n")  # an empty file is no choice
    assert bus.model() == "haiku"


def test_set_model_persists_to_the_file_and_emits(bus, tmp_path):
    seen = recorder(bus)
    bus.set_model("sonnet")
    assert (tmp_path / busmod.MODEL_FILE).read_text() == "sonnet\n"
    assert bus.model() == "sonnet"
    assert [(e["kind"], e["model"]) for e in seen] == [("model_changed", "sonnet")]
    assert not os.path.exists(tmp_path / (busmod.MODEL_FILE + ".tmp"))
    agent_db.close()
    assert open_bus(tmp_path).model() == "sonnet"  # a restarted harness keeps the choice


def test_a_set_status_the_core_took_moves_the_pages_status_line_at_once(bus):
    def use(tool_id, text, name="mcp__hyperhive__set_status"):
        bus.observe({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": tool_id, "name": name, "input": {"text": text}}]}})

    def result(tool_id, is_error=False):
        bus.observe({"type": "user", "message": {"content": [
            {"type": "tool_result", "tool_use_id": tool_id, "is_error": is_error, "content": "ok"}]}})

    use("t1", "  reading\nthe logs ")
    result("t1")
    use("t2", "x" * 500)
    result("t2", is_error=True)  # refused by the core: the line stays
    use("t3", "")
    result("t3")
    use("t4", "not ours", name="mcp__other__set_statuses")
    result("t4")
    changes = [(e["text"], e["set_at"] is not None) for e in bus.history() if e["kind"] == "status_text_changed"]
    assert changes == [("reading the logs", True), (None, False)]


# -- a state disk that refuses writes --------------------------------------------------------

def full_disk_chain():
    """What peewee raises when sqlite's COMMIT fails on a full disk: its rollback's error, chained."""
    import sqlite3

    import peewee

    try:
        try:
            raise peewee.OperationalError("database or disk is full") from sqlite3.OperationalError(
                "database or disk is full")
        except peewee.OperationalError:
            raise peewee.OperationalError("cannot rollback - no transaction is active")
    except peewee.OperationalError as e:
        return e


def test_a_full_disk_costs_the_history_never_the_emit_nor_the_live_page(bus, monkeypatch, caplog):
    caplog.set_level("INFO", logger=busmod.__name__)
    seen = recorder(bus)
    bus.note("before")
    real_create, full = Event.create, [True]

    def create(**row):
        if full:
            raise full_disk_chain()
        return real_create(**row)

    monkeypatch.setattr(Event, "create", create)
    monkeypatch.setattr(busmod, "PRUNE_EVERY", 2)  # a prune falls inside the refusals too
    for i in range(3):
        assert bus.note(f"during {i}")["seq"] == 2 + i
    bus.set_turn_state("thinking")
    bus.begin_turn("operator")
    assert bus.end_turn(type("Outcome", (), {"kind": "ok", "reason": ""})()) is not None  # another table
    full.clear()
    bus.note("after")
    assert [e["text"] for e in seen if e["kind"] == "note"] == ["before", "during 0", "during 1", "during 2", "after"]
    assert stored_seqs() == [1, 6]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "state disk is full" in errors[0]  # once per stretch, naming the disk
    assert "the 4 event(s) before were shown live only" in caplog.text


def test_a_bug_in_the_history_write_is_still_raised(bus, monkeypatch):
    def create(**row):
        raise KeyError("a bug")

    monkeypatch.setattr(Event, "create", create)
    with pytest.raises(KeyError):
        bus.note("x")

"""The contract of the hive's database, held on each engine: what a core may rely on whichever it runs on.

Every test here runs twice (`db_url`: a fresh sqlite file, a fresh PostgreSQL
database), except the last part, which is PostgreSQL's alone: several cores on
one database. What the broker's, approvals', questions', reminders' and web
sessions' own files test also runs on both engines; this file holds the rules
no single module's tests state whole: the lease (FIFO, one pop, ack, requeue,
cancel and retry), the clamps and quotas as the surfaces apply them, the
sweep's boundary, the unknown recipient, the migrations, and on PostgreSQL
the pop shared by two cores and the NOTIFY that wakes them.
"""

import json
import select
import subprocess
import time

import gevent
import peewee as pw
import pytest

from conftest import PYTHON, ROOT, green_wait
from fakes import Clock, CoreRig, RecordingHub
from hyperhive import schema, wire
from hyperhive.core import broker as brokers
from hyperhive.core.broker import Broker
from hyperhive.core.sweeps import DAY_MS, KEEP_DAYS, Sweeper
from hyperhive.schema import Agent, Approval, Message, Meta, Question, Reminder, core_db, open_core


@pytest.fixture
def broker(db_url):
    open_core(db_url)
    yield Broker(RecordingHub(), clock=Clock())
    core_db.close()


@pytest.fixture
def rig(tmp_path, db_url):
    r = CoreRig(tmp_path, database=db_url)
    yield r
    r.close()


def bodies(rows):
    return [r["body"] for r in rows]


def state(body):
    """(delivered, acked, cancelled, redelivered) of the message with this body, as stored."""
    m = Message.get(Message.body == body)
    return m.delivered_at is not None, m.acked_at is not None, m.cancelled_at is not None, bool(m.redelivered)


# -- the lease -----------------------------------------------------------------------------------------

def test_recv_hands_over_oldest_first_whoever_sent_and_however_it_is_batched(broker):
    sent = [broker.send(f"s{i % 3}", "a", f"m{i}") for i in range(10)]
    broker.send("operator", "b", "not a's")
    got = []
    for limit in (1, 3, 2, 10):
        got += broker.pop("a", limit)
    assert [r["id"] for r in got] == sent and bodies(got) == [f"m{i}" for i in range(10)]
    assert broker.pop("a", 10) == [] and bodies(broker.pop("b", 10)) == ["not a's"]


def test_a_popped_message_is_not_popped_again_by_any_core_until_requeued(broker):
    broker.send("operator", "a", "m0")
    broker.send("operator", "a", "m1")
    assert bodies(broker.pop("a", 1)) == ["m0"]
    restarted = Broker(RecordingHub(), clock=Clock())  # a core started again, or another core
    assert bodies(restarted.pop("a", 10)) == ["m1"], "in flight is nobody's to pop"
    assert restarted.pop("a", 10) == [] and broker.pop("a", 10) == []
    assert restarted.requeue_inflight("a") == 2
    again = broker.pop("a", 10)
    assert bodies(again) == ["m0", "m1"] and all(r["redelivered"] for r in again)


def test_ack_turn_acks_exactly_what_was_popped_since_the_last_ack(broker):
    broker.send("operator", "a", "m0")
    broker.pop("a", 1)
    broker.send("operator", "a", "m1")
    assert broker.ack_turn("a") == 1
    assert [state(b)[:2] for b in ("m0", "m1")] == [(True, True), (False, False)]
    assert broker.ack_turn("a") == 0, "nothing popped since"
    broker.pop("a", 1)
    broker.send("operator", "a", "m2")
    assert broker.ack_turn("a") == 1
    assert [state(b)[:2] for b in ("m0", "m1", "m2")] == [(True, True), (True, True), (False, False)]
    assert broker.requeue_inflight("a") == 0, "an acked message never comes back"


def test_requeue_puts_back_only_what_is_in_flight_flagged_and_in_order(broker):
    for i in range(4):
        broker.send("operator", "a", f"m{i}")
    broker.pop("a", 1)
    broker.ack_turn("a")  # m0 done
    broker.pop("a", 2)  # m1, m2 in flight; m3 queued
    assert broker.requeue_inflight("a") == 2
    assert [state(f"m{i}") for i in range(4)] == [(True, True, False, False), (False, False, False, True),
                                                  (False, False, False, True), (False, False, False, False)]
    rows = broker.pop("a", 10)
    assert [(r["body"], r["redelivered"]) for r in rows] == [("m1", True), ("m2", True), ("m3", False)]
    assert broker.requeue_inflight("b") == 0, "a requeue is one recipient's"


def test_cancel_marks_the_turns_messages_handled_and_retry_queues_them_again_flagged(broker):
    ids = [broker.send("s", "a", f"m{i}") for i in range(3)]
    other = broker.send("s", "b", "b's")
    broker.pop("a", 2)
    broker.pop("b", 1)
    assert broker.cancel_turn("a") == [(ids[0], "s"), (ids[1], "s")]
    assert broker.hub.events[-1] == ("cancelled", {"recipient": "a", "ids": ids[:2]})
    assert [state(f"m{i}") for i in range(3)] == [(True, True, True, False)] * 2 + [(False, False, False, False)]
    assert broker.cancel_turn("a") == [] and broker.requeue_inflight("a") == 0, "cancelled is handled, not in flight"
    assert broker.retry("a", [ids[1], ids[2], other, 999_999]) == [ids[1]], \
        "only a's cancelled messages are queued again"
    assert broker.hub.events[-1] == ("requeued", {"recipient": "a", "ids": [ids[1]]})
    assert broker.retry("b", [ids[0]]) == [], "nobody retries another's messages"
    rows = broker.pop("a", 10)
    assert [(r["id"], r["redelivered"]) for r in rows] == [(ids[1], True), (ids[2], False)], "oldest first"
    assert state("m1") == (True, False, False, True) and state("m0") == (True, True, True, False)


def test_a_long_poll_of_a_held_recipient_wakes_on_release_and_takes_the_oldest(broker):
    broker.hold("a", True)
    broker.send("operator", "a", "first")
    broker.send("operator", "a", "second")
    waiter = gevent.spawn(broker.recv, "a", 30, 1)
    green_wait(lambda: "a" in broker._wakeups, "the long-poll to wait")
    assert not waiter.ready() and broker.pending_count("a") == 0, "held: nothing is delivered, nothing counted"
    broker.hold("a", False)
    messages, unread = waiter.get(timeout=5)
    assert bodies(messages) == ["first"] and unread == 1


# -- clamps and quotas, where the surfaces apply them ----------------------------------------------------

def test_recv_clamps_its_max_and_its_wait_and_counts_what_it_left(rig):
    for i in range(wire.RECV_MAX_BATCH + 5):
        rig.broker.send("b", "a", f"m{i}")
    answer = rig.call("agent", "a", "recv", wait_seconds=-10, max=10_000)
    assert bodies(answer["messages"]) == [f"m{i}" for i in range(wire.RECV_MAX_BATCH)] and answer["unread"] == 5
    answer = rig.call("agent", "a", "recv", wait_seconds=0, max=0)
    assert bodies(answer["messages"]) == [f"m{wire.RECV_MAX_BATCH}"] and answer["unread"] == 4
    started = time.monotonic()
    rig.call("agent", "a", "recv", wait_seconds=0, max=10)
    answer = rig.call("agent", "a", "recv", wait_seconds=-1, max=1)
    assert (answer["messages"], answer["unread"]) == ([], 0)
    assert time.monotonic() - started < 5, "a negative wait answers at once"


def test_a_batch_past_the_answer_budget_leaves_the_rest_queued_in_order_and_not_redelivered(broker):
    big = "q" * (wire.ANSWER_BUDGET // 2 - 10)
    for i in range(4):
        broker.send("b", "a", f"{i}{big}")
    first = broker.pop("a", wire.RECV_MAX_BATCH)
    assert first.cut_short and [m["body"][0] for m in first] == ["0", "1"]
    assert [state(f"{i}{big}")[0] for i in range(4)] == [True, True, False, False]
    rest = broker.pop("a", wire.RECV_MAX_BATCH)
    assert [(m["body"][0], m["redelivered"]) for m in rest] == [("2", False), ("3", False)] and not rest.cut_short


def test_an_agents_sends_are_held_to_the_quotas_and_the_operators_are_not(rig, monkeypatch):
    monkeypatch.setattr(brokers, "SENDER_QUEUE_MAX", 3)
    monkeypatch.setattr(brokers, "QUEUE_MAX", 5)
    for i in range(3):
        rig.call("agent", "b", "send", to="a", body=f"b{i}")
    assert "b already has 3 unread messages waiting for a" in rig.refused("unavailable", "agent", "b", "send",
                                                                            to="a", body="one too many")
    rig.call("manager", "manager", "send", to="a", body="m0")
    rig.call("manager", "manager", "send", to="a", body="m1")
    assert "a already has 5 unread messages waiting" in rig.refused("unavailable", "manager", "manager", "send",
                                                                     to="a", body="full")
    rig.call("host", wire.OPERATOR, "send", to="a", body="the operator's own")  # never refused, but it counts
    assert Message.select().where(Message.recipient == "a").count() == 6
    rig.inbox("a")  # delivered (not acked): no longer queued
    rig.call("agent", "b", "send", to="a", body="room again")


def test_one_sender_may_leave_only_so_many_unread_for_the_operator_whoever_else_writes(rig, monkeypatch):
    monkeypatch.setattr(brokers, "OPERATOR_UNREAD_PER_SENDER", 2)
    for i in range(2):
        rig.call("agent", "a", "send", to=wire.OPERATOR, body=f"a{i}")
    assert "the operator has 2 unread messages from a" in rig.refused("conflict", "agent", "a", "send",
                                                                      to=wire.OPERATOR, body="more")
    rig.call("agent", "b", "send", to=wire.OPERATOR, body="b is heard")
    [first] = [m["id"] for m in rig.broker.inbox(wire.OPERATOR, 10, sender="a")][-1:]
    rig.broker.mark_read(wire.OPERATOR, [first])
    rig.call("agent", "a", "send", to=wire.OPERATOR, body="one read: one more")


# -- the sweep -------------------------------------------------------------------------------------------

def test_the_sweep_removes_acked_rows_past_their_age_and_nothing_else(broker):
    now = 1_900_000_000
    cutoff = now * 1000 - KEEP_DAYS["messages"] * DAY_MS
    ancient = cutoff - 400 * DAY_MS
    for body, delivered, acked, cancelled in [
            ("acked before the cutoff", ancient, cutoff - 1, None),
            ("cancelled before the cutoff", ancient, cutoff - 1, cutoff - 1),
            ("acked at the cutoff", ancient, cutoff, None),
            ("in flight for a year", ancient, None, None),
            ("queued for a year", None, None, None),
            ("unread by the operator", ancient, None, None)]:
        Message.create(sender="s", recipient="operator" if "operator" in body else "a", body=body, sent_at=ancient,
                       delivered_at=delivered, acked_at=acked, cancelled_at=cancelled)
    Question.create(asker="a", target="b", question="answered long ago", asked_at=ancient, answered_at=cutoff - 1)
    Question.create(asker="a", target="b", question="open for a year", asked_at=ancient)
    Reminder.create(owner="a", message="fired long ago", due_at=ancient, created_at=ancient, fired_at=cutoff - 1)
    Reminder.create(owner="a", message="failed long ago", due_at=ancient, created_at=ancient, failed_at=cutoff - 1)
    Reminder.create(owner="a", message="due a year ago", due_at=ancient, created_at=ancient)
    Approval.create(agent="a", kind="tool_use", status="approved", requested_at=ancient, resolved_at=cutoff - 1,
                    tool_use_id="t0")
    Approval.create(agent="a", kind="tool_use", status="pending", requested_at=ancient, tool_use_id="t1")
    Approval.create(agent="a", kind="apply_commit", status="approved", requested_at=ancient, resolved_at=cutoff - 1,
                    description="config history stays")
    assert Sweeper(clock=lambda: now).step() == {"messages": 2, "questions": 1, "reminders": 2, "tool_calls": 1}
    assert sorted(m.body for m in Message.select()) == ["acked at the cutoff", "in flight for a year",
                                                        "queued for a year", "unread by the operator"]
    assert [q.question for q in Question.select()] == ["open for a year"]
    assert [r.message for r in Reminder.select()] == ["due a year ago"]
    assert sorted((a.kind, a.status) for a in Approval.select()) == [("apply_commit", "approved"),
                                                                     ("tool_use", "pending")]
    assert Sweeper(clock=lambda: now).step() == {"messages": 0, "questions": 0, "reminders": 0, "tool_calls": 0}
    broker.requeue_inflight("a")
    assert bodies(broker.pop("a", 10)) == ["in flight for a year", "queued for a year"], "what stayed still works"


# -- the unknown recipient -------------------------------------------------------------------------------

def test_a_send_to_nobody_is_refused_on_every_surface_and_stores_nothing(rig):
    for surface, caller in (("agent", "a"), ("manager", "manager"), ("host", wire.OPERATOR)):
        sentence = rig.refused("not_found", surface, caller, "send", to="ghost", body="hello?")
        assert sentence == "there is no agent named 'ghost'; `list` shows who is in the hive"
    assert Message.select().count() == 0


def test_an_agent_another_core_spawned_or_destroyed_is_known_once_its_notice_is_heard(rig):
    Agent.create(name="elsewhere", node="other-core")  # another core's spawn: its row, then its notice
    rig.lifecycle.forget_names()  # the notice's handler (notices.AGENTS)
    mid = rig.call("agent", "a", "send", to="elsewhere", body="hi")["id"]
    assert Message.get_by_id(mid).recipient == "elsewhere"
    Agent.delete().where(Agent.name == "elsewhere").execute()
    rig.lifecycle.forget_names()
    rig.refused("not_found", "agent", "a", "send", to="elsewhere", body="still there?")
    assert Message.select().count() == 1


# -- migrations ------------------------------------------------------------------------------------------

class OlderAgent(pw.Model):
    """The agent table as a first version wrote it: none of the columns added since."""

    name = pw.CharField(primary_key=True)
    role = pw.CharField(default="agent")
    parent = pw.CharField(default="operator")
    created_at = pw.BigIntegerField(default=schema.now_ms)

    class Meta:
        database = core_db
        table_name = "agent"


class OlderApproval(pw.Model):
    """The approval table before tool calls were approvals."""

    agent = pw.CharField()
    kind = pw.CharField()
    requested_at = pw.BigIntegerField(default=schema.now_ms)
    status = pw.CharField(default="pending")
    description = pw.TextField(default="")

    class Meta:
        database = core_db
        table_name = "approval"


def test_older_tables_gain_every_new_column_with_its_default_and_keep_their_rows(db_url):
    open_core(db_url)
    core_db.drop_tables([Agent, Approval])
    core_db.create_tables([OlderAgent, OlderApproval])
    OlderAgent.create(name="a")
    old = OlderApproval.create(agent="a", kind="apply_commit", description="kept").id
    core_db.close()
    for _ in range(2):  # and again: nothing left to add
        open_core(db_url)
    try:
        agent = Agent.get_by_id("a")
        assert (agent.role, agent.desired, agent.paused, agent.needs_login) == ("agent", "running", False, False)
        assert agent.running_sha is agent.node is agent.shown is agent.last_turn_at is None
        assert {c.name for c in core_db.get_columns("agent")} == {f.column_name for f in Agent._meta.sorted_fields}
        Agent.create(name="b", paused=True)
        assert list(Agent.select(Agent.name).where(Agent.paused).tuples()) == [("b",)]
        approval = Approval.get_by_id(old)
        assert approval.description == "kept" and (approval.tool, approval.tool_use_id, approval.node) == (None,) * 3
        Approval.create(agent="a", kind="tool_use", tool="Bash", tool_input="{}", rule="Bash", tool_use_id="t1")
        Approval.create(agent="b", kind="tool_use", tool="Bash", tool_input="{}", rule="Bash", tool_use_id="t1")
        with pytest.raises(pw.IntegrityError), core_db.atomic():
            Approval.create(agent="a", kind="tool_use", tool="Bash", tool_input="{}", rule="Bash", tool_use_id="t1")
        assert Approval.select().count() == 3
    finally:
        core_db.close()


def test_the_schema_version_is_one_row_written_over_at_every_open(db_url):
    open_core(db_url)
    Meta.update(value="0").where(Meta.key == "schema_version").execute()  # as an older core left it
    Meta.create(key="something else", value="kept")
    core_db.close()
    open_core(db_url)
    open_core(db_url)
    try:
        assert sorted(Meta.select(Meta.key, Meta.value).tuples()) == [
            ("schema_version", str(schema.SCHEMA_VERSION)), ("something else", "kept")]
    finally:
        core_db.close()


def index_names():
    """The names of the indexes on the core's tables, as the engine lists them, and each one's WHERE."""
    if schema.is_postgres():
        rows = core_db.execute_sql("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    else:
        rows = core_db.execute_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    return {name: definition for name, definition in rows}


def test_every_index_is_there_partial_where_it_says_on_both_engines(db_url):
    open_core(db_url)
    open_core(db_url)
    try:
        have = index_names()
        for stmt in schema.CORE_INDEXES:
            name = stmt.split(" ON ")[0].split()[-1]
            assert name in have, f"{name} is missing"
            assert ("WHERE" in stmt) == ("WHERE" in have[name].upper()), (stmt, have[name])
            assert ("UNIQUE" in stmt) == ("UNIQUE" in have[name].upper()), (stmt, have[name])
        if schema.is_postgres():
            [(count,)] = core_db.execute_sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'message_ready'")
            assert count == 1, "the trigger is made once, however often the core opens the database"
    finally:
        core_db.close()


# -- PostgreSQL: several cores on one database -----------------------------------------------------------

def test_two_brokers_popping_at_once_in_greenlets_hand_each_message_over_once(pg_url):
    open_core(pg_url)
    try:
        one, two = Broker(RecordingHub()), Broker(RecordingHub())
        sent = [(one if i % 2 else two).send("s", "a", f"m{i}") for i in range(200)]
        got = {one: [], two: []}

        def drain(b, limit):
            while True:
                rows = b.pop("a", limit)
                if not rows:
                    return
                got[b].extend(r["id"] for r in rows)
                gevent.sleep(0)

        gevent.joinall([gevent.spawn(drain, b, n) for b in (one, two) for n in (1, 3)], raise_error=True)
        assert sorted(got[one] + got[two]) == sent, "each message once, none lost"
        assert got[one] and got[two], "both took part"
        assert got[one] == sorted(got[one]) and got[two] == sorted(got[two]), "each core sees the queue in order"
    finally:
        core_db.close()


POPPER = """
import json, sys
sys.path.insert(0, {root!r})
from hyperhive.core.broker import Broker
from hyperhive.schema import open_core

class Hub:
    def publish(self, kind, **data):
        pass

open_core(sys.argv[1])
broker = Broker(Hub())
print("ready", flush=True)
sys.stdin.readline()
got = []
while True:
    rows = broker.pop("a", int(sys.argv[2]))
    if not rows:
        break
    got += [r["id"] for r in rows]
print(json.dumps(got), flush=True)
"""


def test_two_cores_popping_at_once_take_each_message_exactly_once(pg_url):
    """Two processes, each a core with its own connection, pop one queue as fast as they can: a row the
    other's pop holds is skipped, never handed over twice."""
    open_core(pg_url)
    try:
        here = Broker(RecordingHub())
        sent = [here.send("s", "a", f"m{i}") for i in range(600)]
        cores = [subprocess.Popen([PYTHON, "-c", POPPER.format(root=ROOT), pg_url, str(limit)], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for limit in (1, 2, 5)]
        try:
            for core in cores:
                assert core.stdout.readline() == "ready\n", core.stderr.read()
            for core in cores:  # as close together as two writes get
                core.stdin.write("go\n")
                core.stdin.flush()
            outs = [core.communicate(timeout=60) for core in cores]
        finally:
            for core in cores:
                if core.poll() is None:
                    core.kill()
                    core.wait()
        for core, (_, err) in zip(cores, outs):
            assert core.returncode == 0, f"a popping core exited with {core.returncode}:\n{err}"
        got = [json.loads(out) for out, _ in outs]
        every = [mid for ids in got for mid in ids]
        assert len(every) == len(set(every)), f"{len(every) - len(set(every))} messages were popped twice"
        assert sorted(every) == sent, "none lost"
        assert sum(1 for ids in got if ids) >= 2, f"the cores did not pop at once: {[len(ids) for ids in got]}"
        assert all(ids == sorted(ids) for ids in got), "each core pops oldest first"
        assert Message.select().where(Message.delivered_at.is_null()).count() == 0
    finally:
        core_db.close()


class Listening:
    """A LISTEN on hive_message on a connection of its own; `heard()` is every payload since the last call."""

    MARK = "-- mark --"

    def __init__(self, url):
        import psycopg2

        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        self.conn.cursor().execute("LISTEN hive_message")

    def heard(self):
        """What was notified before now: a marker sent after it arrives after it (notices keep commit order)."""
        core_db.execute_sql("SELECT pg_notify('hive_message', %s)", (self.MARK,))
        got, deadline = [], time.monotonic() + 10
        while True:
            while self.conn.notifies:
                payload = self.conn.notifies.pop(0).payload
                if payload == self.MARK:
                    return got
                got.append(payload)
            left = deadline - time.monotonic()
            assert left > 0, f"the marker did not come back within 10 s (heard {got})"
            select.select([self.conn], [], [], left)
            self.conn.poll()

    def close(self):
        self.conn.close()


def test_the_trigger_names_the_recipient_whenever_a_message_becomes_deliverable_and_only_then(pg_url, monkeypatch):
    open_core(pg_url)
    ears = Listening(pg_url)
    try:
        b = Broker(RecordingHub())
        assert ears.heard() == []
        b.send("s", "a", "one")
        b.send("s", "bob", "two")
        assert ears.heard() == ["a", "bob"], "a send"
        b.pop("a", 10)
        b.pop("bob", 10)
        assert ears.heard() == [], "a pop makes nothing deliverable"
        assert b.requeue_inflight("a") == 1
        assert ears.heard() == ["a"], "a requeue"
        [row] = b.pop("a", 10)
        b.cancel_turn("a")
        assert ears.heard() == [], "a cancel: handled, not deliverable"
        b.retry("a", [row["id"]])
        assert ears.heard() == ["a"], "a retry"
        b.pop("a", 10)
        b.ack_turn("a")
        b.ack_turn("bob")
        b.send("a", wire.OPERATOR, "a report")
        b.mark_read(wire.OPERATOR)
        assert ears.heard() == [], "an ack, a message to the operator (delivered once stored) and its reading"
        big = "x" * (wire.ANSWER_BUDGET - 10)
        b.send("s", "a", big)
        b.send("s", "a", big)
        assert ears.heard() == ["a", "a"]
        assert len(b.pop("a", 10)) == 1
        assert ears.heard() == ["a"], "a row the answer budget put back"
    finally:
        ears.close()
        core_db.close()


def test_a_long_poll_on_one_core_wakes_at_a_send_through_another(pg_url):
    from hyperhive import postgres
    from hyperhive.core import notices

    open_core(pg_url)
    sender, receiver = Broker(RecordingHub()), Broker(RecordingHub())
    listener = postgres.Listener(pg_url, [notices.MESSAGE],
                                 lambda channel, payload: receiver.wake_all() if channel is None
                                 else receiver.wake(payload)).start()
    try:
        green_wait(listener.connected.is_set, "the listener to connect")
        waiter = gevent.spawn(receiver.recv, "a", 30, 5)
        green_wait(lambda: "a" in receiver._wakeups, "the long-poll to wait")
        assert not waiter.ready()
        started = time.monotonic()
        sender.send("operator", "a", "across")  # wakes the sender's own long-polls only: the rest is the NOTIFY
        messages, unread = waiter.get(timeout=10)
        assert bodies(messages) == ["across"] and unread == 0 and time.monotonic() - started < 5
    finally:
        listener.stop()
        core_db.close()


def test_message_ids_grow_in_commit_order_across_cores_so_the_sender_counts_miss_none(pg_url):
    """senders_through and flow's `after` trust that ids grow in commit order: another core's send still
    uncommitted holds the next send back, so the later send takes the higher id."""
    import gevent
    import psycopg2

    from hyperhive.core.broker import _INSERT_PG
    from hyperhive.schema import sql

    open_core(pg_url)
    other = psycopg2.connect(pg_url)  # another core, its send begun and not yet committed
    watcher = psycopg2.connect(pg_url)
    watcher.autocommit = True
    try:
        b = Broker(RecordingHub())
        with other.cursor() as cur:
            cur.execute(sql(_INSERT_PG), ("slow", wire.OPERATOR, "late", 0, 0, None, "[]"))
            (late,) = cur.fetchone()
        quick = gevent.spawn(b.send, "quick", wire.OPERATOR, "early")

        def held_back():
            with watcher.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                return cur.fetchone()[0] == 1

        green_wait(held_back, "the quick send to wait for the slow one's commit")
        assert not quick.ready()
        other.commit()
        early = quick.get(timeout=10)
        assert early > late
        counts, through = b.senders(wire.OPERATOR)
        assert through == early and {s["name"]: s["unread"] for s in counts} == {"quick": 1, "slow": 1}
    finally:
        other.close()
        watcher.close()
        core_db.close()


INTERRUPTED = """
import sys, time
sys.path.insert(0, {root!r})
import gevent, psycopg2
from hyperhive import wire
from hyperhive.schema import core_db, open_core

url = sys.argv[1]
open_core(url)
watcher = psycopg2.connect(url)
watcher.autocommit = True


def running(sql):
    deadline = time.monotonic() + 10
    while True:
        with watcher.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE query = %s AND state = 'active'", (sql,))
            row = cur.fetchone()
        if row:
            return row[0]
        assert time.monotonic() < deadline, f"{{sql}} never ran"
        gevent.sleep(0.01)


try:
    with gevent.Timeout(0.2):
        core_db.execute_sql("SELECT pg_sleep(31)")
except gevent.Timeout:
    print("timed out", flush=True)
assert core_db.execute_sql("SELECT 1").fetchone() == (1,)
job = gevent.spawn(core_db.execute_sql, "SELECT pg_sleep(32)")
running("SELECT pg_sleep(32)")
job.kill()
assert core_db.execute_sql("SELECT 2").fetchone() == (2,)
print("killed", flush=True)
job = gevent.spawn(core_db.execute_sql, "SELECT pg_sleep(33)")
with watcher.cursor() as cur:
    cur.execute("SELECT pg_terminate_backend(%s)", (running("SELECT pg_sleep(33)"),))
try:
    job.get(timeout=10)
except wire.HiveError as e:
    print(e.code, flush=True)
assert core_db.execute_sql("SELECT 3").fetchone() == (3,)
print("reconnected", flush=True)
"""


def test_a_statement_cut_short_closes_its_connection_and_the_next_one_opens_a_new_one(pg_url):
    """A timeout, a killed greenlet or a server that ends the session mid-statement: the core goes on, the
    next statement on a fresh connection. (Closing the connection from inside psycopg2's wait callback
    hung the whole process on the connection's own lock.) In a process of its own, so a hang fails."""
    core = subprocess.Popen([PYTHON, "-c", INTERRUPTED.format(root=ROOT), pg_url], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = core.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        core.kill()
        out, err = core.communicate()
        pytest.fail(f"the core hung on an interrupted statement; it had said {out.split()}")
    assert core.returncode == 0, err
    assert out.splitlines() == ["timed out", "killed", "unavailable", "reconnected"], err

"""The broker's lease rules, one test each, on each engine: a real sqlite file and a real PostgreSQL database."""

import gevent
import pytest
from gevent.event import Event

from conftest import refused
from fakes import Clock, RecordingHub
from hyperhive import wire
from hyperhive.core import broker as brokers
from hyperhive.core.broker import Broker
from hyperhive.schema import Message, core_db, open_core


@pytest.fixture
def broker(db_url):
    open_core(db_url)
    b = Broker(RecordingHub(), clock=Clock())
    yield b
    core_db.close()  # the database open now (a test may have opened it again)


def bodies(rows):
    return [r["body"] for r in rows]


def test_fifo_per_recipient(broker):
    for i in range(5):
        broker.send("operator", "a", f"m{i}")
    broker.send("operator", "b", "other")
    assert bodies(broker.pop("a", 2)) == ["m0", "m1"]
    assert bodies(broker.pop("a", 10)) == ["m2", "m3", "m4"]
    assert bodies(broker.pop("b", 10)) == ["other"]


def test_pop_stamps_delivered_and_is_not_repeated(broker):
    broker.send("operator", "a", "once")
    assert bodies(broker.pop("a", 1)) == ["once"]
    assert broker.pop("a", 1) == []
    assert Message.get().delivered_at is not None and Message.get().acked_at is None


def test_delivered_row_shape(broker):
    broker.send("b", "a", "hi")
    [row] = broker.pop("a", 1)
    assert list(row) == ["id", "from", "body", "sent_at", "redelivered", "file_refs"]
    assert row["from"] == "b" and row["redelivered"] is False and row["file_refs"] == []
    assert row["sent_at"].endswith("Z")


def recv(broker, *args):
    return bodies(broker.recv(*args)[0])


def test_long_poll_returns_on_send(broker):
    waiter = gevent.spawn(recv, broker, "a", 30, 5)
    gevent.sleep(0)  # let the waiter park on its wakeup
    assert not waiter.ready()
    broker.send("operator", "a", "wake")
    assert waiter.get(timeout=5) == ["wake"]


def test_long_poll_times_out_empty(broker):
    assert broker.recv("a", 0.05, 1) == ([], 0)


def test_long_poll_drains_up_to_max_after_first_and_counts_the_rest(broker):
    for i in range(4):
        broker.send("operator", "a", f"m{i}")
    messages, unread = broker.recv("a", 30, 3)
    assert bodies(messages) == ["m0", "m1", "m2"] and unread == 1


def test_a_poller_that_hung_up_takes_nothing(broker):
    gone = Event()
    dead = gevent.spawn(broker.recv, "a", 30, 1, gone)
    live = gevent.spawn(recv, broker, "a", 30, 1)
    gevent.sleep(0)
    gone.set()  # the dead poller's client closed its socket
    gevent.sleep(0)
    broker.send("operator", "a", "for the live one")
    assert dead.get(timeout=5) == ([], 0)
    assert live.get(timeout=5) == ["for the live one"]


def test_ack_stamps_only_popped_rows(broker):
    broker.send("operator", "a", "one")
    broker.pop("a", 1)
    broker.send("operator", "a", "two")  # not popped yet
    assert broker.ack_turn("a") == 1
    assert {m.body: m.acked_at is not None for m in Message.select()} == {"one": True, "two": False}


def test_ack_is_per_recipient(broker):
    broker.send("operator", "a", "for a")
    broker.send("operator", "b", "for b")
    broker.pop("a", 1)
    broker.pop("b", 1)
    assert broker.ack_turn("a") == 1
    assert Message.get(Message.body == "for b").acked_at is None


def test_requeue_puts_unacked_back_flagged_and_in_order(broker):
    for i in range(3):
        broker.send("operator", "a", f"m{i}")
    broker.pop("a", 3)
    assert broker.requeue_inflight("a") == 3
    rows = broker.pop("a", 10)
    assert bodies(rows) == ["m0", "m1", "m2"]
    assert all(r["redelivered"] for r in rows)


def test_requeue_leaves_acked_rows_alone(broker):
    broker.send("operator", "a", "done")
    broker.pop("a", 1)
    broker.ack_turn("a")
    assert broker.requeue_inflight("a") == 0
    assert broker.pop("a", 1) == []


def test_redelivered_flag_is_persisted(broker, db_url):
    broker.send("operator", "a", "x")
    broker.pop("a", 1)
    broker.requeue_inflight("a")
    core_db.close()
    open_core(db_url)  # as after a core restart
    [row] = Broker(RecordingHub()).pop("a", 1)
    assert row["redelivered"] is True


def test_requeue_wakes_a_long_poll(broker):
    broker.send("operator", "a", "x")
    broker.pop("a", 1)
    waiter = gevent.spawn(recv, broker, "a", 30, 1)
    gevent.sleep(0)
    broker.requeue_inflight("a")
    assert waiter.get(timeout=5) == ["x"]


def test_messages_to_the_operator_stay_unread_until_read_and_are_never_swept_unread(broker):
    from hyperhive.core.sweeps import Sweeper

    first = broker.send("a", "operator", "report")
    m = Message.get()
    assert m.delivered_at is not None and m.acked_at is None, "delivered once stored; read only when read"
    assert bodies(broker.inbox("operator", 10)) == ["report"]
    assert Sweeper().step(now=2_000_000_000) == {"messages": 0, "questions": 0, "reminders": 0, "tool_calls": 0}, \
        "years later, an unread report is still there"
    second = broker.send("b", "operator", "another")
    assert broker.mark_read("operator", [first]) == [first]
    assert broker.hub.events[-1] == ("read", {"recipient": "operator", "ids": [first]})
    assert bodies(broker.inbox("operator", 10, unread=True)) == ["another"]
    assert broker.mark_read("operator") == [second] and broker.mark_read("operator") == []


def test_the_inbox_pages_back_to_the_first_message_and_names_who_floods(broker):
    ids = [broker.send("bulk", "operator", f"line {i}") for i in range(25)]
    report = broker.send("quiet", "operator", "the report that matters")
    page, seen = broker.inbox("operator", 10), []
    while page:
        seen += [m["id"] for m in page]
        page = broker.inbox("operator", 10, before=page[-1]["id"])
    assert seen == [report, *reversed(ids)], "every message, newest first, down to the first"
    assert broker.senders("operator") == ([{"name": "bulk", "unread": 25, "last_hour": 25},
                                           {"name": "quiet", "unread": 1, "last_hour": 1}], report)
    later = broker.send("bulk", "someone", "not for the operator")
    assert broker.senders("operator")[1] == later, "the counts name the last message they could include"


def test_one_sender_may_leave_only_so_many_unread_for_the_operator(broker, monkeypatch):
    from hyperhive.core import broker as brokers

    monkeypatch.setattr(brokers, "OPERATOR_UNREAD_PER_SENDER", 3)
    for i in range(3):
        broker.send("flood", "operator", f"{i}")
    with pytest.raises(wire.HiveError) as refused:
        broker.send("flood", "operator", "one too many")
    assert refused.value.code == "conflict" and "3 unread messages from flood" in str(refused.value)
    assert broker.send("other", "operator", "still heard")
    assert broker.send("core", "operator", "the core's own events are capped where they are made")
    broker.mark_read("operator")
    assert broker.send("flood", "operator", "read: room again")


def test_inbox_is_newest_first(broker):
    for i in range(3):
        broker.send("a", "operator", f"r{i}")
    assert bodies(broker.inbox("operator", 2)) == ["r2", "r1"]


def test_held_recipient_gets_nothing_until_released(broker):
    broker.send("operator", "a", "wait")
    broker.hold("a", True)
    assert broker.pop("a", 1) == []
    waiter = gevent.spawn(recv, broker, "a", 30, 1)
    gevent.sleep(0)
    broker.hold("a", False)
    assert waiter.get(timeout=5) == ["wait"]


def test_events_are_published(broker):
    broker.send("operator", "a", "x")
    broker.pop("a", 1)
    kinds = [k for k, _ in broker.hub.events]
    assert kinds == ["sent", "delivered"]
    assert broker.hub.events[0][1]["message"]["to"] == "a"


# -- quotas and bounds ------------------------------------------------------------------------

def test_a_sender_may_queue_only_its_share_of_a_recipients_queue(broker):
    for i in range(brokers.SENDER_QUEUE_MAX):
        broker.admit("b", "a")
        broker.send("b", "a", f"m{i}")
    sentence = refused("unavailable", broker.admit, "b", "a")
    assert f"b already has {brokers.SENDER_QUEUE_MAX} unread messages waiting for a" in sentence
    broker.admit("c", "a")  # another sender's share is its own
    broker.admit("b", "d")  # and so is another recipient's queue
    broker.pop("a", 1)  # delivered (not even acked) is no longer queued
    broker.admit("b", "a")


def test_a_recipients_queue_is_a_quota_whoever_fills_it(broker, monkeypatch):
    monkeypatch.setattr(brokers, "QUEUE_MAX", 5)
    for i in range(5):
        broker.send(f"s{i}", "a", "x")
    sentence = refused("unavailable", broker.admit, "t", "a")
    assert "a already has 5 unread messages waiting, the most its queue takes" in sentence
    refused("unavailable", broker.admit, wire.OPERATOR, "a")  # the page's share: the surfaces exempt the operator's own


def test_a_listing_cuts_long_bodies_and_stops_at_the_answer_budget(broker):
    long = "y" * (wire.LISTED_BODY_MAX + 10)
    broker.send("b", "c", "short")
    for _ in range(wire.ANSWER_BUDGET // wire.LISTED_BODY_MAX + 5):
        broker.send("b", "a", long)
    rows = broker.inbox("a", 1000)
    assert rows.cut_short and len(rows) == wire.ANSWER_BUDGET // (wire.LISTED_BODY_MAX + 2)
    assert all(r["body_chars"] == len(long) and r["body"].startswith("y" * wire.LISTED_BODY_MAX)
               and f"the whole message is {len(long):,} characters" in r["body"] for r in rows)
    few = broker.recent("a", 2)
    assert not few.cut_short and len(few) == 2
    [short] = broker.inbox("c", 10)
    assert short["body"] == "short" and "body_chars" not in short


def test_the_dashboard_event_of_a_long_message_carries_it_cut(broker):
    long = "z" * (wire.LISTED_BODY_MAX * 3)
    broker.send("b", "a", long)
    [(kind, data)] = broker.hub.events
    assert data["message"]["body_chars"] == len(long) and len(data["message"]["body"]) < wire.LISTED_BODY_MAX + 200
    assert bodies(broker.pop("a", 1)) == [long]  # recv hands it over whole


def test_a_recv_batch_stops_at_the_answer_budget_and_leaves_the_rest_queued(broker):
    big = "q" * (wire.ANSWER_BUDGET // 3 - 10)
    for i in range(5):
        broker.send("b", "a", f"{i}{big}")
    messages, unread = broker.recv("a", 0, wire.RECV_MAX_BATCH)
    assert [m["body"][0] for m in messages] == ["0", "1", "2"] and unread == 2
    assert [m["body"][0] for m in broker.pop("a", 32)] == ["3", "4"]
    assert Message.select().where(Message.delivered_at.is_null()).count() == 0
    # one message over the whole budget still goes, alone
    broker.send("b", "a", "w" * (wire.ANSWER_BUDGET + 1))
    broker.send("b", "a", "after")
    assert [len(m["body"]) for m in broker.pop("a", 32)] == [wire.ANSWER_BUDGET + 1]
    assert bodies(broker.pop("a", 32)) == ["after"]
    assert broker.hub.events[-1][1]["ids"] == [Message.select().order_by(Message.id.desc()).get().id]


def test_the_message_flow_lists_bodies_cut_oldest_first(broker):
    ids = [broker.send("b", "a", f"{i}" + "f" * (wire.LISTED_BODY_MAX * 2)) for i in range(4)]
    assert [m["id"] for m in broker.flow(None, 2)] == ids[-2:]
    after = broker.flow(ids[0], 10)
    assert [m["id"] for m in after] == ids[1:]
    assert all(m["body_chars"] == wire.LISTED_BODY_MAX * 2 + 1 and "cut here" in m["body"] for m in after)

"""An agent's row as the pages see it, and the dashboard's stream: each change shows at once, never later.

On the core built in-process over a real database of each engine with a recording
backend (tests/test_dashboard.py's Dash): a turn that ended well stamps
`last_turn_at`; `set_status` and a fired reminder publish the changed row at
once (not at the next pass of the 2 s watch, which would hide a missing
publish); an agent mid-operation is not `failed` however its harness looks;
and a dashboard stream that falls too far behind is closed, so a tab never
shows "live" while it receives nothing.
"""

from test_dashboard import Dash, heard

from hyperhive import events, wire
from hyperhive.fanout import CLOSED, Fanout


def rows_published(sub, name):
    return [e["container"] for e in heard(sub) if e["kind"] == "container_state_changed" and e["container"]["name"] == name]


def test_a_good_turn_stamps_last_turn_at_and_publishes_the_row(tmp_path, db_url):
    dash = Dash(tmp_path, db_url)
    dash.spawn("alice")
    agent = dash.core.surfaces.dispatcher("agent", "alice")
    dash.core.broker.send(wire.OPERATOR, "alice", "hi")
    agent({"cmd": "recv", "max": 1})
    sub = dash.core.hub.subscribe()
    agent({"cmd": "ack_turn"})
    [row] = rows_published(sub, "alice")
    assert row["last_turn_at"] is not None
    assert dash.get("/api/state").json()["containers"][1]["last_turn_at"] == row["last_turn_at"]


def test_a_status_line_and_a_fired_reminder_publish_the_row_at_once(tmp_path, db_url):
    dash = Dash(tmp_path, db_url)
    dash.spawn("alice")
    agent = dash.core.surfaces.dispatcher("agent", "alice")
    sub = dash.core.hub.subscribe()
    agent({"cmd": "set_status", "text": "indexing"})
    assert [r["status_text"] for r in rows_published(sub, "alice")] == ["indexing"]
    reminder = agent({"cmd": "remind", "message": "later", "in_seconds": 60})["reminder"]
    assert rows_published(sub, "alice")[-1]["pending_reminders"] == 1
    assert dash.core.reminders.step(now=reminder_due(reminder) + 1) == [reminder["id"]]
    assert [r["pending_reminders"] for r in rows_published(sub, "alice")] == [0]


def reminder_due(reminder):
    from hyperhive.wire import parse_when

    return parse_when(reminder["due_at"])


def test_an_agent_mid_operation_is_not_failed_though_its_harness_is_down(tmp_path, db_url):
    dash = Dash(tmp_path, db_url)
    dash.spawn("alice")
    dash.backend.up.discard("alice")  # down, and meant to run: failed ...
    lifecycle = dash.core.lifecycle
    assert lifecycle.row(lifecycle.get("alice"))["failed"] is True
    with lifecycle.busy("alice", "restarting"):  # ... unless it is down because it is being restarted
        assert lifecycle.row(lifecycle.get("alice"))["failed"] is False
    assert lifecycle.row(lifecycle.get("alice"))["failed"] is True


def test_a_stream_that_falls_too_far_behind_is_closed_not_left_silent():
    hub = Fanout(events.DASHBOARD, queue_size=3)
    slow, quick = hub.subscribe(), hub.subscribe()
    for i in range(3):
        hub.publish("transient_cleared", name=f"a{i}")
        quick.queue.get_nowait()
    hub.publish("transient_cleared", name="one too many")
    assert slow.queue.qsize() == 1 and slow.queue.peek_nowait() is CLOSED, "told it was dropped, not left to wait"
    assert quick.queue.get_nowait()["name"] == "one too many"
    hub.publish("transient_cleared", name="after")
    assert slow.queue.qsize() == 1, "a dropped subscriber gets nothing more"
    assert list(slow.events(0)) == [], "its stream ends rather than waiting"


def test_an_event_many_pages_ask_for_at_once_is_made_once():
    """500 dashboard streams get one new message at the same moment: its frame (and the markdown in it,
    rendered by a worker process) is made once, and every stream is sent that one."""
    import gevent

    from hyperhive.core.renderer import Renderer

    rendered = []

    class Counting(Renderer):
        def _render(self, text):
            rendered.append(text)
            gevent.sleep(0.01)  # a worker's round trip: every other stream asks meanwhile
            return f"<p>{text}</p>"

    renderer = Counting()
    shown_calls = []

    def shown(event):
        shown_calls.append(event["seq"])
        return dict(event, message=dict(event["message"], body_html=renderer.render(event["message"]["body"])))

    hub = Fanout(events.DASHBOARD, shown=shown)
    event = hub.publish("sent", message={"id": 1, "body": "hello"})
    frames = [job.value for job in gevent.joinall([gevent.spawn(hub.frame, event) for _ in range(50)])]
    assert len(set(frames)) == 1 and b"<p>hello</p>" in frames[0]
    assert shown_calls == [1] and rendered == ["hello"]
    texts = [job.value for job in gevent.joinall([gevent.spawn(renderer.render, "new") for _ in range(50)])]
    assert set(texts) == {"<p>new</p>"} and rendered == ["hello", "new"], "one render per text however many ask"

"""A verb never reports failure for an effect that happened.

Once a verb's effect is committed, a later step that fails (telling the
dashboard, closing a destroyed agent's questions, telling the manager) is
answered ok with a `warnings` sentence naming it, on every surface: the
dispatcher, the socket, the CLI and the MCP tool text. A retry would do the
work twice."""

import logging

import pytest
from test_questions import Rig

from hyperhive import wire
from hyperhive.core import aftermath
from hyperhive.schema import Agent, Question


class BrokenHub:
    """A hub whose every publish fails, as a renderer that raised did in the pyz."""

    def __init__(self):
        self.tries = []

    def publish(self, kind, **data):
        self.tries.append(kind)
        raise RuntimeError(f"no module named 'fenced_code' (publishing {kind})")


@pytest.fixture
def rig(tmp_path, db_url):
    h = Rig(tmp_path, db_url)
    broken = BrokenHub()
    h.hub = broken
    h.broker.hub = h.questions.hub = h.surfaces.hub = broken
    yield h
    h.db.close()


def test_a_question_stored_is_answered_ok_with_the_failed_step_named(rig, caplog):
    caplog.set_level(logging.ERROR)
    answer = rig.call("agent", "a", "ask", question="deploy now?")
    assert answer["ok"] and answer["id"]
    assert Question.get_by_id(answer["id"]).question == "deploy now?"  # the effect happened
    assert answer[wire.WARNINGS] == [f"telling the dashboard about question {answer['id']} failed: "
                                     "no module named 'fenced_code' (publishing question_added)"]
    assert "failed after the change was committed" in caplog.text  # and logged, with its traceback


def test_an_answer_delivered_is_answered_ok_however_many_after_steps_failed(rig):
    asked = rig.call("agent", "a", "ask", question="which branch?")
    answer = rig.call("host", wire.OPERATOR, "answer", id=asked["id"], answer="main")
    assert answer["ok"] and answer["question"]["answered_by"] == wire.OPERATOR
    assert [m["from"] for m in rig.inbox("a")] == [wire.OPERATOR]  # delivered before the failures
    assert any("question" in w and "closed" in w for w in answer[wire.WARNINGS])
    assert any("message" in w for w in answer[wire.WARNINGS])  # the `sent` event of the delivery


def test_a_destroy_is_done_even_when_closing_its_questions_fails(rig, monkeypatch):
    rig.call("agent", "b", "ask", question="still there?", to="a")

    def broken(name):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(rig.questions, "agent_destroyed", broken)
    answer = rig.call("host", wire.OPERATOR, "destroy", name="a")
    assert answer["ok"] and Agent.get_or_none(Agent.name == "a") is None
    assert answer[wire.WARNINGS][0].startswith("closing the questions of the destroyed a failed: ")
    assert "I/O error" in answer[wire.WARNINGS][0]  # a disk failure reads as one


def test_nothing_failed_means_no_warnings_and_a_refusal_stays_a_refusal(tmp_path, db_url):
    h = Rig(tmp_path, db_url)
    try:
        assert wire.WARNINGS not in h.call("agent", "a", "ask", question="fine?")
        with pytest.raises(wire.HiveError) as e:
            h.call("agent", "a", "ask", question="   ")
        assert e.value.code == "bad_argument"
    finally:
        h.db.close()


def test_outside_a_request_a_failed_step_is_logged_only(caplog):
    caplog.set_level(logging.ERROR)
    assert aftermath.after("the sweep's report", lambda: 1 / 0) is None
    assert "the sweep's report failed after the change was committed" in caplog.text
    with aftermath.collecting() as notes:
        assert aftermath.after("a step", lambda: 7) == 7
    assert notes == []

"""Questions in-process: the rules of ask / answer / cancel / the ttl watchdog, on each engine (a real
sqlite file, a real PostgreSQL database) with a real broker, then the same through the socket surfaces'
dispatchers (identity from the surface), and once end to end on a real daemon whose agents run the fake
claude."""

import json
import logging
import re
import sqlite3
import types

import pytest

from conftest import refused, wait_until
from fakes import CoreRig
from hyperhive import wire
from hyperhive.core import questions
from hyperhive.schema import Agent, Question, core_db, is_postgres, open_core

T0 = 1_700_000_000.0


class Lifecycle:
    """Who exists is the agent table, as in the core; destroy removes a row."""

    def __init__(self):
        self.destroyed = []
        self.watch = types.SimpleNamespace(changed=lambda name: None)  # rows are the dashboard's, not asked here

    def known(self, name):
        return name == wire.OPERATOR or Agent.get_or_none(Agent.name == name) is not None

    def destroy(self, name, purge=False):
        Agent.delete().where(Agent.name == name).execute()
        self.destroyed.append(name)



class Rig(CoreRig):
    def __init__(self, tmp_path, database=None):
        super().__init__(tmp_path, T0, agents=("manager", "a", "b", "c"), lifecycle=Lifecycle(), repos=None,
                         database=database)

    def question_events(self):
        return [(kind, data) for kind, data in self.hub.events if kind.startswith("question_")]


@pytest.fixture
def rig(tmp_path, db_url):
    h = Rig(tmp_path, db_url)
    yield h
    h.db.close()


# -- asking -------------------------------------------------------------------------------

def test_a_question_to_the_operator_goes_to_the_dashboard_only(rig):
    asked = rig.questions.ask("a", "Ship **v2** now?", options=["yes", "no"])
    assert list(asked) == list(wire.QUESTION_FIELDS)
    assert asked["asker"] == "a" and asked["target"] == "operator" and asked["options"] == ["yes", "no"]
    assert asked["asked_at"] == wire.iso(int(T0 * 1000)) and asked["expires_at"] is None
    assert asked["answered_at"] is asked["answer"] is asked["answered_by"] is None
    [pending] = rig.questions.pending_for_operator()
    assert pending["id"] == asked["id"] and pending["question_html"] == "<p>Ship <strong>v2</strong> now?</p>"
    assert {"id", "asker", "question", "question_html", "options", "asked_at", "expires_at"} <= set(pending)
    assert rig.question_events() == [("question_added", {"question": pending})]
    # the operator reads questions on the dashboard: nobody's inbox gets a message
    assert [rig.inbox(n) for n in ("operator", "a", "b", "manager")] == [[], [], [], []]


def test_a_question_to_a_peer_reaches_its_inbox_and_never_the_operators_queue(rig):
    asked = rig.questions.ask("a", "Which branch?\nmain has the fix.", to="b", options=["main", "dev"])
    assert asked["target"] == "b"
    [msg] = rig.inbox("b")
    assert msg["from"] == "a"
    body = msg["body"]
    assert body.startswith(f"[question_asked] a asks you question {asked['id']}:")
    assert "> Which branch?\n> main has the fix." in body and "`main` · `dev`" in body
    assert f"`answer` tool (id {asked['id']})" in body
    assert rig.questions.pending_for_operator() == [] and rig.question_events() == []
    assert rig.inbox("a") == []


def test_a_question_to_the_manager_is_a_peer_question(rig):
    rig.questions.ask("a", "Can I get more memory?", to="manager")
    assert rig.inbox("manager")[0]["body"].startswith("[question_asked] a asks you")
    assert rig.questions.pending_for_operator() == []


def test_asking_yourself_or_nobody_is_refused(rig):
    """Through the agent's socket, as every question comes: the verb's table checks the arguments
    (verbs.check_args), Questions what the table cannot know."""
    def ask(code, **args):
        return rig.refused(code, "agent", "a", "ask", **args)

    assert "cannot ask yourself" in ask("bad_argument", question="hm?", to="a")
    assert "no agent named 'zed'" in ask("not_found", question="hm?", to="zed")
    assert "no agent named 'ttl-watchdog'" in ask("not_found", question="hm?", to="ttl-watchdog")
    assert "not valid" in ask("bad_argument", question="hm?", to="../b")
    assert "must not be empty" in ask("bad_argument", question="  ")
    assert "between 1 and 604800" in ask("bad_argument", question="hm?", ttl_seconds=0)
    assert Question.select().count() == 0 and rig.inbox("a") == [] and rig.question_events() == []


def test_no_asker_fills_the_operators_questions(rig, monkeypatch):
    monkeypatch.setattr(questions, "OPEN_FOR_OPERATOR", 3)
    for i in range(3):
        rig.call("agent", "a", "ask", question=f"q{i}?")
    assert "already has 3 questions open for the operator" in rig.refused("conflict", "agent", "a", "ask",
                                                                         question="one more?")
    rig.call("agent", "b", "ask", question="mine?")  # another asker is not held up
    first = rig.questions.pending_for_operator()[0]["id"]
    rig.call("agent", "a", "cancel_loose_end", kind="question", id=first)
    rig.call("agent", "a", "ask", question="now there is room?")
    assert len(rig.questions.pending_for_operator()) == 4


# -- answering ------------------------------------------------------------------------------

def test_the_answer_lands_in_the_askers_inbox_from_the_answerer(rig):
    qid = rig.questions.ask("a", "Which branch?", to="b")["id"]
    rig.inbox("b")
    rig.clock.t += 30
    answered = rig.questions.answer(qid, "main, it has the fix", "b")
    assert answered["answer"] == "main, it has the fix" and answered["answered_by"] == "b"
    assert answered["answered_at"] == wire.iso(int((T0 + 30) * 1000)) and answered["note"] is None
    [msg] = rig.inbox("a")
    assert msg["from"] == "b"
    assert msg["body"] == (f"[question_answered] Your question {qid} to b was answered by b.\n\n"
                           "Your question:\n> Which branch?\n\n"
                           "Answer (from b):\n> main, it has the fix")
    assert rig.questions.open_for("a") == [] and rig.questions.open_for("b") == []


def test_only_the_operator_answers_an_operator_question(rig):
    qid = rig.questions.ask("a", "Ship it?")["id"]
    for who in ("b", "a", "manager"):
        sentence = refused("forbidden", rig.questions.answer, qid, "yes", who)
        assert f"question {qid} is for the operator: only the operator answers it" in sentence
        assert f"hyperhive answer {qid}" in sentence
    answered = rig.questions.answer(qid, "yes", wire.OPERATOR)
    assert answered["answered_by"] == "operator"
    [msg] = rig.inbox("a")
    assert msg["from"] == "operator" and msg["body"].startswith(
        f"[question_answered] Your question {qid} to the operator was answered by the operator.")
    assert rig.questions.pending_for_operator() == []
    [(kind, data)] = rig.question_events()[1:]
    assert kind == "question_resolved"
    assert (data["question"]["id"], data["question"]["answer"], data["question"]["answered_by"]) == \
        (qid, "yes", "operator")


def test_a_peer_question_is_answered_by_its_target_or_the_operator_in_its_stead(rig):
    qid = rig.questions.ask("a", "Which branch?", to="b")["id"]
    sentence = refused("forbidden", rig.questions.answer, qid, "dev", "c")
    assert sentence == f"question {qid} was put to b: only b (or the operator) may answer it"
    assert "cancel_loose_end" in refused("forbidden", rig.questions.answer, qid, "dev", "a")
    assert "only b" in refused("forbidden", rig.questions.answer, qid, "dev", "manager")
    assert Question.get_by_id(qid).answered_at is None and rig.inbox("a") == []

    override = rig.questions.ask("a", "Which tag?", to="b")["id"]
    assert rig.questions.answer(override, "v2", wire.OPERATOR)["answered_by"] == "operator"
    [msg] = rig.inbox("a")
    assert msg["from"] == "operator" and "was answered by the operator" in msg["body"]
    assert rig.questions.answer(qid, "main", "b")["answered_by"] == "b"
    assert rig.question_events() == []  # peer questions never reach the dashboard


def test_a_question_is_answered_once(rig):
    qid = rig.questions.ask("a", "Which branch?", to="b")["id"]
    rig.questions.answer(qid, "main", "b")
    sentence = refused("conflict", rig.questions.answer, qid, "dev", "b")
    assert sentence.startswith(f"question {qid} is already closed: b answered it 'main' at ")
    refused("conflict", rig.questions.answer, qid, "dev", wire.OPERATOR)
    refused("conflict", rig.questions.cancel, qid, wire.OPERATOR)
    assert Question.get_by_id(qid).answer == "main"
    assert len(rig.inbox("a")) == 1
    assert "there is no question 99" in refused("not_found", rig.questions.answer, 99, "x", "b")


# -- cancelling --------------------------------------------------------------------------------

def test_the_operator_cancels_and_the_asker_is_unblocked(rig):
    qid = rig.questions.ask("a", "Ship it?")["id"]
    cancelled = rig.questions.cancel(qid, wire.OPERATOR)
    assert cancelled["answer"] == "[cancelled by operator]" and cancelled["answered_by"] == "operator"
    [msg] = rig.inbox("a")
    assert msg["from"] == "operator"
    assert msg["body"].startswith(f"[question_answered] Your question {qid} to the operator was cancelled by "
                                  "the operator; it has no answer.")
    assert msg["body"].endswith("Answer (from operator):\n> [cancelled by operator]")
    assert rig.question_events()[-1][0] == "question_resolved"
    assert "was cancelled by operator" in refused("conflict", rig.questions.answer, qid, "yes", wire.OPERATOR)


def test_the_asker_cancels_its_own_and_nobody_else_may(rig):
    qid = rig.questions.ask("a", "Which branch?", to="b")["id"]
    rig.inbox("b")
    for who in ("b", "c"):
        sentence = refused("forbidden", rig.questions.cancel, qid, who)
        assert sentence == f"question {qid} is a's: only a, the manager or the operator may cancel it"
    cancelled = rig.questions.cancel(qid, "a")
    assert cancelled["answer"] == "[cancelled by a]" and cancelled["note"] == "withdrawn by its asker"
    assert rig.inbox("a") == []  # it withdrew it itself: no message wakes it
    assert "cancelled by a" in refused("conflict", rig.questions.answer, qid, "main", "b")


# -- the ttl watchdog ---------------------------------------------------------------------------------

def test_the_watchdog_answers_an_expired_question(rig):
    qid = rig.questions.ask("a", "Ship it?", ttl_seconds=600)["id"]
    forever = rig.questions.ask("a", "And later?")["id"]
    peer = rig.questions.ask("a", "Which branch?", to="b", ttl_seconds=60)["id"]
    rig.inbox("b")
    assert rig.questions.pending_for_operator()[0]["expires_at"] == wire.iso(int((T0 + 600) * 1000))
    assert rig.questions.expire_step(T0 + 59) == []
    assert rig.questions.expire_step(T0 + 60) == [peer]
    assert rig.questions.expire_step(T0 + 599.9) == []
    assert rig.questions.expire_step(T0 + 600) == [qid]
    assert rig.questions.expire_step(T0 + 10 * 365 * 86400) == []  # no ttl: open until answered
    peer_msg, msg = rig.inbox("a")
    assert msg["from"] == peer_msg["from"] == "ttl-watchdog"
    assert msg["body"].startswith(f"[question_answered] Your question {qid} to the operator expired: nobody "
                                  "answered within 10 minutes.")
    assert "Nobody answered in time" in msg["body"]
    assert peer_msg["body"].startswith(f"[question_answered] Your question {peer} to b expired")
    expired = Question.get_by_id(qid)
    assert expired.answered_by == "ttl-watchdog" and expired.answered_at == int((T0 + 600) * 1000)
    assert "Nobody answered in time" in expired.answer
    assert [q["id"] for q in rig.questions.pending_for_operator()] == [forever]
    resolved = [d["question"]["id"] for k, d in rig.question_events() if k == "question_resolved"]
    assert resolved == [qid]  # the peer question's expiry is not the dashboard's business
    assert "expired unanswered" in refused("conflict", rig.questions.answer, peer, "main", "b")


def test_the_watchdog_reads_the_injected_clock_by_default(rig):
    qid = rig.questions.ask("a", "Ship it?", ttl_seconds=5)["id"]
    assert rig.questions.expire_step() == []
    rig.clock.t += 5
    assert rig.questions.expire_step() == [qid]


def test_an_answer_beats_the_watchdog(rig):
    qid = rig.questions.ask("a", "Ship it?", ttl_seconds=5)["id"]
    rig.questions.answer(qid, "yes", wire.OPERATOR)
    assert rig.questions.expire_step(T0 + 60) == []
    assert [m["from"] for m in rig.inbox("a")] == ["operator"]


# -- agents that go away ----------------------------------------------------------------------------

def test_an_answer_to_a_destroyed_asker_is_recorded_and_logged(rig, caplog):
    qid = rig.questions.ask("a", "Which branch?", to="b")["id"]
    Agent.delete().where(Agent.name == "a").execute()
    with caplog.at_level(logging.WARNING, logger="hyperhive.core.questions"):
        answered = rig.questions.answer(qid, "main", "b")
    assert answered["note"] == "not delivered: a was destroyed before the answer came"
    assert Question.get_by_id(qid).note == answered["note"]
    assert rig.inbox("a") == []
    assert any("asker a no longer exists" in r.getMessage() for r in caplog.records)


def test_destroying_an_agent_closes_its_questions(rig):
    to_c = rig.questions.ask("a", "Which branch?", to="c")["id"]
    from_c = rig.questions.ask("c", "Ship it?")["id"]
    rig.call("host", wire.OPERATOR, "destroy", name="c")
    assert rig.lifecycle.destroyed == ["c"]
    [msg] = rig.inbox("a")
    assert msg["from"] == "core"
    assert msg["body"].startswith(f"[question_answered] Your question {to_c} to c was cancelled: c was destroyed")
    gone = Question.get_by_id(from_c)
    assert gone.answered_by == "core" and gone.note == "closed: its asker c was destroyed"
    assert rig.questions.pending_for_operator() == [] and rig.questions.open_for("manager") == []


def test_the_askers_of_a_destroyed_agent_hear_of_their_questions_in_the_order_they_asked(rig):
    asked = [rig.questions.ask(asker, f"q{i}?", to="c")["id"] for i, asker in enumerate(("a", "b", "a", "a"))]
    Question.update(note=None).where(Question.id == asked[0]).execute()  # touched since: PostgreSQL moves the row
    if is_postgres():  # and reads it where a plan with statistics may: in the table's order, not an index's
        core_db.execute_sql("SET enable_indexscan = off; SET enable_bitmapscan = off")
    rig.call("host", wire.OPERATOR, "destroy", name="c")
    heard = [int(re.search(r"Your question (\d+)", m["body"]).group(1)) for m in rig.inbox("a")]
    assert heard == [asked[0], asked[2], asked[3]]


# -- through the surfaces: identity is the socket -------------------------------------------------------

def test_the_asker_is_the_socket_never_the_request(rig):
    answer = rig.call("agent", "a", "ask", question="Which branch?", to="b", asker="c", **{"from": "c"})
    assert answer["ok"] is True and answer["question"]["asker"] == "a"
    assert answer["id"] == answer["question"]["id"]
    [msg] = rig.inbox("b")
    assert msg["from"] == "a"
    # b answers on its own socket; the answer names b whatever the request says
    answered = rig.call("agent", "b", "answer", id=answer["id"], answer="main", answered_by="operator")
    assert answered["question"]["answered_by"] == "b"
    assert rig.inbox("a")[0]["from"] == "b"


def test_the_surfaces_refuse_with_sentences(rig):
    assert "cannot ask yourself" in rig.refused("bad_argument", "agent", "a", "ask", question="hm?", to="a")
    assert "cannot ask yourself" in rig.refused("bad_argument", "manager", "manager", "ask", question="hm?",
                                                 to="manager")
    assert "no agent named 'zed'" in rig.refused("not_found", "agent", "a", "ask", question="hm?", to="zed")
    assert "missing argument 'question'" in rig.refused("bad_argument", "agent", "a", "ask", to="b")
    qid = rig.call("agent", "a", "ask", question="Which branch?", to="b")["id"]
    sentence = rig.refused("forbidden", "agent", "c", "answer", id=qid, answer="dev")
    assert sentence == f"question {qid} was put to b: only b (or the operator) may answer it"
    assert "only a, the manager or the operator" in rig.refused("forbidden", "agent", "c", "cancel_loose_end", kind="question",
                                                                 id=qid)
    assert "no question 99" in rig.refused("not_found", "agent", "b", "answer", id=99, answer="x")
    assert "between 1 and" in rig.refused("bad_argument", "agent", "b", "answer", id=0, answer="x")
    # the operator does not ask, and agents do not read the operator's queue
    assert "unknown verb 'ask' on the host socket" in rig.refused("unknown_verb", "host", "operator", "ask",
                                                                    question="hm?")
    rig.refused("unknown_verb", "agent", "a", "questions")


@pytest.mark.parametrize("options, fragment", [
    ("yes,no", "must be a list of short strings"),
    (["yes", 3], "choice 2 must be a string"),
    (["yes", " "], "choice 2 is empty"),
    (["yes", "no", "yes"], "'yes' is listed twice"),
    (["x"] * 11, "lists 11 choices; the limit is 10"),
    (["x" * 101], "choice 1 is 101 characters; a choice is at most 100"),
    (["two\nlines"], "spans several lines"),
])
def test_bad_options_get_a_sentence(rig, options, fragment):
    sentence = rig.refused("bad_argument", "agent", "a", "ask", question="hm?", options=options)
    assert sentence.startswith("ask: 'options'") and fragment in sentence


def test_options_and_ttl_through_the_wire(rig):
    asked = rig.call("agent", "a", "ask", question="Ship it?", options=[" yes ", "no"], ttl_seconds=90)["question"]
    assert asked["options"] == ["yes", "no"]
    assert asked["expires_at"] == wire.iso(int((T0 + 90) * 1000))
    assert "between 1 and 604800" in rig.refused("bad_argument", "agent", "a", "ask", question="q",
                                                   ttl_seconds=7 * 86400 + 1)
    assert rig.call("agent", "a", "ask", question="Later?", options=None, ttl_seconds=None)["question"][
        "options"] == []


def test_the_host_lists_answers_and_cancels_operator_questions(rig):
    ship = rig.call("agent", "a", "ask", question="Ship it?", options=["yes", "no"])["id"]
    peer = rig.call("agent", "a", "ask", question="Which branch?", to="b")["id"]
    drop = rig.call("manager", "manager", "ask", question="Drop the old logs?")["id"]
    listed = rig.call("host", "operator", "questions")["questions"]
    assert [q["id"] for q in listed] == [ship, drop]  # the peer question is not the operator's
    assert listed[0]["question_html"] == "<p>Ship it?</p>" and listed[1]["asker"] == "manager"
    assert rig.call("host", "operator", "answer", id=ship, answer="yes")["question"]["answered_by"] == "operator"
    assert rig.call("host", "operator", "cancel_question", id=drop)["question"]["answer"] == \
        "[cancelled by operator]"
    assert rig.call("host", "operator", "answer", id=peer, answer="main")["question"]["answered_by"] == "operator"
    assert rig.call("host", "operator", "questions")["questions"] == []
    assert [m["from"] for m in rig.inbox("a")] == ["operator", "operator"]
    assert rig.inbox("manager")[0]["body"].startswith(f"[question_answered] Your question {drop} to the "
                                                       "operator was cancelled by the operator")


def test_loose_ends_list_open_questions_by_who_they_concern(rig):
    to_op = rig.call("agent", "a", "ask", question="Ship it?")["id"]
    to_b = rig.call("agent", "a", "ask", question="Which branch?", to="b")["id"]
    from_c = rig.call("agent", "c", "ask", question="Which tag?", to="manager")["id"]

    def ends(surface, name):
        rows = rig.call(surface, name, "get_loose_ends")["loose_ends"]
        assert all(r["loose_end"] == "question" == r["kind"] for r in rows)
        return [r["id"] for r in rows]

    assert ends("agent", "a") == [to_op, to_b]  # asked by it
    assert ends("agent", "b") == [to_b]  # put to it
    assert ends("agent", "c") == [from_c]
    assert ends("manager", "manager") == [to_op, to_b, from_c]  # the whole hive
    row = rig.call("agent", "b", "get_loose_ends")["loose_ends"][0]
    assert (row["asker"], row["target"], row["question"]) == ("a", "b", "Which branch?")
    rig.call("agent", "b", "answer", id=to_b, answer="main")
    rig.call("agent", "a", "cancel_loose_end", kind="question", id=to_op)
    assert ends("agent", "a") == [] and ends("agent", "b") == []
    assert ends("manager", "manager") == [from_c]


def test_the_open_questions_index_is_there(tmp_path):
    open_core(tmp_path / "fresh.db").close()
    con = sqlite3.connect(tmp_path / "fresh.db")
    (sql,) = con.execute("select sql from sqlite_master where name='question_open'").fetchone()
    assert "WHERE answered_at IS NULL" in sql
    plan = " ".join(r[-1] for r in con.execute(
        "explain query plan select id from question where target = 'operator' and answered_at is null"))
    assert "question_open" in plan, plan
    con.close()


# -- end to end: a real core, real harnesses, the fake claude calling the MCP tools ------------------------

def woken_by(hive, name, start):
    """The prompts of name's turns that begin with `start`."""
    return [c["prompt"] for c in hive.claude_calls(name) if c["prompt"].startswith(start)]


def test_an_agent_asks_a_peer_and_wakes_with_the_answer(hive):
    for name in ("a", "b"):
        hive.call("spawn", name=name)
    wait_until(lambda: all((hive.row(n) or {}).get("active_model") for n in ("a", "b")), 20, "a and b to boot")
    ask = {"to": "b", "question": "Which branch has the fix?", "options": ["main", "dev"]}
    hive.call("send", to="a", body=f"FAKE: call ask {json.dumps(ask)}")

    [asked] = wait_until(lambda: woken_by(hive, "b", "from: a\n\n[question_asked]"), 30,
                         "b to wake with a's question")
    qid = int(re.search(r"asks you question (\d+):", asked).group(1))
    assert "> Which branch has the fix?" in asked and "`main` · `dev`" in asked
    # a peer question is not the operator's
    assert hive.call("questions")["questions"] == []
    assert [e["loose_end"] for e in hive.agent_call("b", "get_loose_ends")["loose_ends"]] == ["question"]

    # b answers with its own MCP tool (the operator's message scripts its fake model)
    hive.call("send", to="b", body=f"FAKE: call answer {json.dumps({'id': qid, 'answer': 'main'})}")
    [answered] = wait_until(lambda: woken_by(hive, "a", "from: b\n\n[question_answered]"), 30,
                            "a's next turn to wake with b's answer")
    assert answered.startswith(f"from: b\n\n[question_answered] Your question {qid} to b was answered by b.")
    assert "Your question:\n> Which branch has the fix?" in answered and answered.rstrip().endswith("> main")
    assert hive.agent_call("a", "get_loose_ends")["loose_ends"] == []
    con = sqlite3.connect(f"file:{hive.state_dir}/hive.db?mode=ro", uri=True)
    try:
        row = con.execute("select asker, target, answer, answered_by from question where id = ?", (qid,)).fetchone()
    finally:
        con.close()
    assert row == ("a", "b", "main", "b")

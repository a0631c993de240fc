"""Reminders, loose ends, status lines, login reports, file references at ingest and the core's sweeps:
the rules in-process on each engine (a real sqlite file, a real PostgreSQL database) with a real broker
and the real lifecycle's reach, then through the socket surfaces (identity from the surface), then once
end to end on a real daemon whose clock the test moves and whose scheduler it steps."""

import json
import logging
import os
import re
import signal

import pytest

from conftest import ROOT, Hive, running, wait_until
from fakes import Clock, CoreRig, RecordingBackend
from hyperhive import wire
from hyperhive.core.sweeps import Sweeper
from hyperhive.schema import Agent, Approval, Message, Question, Reminder

T0 = 1_800_000_000.0
DAY = 86400


class Repos:
    """Every agent has config repos, whose every commit is SHA; no git is needed for the approvals
    these tests queue."""

    SHA = "5" * 40

    def exists(self, name):
        return True

    def deployed_sha(self, name):
        return None

    def proposed_main(self, name):
        return self.SHA

    def resolve(self, name, ref):
        return self.SHA

    def pin_proposal(self, name, approval_id, ref):
        return self.SHA

    def spawn_diff(self, name, sha):
        return ""

    def tag(self, name, kind, approval_id, sha, message=None):
        pass


class Rig(CoreRig):
    def __init__(self, tmp_path, backend=None, database=None):
        super().__init__(tmp_path, T0, backend=backend, repos=Repos(), database=database)

    def remind(self, caller, **args):
        return self.call("manager" if caller == "manager" else "agent", caller, "remind", **args)

    def destroy(self, name):
        Agent.delete().where(Agent.name == name).execute()
        self.lifecycle._names = None

    def row(self, name):
        return self.lifecycle.row(Agent.get_by_id(name))


@pytest.fixture
def rig(tmp_path, db_url):
    r = Rig(tmp_path, database=db_url)
    yield r
    r.db.close()


# -- setting a reminder -----------------------------------------------------------------------------

def test_a_reminder_is_set_in_seconds_or_at_a_time(rig):
    first = rig.remind("a", message="check the build", in_seconds=600)
    assert first["ok"] and first["reminder"]["due_at"] == wire.iso(int((T0 + 600) * 1000))
    at = rig.remind("a", message="standup", due_at="2027-01-15T09:00:00+01:00")["reminder"]
    assert at["due_at"] == "2027-01-15T08:00:00.000Z"
    assert set(at) == set(wire.REMINDER_FIELDS) and at["owner"] == "a" and at["fired_at"] is None
    assert rig.call("agent", "a", "count_pending_reminders")["count"] == 2
    assert rig.call("agent", "b", "count_pending_reminders")["count"] == 0
    assert rig.row("a")["pending_reminders"] == 2 and rig.row("b")["pending_reminders"] == 0


@pytest.mark.parametrize("args, fragment", [
    ({}, "give exactly one of due_at"),
    ({"in_seconds": 5, "due_at": "2027-01-01T00:00:00Z"}, "give exactly one of due_at"),
    ({"in_seconds": 0}, "between 1 and"),
    ({"in_seconds": wire.REMINDER_MAX_SECONDS + 1}, "between 1 and"),
    ({"due_at": "tomorrow"}, "is not an RFC 3339 time"),
    ({"due_at": "2027-01-01T00:00:00"}, "with a zone"),
    ({"due_at": "2020-01-01T00:00:00Z"}, "in the past"),
    ({"due_at": "2099-01-01T00:00:00Z"}, "more than a year ahead"),
    ({"due_at": True}, "must be an RFC 3339 time"),
])
def test_a_bad_time_is_refused_with_a_sentence(rig, args, fragment):
    assert fragment in rig.refused("bad_argument", "agent", "a", "remind", message="x", **args)
    assert Reminder.select().count() == 0


def test_a_time_a_moment_ago_fires_at_the_next_step(rig):
    r = rig.remind("a", message="now-ish", due_at=T0 - 30)["reminder"]
    assert r["due_at"] == wire.iso(int(T0 * 1000))
    assert rig.reminders.step() == [r["id"]]


def test_an_owner_holds_a_bounded_number_of_pending_reminders(rig, monkeypatch):
    monkeypatch.setattr(wire, "MAX_PENDING_REMINDERS", 2)
    rig.remind("a", message="1", in_seconds=10)
    rig.remind("a", message="2", in_seconds=10)
    assert "already have 2 pending reminders" in rig.refused("conflict", "agent", "a", "remind", message="3",
                                                             in_seconds=10)
    rig.remind("b", message="b's own", in_seconds=10)


# -- the scheduler --------------------------------------------------------------------------------------

def test_the_scheduler_delivers_due_reminders_to_the_owners_inbox_and_no_sooner(rig):
    soon = rig.remind("a", message="check the **build**\nand the tests", in_seconds=10)["id"]
    later = rig.remind("a", message="later", in_seconds=3600)["id"]
    assert rig.reminders.step(now=T0 + 9) == []
    assert rig.inbox("a") == []
    assert rig.reminders.step(now=T0 + 10) == [soon]
    [msg] = rig.inbox("a")
    assert msg["from"] == "reminder"
    assert msg["body"] == (f"[reminder] Reminder {soon} (set {wire.iso(int(T0 * 1000))}, due "
                           f"{wire.iso(int((T0 + 10) * 1000))}) is due.\n\n> check the **build**\n> and the tests")
    assert Reminder.get_by_id(soon).fired_at == int((T0 + 10) * 1000)
    assert rig.reminders.step(now=T0 + 20) == []  # fired once
    assert rig.call("agent", "a", "count_pending_reminders")["count"] == 1
    rig.clock.t = T0 + 3600
    assert rig.reminders.step() == [later], "the step reads the injected clock by default"


def test_a_file_payload_is_written_at_once_and_the_reminder_points_to_it(rig):
    path = os.path.join(rig.state("a"), "notes")
    os.makedirs(path)
    payload = "step 1\n" * 1000
    r = rig.remind("a", message=payload, in_seconds=60, file_path=f"{path}/todo.md")["reminder"]
    with open(f"{path}/todo.md") as f:
        assert f.read() == payload  # persisted now, not when it fires
    assert Reminder.get_by_id(r["id"]).host_path == f"{path}/todo.md"
    rig.reminders.step(now=T0 + 60)
    [msg] = rig.inbox("a")
    assert msg["body"].endswith(f"is due. Its message is in {path}/todo.md (7000 bytes): read it there.")
    assert "step 1" not in msg["body"]
    # the pointer is itself a file reference the agent's page can preview
    assert [ref["path"] for ref in msg["file_refs"]] == [f"{path}/todo.md"]


def test_the_payload_path_is_translated_from_the_containers_view(tmp_path, db_url):
    rig = Rig(tmp_path, backend=RecordingBackend(state_in="/state", shared_in="/shared"), database=db_url)
    try:
        r = rig.remind("a", message="in the shared dir", in_seconds=5, file_path="/shared/handoff.md")["reminder"]
        assert r["file_path"] == "/shared/handoff.md"
        with open(os.path.join(rig.layout.shared_dir, "handoff.md")) as f:
            assert f.read() == "in the shared dir"
        rig.reminders.step(now=T0 + 5)
        assert "Its message is in /shared/handoff.md (17 bytes)" in rig.inbox("a")[0]["body"]
    finally:
        rig.db.close()


def test_a_payload_path_out_of_reach_is_refused(rig, tmp_path):
    outside = tmp_path / "outside.md"
    outside.write_text("keep")
    os.symlink(outside, os.path.join(rig.state("a"), "link.md"))
    cases = {f"{rig.state('b')}/x.md": ("forbidden", "outside what can be reached here"),
             f"{rig.state('a')}/../../b/state/x.md": ("bad_argument", "climbs with '..'"),
             f"{rig.state('a')}/link.md": ("forbidden", "symlink"),
             f"{rig.state('a')}/no/dir.md": ("not_found", "does not exist"),
             "relative.md": ("bad_argument", "is relative")}
    for path, (code, fragment) in cases.items():
        sentence = rig.refused(code, "agent", "a", "remind", message="x", in_seconds=5, file_path=path)
        assert sentence.startswith("remind: cannot write the message to file_path: ") and fragment in sentence
    assert outside.read_text() == "keep" and Reminder.select().count() == 0


def test_a_payload_file_gone_is_delivered_inline_and_recorded(rig, caplog):
    path = os.path.join(rig.state("a"), "todo.md")
    rid = rig.remind("a", message="the text itself", in_seconds=5, file_path=path)["id"]
    os.unlink(path)
    with caplog.at_level(logging.WARNING):
        rig.reminders.step(now=T0 + 5)
    [msg] = rig.inbox("a")
    assert f"Its message was to be in {path}, but that file is gone" in msg["body"]
    assert msg["body"].endswith("> the text itself")
    r = Reminder.get_by_id(rid)
    assert r.fired_at is not None and r.failed_at is None
    assert r.error.startswith("the payload file is gone: ") and r.error.endswith("; delivered inline")
    assert f"reminder {rid} of a: the payload file is gone" in caplog.text


def test_a_reminder_of_a_destroyed_owner_fails_on_its_row_and_in_the_managers_loose_ends(rig, caplog):
    rid = rig.remind("a", message="nobody will read this", in_seconds=5)["id"]
    rig.destroy("a")
    with caplog.at_level(logging.WARNING):
        assert rig.reminders.step(now=T0 + 5) == [rid]
    assert rig.inbox("a") == [] and Message.select().count() == 0
    r = Reminder.get_by_id(rid)
    assert r.failed_at == int((T0 + 5) * 1000) and r.error == "not delivered: its owner a no longer exists"
    assert f"reminder {rid} of a failed: not delivered: its owner a no longer exists" in caplog.text
    [end] = rig.call("manager", "manager", "get_loose_ends")["loose_ends"]
    assert (end["loose_end"], end["id"], end["error"]) == ("reminder", rid, r.error)
    rig.call("manager", "manager", "cancel_loose_end", kind="reminder", id=rid)  # dismissed
    assert rig.call("manager", "manager", "get_loose_ends")["loose_ends"] == []


def test_one_reminder_that_cannot_be_delivered_does_not_hold_back_the_others(rig, monkeypatch, caplog):
    bad = rig.remind("a", message="x", in_seconds=5, file_path=os.path.join(rig.state("a"), "p.md"))["id"]
    good = rig.remind("b", message="y", in_seconds=5)["id"]

    def broken(name):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(rig.references, "reach", broken)
    assert rig.reminders.step(now=T0 + 5) == [bad, good]
    assert Reminder.get_by_id(bad).error == "delivery failed: the disk is on fire"
    assert [m["body"][-3:] for m in rig.inbox("b")] == ["> y"]
    assert "reminder %d could not be delivered" % bad in caplog.text


# -- loose ends -------------------------------------------------------------------------------------------

def test_loose_ends_list_what_concerns_an_agent_and_the_manager_sees_the_hive(rig):
    q_ab = rig.call("agent", "a", "ask", question="Which branch?", to="b")["id"]
    r_a = rig.remind("a", message="ping b", in_seconds=60)["id"]
    r_b = rig.remind("b", message="b's", in_seconds=60)["id"]
    ap = rig.call("manager", "manager", "request_spawn", name="c", description="a third hand")["id"]
    Approval.update(agent="a").where(Approval.id == ap).execute()  # an approval about a

    def ends(surface, name):
        return [(e["loose_end"], e["id"]) for e in rig.call(surface, name, "get_loose_ends")["loose_ends"]]

    assert ends("agent", "a") == [("approval", ap), ("question", q_ab), ("reminder", r_a)]
    assert ends("agent", "b") == [("question", q_ab), ("reminder", r_b)]
    assert ends("manager", "manager") == [("approval", ap), ("question", q_ab), ("reminder", r_a),
                                          ("reminder", r_b)]
    rig.reminders.step(now=T0 + 60)
    assert ends("agent", "a") == [("approval", ap), ("question", q_ab)], "a fired reminder is not open"


def test_cancelling_a_question_answers_it_so_its_asker_is_unblocked(rig):
    qid = rig.call("agent", "a", "ask", question="Ship it?", to="b")["id"]
    rig.inbox("b")
    assert "only a, the manager or the operator may cancel it" in rig.refused(
        "forbidden", "agent", "b", "cancel_loose_end", kind="question", id=qid)
    done = rig.call("manager", "manager", "cancel_loose_end", kind="question", id=qid)
    assert done["cancelled"]["answer"] == "[cancelled by manager]"
    [msg] = rig.inbox("a")
    assert msg["body"].startswith(f"[question_answered] Your question {qid} to b was cancelled by manager")
    own = rig.call("agent", "a", "ask", question="Again?", to="b")["id"]
    assert rig.call("agent", "a", "cancel_loose_end", kind="question", id=own)["cancelled"]["answer"] == \
        "[cancelled by a]"
    assert "already closed" in rig.refused("conflict", "agent", "a", "cancel_loose_end", kind="question", id=own)


def test_a_reminder_is_cancelled_by_its_owner_or_the_manager_and_then_never_fires(rig):
    mine = rig.remind("a", message="x", in_seconds=5)["id"]
    theirs = rig.remind("b", message="y", in_seconds=5)["id"]
    assert rig.refused("forbidden", "agent", "a", "cancel_loose_end", kind="reminder", id=theirs) == \
        f"reminder {theirs} is b's: only b or the manager may cancel it"
    assert rig.call("agent", "a", "cancel_loose_end", kind="reminder", id=mine)["cancelled"]["cancelled_by"] == "a"
    assert rig.call("manager", "manager", "cancel_loose_end", kind="reminder", id=theirs)["ok"]
    assert rig.reminders.step(now=T0 + 5) == []
    assert rig.inbox("a") == rig.inbox("b") == []
    assert "there is no reminder" in rig.refused("not_found", "agent", "a", "cancel_loose_end", kind="reminder",
                                                 id=mine)
    fired = rig.remind("a", message="z", in_seconds=5)["id"]
    rig.reminders.step(now=T0 + 5)
    assert "already fired" in rig.refused("conflict", "agent", "a", "cancel_loose_end", kind="reminder", id=fired)


def test_only_the_manager_withdraws_an_approval(rig):
    ap = rig.call("manager", "manager", "request_spawn", name="c", description="")["id"]
    Approval.update(agent="a").where(Approval.id == ap).execute()
    assert "only the manager withdraws it" in rig.refused("forbidden", "agent", "a", "cancel_loose_end",
                                                          kind="approval", id=ap)
    done = rig.call("manager", "manager", "cancel_loose_end", kind="approval", id=ap)["cancelled"]
    assert (done["status"], done["note"]) == ("cancelled", "withdrawn by manager")
    assert ("approval_resolved", {"approval": done}) in rig.hub.events
    assert rig.inbox("manager")[-1]["body"] == f"[helper event] approval {ap} (spawn of a, commit 555555555555) was withdrawn: " \
                                               "withdrawn by manager"
    assert "already cancelled" in rig.refused("conflict", "manager", "manager", "cancel_loose_end",
                                              kind="approval", id=ap)


def test_a_bad_kind_is_refused_with_the_kinds(rig):
    assert rig.refused("bad_argument", "agent", "a", "cancel_loose_end", kind="todo", id=1) == \
        "cancel_loose_end: 'kind' must be one of question, reminder, approval, got 'todo'"


# -- status lines and login reports ----------------------------------------------------------------------

def test_an_agent_sets_and_clears_its_one_line_status(rig):
    rig.clock.t = T0
    set_ = rig.call("agent", "a", "set_status", text="  indexing\n the   repo ")
    assert set_["status_text"] == "indexing the repo"
    agent = Agent.get_by_id("a")
    assert agent.status_text == "indexing the repo" and agent.status_set_at is not None
    who = rig.call("agent", "a", "whoami")
    assert (who["status_text"], who["status_set_at"]) == ("indexing the repo", wire.iso(agent.status_set_at))
    assert Agent.get_by_id("b").status_text is None, "a status is its own"
    assert "at most 200" in rig.refused("bad_argument", "agent", "a", "set_status", text="x" * 201)
    cleared = rig.call("agent", "a", "set_status", text="")
    assert cleared["status_text"] is None and Agent.get_by_id("a").status_set_at is None


def test_a_login_change_is_recorded_and_told_to_the_manager_and_the_operator_once(rig):
    assert rig.call("agent", "a", "report_login", logged_in=True)["changed"] is False
    assert rig.call("agent", "a", "report_login", logged_in=False, note="auth status: loggedIn false")["changed"]
    assert Agent.get_by_id("a").needs_login is True
    assert rig.call("agent", "a", "report_login", logged_in=False)["changed"] is False
    rig.call("agent", "a", "report_login", logged_in=True)
    told = ["[helper event] needs_login: a's claude has no valid login, so its turns are parked; the operator logs "
            'it in on its page (/agent/a/). (its harness says: "auth status: loggedIn false")',

            "[helper event] logged_in: a's claude runs again; its waiting messages run."]
    assert [m["body"] for m in rig.inbox("manager")] == told
    assert [m["body"] for m in rig.broker.inbox("operator", 10)][::-1] == told
    rig.call("manager", "manager", "report_login", logged_in=False)
    assert rig.inbox("manager") == [], "the manager is not told about itself"
    assert Agent.get_by_id("manager").needs_login is True
    assert rig.broker.inbox("operator", 1)[0]["body"].startswith("[helper event] needs_login: manager's claude")


def test_a_missing_claude_is_its_own_state_told_once(rig):
    said = "claude not found at /opt/claude; install Claude Code there or point the hive at it"
    assert rig.call("agent", "a", "report_login", logged_in=False, note=said, claude_missing=True)["changed"]
    agent = Agent.get_by_id("a")
    assert agent.claude_missing == said and agent.needs_login is False
    assert rig.call("agent", "a", "report_login", logged_in=False, note=said, claude_missing=True)["changed"] is False
    [told] = [m["body"] for m in rig.inbox("manager")]
    assert told == ("[helper event] claude_missing: a cannot run claude; its messages wait until the binary is there "
                    f'(its harness says: "{said}")')
    rig.call("agent", "a", "report_login", logged_in=True)
    assert Agent.get_by_id("a").claude_missing is None


# -- file references at ingest ----------------------------------------------------------------------------

def test_file_refs_are_what_the_sender_may_open_and_the_reader_too(rig):
    for name in ("a", "b"):
        with open(os.path.join(rig.state(name), "notes.md"), "w") as f:
            f.write(f"{name}'s notes")
    with open(os.path.join(rig.layout.shared_dir, "report.txt"), "w") as f:
        f.write("for all")
    a_notes, b_notes = (os.path.join(rig.state(n), "notes.md") for n in ("a", "b"))
    shared = os.path.join(rig.layout.shared_dir, "report.txt")
    body = f"see {a_notes}, {b_notes} and {shared}"
    rig.call("agent", "a", "send", to="b", body=body)
    [to_b] = rig.inbox("b")
    # b's notes are not a's to look up, a's are not b's to open: only the shared dir is both's
    assert [r["path"] for r in to_b["file_refs"]] == [shared]
    # from the core (a reminder, say) the reader's own state dir is looked up: the core may read it
    rig.broker.send("core", "b", body)
    assert [r["path"] for r in rig.inbox("b")[0]["file_refs"]] == [b_notes, shared]
    rig.call("agent", "a", "send", to="operator", body=body)
    to_op = Message.select().where(Message.recipient == "operator").get()
    assert [r["path"] for r in json.loads(to_op.file_refs)] == [a_notes, shared], \
        "the operator reads what the sender named"
    assert json.loads(to_op.file_refs)[1] == {"path": shared, "host_path": shared, "size": 7}


def test_file_refs_carry_the_host_resolution_of_the_senders_view(tmp_path, db_url):
    rig = Rig(tmp_path, backend=RecordingBackend(state_in="/state", shared_in="/shared"), database=db_url)
    try:
        for name in ("a", "b"):
            with open(os.path.join(rig.state(name), "plan.md"), "w") as f:
                f.write(f"{name}'s plan")
        with open(os.path.join(rig.layout.shared_dir, "all.md"), "w") as f:
            f.write("ours")
        body = "read /state/plan.md, /state/missing.md and /shared/all.md"
        rig.call("agent", "a", "send", to="operator", body=body)
        to_op = json.loads(Message.select().where(Message.recipient == "operator").get().file_refs)
        assert to_op == [{"path": "/state/plan.md", "host_path": os.path.join(rig.state("a"), "plan.md"), "size": 8},
                         {"path": "/shared/all.md", "host_path": os.path.join(rig.layout.shared_dir, "all.md"),
                          "size": 4}]
        # to b, /state/plan.md is b's own file of that name, not a's: not a reference b is shown
        rig.call("agent", "a", "send", to="b", body=body)
        [msg] = rig.inbox("b")
        assert msg["file_refs"] == [to_op[1]]
        # and an agent is shown a reference without the host's path
        rig.call("agent", "a", "send", to="b", body=body)
        assert rig.call("agent", "b", "recv", wait_seconds=0)["messages"][0]["file_refs"] == [
            {"path": "/shared/all.md", "size": 4}]
        recent = rig.call("agent", "a", "recent", limit=10)["messages"]
        assert [r["file_refs"] for r in recent] == [[{"path": "/shared/all.md", "size": 4}]] * 2 + [
            [{"path": "/state/plan.md", "size": 8}, {"path": "/shared/all.md", "size": 4}]]
    finally:
        rig.db.close()


def test_a_failing_reference_check_never_stops_the_message(rig, monkeypatch, caplog):
    def broken(sender, recipient, body):
        raise OSError("stale file handle")

    monkeypatch.setattr(rig.broker, "refs_of", broken)
    rig.call("agent", "a", "send", to="b", body="/shared/x.md")
    assert rig.inbox("b")[0]["file_refs"] == []
    assert "finding the file references of a message from a to b failed" in caplog.text


# -- the sweeps -------------------------------------------------------------------------------------------

def test_the_sweep_removes_only_closed_rows_past_thirty_days_and_logs_each_count(rig, caplog):
    now = T0 + 40 * DAY
    old, recent = int((T0 + 5 * DAY) * 1000), int((now - 29 * DAY) * 1000)
    for i, (acked, delivered) in enumerate([(old, old), (recent, recent), (None, old), (None, None)]):
        Message.create(sender="a", recipient="b", body=f"m{i}", sent_at=old, delivered_at=delivered, acked_at=acked)
    for i, answered in enumerate([old, recent, None]):
        Question.create(asker="a", target="b", question=f"q{i}", asked_at=old, answered_at=answered,
                        answer="x" if answered else None)
    for i, (fired, failed) in enumerate([(old, None), (None, old), (recent, None), (None, None)]):
        Reminder.create(owner="a", message=f"r{i}", due_at=old, created_at=old, fired_at=fired, failed_at=failed)
    for i, (kind, status, resolved) in enumerate([("tool_use", "approved", old), ("tool_use", "cancelled", recent),
                                                  ("tool_use", "pending", None), ("apply_commit", "denied", old)]):
        Approval.create(agent="a", kind=kind, status=status, requested_at=old, resolved_at=resolved,
                        description=f"t{i}", tool_use_id=f"toolu_{i}" if kind == "tool_use" else None)
    with caplog.at_level(logging.INFO, logger="hyperhive.core.sweeps"):
        assert Sweeper(clock=lambda: now).step() == {"messages": 1, "questions": 1, "reminders": 2, "tool_calls": 1}
    assert sorted(m.body for m in Message.select()) == ["m1", "m2", "m3"], "unacked rows are never swept"
    assert sorted(q.question for q in Question.select()) == ["q1", "q2"], "an open question stays"
    assert sorted(r.message for r in Reminder.select()) == ["r2", "r3"], "a pending reminder stays"
    assert sorted(a.description for a in Approval.select()) == ["t1", "t2", "t3"], "config approvals stay"
    for line in ("sweep: removed 1 acked messages older than 30 days",
                 "sweep: removed 1 answered questions older than 30 days",
                 "sweep: removed 2 fired or failed reminders older than 30 days",
                 "sweep: removed 1 decided tool calls older than 30 days"):
        assert line in caplog.text
    assert Sweeper().step(now=now) == {"messages": 0, "questions": 0, "reminders": 0, "tool_calls": 0}


# -- end to end: a real core whose clock the test moves, real harnesses, the fake claude ------------------

@pytest.fixture
def clocked(tmp_path):
    offset = tmp_path / "clock-offset"
    h = Hive(tmp_path / "state", wrapper=os.path.join(ROOT, "tests", "clockedcore.py"),
             env={"ANTHROPIC_API_KEY": "test-key", "HIVE_TEST_CLOCK_FILE": str(offset)},
             extra_args=["--pass-env", "ANTHROPIC_API_KEY"])
    h.offset = offset
    with running(h):
        yield h


def woken_by(hive, name, start):
    return [c["prompt"] for c in hive.claude_calls(name) if c["prompt"].startswith(start)]


def test_a_reminder_set_for_ten_seconds_later_arrives_when_the_stepped_clock_gets_there(clocked):
    hive = clocked
    hive.call("spawn", name="a")
    wait_until(lambda: (hive.row("a") or {}).get("active_model"), 20, "a to boot")
    args = {"message": "look at the nightly build", "in_seconds": 10}
    hive.call("send", to="a", body=f"FAKE: call remind {json.dumps(args)}\nFAKE: call set_status "
                                   f"{json.dumps({'text': 'waiting on the nightly build'})}")
    wait_until(lambda: hive.agent_call("a", "count_pending_reminders")["count"] == 1, 30, "a's reminder to be set")
    row = wait_until(lambda: (r := hive.row("a")) and r["pending_reminders"] == 1 and r["status_text"] and r,
                     20, "a's row to show the reminder and the status")
    assert row["status_text"] == "waiting on the nightly build"

    hive.proc.send_signal(signal.SIGUSR1)  # a step now: not due yet
    hive.offset.write_text("11")  # ten seconds (and one) later, without waiting for them
    hive.proc.send_signal(signal.SIGUSR1)
    [woken] = wait_until(lambda: woken_by(hive, "a", "from: reminder\n\n[reminder] Reminder "), 30,
                         "a to wake with its reminder")
    assert re.search(r"is due\.\n\n> look at the nightly build$", woken.rstrip())
    assert len(woken_by(hive, "a", "from: reminder")) == 1
    wait_until(lambda: hive.row("a")["pending_reminders"] == 0, 20, "the row's count to drop")
    hive.call("stop", scope={"agent_names": ["a"]})
    wait_until(lambda: not hive.row("a")["running"], 30, "a to stop")
    assert hive.row("a")["status_text"] is None, "a status shows only while the agent runs"


def test_helper_events_about_one_subject_are_held_past_a_burst_and_folded_into_the_next(rig):
    from hyperhive.core.helperevents import HelperEvents

    clock = Clock(1000.0)
    events = HelperEvents(rig.broker, clock=clock, burst=2, window=600)
    assert [events.tell("a's login", "manager", f"state {i}") for i in range(5)] == [True, True, False, False, False]
    assert [m["body"] for m in rig.inbox("manager")] == ["state 0", "state 1"]
    assert events.tell("b's login", "manager", "b's own") is True, "another subject has its own window"
    rig.inbox("manager")
    clock.t += 599
    assert events.step() == 0
    clock.t += 1
    assert events.step() == 1
    assert [m["body"] for m in rig.inbox("manager")] == ["state 4 (2 earlier change(s) of a's login were folded "
                                                         "into this one)"]
    assert events.step() == 0 and events.held == {}

"""The approval queue in-process: recording fakes for git and lifecycle, a real broker on sqlite."""

import pytest

from conftest import RecordingHub
from hyperhive import wire
from hyperhive.core.approvals import QUEUING, Approvals
from hyperhive.core.broker import Broker
from hyperhive.schema import Agent, Approval, Message, open_core


class Repos:
    """Records every git-side call; `fail` makes the named method raise."""

    def __init__(self):
        self.calls, self.fail, self.known = [], {}, {"a", "manager"}

    def _do(self, method, *args):
        self.calls.append((method, *args))
        if method in self.fail:
            raise wire.HiveError(self.fail[method], "conflict")

    def check_commit_ref(self, ref):
        if len(ref) < 7:
            raise wire.HiveError("commit_ref must be a commit sha")
        return ref

    def resolve(self, name, ref):
        self._do("resolve", name, ref)
        return ref * 2

    def pin_proposal(self, name, approval_id, ref):
        self._do("pin_proposal", name, approval_id, ref)
        return "f" * 40

    def diff(self, name, sha):
        return "-model haiku\n+model sonnet\n"

    def tag(self, name, kind, approval_id, sha, message=None):
        self._do("tag", name, kind, approval_id, message)

    def deploy(self, name, approval_id, sha):
        self._do("deploy", name, approval_id)

    def exists(self, name):
        return name in self.known

    def init_agent(self, name):
        self._do("init_agent", name)
        self.known.add(name)


class Lifecycle:
    def __init__(self):
        self.calls, self.transients, self.fail = [], {}, None
        self.backend = type("Process", (), {"name": "process"})()

    def get(self, name):
        if name not in ("a", "manager"):
            raise wire.HiveError(f"there is no agent named {name!r}", "not_found")

    def rebuild(self, name, sha, deploy):
        self.calls.append(("rebuild", name, sha))
        if self.fail:
            raise wire.HiveError(self.fail, "unavailable")
        deploy()

    def spawn(self, name, parent):
        self.calls.append(("spawn", name, parent))


@pytest.fixture
def queue(tmp_path):
    db = open_core(tmp_path / "hive.db")
    Agent.create(name="a")
    hub = RecordingHub()
    q = Approvals(Repos(), Lifecycle(), Broker(hub), hub)
    yield q
    db.close()


def manager_events():
    return [m.body for m in Message.select().where(Message.recipient == "manager")]


def test_request_pins_then_shows_with_its_diff(queue):
    aid = queue.request_apply_commit("a", "abcdef1", "sonnet please")
    [row] = queue.pending()
    assert row["id"] == aid and row["fetched_sha"] == "f" * 40 and row["status"] == "pending"
    assert list(row) == list(wire.APPROVAL_FIELDS)
    kind, data = [e for e in queue.hub.events if e[0] == "approval_added"][0]
    assert data["approval"]["diff"].startswith("-model haiku")
    assert ("pin_proposal", "a", aid, "abcdef1") in queue.repos.calls


def test_a_failed_pin_leaves_no_row(queue):
    queue.repos.fail["pin_proposal"] = "could not fetch"
    with pytest.raises(wire.HiveError, match="could not fetch"):
        queue.request_apply_commit("a", "abcdef1", "x")
    assert Approval.select().count() == 0 and queue.pending() == []


def test_approve_walks_the_tags_and_tells_everyone(queue):
    aid = queue.request_apply_commit("a", "abcdef1", "x")
    assert queue.approve(aid)["status"] == "approved"
    tags = [c[2] for c in queue.repos.calls if c[0] == "tag"]
    assert tags == ["approved", "building"]
    assert ("deploy", "a", aid) in queue.repos.calls
    assert ("approval_resolved" in [k for k, _ in queue.hub.events])
    assert any("approved and applied" in b and "[helper event]" in b for b in manager_events())
    with pytest.raises(wire.HiveError, match="already approved"):
        queue.approve(aid)


def test_a_failed_build_is_tagged_failed_with_the_error(queue):
    aid = queue.request_apply_commit("a", "abcdef1", "x")
    queue.lifecycle.fail = "the container did not start"
    row = queue.approve(aid)
    assert row["status"] == "failed" and row["note"] == "the container did not start"
    assert ("tag", "a", "failed", aid, "the container did not start") in queue.repos.calls
    assert not [c for c in queue.repos.calls if c[0] == "deploy"]
    assert any("failed: the container did not start" in b for b in manager_events())


def test_deny_tags_the_reason(queue):
    aid = queue.request_apply_commit("a", "abcdef1", "x")
    assert queue.deny(aid, "not now")["status"] == "denied"
    assert ("tag", "a", "denied", aid, "not now") in queue.repos.calls
    assert any("denied by the operator: not now" in b for b in manager_events())
    with pytest.raises(wire.HiveError, match="already denied"):
        queue.approve(aid)


def test_a_busy_agent_cannot_be_decided(queue):
    aid = queue.request_apply_commit("a", "abcdef1", "x")
    queue.lifecycle.transients["a"] = "restarting"
    with pytest.raises(wire.HiveError, match="busy restarting"):
        queue.approve(aid)
    with pytest.raises(wire.HiveError, match="busy restarting"):
        queue.deny(aid, "no")
    assert queue.pending()[0]["status"] == "pending"


def test_spawn_takes_init_config_first_and_duplicates_are_refused(queue):
    with pytest.raises(wire.HiveError, match="request_init_config first"):
        queue.request_spawn("c", "x")
    first = queue.request_init_config("c", "x")
    with pytest.raises(wire.HiveError, match=f"approval {first} already asks"):
        queue.request_init_config("c", "again")
    queue.approve(first)
    second = queue.request_spawn("c", "x")
    queue.approve(second)
    assert ("spawn", "c", "manager") in queue.lifecycle.calls
    with pytest.raises(wire.HiveError, match="reserved"):
        queue.request_init_config("operator", "x")


def test_update_needs_a_meta_flake(queue):
    with pytest.raises(wire.HiveError, match="no meta flake"):
        queue.request_update("bump nixpkgs")


def test_unknown_ids_and_half_queued_rows(queue):
    with pytest.raises(wire.HiveError, match="no approval 99"):
        queue.approve(99)
    Approval.create(agent="a", kind="apply_commit", status=QUEUING)
    assert queue.pending() == []
    assert queue.sweep_unfinished() == 1

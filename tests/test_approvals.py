"""The approval queue in-process: recording fakes for git and lifecycle, a real broker on each engine
(sqlite and PostgreSQL); then spawns on real git repos and the real lifecycle, with a backend that
records what it would start."""

import json
import os
import subprocess
import time

import pytest

from conftest import refused
from fakes import RecordingBackend, RecordingHub
from hyperhive import wire
from hyperhive.core.approvals import QUEUING, Approvals
from hyperhive.core.broker import Broker
from hyperhive.core.gitrepos import Repos as GitRepos
from hyperhive.core.layout import HarnessCommand, Layout
from hyperhive.core.lifecycle import Lifecycle as RealLifecycle
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

    spawn_diff = diff

    def proposed_main(self, name):
        self._do("proposed_main", name)
        return "e" * 40

    def check_fast_forward(self, name, sha):
        self._do("check_fast_forward", name, sha)
        return sha

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
        self.backend = RecordingBackend()

    def get(self, name):
        if name not in ("a", "manager"):
            raise wire.HiveError(f"there is no agent named {name!r}", "not_found")

    def rebuild(self, name, sha, deploy):
        self.calls.append(("rebuild", name, sha))
        if self.fail:
            raise wire.HiveError(self.fail, "unavailable")
        deploy()

    def spawn(self, name, parent, sha=None, deploy=None):
        self.calls.append(("spawn", name, parent, sha))
        if deploy is not None:
            deploy()


@pytest.fixture
def queue(db_url):
    db = open_core(db_url)
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
    assert ("spawn", "c", "manager", "f" * 40) in queue.lifecycle.calls
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


# -- spawns on real git ------------------------------------------------------------------------

MANAGER_ENV = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
                   GIT_AUTHOR_NAME="manager", GIT_AUTHOR_EMAIL="manager@hive",
                   GIT_COMMITTER_NAME="manager", GIT_COMMITTER_EMAIL="manager@hive")


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True,
                          env=MANAGER_ENV).stdout.strip()


class Sockets:
    def __init__(self):
        self.open_ = set()

    def open(self, name, role):
        self.open_.add(name)

    def close(self, name):
        self.open_.discard(name)


class Spawns:
    def __init__(self, tmp_path, database):
        self.db = open_core(database)
        self.layout = Layout(tmp_path / "hive")
        self.layout.makedirs()
        self.hub, self.backend, self.sockets = RecordingHub(), RecordingBackend(), Sockets()
        self.broker = Broker(self.hub)
        self.repos = GitRepos(self.layout.config_dir)
        self.lifecycle = RealLifecycle(self.layout, self.backend, self.broker, self.hub,
                                       HarnessCommand("hyperhive.pyz"), self.sockets, self.repos)
        self.queue = Approvals(self.repos, self.lifecycle, self.broker, self.hub)

    def init(self, name="c"):
        assert self.queue.approve(self.queue.request_init_config(name, "a helper"))["status"] == "approved"

    def commit(self, change, name="c"):
        """The manager edits hive.json in proposed and commits on main; returns the sha."""
        repo = self.repos.proposed(name)
        path = os.path.join(repo, "hive.json")
        if callable(change):
            with open(path) as f:
                config = json.load(f)
            change(config)
            change = json.dumps(config, indent=2) + "\n"
        with open(path, "w") as f:
            f.write(change)
        git(repo, "commit", "-qam", "edit hive.json")
        return git(repo, "rev-parse", "HEAD")

    def applied_main(self, name="c"):
        return git(self.repos.applied(name), "rev-parse", "main")

    def tags(self, name="c"):
        return sorted(git(self.repos.applied(name), "tag", "-l").split())

    def tag_message(self, tag, name="c"):
        return git(self.repos.applied(name), "tag", "-l", "--format=%(contents)", tag)

    def model_file(self, name="c"):
        with open(os.path.join(self.layout.state(name), wire.MODEL_FILE)) as f:
            return f.read().strip()


@pytest.fixture
def spawns(tmp_path, db_url):
    rig = Spawns(tmp_path, db_url)
    yield rig
    rig.db.close()


def test_a_spawn_starts_on_the_edit_committed_before_it_was_asked_for(spawns):
    spawns.init()
    template = spawns.applied_main()
    edited = spawns.commit(lambda c: c.update(model="sonnet", env={"FAVOURITE": "bees"}))
    aid = spawns.queue.request_spawn("c", "a helper on sonnet")
    [pending] = spawns.queue.pending(with_diff=True)
    assert pending["id"] == aid and pending["fetched_sha"] == edited and pending["commit_ref"] is None
    assert '-  "model": "haiku"' in pending["diff"] and '+  "model": "sonnet"' in pending["diff"]
    later = spawns.commit(lambda c: c.update(model="opus"))  # after the request: not part of it
    assert spawns.applied_main() == template  # nothing moves before the operator decides

    assert spawns.queue.approve(aid)["status"] == "approved"
    assert spawns.applied_main() == edited != later
    agent = Agent.get(Agent.name == "c")
    assert agent.running_sha == edited and agent.parent == "manager"
    assert spawns.model_file() == "sonnet"
    [launch] = spawns.backend.launches
    assert launch.rev == edited and launch.env["FAVOURITE"] == "bees"
    assert spawns.lifecycle.row(agent)["deployed_sha"] == edited[:12]
    tags = spawns.tags("c")
    assert all(f"{kind}/{aid}" in tags for kind in ("proposal", "approved", "building", "deployed"))
    assert git(spawns.repos.applied("c"), "rev-parse", f"deployed/{aid}^{{commit}}") == edited
    assert any(f"approval {aid} (spawn of c, commit {edited[:12]}) was approved" in b for b in manager_events())


def test_a_spawn_pins_the_commit_ref_it_is_given_and_refuses_a_branch_name(spawns):
    spawns.init()
    sonnet = spawns.commit(lambda c: c.update(model="sonnet"))
    spawns.commit(lambda c: c.update(model="opus"))
    assert "commit sha" in refused("bad_argument", spawns.queue.request_spawn, "c", "x", commit_ref="main")
    assert "is not a commit in c's proposed" in refused("not_found", spawns.queue.request_spawn, "c", "x",
                                                        commit_ref="0123456789abcdef")
    assert Approval.select().count() == 1  # the init_config: no half-made spawn row
    aid = spawns.queue.request_spawn("c", "x", commit_ref=sonnet[:9].upper())
    row = spawns.queue.get(aid)
    assert (row.commit_ref, row.fetched_sha) == (sonnet[:9].lower(), sonnet)
    spawns.queue.approve(aid)
    assert spawns.applied_main() == sonnet and spawns.model_file() == "sonnet"


def test_an_unedited_spawn_shows_the_files_it_will_start_with(spawns):
    spawns.init()
    template = spawns.applied_main()
    aid = spawns.queue.request_spawn("c", "as it comes")
    a = spawns.queue.get(aid)
    assert a.fetched_sha == template
    assert a.diff.startswith(f"# no change from c's applied main ({template[:12]})")
    assert "+++ b/hive.json" in a.diff and '+  "model": "haiku",' in a.diff and "+++ b/agent.nix" in a.diff
    spawns.queue.approve(aid)
    assert spawns.applied_main() == template and f"deployed/{aid}" in spawns.tags("c")
    assert spawns.model_file() == "haiku"


def test_a_denied_spawn_is_tagged_and_starts_nothing(spawns):
    spawns.init()
    template = spawns.applied_main()
    edited = spawns.commit(lambda c: c.update(model="opus"))
    aid = spawns.queue.request_spawn("c", "x")
    assert spawns.queue.deny(aid, "opus is too dear")["status"] == "denied"
    assert spawns.tag_message(f"denied/{aid}") == "opus is too dear"
    assert git(spawns.repos.applied("c"), "rev-parse", f"denied/{aid}^{{commit}}") == edited
    assert spawns.applied_main() == template and spawns.backend.launches == []
    assert Agent.get_or_none(Agent.name == "c") is None


def test_a_spawn_that_cannot_start_fails_tagged_and_leaves_no_agent(spawns):
    spawns.init()
    template = spawns.applied_main()
    broken = spawns.commit('{"model": "sonnet",\n')
    aid = spawns.queue.request_spawn("c", "x")
    row = spawns.queue.approve(aid)
    assert row["status"] == "failed" and "c's hive.json" in row["note"] and "not valid JSON" in row["note"]
    assert "not valid JSON" in spawns.tag_message(f"failed/{aid}")
    assert git(spawns.repos.applied("c"), "rev-parse", f"failed/{aid}^{{commit}}") == broken
    assert f"deployed/{aid}" not in spawns.tags("c") and spawns.applied_main() == template
    assert Agent.get_or_none(Agent.name == "c") is None and not spawns.lifecycle.known("c")
    assert spawns.backend.launches == [] and spawns.sockets.open_ == set()
    assert not os.path.exists(spawns.layout.home("c")) and spawns.lifecycle.tombstones() == []
    assert any(f"approval {aid} (spawn of c, commit {broken[:12]}) was approved but failed" in b
               and "not valid JSON" in b for b in manager_events())

    # the repos were kept: fixed in proposed, the spawn is asked for again and starts
    fixed = spawns.commit('{"model": "sonnet"}\n')
    again = spawns.queue.request_spawn("c", "fixed")
    assert spawns.queue.approve(again)["status"] == "approved"
    assert spawns.applied_main() == fixed and spawns.model_file() == "sonnet"


def test_a_spawn_whose_harness_will_not_start_is_undone(spawns):
    spawns.init()
    spawns.commit(lambda c: c.update(model="sonnet"))
    aid = spawns.queue.request_spawn("c", "x")
    spawns.backend.refuse = wire.HiveError("bwrap is not installed", "unavailable")
    row = spawns.queue.approve(aid)
    assert row["status"] == "failed" and row["note"] == "bwrap is not installed"
    assert spawns.tag_message(f"failed/{aid}") == "bwrap is not installed"
    assert spawns.backend.did("kill") == ["c"] and spawns.sockets.open_ == set()
    assert Agent.get_or_none(Agent.name == "c") is None and not os.path.exists(spawns.layout.home("c"))
    assert f"deployed/{aid}" not in spawns.tags("c")


def test_a_start_writes_the_configs_permission_policy_for_the_harness_and_a_bad_one_fails_the_approval(spawns):
    from hyperhive import permissions

    spawns.init()
    policy = {"allow": ["Read"], "ask": ["Bash(git push:*)"], "deny": ["WebFetch(domain:evil.example)"]}
    spawns.commit(lambda c: c.update(permissions=policy))
    assert spawns.queue.approve(spawns.queue.request_spawn("c", "x"))["status"] == "approved"
    [launch] = spawns.backend.launches
    path = launch.env[permissions.ENV]
    assert path == os.path.join(spawns.layout.home("c"), "permissions.json") and not os.path.islink(path)
    assert permissions.load(path).to_json() == policy
    # a config without one: the empty policy, written anew (nothing stale of the last config stays)
    plain = spawns.commit(lambda c: c.pop("permissions"))
    spawns.queue.approve(spawns.queue.request_apply_commit("c", plain, "no policy"))
    assert not permissions.load(spawns.backend.launches[-1].env[permissions.ENV])
    # a bad rule is refused at the start the approval makes, with the sentence, and the agent stays as it was
    bad = spawns.commit(lambda c: c.update(permissions={"ask": ["Bash(git push"]}))
    row = spawns.queue.approve(spawns.queue.request_apply_commit("c", bad, "a typo"))
    assert row["status"] == "failed" and "c's hive.json: \"permissions\": the ask rule 'Bash(git push'" in row["note"]
    assert spawns.applied_main() == plain


def test_pending_carries_each_diff_until_its_budget_then_names_the_route(tmp_path, db_url, monkeypatch):
    from fakes import CoreRig
    from hyperhive.core import surfaces

    rig = CoreRig(tmp_path, database=db_url)
    try:
        for n in range(3):
            Approval.create(agent="a", kind="apply_commit", commit_ref="abc1234", diff=f"+line {n}\n" * 10)
        monkeypatch.setattr(surfaces, "PENDING_DIFF_BUDGET", 150)  # one diff of 80 characters fits, not two
        first, second, third = rig.call("host", "operator", "pending")["approvals"]
        assert first["diff"] == "+line 0\n" * 10
        assert second["diff"].startswith("# not listed: the diffs above fill this answer")
        assert third["diff"] == f"# not listed: the diffs above fill this answer; the dashboard's /approval/" \
                                f"{third['id']}/diff has it\n"
    finally:
        rig.close()


# -- tool calls the operator decides (kind tool_use) ---------------------------------------------------

PUSH = {"command": "git push origin main", "description": "push"}


@pytest.fixture
def rig(tmp_path, db_url):
    from fakes import CoreRig

    rig = CoreRig(tmp_path, backend=RecordingBackend(), database=db_url)
    rig.lifecycle.sockets = Sockets()
    yield rig
    rig.close()


def ask(rig, caller="a", tool_use_id="toolu_1", tool="Bash", input=PUSH, rule="Bash(git push:*)", **more):
    return rig.call("agent" if caller != "manager" else "manager", caller, "ask_tool_use", tool=tool, input=input,
                    tool_use_id=tool_use_id, rule=rule, **more)["approval"]


def decided(rig, verb, **args):
    return rig.call("host", "operator", verb, **args)["approval"]


def added(rig):
    return [d["approval"] for k, d in rig.hub.events if k == "approval_added"]


def resolved(rig):
    return [d["approval"] for k, d in rig.hub.events if k == "approval_resolved"]


def test_a_tool_call_asked_about_is_one_pending_approval_however_often_it_is_asked(rig):
    row = ask(rig)
    assert list(row) == list(wire.APPROVAL_FIELDS)
    assert (row["agent"], row["kind"], row["status"], row["tool"], row["input"], row["rule"]) == \
        ("a", "tool_use", "pending", "Bash", PUSH, "Bash(git push:*)")
    assert row["description"] == "Bash: git push origin main" and row["commit_ref"] is row["fetched_sha"] is None
    assert [a["id"] for a in added(rig)] == [row["id"]] and added(rig)[0]["diff"] == ""
    # retried (the harness reconnected): the same approval, nothing new published
    again = ask(rig, input={"command": "something else"})
    assert again == row and len(added(rig)) == 1 and Approval.select().count() == 1
    # the same id from another agent is that agent's own call
    other = ask(rig, caller="b")
    assert other["id"] != row["id"] and other["agent"] == "b"
    assert [a["id"] for a in rig.call("host", "operator", "pending")["approvals"]] == [row["id"], other["id"]]
    # the operator's plain decisions tell the manager nothing: it is the agent's business
    assert decided(rig, "approve", id=row["id"])["status"] == "approved"
    assert ask(rig)["status"] == "approved"  # asked again after the decision: the decision
    assert decided(rig, "deny", id=other["id"], reason="not on main")["note"] == "not on main"
    assert manager_events() == []
    assert [(a["id"], a["status"]) for a in resolved(rig)] == [(row["id"], "approved"), (other["id"], "denied")]


def test_what_a_tool_call_may_carry_is_checked_where_it_enters(rig):
    big = {"command": "x" * wire.TOOL_INPUT_MAX}
    said = rig.refused("bad_argument", "agent", "a", "ask_tool_use", tool="Bash", input=big, tool_use_id="t",
                       rule="Bash")
    assert "ask_tool_use: 'input' is 16398 bytes as JSON; the limit is 16384 (16 KiB)" == said
    fits = {"command": "x" * (wire.TOOL_INPUT_MAX - 14)}  # exactly the limit
    assert ask(rig, tool_use_id="fits", input=fits)["input"] == fits
    assert "must be a JSON object, got a list" in rig.refused("bad_argument", "agent", "a", "ask_tool_use",
                                                               tool="Bash", input=["ls"], tool_use_id="t", rule="")
    assert "the ask rule 'Bash(git' is not a rule" in rig.refused("bad_argument", "agent", "a", "ask_tool_use",
                                                                   tool="Bash", input={}, tool_use_id="t",
                                                                   rule="Bash(git")
    assert "'tool_use_id' is 129 characters" in rig.refused("bad_argument", "agent", "a", "ask_tool_use", tool="Bash",
                                                           input={}, tool_use_id="t" * 129, rule="")
    assert "between 0 and 300" in rig.refused("bad_argument", "agent", "a", "ask_tool_use", tool="Bash", input={},
                                              tool_use_id="t", rule="", wait_seconds=301)
    assert rig.refused("unknown_verb", "host", "operator", "ask_tool_use", tool="Bash", input={}, tool_use_id="t",
                       rule="")
    assert Approval.select().count() == 1


def test_one_agent_has_at_most_eight_tool_calls_waiting(rig):
    ids = [ask(rig, tool_use_id=f"toolu_{i}")["id"] for i in range(wire.TOOL_USE_PENDING_MAX)]
    said = rig.refused("conflict", "agent", "a", "ask_tool_use", tool="Bash", input=PUSH, tool_use_id="toolu_9",
                       rule="Bash(git push:*)")
    assert said.startswith("a already has 8 tool calls waiting for the operator's approval, the most one agent may")
    assert ask(rig, caller="b", tool_use_id="toolu_9")["status"] == "pending"  # another agent's are its own
    assert ask(rig, tool_use_id="toolu_3")["id"] == ids[3]  # asking again about one of the eight is no ninth
    decided(rig, "deny", id=ids[0], reason="")
    assert ask(rig, tool_use_id="toolu_9")["status"] == "pending"


def test_always_allow_is_a_tool_calls_and_asks_the_manager_for_the_rule_never_editing_config(rig):
    row = ask(rig)
    done = decided(rig, "approve", id=row["id"], always=True)
    assert done["status"] == "approved" and "the manager was asked" in done["note"]
    [event] = manager_events()
    assert event.startswith(f"[helper event] always_allow: the operator allowed a's Bash call (approval {row['id']})")
    assert 'Add "Bash(git push:*)" to a\'s permissions.allow and take it out of permissions.ask' in event
    assert "request_apply_commit" in event
    # `always` means nothing for a config approval: refused, and the approval is left as it was
    aid = Approval.create(agent="a", kind="apply_commit", commit_ref="abc1234", status="pending").id
    said = rig.refused("bad_argument", "host", "operator", "approve", id=aid, always=True)
    assert said.startswith("approve: 'always' is for a tool_use approval") and f"approval {aid} is apply_commit" in said
    assert Approval.get_by_id(aid).status == "pending"
    ruleless = ask(rig, tool_use_id="toolu_2", rule="")
    assert "matched no ask rule" in rig.refused("bad_argument", "host", "operator", "approve", id=ruleless["id"],
                                                always=True)
    assert decided(rig, "approve", id=ruleless["id"])["status"] == "approved" and len(manager_events()) == 1


def test_a_waiting_ask_wakes_on_the_decision_and_a_hung_up_one_stops_waiting(rig):
    import gevent
    from gevent.event import Event

    row = ask(rig)
    waiter = gevent.spawn(ask, rig, wait_seconds=30)
    twin = gevent.spawn(ask, rig, wait_seconds=30)  # a retry while the first still waits: both hear it
    gevent.sleep(0.05)
    assert not waiter.ready() and not twin.ready()
    started = time.monotonic()
    decided(rig, "deny", id=row["id"], reason="not today")
    got = waiter.get(timeout=5)
    assert (got["status"], got["note"]) == ("denied", "not today") and twin.get(timeout=5) == got
    assert time.monotonic() - started < 2
    # nobody decides: it answers pending once its wait is over, or at once when its client hangs up
    other = ask(rig, tool_use_id="toolu_2", wait_seconds=1)
    assert other["status"] == "pending"
    gone = Event()
    hung = gevent.spawn(rig.surfaces.approvals.ask_tool_use, "a", "Bash", PUSH, "toolu_2", "Bash", 30, gone)
    gevent.sleep(0.05)
    gone.set()
    assert hung.get(timeout=5)["status"] == "pending"


@pytest.mark.parametrize("verb, how", [("ack_turn", "it finished"), ("cancel_turn", "the operator cancelled it"),
                                       ("requeue_inflight", "it did not finish")])
def test_a_turn_that_ends_cancels_its_calls_still_waiting(rig, verb, how):
    import gevent

    first, second = ask(rig)["id"], ask(rig, tool_use_id="toolu_2")["id"]
    decided(rig, "approve", id=first)
    theirs = ask(rig, caller="b")["id"]
    waiter = gevent.spawn(ask, rig, tool_use_id="toolu_2", wait_seconds=30)
    gevent.sleep(0.05)
    rig.call("agent", "a", verb)
    got = waiter.get(timeout=5)
    assert got["status"] == "cancelled" and got["note"].startswith(f"a's turn ended ({how}") \
        and got["note"].endswith("before the operator decided")
    assert [(a["id"], a["status"]) for a in resolved(rig)] == [(first, "approved"), (second, "cancelled")]
    assert Approval.get_by_id(theirs).status == "pending"  # b's turn goes on
    assert "already cancelled" in rig.refused("conflict", "host", "operator", "approve", id=second)
    assert manager_events() == []


def test_taking_a_harness_down_cancels_its_calls_first(rig):
    """Before the stop: a graceful stop waits for the turn, and the turn waits for the call."""
    seen = []
    stop = rig.backend.stop
    rig.backend.stop = lambda name, *a, **k: (seen.append(Approval.get(Approval.agent == name).status),
                                              stop(name, *a, **k))[1]
    rig.backend.up.update({"a", "b", "manager"})  # their harnesses run
    ask(rig)
    rig.lifecycle.stop("a")
    assert seen == ["cancelled"] and "(the operator stopped it)" in Approval.get(Approval.agent == "a").note
    for action, how in ((rig.lifecycle.kill, "the operator killed it"),
                        (lambda n: rig.lifecycle.destroy(n), "the operator destroyed it")):
        aid = ask(rig, caller="b", tool_use_id=f"{how}")["id"]
        action("b")
        assert Approval.get_by_id(aid).status == "cancelled" and f"({how})" in Approval.get_by_id(aid).note
    aid = ask(rig, caller="manager", tool_use_id="m1")["id"]
    rig.lifecycle.restarts.died(rig.lifecycle.get("manager"), rig.clock(), "exit status 1")
    assert "(its harness died)" in Approval.get_by_id(aid).note
    aid = ask(rig, caller="manager", tool_use_id="m2")["id"]
    rig.lifecycle.shutdown()
    assert "(the core stopped)" in Approval.get_by_id(aid).note
    assert Approval.select().where(Approval.status == "pending").count() == 0


def test_a_tool_call_is_no_loose_end_and_nobody_but_the_operator_closes_it(rig):
    aid = ask(rig)["id"]
    for who in ("a", "manager"):
        assert rig.call("manager" if who == "manager" else "agent", who, "get_loose_ends")["loose_ends"] == []
    said = rig.refused("forbidden", "manager", "manager", "cancel_loose_end", kind="approval", id=aid)
    assert "is a tool call of a's waiting for the operator" in said
    # a busy agent (mid-start, say) is no reason to hold a decision that changes nothing of it
    rig.lifecycle.transients["a"] = "starting"
    assert decided(rig, "approve", id=aid)["status"] == "approved"

"""The core starts again a harness that died on its own: the policy as a unit, stepped by hand.

A real Lifecycle over a real core database and broker, with a recording fake
backend (no process runs) and `now` handed to every watch step, so the
backoff schedule is read off without sleeping: 2 s after the first death,
doubling per death in a row up to 5 min; a harness that then runs 10 min
has its streak forgotten. The operator and the manager hear of a streak
once, with the reason; an operator's kill holds the agent down, any other
operator action takes it over from the policy.
"""

import os

import pytest

from fakes import RecordingBackend, RecordingHub
from hyperhive import wire
from hyperhive.core.broker import Broker
from hyperhive.core import restarts
from hyperhive.core.layout import HarnessCommand, Layout
from hyperhive.core.lifecycle import Lifecycle
from hyperhive.core.restarts import RESTART_BACKOFF, STABLE_SECONDS
from hyperhive.schema import Agent, Message, open_core

T0 = 1_700_000_000.0


class Repos:
    proposed_root = "/nowhere"

    def __init__(self):
        self.applied = {}  # name -> applied main's sha; none: no applied repo

    def exists(self, name):
        return False

    def deployed_sha(self, name):
        return self.applied.get(name)

    def proposed(self, name):
        return f"/nowhere/{name}"


class Sockets:
    def open(self, name, role):
        pass

    def close(self, name):
        pass


class Rig:
    def __init__(self, tmp_path, database):
        self.db = open_core(database)
        self.layout = Layout(tmp_path / "hive")
        self.layout.makedirs()
        self.backend, self.hub = RecordingBackend(), RecordingHub()
        self.broker = Broker(self.hub, clock=lambda: T0)
        self.life = Lifecycle(self.layout, self.backend, self.broker, self.hub, HarnessCommand("/hyperhive.pyz"),
                              Sockets(), Repos(), clock=lambda: T0)
        for name in ("manager", "a"):
            Agent.create(name=name, role="manager" if name == "manager" else "agent")
            os.makedirs(self.layout.home(name))
            self.backend.up.add(name)
        self.life.watch.step(T0)

    def told(self, to):
        return [m.body for m in Message.select().where((Message.recipient == to) & (Message.sender == "core"))]

    def row(self, name="a"):
        return self.life.row(Agent.get_by_id(name))


@pytest.fixture
def rig(tmp_path, db_url):
    r = Rig(tmp_path, db_url)
    yield r
    r.db.close()


def test_the_schedule_doubles_from_two_seconds_to_five_minutes():
    assert [restarts.restart_delay(n) for n in range(1, 11)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert RESTART_BACKOFF == (2.0, 300.0)


def test_a_harness_that_keeps_dying_is_started_again_on_the_schedule_and_told_once(rig):
    b = rig.backend
    b.die("a", code=-9, log=["harness INFO turn: claude …", ""])
    now = T0 + 10
    rig.life.watch.step(now)
    assert b.starts("a") == 0 and ("sweep", "a") in b.calls  # its leftovers go at once
    row = rig.row()
    assert row["failed"] and row["restart"] == {
        "deaths": 1, "next_at": wire.iso(int((now + 2) * 1000)),
        "reason": "killed by SIGKILL; its log's last line: harness INFO turn: claude …"}
    [to_operator] = rig.told(wire.OPERATOR)
    assert to_operator.startswith("[helper event] harness_crash: a's harness stopped without an operator action "
                                  "(killed by SIGKILL; its log's last line: harness INFO turn: claude …)")
    assert "again in 2 seconds" in to_operator and "(up to 5 minutes)" in to_operator
    [to_manager] = rig.told(wire.MANAGER)
    assert to_manager.startswith("[helper event] container_crash: a's harness stopped")

    waited = []
    for deaths in range(1, 12):
        delay = restarts.restart_delay(deaths)
        rig.life.watch.step(now + delay - 0.5)
        assert b.starts("a") == deaths - 1, f"started early after death {deaths}"
        rig.life.watch.step(now + delay)
        assert b.starts("a") == deaths and rig.row()["running"]
        waited.append(delay)
        assert rig.row()["restart"]["deaths"] == deaths and rig.row()["restart"]["next_at"] is None
        now += delay + 30  # it runs half a minute, then dies again
        rig.life.watch.step(now - 1)
        b.die("a", code=1, log=["Traceback …", "KeyError: 'x'"])
        rig.life.watch.step(now)
    assert waited == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert len(rig.told(wire.OPERATOR)) == 1 and len(rig.told(wire.MANAGER)) == 1  # once per streak
    assert rig.row()["restart"]["reason"] == "exit code 1; its log's last line: KeyError: 'x'"


def test_a_harness_that_then_runs_a_while_starts_a_new_streak(rig):
    b = rig.backend
    b.die("a", code=1)
    rig.life.watch.step(T0 + 1)
    rig.life.watch.step(T0 + 3)
    assert b.starts("a") == 1
    rig.life.watch.step(T0 + 3 + STABLE_SECONDS - 1)
    assert rig.row()["restart"] is not None
    rig.life.watch.step(T0 + 3 + STABLE_SECONDS)
    assert rig.row()["restart"] is None
    later = T0 + 2 * STABLE_SECONDS
    b.die("a", code=1)
    rig.life.watch.step(later)
    assert rig.row()["restart"]["deaths"] == 1 and rig.row()["restart"]["next_at"] == wire.iso(int((later + 2) * 1000))
    assert len(rig.told(wire.OPERATOR)) == 2  # news again


def test_a_start_that_fails_counts_as_a_death_and_backs_off(rig):
    b = rig.backend
    b.die("a")
    rig.life.watch.step(T0 + 1)
    b.refuse = wire.HiveError("the container would not come up", "unavailable")
    rig.life.watch.step(T0 + 3)
    row = rig.row()
    assert b.starts("a") == 1 and not row["running"] and row["restart"]["deaths"] == 2
    assert row["restart"]["reason"] == "starting it again failed: the container would not come up"
    assert row["restart"]["next_at"] == wire.iso(int((T0 + 3 + 4) * 1000))
    b.refuse = None
    rig.life.watch.step(T0 + 6.9)
    assert b.starts("a") == 1
    rig.life.watch.step(T0 + 7)
    assert b.starts("a") == 2 and rig.row()["running"]
    assert "restarting" in [data.get("transient") for kind, data in rig.hub.events if kind == "transient_set"]


def test_an_operators_kill_holds_it_down_until_an_operator_starts_it(rig):
    b = rig.backend
    rig.life.kill("a")
    for t in (1, 10, 1000):
        rig.life.watch.step(T0 + t)
    assert b.starts("a") == 0 and rig.row()["failed"] and rig.row()["restart"] is None
    assert rig.told(wire.OPERATOR) == [] and rig.told(wire.MANAGER) == []
    rig.life.start("a")
    b.die("a", code=1)
    rig.life.watch.step(T0 + 1001)
    rig.life.watch.step(T0 + 1003)
    assert b.starts("a") == 2  # the operator's, then the policy's again


def test_an_operator_action_mid_streak_takes_it_over(rig):
    b = rig.backend
    b.die("a", code=1)
    rig.life.watch.step(T0 + 1)
    rig.life.stop("a")  # desired stopped: nothing to start again
    rig.life.watch.step(T0 + 100)
    assert b.starts("a") == 0 and rig.row()["restart"] is None and not rig.row()["failed"]
    rig.life.start("a")
    assert b.starts("a") == 1 and rig.row()["restart"] is None


def test_a_stop_is_not_a_death(rig):
    rig.life.stop("a")
    rig.life.watch.step(T0 + 100)
    assert rig.backend.starts("a") == 0 and rig.told(wire.OPERATOR) == []


def test_a_clock_that_went_back_does_not_hold_a_restart_for_longer_than_the_longest_wait(rig):
    rig.backend.die("a")
    rig.life.watch.step(T0 + 1)
    rig.life.watch.step(T0 - 3600)  # an hour back: the start is not put off by an hour
    assert rig.backend.starts("a") == 1


def test_the_manager_hears_once_per_applied_commit_that_an_agent_runs_behind_it(rig):
    """The original's NeedsUpdate: an agent whose running config is not its applied main is news to the
    manager once per applied commit, not at every pass of the watch, not mid-operation, and not for what
    the core found at its start (told before it restarted)."""
    def needs_update():
        return [b for b in rig.told(wire.MANAGER) if b.startswith("[helper event] needs_update: a ")]

    repos = rig.life.repos
    Agent.update(running_sha="1" * 40).where(Agent.name == "a").execute()
    repos.applied["a"] = "1" * 40
    rig.life.watch.step(T0 + 1)
    assert not rig.row()["needs_update"] and needs_update() == []
    with rig.life.busy("a", "rebuilding"):  # a deploy is behind until its restart: not news
        repos.applied["a"] = "2" * 40
        rig.life.watch.step(T0 + 2)
        assert rig.row()["needs_update"] and needs_update() == []
        Agent.update(running_sha="2" * 40).where(Agent.name == "a").execute()  # restarted on it
    assert needs_update() == []
    repos.applied["a"] = "3" * 40  # applied main moved and a still runs 222… (a deploy that failed)
    for t in (3, 4, 5):
        rig.life.watch.step(T0 + t)
    [said] = needs_update()
    assert said == ("[helper event] needs_update: a runs config 222222222222, behind its applied main 333333333333; "
                    "`rebuild a` puts it on applied main, or the operator's `rebuild` on the dashboard.")
    repos.applied["a"] = "4" * 40  # another commit applied, still not run: news again, once
    rig.life.watch.step(T0 + 6)
    rig.life.watch.step(T0 + 7)
    assert len(needs_update()) == 2 and "444444444444" in needs_update()[1]
    Agent.update(running_sha="4" * 40).where(Agent.name == "a").execute()
    rig.life.watch.step(T0 + 8)
    assert not rig.row()["needs_update"] and len(needs_update()) == 2


def test_an_agent_already_behind_when_the_core_starts_is_not_news_again(tmp_path, db_url):
    r = Rig(tmp_path, db_url)
    try:
        Agent.update(running_sha="1" * 40).where(Agent.name == "a").execute()
        fresh = Lifecycle(r.layout, r.backend, r.broker, r.hub, HarnessCommand("/hyperhive.pyz"), Sockets(), Repos(),
                          clock=lambda: T0)  # a core started again, its first pass
        fresh.repos.applied["a"] = "2" * 40
        fresh.watch.step(T0)
        fresh.watch.step(T0 + 1)
        assert fresh.row(Agent.get_by_id("a"))["needs_update"]
        assert not [b for b in r.told(wire.MANAGER) if "needs_update" in b]
    finally:
        r.db.close()


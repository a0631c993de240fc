"""A hive across hosts: three cores (three state dirs, three --node names) on one PostgreSQL database.

Every core is the pyz this run built, started as README starts it. The nodes
share the database only: each has its own sockets, agents, harnesses and
dashboard. Faults are real: kill -9 of a core (and of its harnesses: the host
died), a PostgreSQL restart under load, and a node cut off the network in its
own network namespace.
"""

import contextlib
import json
import os
import re
import signal
import threading
import time
import urllib.parse
import urllib.request

import pytest

from conftest import Hive, kill_harnesses, put_down, wait_until
from hyperhive import jsonline, wire

KEY = {"ANTHROPIC_API_KEY": "test-key"}
ARGS = ["--pass-env", "ANTHROPIC_API_KEY"]


def node(tmp_path, url, name, prefix=()):
    return Hive(tmp_path / name, env=KEY, extra_args=ARGS, database=url, node=name, prefix=prefix)


@contextlib.contextmanager
def started(*hives):
    """The cores started in order (the first makes the manager), all stopped and their harnesses killed after."""
    try:
        for h in hives:
            h.start()
        yield hives
    finally:
        for h in hives:
            put_down(h)


@pytest.fixture
def hive3(tmp_path, pg_url):
    with started(*(node(tmp_path, pg_url, f"n{i}") for i in (1, 2, 3))) as hives:
        yield hives


def rows(h):
    return {r["name"]: r for r in h.call("agent_status")["agent_statuses"]}


def inbox_bodies(h):
    return [m["body"] for m in h.call("inbox", limit=100)["messages"]]


def refused(action, code):
    with pytest.raises(wire.HiveError) as e:
        action()
    assert e.value.code == code, (e.value.code, str(e.value))
    return str(e.value)


def silent_on(h, name):
    """Whether core `h` shows node `name` as silent (its agents' rows carry node_alive false)."""
    return [r for r in rows(h).values() if r["node"] == name and r["node_alive"] is False]


# -- one hive, three nodes --------------------------------------------------------------------------

def test_a_message_crosses_three_nodes_hop_by_hop_and_every_core_lists_the_whole_hive(hive3):
    n1, n2, n3 = hive3
    n1.spawn("a")
    n2.spawn("b")
    n3.spawn("c")
    # the operator asks on n3; a (n1) tells b (n2), b tells c (n3), c answers the operator
    n3.call("send", to="a", body="FAKE: send b FAKE: send c FAKE: send operator pong from c")
    wait_until(lambda: "pong from c" in inbox_bodies(n2), 60, "c's answer in the operator's inbox, read on n2")
    hops = n1.db_rows("SELECT sender, recipient FROM message ORDER BY id")
    assert hops == [("operator", "a"), ("a", "b"), ("b", "c"), ("c", "operator")], hops
    wait_until(lambda: n1.db_rows("SELECT count(*) FROM message WHERE recipient <> 'operator' "
                                  "AND acked_at IS NULL") == [(0,)], 20, "every agent's message acked")
    # each turn ran on the node that owns the agent, and nowhere else
    for h, name in ((n1, "a"), (n2, "b"), (n3, "c")):
        assert len(h.claude_calls(name)) == 1, name
        assert not os.path.exists(os.path.join(h.state_dir, "agents", {"a": "b", "b": "c", "c": "a"}[name]))
    for h in hive3:
        seen = rows(h)
        assert {n: (seen[n]["node"], seen[n]["node_alive"]) for n in ("manager", "a", "b", "c")} == {
            "manager": ("n1", True), "a": ("n1", True), "b": ("n2", True), "c": ("n3", True)}
        assert h.call("list")["agents"] == ["a", "b", "c", "manager"]
    # a name is unique hive-wide: n3 cannot make another a
    assert "already exists" in refused(lambda: n3.call("spawn", name="a"), "conflict")
    # the operator's CLI on any node says where each agent runs
    from test_cli import ok_out

    table = ok_out(n2, "status").splitlines()
    assert table[0].split()[:3] == ["NAME", "STATE", "NODE"]
    assert {line.split()[0]: line.split()[2] for line in table[1:]} == {"manager": "n1", "a": "n1", "b": "n2",
                                                                        "c": "n3"}


def test_a_long_poll_on_one_node_wakes_at_once_when_another_node_sends(hive3):
    n1, n2, _ = hive3
    n2.spawn("b")
    n1.call("stop", scope={"agent_names": ["b"]})  # its harness stops; its socket on n2 still serves
    wait_until(lambda: not n2.row("b")["running"], 20, "b's harness to stop")
    got = {}

    def poll():
        started = time.monotonic()
        got["answer"] = n2.agent_call("b", "recv", wait_seconds=60, max=1, timeout=90)
        got["took"] = time.monotonic() - started

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)  # the poll is parked (nothing to take): a send now must wake it
    n1.call("send", to="b", body="over the wire")
    poller.join(90)
    assert [m["body"] for m in got["answer"]["messages"]] == ["over the wire"]
    # woken by the notice: a deadline (60 s) or any polling would leave it parked far longer
    assert got["took"] < 30, got


def test_lifecycle_verbs_on_another_nodes_agents_are_carried_out_by_that_node(hive3):
    n1, n2, n3 = hive3
    n1.spawn("a")
    n2.spawn("b")
    n3.spawn("c")
    pid_b = n2.harness_pid("b")
    n1.call("restart", name="b")
    wait_until(lambda: n2.harness_pid("b") not in (None, pid_b) and n2.row("b")["running"], 30,
               "b's harness restarted on n2")
    # one scope across three nodes: each node stops its own
    n1.call("stop", scope={"agent_names": ["a", "b", "c"]})
    for h, name in ((n1, "a"), (n2, "b"), (n3, "c")):
        wait_until(lambda h=h, name=name: rows(h)[name]["state"] == "stopped", 20, f"{name} stopped on its node")
    wait_until(lambda: {r["name"]: r["state"] for r in rows(n1).values() if r["name"] != "manager"} ==
               {"a": "stopped", "b": "stopped", "c": "stopped"}, 20, "n1 to show all three stopped")
    n3.call("start", scope={"agent_names": ["b"]})
    wait_until(lambda: n2.row("b")["running"], 30, "b started by its node at n3's word")
    n1.call("set_paused", name="c", paused=True)
    assert n3.row("c")["paused"] is True
    # every routed verb is a command row its node answered
    done = n1.db_rows("SELECT node, asked_by, answer IS NOT NULL FROM command ORDER BY id")
    assert ("n2", "n1", True) in done and ("n3", "n1", True) in done and ("n2", "n3", True) in done, done
    # an error there is the answer here, as that node said it
    assert "no agent" in refused(lambda: n1.call("restart", name="nobody"), "not_found")
    n2.call("destroy", name="c", purge=False)
    for h in hive3:
        wait_until(lambda h=h: "c" not in h.call("list")["agents"], 10, "c gone from every node's list")
    assert "c" in n3.call("tombstones")["tombstones"]


def test_a_silent_node_is_refused_with_how_long_and_its_agents_messages_wait_for_it(tmp_path, pg_url):
    with started(node(tmp_path, pg_url, "n1"), node(tmp_path, pg_url, "n2")) as (n1, n2):
        n2.spawn("b")
        n2.kill9()
        kill_harnesses(n2.state_dir)  # the host died with its core
        wait_until(lambda: silent_on(n1, "n2"), 30, "n1 to show n2 silent")
        said = refused(lambda: n1.call("restart", name="b"), "unavailable")
        assert re.search(r"node n2, which has been silent for \d+ seconds", said), said
        # a message to its agent is taken and kept: it runs when the node is back
        n1.call("send", to="b", body="FAKE: send operator b is back")
        n2.start()
        wait_until(lambda: "b is back" in inbox_bodies(n1), 60, "b's answer once n2 is back")
        wait_until(lambda: not silent_on(n1, "n2"), 20, "n1 to show n2 live again")


def test_a_second_core_under_a_live_nodes_name_is_refused_and_a_crashed_one_starts_again(tmp_path, pg_url):
    with started(node(tmp_path, pg_url, "n1")) as (n1,):
        other = Hive(tmp_path / "elsewhere", env=KEY, extra_args=ARGS, database=pg_url, node="n1").start(wait=False)
        assert other.proc.wait(60) == 1
        assert "is live as node 'n1'" in other.log() and "pick another --node" in other.log()
        # the same state dir after a crash is the same node, though its last heartbeat looks alive
        n1.kill9()
        n1.start()
        assert n1.call("list")["agents"] == ["manager"]


def test_approvals_and_questions_are_hive_wide_and_carried_out_where_they_were_made(hive3):
    n1, n2, n3 = hive3
    n1.spawn("a")
    # a question from a (n1) is listed on n2 and answered on n3; the answer reaches a on n1
    asked = n1.agent_call("a", "ask", question="ship it?", options=["yes", "no"], to="operator")["id"]
    assert [q["id"] for q in n2.call("questions")["questions"]] == [asked]
    n3.call("answer", id=asked, answer="yes")
    wait_until(lambda: n1.db_rows("SELECT count(*) FROM message WHERE recipient = 'a' AND body LIKE ?",
                                  f"%Your question {asked} %answered by the operator%") == [(1,)], 20,
               "the answer delivered to a")
    # the manager (n1) proposes a config change for a; the operator approves it on n2; n1 applies it
    repo = os.path.join(n1.state_dir, "config", "proposed", "a")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="m",
               GIT_AUTHOR_EMAIL="m@h", GIT_COMMITTER_NAME="m", GIT_COMMITTER_EMAIL="m@h")
    import subprocess

    with open(os.path.join(repo, "hive.json")) as f:
        config = json.load(f)
    config["model"] = "sonnet"
    with open(os.path.join(repo, "hive.json"), "w") as f:
        json.dump(config, f, indent=2)
    subprocess.run(["git", "-C", repo, "commit", "-qam", "sonnet for a"], check=True, env=env)
    sha = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], check=True, env=env, capture_output=True,
                         text=True).stdout.strip()
    aid = n1.agent_call("manager", "request_apply_commit", agent="a", commit_ref=sha, description="sonnet")["id"]
    assert [p["id"] for p in n3.call("pending")["approvals"]] == [aid]
    assert n2.call("approve", id=aid)["approval"]["status"] == "approved"
    wait_until(lambda: rows(n3)["a"]["active_model"] == "sonnet", 30, "a on its new model, as n3 shows it")
    assert n1.db_rows("SELECT node, asked_by FROM command") == [("n1", "n2")]
    # the manager's config repos are its node's: a change for another node's agent is refused, saying where
    n2.spawn("b")
    said = refused(lambda: n1.agent_call("manager", "request_apply_commit", agent="b", commit_ref=sha,
                                         description="not here"), "conflict")
    assert "b runs on node n2" in said, said


def test_a_tool_call_waiting_on_one_node_is_allowed_from_another_nodes_cli(hive3):
    n1, n2, _ = hive3
    n2.spawn("b")
    got = {}

    def ask():
        got.update(n2.agent_call("b", "ask_tool_use", tool="Bash", input={"command": "git push"}, tool_use_id="tu1",
                                 rule="Bash(git push:*)", wait_seconds=60, timeout=90))

    asking = threading.Thread(target=ask)
    asking.start()
    [aid] = wait_until(lambda: [a["id"] for a in n1.call("pending")["approvals"] if a["kind"] == "tool_use"], 20,
                       "b's call pending, as n1 lists it")
    assert n1.call("approve", id=aid)["approval"]["status"] == "approved"
    asking.join(90)
    # the long-poll on n2 woke on the decision, which n2 carried out
    assert got["approval"]["status"] == "approved" and got["approval"]["id"] == aid
    assert n1.db_rows("SELECT node, asked_by FROM command") == [("n2", "n1")]


def test_an_agents_reminders_fire_on_its_own_node_once_each(hive3):
    n1, n2, n3 = hive3
    n3.spawn("c")
    n3.call("stop", scope={"agent_names": ["c"]})  # its turns would take the reminders; the queue keeps them
    ids = [n3.agent_call("c", "remind", message=f"note {i}", in_seconds=1 + i)["id"] for i in range(5)]
    wait_until(lambda: n1.db_rows("SELECT count(*) FROM message WHERE recipient = 'c' AND sender = 'reminder' "
                                  "AND body LIKE '%[reminder]%'") == [(5,)], 40, "five reminders delivered")
    for i in ids:  # the node that runs c fired each one (it logs just after the commit); the others none
        wait_until(lambda i=i: f"reminder {i} delivered to c" in n3.log(), 10, f"n3 to log reminder {i}")
        assert f"reminder {i} delivered" not in n1.log() + n2.log()


# -- every dashboard shows the whole hive --------------------------------------------------------------

def stream(h):
    session = h.session()
    url = f"{h.url}/dashboard/stream?key={urllib.parse.quote(session['X-Hive-Key'])}"
    return urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": session["Cookie"]}), timeout=30)


def events_until(res, until):
    seen = []
    try:
        while True:
            line = res.readline()
            assert line, f"the stream ended; saw {seen[-5:]}"
            if line.startswith(b"data: "):
                seen.append(json.loads(line[6:]))
                if until(seen[-1]):
                    return seen
    finally:
        res.close()


def test_every_dashboard_shows_every_node_and_agent_and_the_same_events_under_the_same_seq(hive3):
    n1, n2, n3 = hive3
    n2.spawn("b")
    n3.spawn("c")
    status, state = n1.dashboard("GET", "/api/state")
    assert status == 200
    assert state["node"] == "n1"
    assert [(n["name"], n["alive"], n["url"]) for n in state["nodes"]] == [
        ("n1", True, n1.url), ("n2", True, n2.url), ("n3", True, n3.url)]
    shown = {c["name"]: c for c in state["containers"]}
    assert (shown["b"]["node"], shown["b"]["node_alive"], shown["b"]["url"]) == ("n2", True, f"{n2.url}/agent/b/")
    assert shown["c"]["running"] is True and shown["c"]["active_model"]
    # one event, one seq, on every node's stream
    streams = [stream(h) for h in (n1, n3)]
    mid = n2.call("send", to="b", body="seen everywhere")["id"]
    seqs = []
    for res in streams:
        events = events_until(res, lambda e: e["kind"] == "sent" and e["message"]["id"] == mid)
        seqs.append(events[-1]["seq"])
    assert seqs[0] == seqs[1] > state["seq"]
    # the page of another node's agent is that node's
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(urllib.request.Request(f"{n1.url}/agent/b/", headers={"Cookie": n1.cookie()}), timeout=30)
    assert e.value.code == 307 and e.value.headers["Location"] == f"{n2.url}/agent/b/"
    # its data is that node's too: asked here, the answer says where
    status, answer = n1.dashboard("GET", "/agent/b/api/state")
    assert status == 409 and answer["code"] == "conflict" and f"{n2.url}/agent/b/" in answer["error"], answer


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# -- faults ------------------------------------------------------------------------------------------

class Sender:
    """Sends to `to` through one core's host socket as fast as it answers; keeps what was answered ok."""

    def __init__(self, h, to):
        self.h, self.to = h, to
        self.ok, self.errors = [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self.ok.append(self.h.call("send", to=self.to, body=f"load {self.h.node} {n}", timeout=30)["id"])
            except (wire.HiveError, OSError) as e:
                self.errors.append(str(e))
                time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


def stored(h, ids):
    if not ids:
        return set()
    return {i for (i,) in h.db_rows(f"SELECT id FROM message WHERE id IN ({','.join(map(str, ids))})")}


def test_a_node_killed_mid_send_loses_nothing_committed_and_its_leased_messages_wait_for_it(tmp_path, pg_url):
    with started(node(tmp_path, pg_url, "n1"), node(tmp_path, pg_url, "n2"), node(tmp_path, pg_url, "n3")) as hives:
        n1, n2, n3 = hives
        n1.spawn("p")
        n1.call("set_paused", name="p", paused=True)  # a recipient whose queue only grows
        n2.spawn("b")
        n3.spawn("c")
        # b holds a message in a turn that hangs: leased (delivered, not acked) when its host dies
        n1.call("send", to="b", body="FAKE: hang-once k 600\nFAKE: send operator b answered after all")
        wait_until(lambda: n1.db_rows("SELECT count(*) FROM message WHERE recipient = 'b' AND delivered_at IS NOT "
                                      "NULL AND acked_at IS NULL") == [(1,)], 30, "b's message leased")
        wait_until(lambda: os.path.exists(os.path.join(n2.home("b"), "state", ".fakeclaude", "hang-once-k")), 30,
                   "b's claude inside the turn that hangs")
        with Sender(n2, "p") as sender:
            wait_until(lambda: len(sender.ok) >= 50, 30, "sends through n2 under way")
            n2.kill9()
        kill_harnesses(n2.state_dir)
        answered = list(sender.ok)
        assert answered and stored(n1, answered) == set(answered), "a send answered ok was lost"
        assert n1.db_rows("SELECT count(*) FROM message WHERE recipient = 'b' AND delivered_at IS NOT NULL "
                          "AND acked_at IS NULL") == [(1,)], "b's lease must stay while its node is down"
        # the others carry on, and show n2 down
        n1.call("send", to="c", body="FAKE: send operator c carries on")
        wait_until(lambda: "c carries on" in inbox_bodies(n3), 30, "c's turn while n2 is down")
        wait_until(lambda: silent_on(n3, "n2"), 30, "n3 to show n2 silent")
        # back: b's harness starts again, puts its leased message back (redelivered) and answers it
        n2.start()
        wait_until(lambda: "b answered after all" in inbox_bodies(n1), 60, "b's leased message handled once back")
        # its turn acks after its answer went out
        wait_until(lambda: n1.db_rows("SELECT redelivered, acked_at IS NOT NULL FROM message WHERE recipient = 'b'")
                   == [(True, True)], 20, "b's redelivered message acked")
        print(f"kill -9 of n2 mid-send: {len(answered)} sends answered ok, all {len(answered)} stored; "
              f"{len(sender.errors)} refused")


def test_postgresql_restarted_under_load_every_core_reconnects_by_itself_and_keeps_what_it_answered(tmp_path):
    import pgcluster
    from conftest import pg_missing_or_fail

    pg_missing_or_fail()
    with pgcluster.Cluster() as cluster:
        cluster.create_database("hive")
        url = cluster.url("hive")
        with started(node(tmp_path, url, "n1"), node(tmp_path, url, "n2"), node(tmp_path, url, "n3")) as hives:
            n1, n2, n3 = hives
            n1.spawn("p")
            n1.call("set_paused", name="p", paused=True)
            n3.spawn("c")
            senders = [Sender(h, "p") for h in hives]
            with contextlib.ExitStack() as stack:
                for s in senders:
                    stack.enter_context(s)
                wait_until(lambda: all(len(s.ok) >= 20 for s in senders), 30, "every core sending")
                cluster.restart()
                before = [len(s.ok) for s in senders]
                wait_until(lambda: all(len(s.ok) > b + 20 for s, b in zip(senders, before)), 60,
                           "every core answering sends again after the restart")
            answered = [i for s in senders for i in s.ok]
            assert stored(n1, answered) == set(answered), "a send answered ok was lost in the restart"
            for h in hives:
                log = h.log()
                assert "lost the connection to the database" in log and "reconnected to the database" in log, h.node
                wait_until(lambda h=h: "listening for the other cores' notices again" in h.log(), 30,
                           f"{h.node}'s listener to say it is back")
            # the notices came back too: a send on n1 still wakes c on n3
            n1.call("send", to="c", body="FAKE: send operator c after the restart")
            wait_until(lambda: "c after the restart" in inbox_bodies(n2), 30, "c woken across nodes after it")
            print(f"postgresql restart under load: {len(answered)} sends answered ok and stored; refused during "
                  f"it: {[len(s.errors) for s in senders]}")


def test_a_node_cut_off_the_network_is_shown_silent_and_comes_back_by_itself(tmp_path):
    import netns
    import pgcluster
    from conftest import pg_missing_or_fail

    pg_missing_or_fail()
    why = netns.Netns.available()
    if why:
        if os.environ.get("HIVE_REQUIRE_PG") == "1" and os.geteuid() == 0:
            pytest.fail(f"HIVE_REQUIRE_PG=1 as root, but {why}")
        pytest.skip(why)
    with netns.Netns("hivecut3", host_ip="10.203.31.1", ns_ip="10.203.31.2") as ns, \
            pgcluster.Cluster(listen=("127.0.0.1", "10.203.31.1")) as cluster:
        cluster.create_database("hive")
        with started(node(tmp_path, cluster.url("hive"), "n1"),
                     node(tmp_path, cluster.url("hive", host="10.203.31.1"), "n3", prefix=ns.wrap([]))) as (n1, n3):
            n3.spawn("c")
            ns.cut()
            cut_at = time.monotonic()
            wait_until(lambda: silent_on(n1, "n3"), 40, "n1 to show n3 silent")
            silent_after = time.monotonic() - cut_at
            said = refused(lambda: n1.call("restart", name="c"), "unavailable")
            assert "node n3, which has been silent for" in said, said
            n1.call("send", to="c", body="FAKE: send operator c is back on the network")
            # n3 notices by itself (a statement's bytes unanswered past tcp_user_timeout), before the heal
            wait_until(lambda: "lost the connection to the database" in n3.log(), 30, "n3 to notice the cut")
            ns.heal()
            healed_at = time.monotonic()
            wait_until(lambda: "c is back on the network" in inbox_bodies(n1), 90, "c's answer after the heal")
            print(f"partition of n3: shown silent {silent_after:.1f} s after the cut; the message sent meanwhile "
                  f"answered {time.monotonic() - healed_at:.1f} s after the heal")
            wait_until(lambda: not silent_on(n1, "n3"), 30, "n1 to show n3 live again")
            # it came back by itself, and said so
            assert "reconnected to the database" in n3.log(), n3.log()[-3000:]

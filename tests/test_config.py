"""Config as code on the process backend: the manager proposes, the operator decides, the core rebuilds.

Real core, real harnesses with the fake claude, real git repos. The test
commits in the agent's proposed repo the way the manager's model would (with
git in its Bash tool); the manager's model then calls request_apply_commit
through its real MCP server.
"""

import json
import os
import subprocess
import threading
import urllib.request

import pytest

from conftest import Hive, kill_harnesses, pyz_argv, wait_until
from hyperhive import wire


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True,
                          env=dict(os.environ, GIT_AUTHOR_NAME="manager", GIT_AUTHOR_EMAIL="m@hive",
                                   GIT_COMMITTER_NAME="manager", GIT_COMMITTER_EMAIL="m@hive")).stdout.strip()


def proposed(hive, name):
    return os.path.join(hive.state_dir, "config", "proposed", name)


def applied(hive, name):
    return os.path.join(hive.state_dir, "config", "applied", name)


def commit_config(hive, name, change, message="change config"):
    """Edit hive.json in the proposed repo and commit, as the manager would; returns the sha."""
    repo = proposed(hive, name)
    path = os.path.join(repo, "hive.json")
    with open(path) as f:
        config = json.load(f)
    if callable(change):
        change(config)
        text = json.dumps(config, indent=2) + "\n"
    else:
        text = change
    with open(path, "w") as f:
        f.write(text)
    git(repo, "commit", "-qam", message)
    return git(repo, "rev-parse", "HEAD")


def manager_requests(hive, sha, agent="a", description="switch to sonnet"):
    """Wake the manager's model with a directive to call request_apply_commit; returns the approval id."""
    before = {a["id"] for a in hive.call("pending")["approvals"]}
    args = json.dumps({"agent": agent, "commit_ref": sha[:12], "description": description})
    hive.call("send", to="manager", body=f"FAKE: call request_apply_commit {args}")
    found = wait_until(lambda: [a for a in hive.call("pending")["approvals"] if a["id"] not in before], 30,
                       "the manager's approval request")
    return found[0]["id"]


def manager_inbox(hive):
    rows = hive.agent_call("manager", "recent", limit=50)["messages"]
    return [m["body"] for m in rows if m["to"] == "manager" and m["from"] == "core"]


def cli(hive, *args):
    return subprocess.run(pyz_argv("--socket", hive.host_sock, *args), capture_output=True, text=True,
                          timeout=120)


def diff_of(hive, approval_id):
    """An approval's diff as the dashboard serves it to the operator."""
    request = urllib.request.Request(f"{hive.url}/approval/{approval_id}/diff", headers=hive.session())
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read().decode()


def turn_models(hive, name):
    path = os.path.join(hive.home(name), "state", ".fakeclaude", "calls.jsonl")
    with open(path) as f:
        return [json.loads(line)["model"] for line in f if line.strip()]


def spawned(hive, name="a"):
    hive.call("spawn", name=name)
    wait_until(lambda: (hive.row(name) or {}).get("active_model"), 20, f"{name} to boot")


def test_spawn_seeds_config_and_reports_the_deployed_sha(hive):
    spawned(hive)
    sha = git(applied(hive, "a"), "rev-parse", "main")
    row = hive.row("a")
    assert row["deployed_sha"] == sha[:12] and row["needs_update"] is False
    with open(os.path.join(proposed(hive, "a"), "hive.json")) as f:
        assert json.load(f)["model"] == "haiku"
    assert "deployed/0" in git(applied(hive, "a"), "tag")


def test_manager_proposes_operator_approves_agent_restarts_on_the_new_model(hive):
    spawned(hive)
    sha = commit_config(hive, "a", lambda c: c.update(model="sonnet"))
    approval = manager_requests(hive, sha)
    pending = hive.call("pending")["approvals"]
    [row] = [a for a in pending if a["id"] == approval]
    assert row["kind"] == "apply_commit" and row["fetched_sha"] == sha and row["status"] == "pending"
    done = cli(hive, "approve", str(approval))
    assert done.returncode == 0 and "approved" in done.stdout, done.stderr
    row = hive.row("a")
    assert row["running"] and row["active_model"] == "sonnet" and row["deployed_sha"] == sha[:12]
    tags = git(applied(hive, "a"), "tag").split()
    for kind in ("proposal", "approved", "building", "deployed"):
        assert f"{kind}/{approval}" in tags
    assert git(applied(hive, "a"), "rev-parse", "main") == sha
    wait_until(lambda: any("approved and applied" in b for b in manager_inbox(hive)), 20,
               "the outcome in the manager's inbox")
    hive.call("send", to="a", body="FAKE: send operator on-sonnet")
    wait_until(lambda: "on-sonnet" in [m["body"] for m in hive.call("inbox")["messages"]], 30, "a's next turn")
    assert turn_models(hive, "a")[-1] == "sonnet"


def test_deny_tags_the_reason_and_tells_the_manager(hive):
    spawned(hive)
    before = git(applied(hive, "a"), "rev-parse", "main")
    sha = commit_config(hive, "a", lambda c: c.update(model="opus"))
    approval = manager_requests(hive, sha)
    hive.call("deny", id=approval, reason="opus is too expensive for this")
    assert git(applied(hive, "a"), "rev-parse", "main") == before
    msg = git(applied(hive, "a"), "tag", "-l", "--format=%(contents)", f"denied/{approval}")
    assert "opus is too expensive" in msg
    wait_until(lambda: any("denied" in b and "too expensive" in b for b in manager_inbox(hive)), 20,
               "the denial in the manager's inbox")
    with pytest.raises(wire.HiveError, match="already denied"):
        hive.call("approve", id=approval)


def test_a_bad_config_fails_and_keeps_the_agent_on_its_old_config(hive):
    spawned(hive)
    before = git(applied(hive, "a"), "rev-parse", "main")
    sha = commit_config(hive, "a", '{"model": "sonnet", "env": {"HOME": "/evil"}}\n')
    approval = manager_requests(hive, sha)
    shown = cli(hive, "pending")  # the operator reads what approving deploys
    assert shown.returncode == 0 and f"=== approval {approval}: apply_commit of a at " in shown.stdout
    assert '+{"model": "sonnet", "env": {"HOME": "/evil"}}' in shown.stdout, shown.stdout
    done = cli(hive, "approve", str(approval))
    assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.startswith(f"approval {approval}: failed (") and "HOME" in done.stderr
    assert git(applied(hive, "a"), "rev-parse", "main") == before
    msg = git(applied(hive, "a"), "tag", "-l", "--format=%(contents)", f"failed/{approval}")
    assert "HOME" in msg
    row = hive.row("a")
    assert row["running"] and row["active_model"] == "haiku" and row["deployed_sha"] == before[:12]
    wait_until(lambda: any("failed" in b for b in manager_inbox(hive)), 20, "the failure in the manager's inbox")
    with pytest.raises(wire.HiveError, match="already failed"):
        hive.call("approve", id=approval)


@pytest.mark.parametrize("key", ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "DYLD_INSERT_LIBRARIES", "PYTHONPATH",
                                 "PYTHONSTARTUP", "NODE_OPTIONS", "NODE_PATH", "PERL5OPT", "PERL5LIB", "RUBYOPT",
                                 "JAVA_TOOL_OPTIONS", "BASH_ENV", "ENV", "SHELLOPTS", "PS4", "GCONV_PATH", "LOCPATH",
                                 "GLIBC_TUNABLES", "OPENSSL_CONF", "LUA_INIT", "GIT_CONFIG_COUNT", "HOME", "PATH",
                                 "HIVE_SOCKET"])
def test_a_config_env_may_not_set_what_chooses_the_code_that_runs(key):
    """Issue 14, class 7: a variable that makes a loader, an interpreter or a shell run other code is
    refused with a sentence saying why, whichever backend would run it."""
    from hyperhive.core.agentconfig import check_config

    with pytest.raises(wire.HiveError) as e:
        check_config("a", {"env": {key: "/tmp/x", "GREETING": "hi"}})
    said = str(e.value)
    assert f"may not set {key} (" in said and "GREETING" not in said and "hive.json" in said, said


def test_a_config_env_keeps_what_only_configures():
    from hyperhive.core.agentconfig import check_config

    env = {"GREETING": "hi", "ANTHROPIC_BASE_URL": "http://x", "HTTPS_PROXY": "http://p", "LANG": "C.UTF-8",
           "NODE_EXTRA_CA_CERTS": "/etc/ssl/x.pem", "TZ": "UTC"}
    assert check_config("a", {"env": env})["env"] == env


def test_a_config_permission_policy_is_checked_with_a_sentence():
    from hyperhive.core.agentconfig import check_config

    policy = {"allow": ["Read"], "ask": ["Bash(git push:*)"], "deny": []}
    assert check_config("a", {"permissions": policy})["permissions"] == policy
    assert check_config("a", {"permissions": {}}) == {"permissions": {}} and check_config("a", {}) == {}
    for bad, words in (({"ask": ["Bash(git push:*"]}, "the ask rule 'Bash(git push:*' is not a rule"),
                       ({"allow": "Read"}, '"allow" must be a list of rules'),
                       (["Read"], "must be an object"), ({"alow": []}, "'alow'")):
        with pytest.raises(wire.HiveError) as e:
            check_config("a", {"permissions": bad})
        assert str(e.value).startswith("a's hive.json: \"permissions\"") and words in str(e.value), str(e.value)


@pytest.mark.parametrize("ref, fragment", [
    ("main", "commit sha"), ("v1.0", "commit sha"), ("abc12", "commit sha"),
    ("0123456789abcdef0123456789abcdef01234567", "is not a commit in a's proposed"),
])
def test_bad_commit_refs_are_refused(hive, ref, fragment):
    spawned(hive)
    with pytest.raises(wire.HiveError) as e:
        hive.agent_call("manager", "request_apply_commit", agent="a", commit_ref=ref, description="x")
    assert fragment in str(e.value), str(e.value)
    assert hive.call("pending")["approvals"] == []


def test_only_the_manager_can_request_changes(hive):
    spawned(hive)
    with pytest.raises(wire.HiveError, match="unknown verb 'request_apply_commit' on the agent socket"):
        hive.agent_call("a", "request_apply_commit", agent="a", commit_ref="abcdef0", description="me")
    with pytest.raises(wire.HiveError, match="unknown verb 'approve' on the manager socket"):
        hive.agent_call("manager", "approve", id=1)


def test_spawning_takes_two_approvals(hive):
    first = hive.agent_call("manager", "request_init_config", name="c", description="a helper for b")["id"]
    with pytest.raises(wire.HiveError, match="request_init_config first"):
        hive.agent_call("manager", "request_spawn", name="c", description="too early")
    hive.call("approve", id=first)
    assert os.path.isdir(proposed(hive, "c"))
    second = hive.agent_call("manager", "request_spawn", name="c", description="start it")["id"]
    cli(hive, "approve", str(second))
    row = wait_until(lambda: hive.row("c"), 20, "c to exist")
    assert row["running"] and row["parent"] == "manager"


def test_a_spawned_agent_runs_its_first_turn_on_the_config_the_manager_edited(hive):
    init = hive.agent_call("manager", "request_init_config", name="c", description="a helper on sonnet")["id"]
    hive.call("approve", id=init)
    sha = commit_config(hive, "c", lambda c: c.update(model="sonnet"))
    # through the manager's real MCP server, commit_ref left out: proposed main as it is now
    args = json.dumps({"name": "c", "description": "start c on sonnet"})
    hive.call("send", to="manager", body=f"FAKE: call request_spawn {args}")
    [row] = wait_until(lambda: [a for a in hive.call("pending")["approvals"] if a["kind"] == "spawn"], 30,
                       "the manager's spawn request")
    assert row["fetched_sha"] == sha and row["commit_ref"] is None
    assert '+  "model": "sonnet"' in diff_of(hive, row["id"])  # what the dashboard shows the operator
    commit_config(hive, "c", lambda c: c.update(model="opus"))  # too late for this spawn
    done = cli(hive, "approve", str(row["id"]))
    assert done.returncode == 0 and "approved" in done.stdout, done.stderr
    assert git(applied(hive, "c"), "rev-parse", "main") == sha
    assert wait_until(lambda: hive.row("c"), 20, "c to exist")["deployed_sha"] == sha[:12]
    hive.call("send", to="c", body="FAKE: send operator first-turn")
    wait_until(lambda: "first-turn" in [m["body"] for m in hive.call("inbox")["messages"]], 30, "c's first turn")
    assert [call["model"] for call in hive.claude_calls("c")] == ["sonnet"]


def test_approving_while_the_agent_is_busy_is_refused(hive):
    spawned(hive)
    sha = commit_config(hive, "a", lambda c: c.update(model="sonnet"))
    approval = manager_requests(hive, sha)
    hive.call("send", to="a", body="FAKE: sleep 3\nFAKE: send operator slow")
    wait_until(lambda: os.path.exists(os.path.join(hive.home("a"), "state", ".fakeclaude", "calls.jsonl")), 20,
               "the slow turn")
    stopper = threading.Thread(target=hive.call, args=("stop",), kwargs={"scope": {"agent_names": ["a"]}})
    stopper.start()
    # the harness says so once the core's SIGTERM reached it mid-turn
    wait_until(lambda: "stopping after the running turn ends" in open(hive.log_of("a")).read(), 20,
               "a to be mid-stop")
    with pytest.raises(wire.HiveError, match="busy stopping"):
        hive.call("approve", id=approval)
    stopper.join(30)
    assert [a["status"] for a in hive.call("pending")["approvals"] if a["id"] == approval] == ["pending"]


def test_extras_from_config_reach_claude(hive):
    spawned(hive)
    sha = commit_config(hive, "a", lambda c: c.update(extra_mcp={"notes": {"command": "notes-mcp",
                                                                            "allowedTools": ["add"]}}))
    hive.call("approve", id=manager_requests(hive, sha, description="notes tool"))
    hive.call("send", to="a", body="FAKE: send operator extras-seen")
    wait_until(lambda: "extras-seen" in [m["body"] for m in hive.call("inbox")["messages"]], 30, "the turn")
    path = os.path.join(hive.home("a"), "state", ".fakeclaude", "calls.jsonl")
    with open(path) as f:
        call = [json.loads(line) for line in f][-1]
    assert "mcp__notes__add" in ",".join(call["allowed_tools"]).split(",")


def test_crash_reaches_the_manager_and_tombstones_purge(hive):
    spawned(hive, "b")
    os.killpg(hive.harness_pid("b"), 9)
    wait_until(lambda: any("container_crash: b" in x for x in manager_inbox(hive)), 20, "the crash event")
    assert hive.row("b")["failed"]
    hive.call("destroy", name="b")
    assert hive.call("tombstones")["tombstones"] == ["b"]
    hive.call("purge_tombstone", name="b")
    assert hive.call("tombstones")["tombstones"] == []
    assert not os.path.exists(proposed(hive, "b")) and not os.path.exists(hive.home("b"))


def test_a_restarted_core_rebuilds_agents_whose_config_moved(tmp_path):
    h = Hive(tmp_path / "state")
    h.start()
    try:
        spawned(h)
        sha = commit_config(h, "a", lambda c: c.update(model="sonnet"))
        h.kill9()  # the core dies; a keeps running on its old config
        git(applied(h, "a"), "fetch", "-q", proposed(h, "a"), "main")
        git(applied(h, "a"), "merge", "-q", "--ff-only", sha)  # deployed while the core was down
        h.start()
        row = wait_until(lambda: (lambda r: r if r["deployed_sha"] == sha[:12] else None)(h.row("a")), 30,
                         "the auto-update at start")
        assert row["running"] and not row["needs_update"] and row["active_model"] == "sonnet"
        assert "runs" in h.log() and "rebuilding" in h.log()
    finally:
        h.stop()
        kill_harnesses(h.state_dir)


def test_needs_update_until_rebuilt(hive):
    spawned(hive)
    sha = commit_config(hive, "a", lambda c: c.update(model="sonnet"))
    git(applied(hive, "a"), "fetch", "-q", proposed(hive, "a"), "main")
    git(applied(hive, "a"), "merge", "-q", "--ff-only", sha)  # deployed, but a still runs the old config
    row = hive.row("a")
    assert row["needs_update"] is True and row["deployed_sha"] != sha[:12]
    told = wait_until(lambda: [m for m in manager_inbox(hive) if m.startswith("[helper event] needs_update: a ")],
                      10, "the manager told that a runs behind its applied main")
    assert sha[:12] in told[0] and "rebuild a" in told[0]
    done = cli(hive, "rebuild", "a")
    assert done.returncode == 0, done.stderr
    row = hive.row("a")
    assert row["needs_update"] is False and row["deployed_sha"] == sha[:12] and row["active_model"] == "sonnet"
    hive.call("agent_status")  # the rows the watch publishes are read again; still one telling
    assert len([m for m in manager_inbox(hive) if "needs_update" in m]) == 1


def test_the_operators_cli_decides_and_cleans_up(hive):
    first = hive.agent_call("manager", "request_init_config", name="c", description="a helper")["id"]
    assert cli(hive, "approve", str(first)).returncode == 0
    asked = cli(hive, "request-spawn", "c")
    assert asked.returncode == 0 and "queued approval" in asked.stdout, asked.stderr
    spawn_id = int(asked.stdout.split()[-1])
    pending = cli(hive, "pending")
    assert f"{spawn_id}" in pending.stdout and "spawn" in pending.stdout
    done = cli(hive, "approve", str(spawn_id))
    assert done.returncode == 0 and "approved" in done.stdout
    assert wait_until(lambda: hive.row("c"), 20, "c")["parent"] == "operator"  # who asked, not the manager

    sha = commit_config(hive, "c", lambda c: c.update(model="opus"))
    approval = manager_requests(hive, sha, agent="c")
    denied = cli(hive, "deny", str(approval), "--reason", "too dear")
    assert denied.returncode == 0 and "denied" in denied.stdout
    assert any("too dear" in b for b in wait_until(lambda: [x for x in manager_inbox(hive) if "denied" in x], 20,
                                                      "the denial"))
    bad = cli(hive, "deny", "abc")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "approval id must be a whole number of 1 or more, got 'abc'" in bad.stderr

    hive.call("destroy", name="c")
    assert cli(hive, "tombstones").stdout.split() == ["c"]
    assert cli(hive, "purge", "c").returncode == 0
    assert cli(hive, "tombstones").stdout.strip() == "(no tombstones)"

"""The forge mirror (issue 18, item 1) and `urls` (item 2).

Against a real git server (tests/gitforge.py: `git http-backend` behind basic
auth): the push itself, in-process through the git module; the schedule
(one push per agent however many changes, one more for a change during a
push, backoff on failure) stepped on a moved clock over a recording stand-in
for the repos; and a real core (the pyz) mirroring at spawn and approve,
with the forge down, and with a credential the forge refuses.
"""

import base64
import logging
import os
import re
import subprocess

import pytest

from conftest import Hive, pyz_argv, running, wait_until
from fakes import Clock
from gitforge import TOKEN, USER, GitForge, git_env
from hyperhive import wire
from hyperhive.core import forge as forgemod
from hyperhive.core.forge import Forge, read_credential
from hyperhive.core.gitrepos import Repos

HEADER = "Authorization: Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
SECRETS = (TOKEN, base64.b64encode(f"{USER}:{TOKEN}".encode()).decode())


def mirrored_refs(applied):
    """{ref: sha} of applied main and every tag: what the forge must hold."""
    out = subprocess.run(["git", "-C", applied, "for-each-ref", "--format=%(refname) %(objectname)",
                          "refs/heads/main", "refs/tags"], capture_output=True, text=True, check=True,
                         env=git_env()).stdout
    return dict(line.split() for line in out.splitlines())


def files_holding(root, secrets=SECRETS):
    """Every file under root whose bytes hold one of the secrets."""
    found = []
    for top, _, names in os.walk(root):
        for name in names:
            path = os.path.join(top, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            found += [path for s in secrets if s.encode() in data]
    return found


@pytest.fixture
def forge(tmp_path):
    server = GitForge(tmp_path / "forge").start()
    yield server
    server.stop()


# -- the push, through the git module ---------------------------------------------------------

def test_a_push_mirrors_main_and_every_tag_and_the_credential_stays_out_of_the_repo(tmp_path, forge):
    changes = []
    repos = Repos(tmp_path / "repos", refs_changed=changes.append)
    repos.init_agent("alice")
    main = repos.deployed_sha("alice")
    repos.tag("alice", "denied", 7, main, message="no")
    assert changes == ["alice", "alice"], "a new applied repo and a tag each tell the mirror"
    assert repos.push("alice", f"{forge.url}/alice.git", HEADER) == main
    want = mirrored_refs(repos.applied("alice"))
    assert set(want) == {"refs/heads/main", "refs/tags/deployed/0", "refs/tags/denied/7"}
    assert forge.refs("alice") == want
    assert files_holding(repos.applied("alice")) == [], "the credential is in no file of the applied repo"
    with open(os.path.join(repos.applied("alice"), ".git", "config")) as f:
        config = f.read()
    assert "127.0.0.1" not in config and "extraHeader" not in config, "no remote and no header is stored either"


def test_a_refused_credential_and_a_closed_port_are_sentences(tmp_path, forge):
    repos = Repos(tmp_path / "repos")
    repos.init_agent("alice")
    wrong = "Authorization: Basic " + base64.b64encode(b"hive:wrong").decode()
    with pytest.raises(wire.HiveError) as e:
        repos.push("alice", f"{forge.url}/alice.git", wrong)
    assert e.value.code == "unavailable" and "could not push alice's applied config repo" in str(e.value)
    assert forge.refs("alice") == {} and ("GET", "/hive/alice.git/info/refs", 401) in forge.requests
    forge.stop()
    with pytest.raises(wire.HiveError) as e:
        repos.push("alice", f"{forge.url}/alice.git", HEADER)
    assert "Failed to connect" in str(e.value) or "Connection refused" in str(e.value), str(e.value)


def test_the_credential_file_is_checked_at_each_read(tmp_path):
    path = tmp_path / "cred"
    path.write_text(f"{USER}:{TOKEN}\n")
    os.chmod(path, 0o644)
    with pytest.raises(wire.HiveError, match="chmod 600"):
        read_credential(str(path))
    os.chmod(path, 0o600)
    assert read_credential(str(path)) == HEADER
    path.write_text("just-a-token\n")
    with pytest.raises(wire.HiveError, match="one line, user:token"):
        read_credential(str(path))
    with pytest.raises(wire.HiveError, match="cannot read the forge credential file"):
        read_credential(str(tmp_path / "missing"))


def test_the_forge_url_is_checked():
    assert forgemod.check_url("https://forge.example/hive-org/") == "https://forge.example/hive-org"
    for bad in ("forge.example/org", "ssh://git@forge.example/org", "https://"):
        with pytest.raises(wire.HiveError, match="http:// or https://"):
            forgemod.check_url(bad)
    with pytest.raises(wire.HiveError, match="must not carry a user or token"):
        forgemod.check_url("https://hive:tok@forge.example/org")
    with pytest.raises(wire.HiveError, match="needs --forge-url"):
        Forge(None, None, "/etc/cred")


# -- the schedule, stepped on a moved clock ------------------------------------------------------

class Pushes:
    """Stands in for the repos: records each push (name, url, header), fails while `down` says so, and
    runs `during` (a change arriving mid-push) inside one."""

    def __init__(self):
        self.pushed, self.down, self.during, self.names = [], None, None, ["a", "b"]

    def applied_names(self):
        return list(self.names)

    def push(self, name, url, header):
        self.pushed.append((name, url, header))
        if self.during:
            during, self.during = self.during, None
            during()
        if self.down:
            raise wire.HiveError(self.down, "unavailable")
        return f"sha-of-{name}-{len(self.pushed)}"


@pytest.fixture
def sched(tmp_path):
    cred = tmp_path / "cred"
    cred.write_text(f"{USER}:{TOKEN}\n")
    os.chmod(cred, 0o600)
    clock, pushes = Clock(), Pushes()
    return Forge(pushes, "https://forge.example/org/", str(cred), clock=clock), pushes, clock


def test_changes_coalesce_to_one_push_and_a_change_mid_push_makes_one_more(sched):
    forge, pushes, clock = sched
    for _ in range(5):
        forge.changed("a")
    forge.changed("b")
    assert forge.step() == 2
    assert pushes.pushed == [("a", "https://forge.example/org/a.git", HEADER),
                             ("b", "https://forge.example/org/b.git", HEADER)]
    assert forge.step() == 0 and forge.next_due() is None, "nothing is pushed twice for one change"
    pushes.during = lambda: [forge.changed("a") for _ in range(3)]
    forge.changed("a")
    assert forge.step() == 1 and forge.next_due() == clock.t, "a change during the push is due at once"
    assert forge.step() == 1 and forge.step() == 0 and len(pushes.pushed) == 4
    assert forge.state("a")["pushed_sha"] == "sha-of-a-4" and forge.state("a")["error"] is None


def test_a_failing_push_backs_off_shows_why_and_catches_up(sched, caplog):
    caplog.set_level(logging.INFO, logger=forgemod.__name__)
    forge, pushes, clock = sched
    pushes.down = "could not push a's applied config repo to …: Failed to connect to forge.example port 443"
    forge.changed("a")
    delays = []
    for _ in range(8):
        assert forge.step() == 1
        delays.append(forge.next_due() - clock.t)
        clock.t += delays[-1] - 0.5
        assert forge.step() == 0, "nothing before its retry is due"
        clock.t += 0.5
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]
    assert forge.step() == 1
    shown = forge.state("a")
    assert shown["error"].startswith(pushes.down) and shown["retry_at"] == wire.iso(int((clock.t + 300) * 1000))
    assert shown["pushed_at"] is None and "Failed to connect" in caplog.text and "tries again in 300s" in caplog.text
    # a change does not wait out the backoff: the forge may be back
    clock.t += 1
    forge.changed("a")
    pushes.down = None
    assert forge.step() == 1
    assert forge.state("a")["error"] is None and forge.state("a")["retry_at"] is None
    assert "mirrored again after 9 failed push(es)" in caplog.text
    pushes.down = "x"
    forge.changed("a")
    forge.step()
    assert forge.next_due() - clock.t == 5, "a success forgets the failures: the backoff starts again"


def test_a_refusal_says_what_to_do_and_a_purged_repo_is_dropped(sched):
    forge, pushes, clock = sched
    pushes.down = "could not push a's …: fatal: could not read Username for 'https://forge.example': terminal " \
                  "prompts disabled"
    forge.changed("a")
    forge.step()
    assert "the forge refused the credential in" in forge.state("a")["error"]
    pushes.down = "could not push a's …: ! [rejected] main -> main (fetch first)"
    forge.changed("a")
    forge.step()
    assert "never overwrites it" in forge.state("a")["error"]
    pushes.push = lambda *a: (_ for _ in ()).throw(wire.HiveError("agent 'a' has no applied config repo", "not_found"))
    forge.changed("a")
    forge.step()
    assert forge.next_due() is None and forge.state("a")["error"] is None


def test_without_a_forge_nothing_is_scheduled_and_rows_say_null():
    forge = Forge(Pushes())
    forge.changed("a")
    assert forge.next_due() is None and forge.state("a") is None and forge.url is None


def test_start_makes_every_applied_repo_due(sched):
    forge, pushes, clock = sched
    forge.everyone()
    assert forge.step() == 2 and [p[0] for p in pushes.pushed] == ["a", "b"]


# -- a real core ---------------------------------------------------------------------------------

def core_with_forge(tmp_path, forge, credential=f"{USER}:{TOKEN}"):
    cred = tmp_path / "forge-credential"
    cred.write_text(credential + "\n")
    os.chmod(cred, 0o600)
    return Hive(tmp_path / "state", extra_args=["--forge-url", forge.url, "--forge-credential-file", str(cred),
                                                "--domain", "hive.example"]), cred


def applied(h, name):
    return os.path.join(h.state_dir, "config", "applied", name)


# A push that fails under a loaded machine backs off (5 s, doubling) before the next: the waits for the
# forge to catch up allow a few of those.
def in_sync(h, forge, name):
    want = mirrored_refs(applied(h, name))
    return want and forge.refs(name) == want and ((h.row(name) or {}).get("forge") or {}).get("error") is None


def commit_in_proposed(h, name, text, path="NOTES"):
    repo = os.path.join(h.state_dir, "config", "proposed", name)
    env = dict(git_env(), GIT_AUTHOR_NAME="m", GIT_AUTHOR_EMAIL="m@h", GIT_COMMITTER_NAME="m",
               GIT_COMMITTER_EMAIL="m@h")
    with open(os.path.join(repo, path), "a") as f:
        f.write(text + "\n")
    subprocess.run(["git", "-C", repo, "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", repo, "commit", "-qm", text], check=True, env=env)
    return subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], check=True, env=env, capture_output=True,
                          text=True).stdout.strip()


def deploy_a_change(h, name, text):
    aid = h.agent_call("manager", "request_apply_commit", agent=name, commit_ref=commit_in_proposed(h, name, text),
                       description=text)["id"]
    assert h.call("approve", id=aid)["approval"]["status"] == "approved"
    return aid


def test_the_core_mirrors_at_start_spawn_and_approve_and_urls_answer(tmp_path, forge):
    h, cred = core_with_forge(tmp_path, forge)
    with_forge, h.extra_args = h.extra_args, []
    with running(h):  # a hive from before the forge: a and the manager have history the forge never saw
        assert h.call("urls")["urls"] == {"domain": None, "home": h.url, "forge": None}
        h.spawn("a")
        deploy_a_change(h, "a", "before the forge")
        assert h.row("a")["forge"] is None
    h.extra_args = with_forge
    with running(h):
        assert h.call("urls")["urls"] == {"domain": "hive.example", "home": h.url, "forge": forge.url}
        done = subprocess.run(pyz_argv("--socket", h.host_sock, "urls"), capture_output=True, text=True)
        assert done.stdout.split("\n")[:3] == ["domain: hive.example", f"home: {h.url}", f"forge: {forge.url}"]
        # at start, with no change since: the forge catches up on everything
        wait_until(lambda: in_sync(h, forge, "manager") and in_sync(h, forge, "a"), 120,
                   "the manager's and a's applied repos on the forge at the core's start")
        h.spawn("b")
        wait_until(lambda: in_sync(h, forge, "b"), 120, "b's applied repo on the forge after its spawn")
        aid = deploy_a_change(h, "a", "first change")
        wait_until(lambda: in_sync(h, forge, "a"), 120, "a's deploy on the forge")
        trail = {f"refs/tags/{k}/{aid}" for k in ("proposal", "approved", "building", "deployed")}
        assert trail <= set(forge.refs("a"))
        row = h.row("a")["forge"]
        assert row["repo"] == f"{forge.url}/a.git" and row["pushed_sha"] == forge.refs("a")["refs/heads/main"]
        # a failure moves refs too: failed/<id>, main where it was
        broken = h.agent_call("manager", "request_apply_commit", agent="a", description="x",
                              commit_ref=commit_in_proposed(h, "a", "{ not json", path="hive.json"))["id"]
        assert h.call("approve", id=broken)["approval"]["status"] == "failed"
        wait_until(lambda: f"refs/tags/failed/{broken}" in forge.refs("a") and in_sync(h, forge, "a"), 120,
                   "the failure's tag on the forge")
        # and so does a denial
        denied = h.agent_call("manager", "request_apply_commit", agent="a",
                              commit_ref=commit_in_proposed(h, "a", "no thanks"), description="x")["id"]
        h.call("deny", id=denied, reason="not now")
        wait_until(lambda: f"refs/tags/denied/{denied}" in forge.refs("a") and in_sync(h, forge, "a"), 120,
                   "the denial's tag on the forge")
    assert files_holding(h.state_dir) == [], "the credential is in no file of the hive's state"
    assert files_holding(h.run_dir) == [] and TOKEN not in h.log()


def test_a_down_forge_never_fails_a_deploy_and_is_caught_up(tmp_path):
    forge = GitForge(tmp_path / "forge")  # not started: its port is closed
    h, _ = core_with_forge(tmp_path, forge)
    with running(h):
        h.spawn("a")
        said = wait_until(lambda: (h.row("a")["forge"] or {}).get("error"), 30, "a's row to show the failed push")
        assert "could not push a's applied config repo" in said and "127.0.0.1" in said, said
        aid = deploy_a_change(h, "a", "while the forge is down")
        assert h.row("a")["running"] and h.row("a")["deployed_sha"] == mirrored_refs(applied(h, "a"))[
            "refs/heads/main"][:12], "the deploy went through"
        assert re.search(r"forge: could not push a's applied config repo .* tries again in \d+s", h.log())
        forge.start()
        try:
            deploy_a_change(h, "a", "the forge is back")  # the next change catches up on everything
            wait_until(lambda: in_sync(h, forge, "a"), 120, "a's whole trail on the forge once it is back")
            assert f"refs/tags/deployed/{aid}" in forge.refs("a")
        finally:
            forge.stop()


def test_a_refused_credential_is_logged_shown_and_stored_nowhere(tmp_path, forge):
    h, cred = core_with_forge(tmp_path, forge, credential=f"{USER}:not-the-token")
    with running(h):
        h.spawn("a")
        said = wait_until(lambda: (h.row("a")["forge"] or {}).get("error"), 30, "a's row to show the refusal")
        assert f"the forge refused the credential in {cred}" in said, said
        assert "forge refused the credential" in h.log() and forge.refs("a") == {}
        assert any(status == 401 for _, _, status in forge.requests)
        # read at each push: the fixed file is used by the next one, without a restart
        cred.write_text(f"{USER}:{TOKEN}\n")
        deploy_a_change(h, "a", "with the right token")
        wait_until(lambda: in_sync(h, forge, "a"), 120, "a's repo on the forge with the fixed credential")
        for name in ("a", "manager"):
            with open(os.path.join(applied(h, name), ".git", "config")) as f:
                assert "extraHeader" not in f.read()
    # the state dir holds the manager's view (the proposed repos, its home) and everything else of the hive
    assert files_holding(h.state_dir, (TOKEN, "not-the-token")) == []

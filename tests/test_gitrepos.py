"""Config repos on real git: the two-repo split, the tag trail, and every refusal.

The manager's side is simulated with plain `git` here; product code runs git
only through hyperhive.core.gitrepos.
"""

import json
import os
import subprocess

import pytest

from hyperhive import wire
from hyperhive.core.gitrepos import Repos

MANAGER_ENV = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
                   GIT_AUTHOR_NAME="manager", GIT_AUTHOR_EMAIL="manager@hive",
                   GIT_COMMITTER_NAME="manager", GIT_COMMITTER_EMAIL="manager@hive")


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True,
                          env=MANAGER_ENV).stdout.strip()


def tags(repos, name):
    """The config tags of an agent's applied repo, read with git itself."""
    return sorted(git(repos.applied(name), "tag", "-l").split())


def tag_message(repos, name, tag):
    """A tag's annotation ('' for a plain tag), read with git itself."""
    kind, _, text = git(repos.applied(name), "for-each-ref", "--format=%(objecttype)%00%(contents)",
                        f"refs/tags/{tag}").partition("\0")
    return text.rstrip("\n") if kind == "tag" else ""


def commit(repos, name, text, path="agent.nix", branch=None):
    """The manager edits a file in proposed and commits it; returns the commit's sha."""
    repo = repos.proposed(name)
    if branch:
        git(repo, "checkout", "-q", "-B", branch, "deployed-base")
    with open(os.path.join(repo, path), "w") as f:
        f.write(text)
    git(repo, "commit", "-q", "-am", f"edit {path}")
    return git(repo, "rev-parse", "HEAD")


def refused(code, fn, *args, **kw):
    with pytest.raises(wire.HiveError) as info:
        fn(*args, **kw)
    assert info.value.code == code, str(info.value)
    assert "Traceback" not in str(info.value)
    return str(info.value)


@pytest.fixture
def repos(tmp_path):
    repos = Repos(tmp_path / "repos")
    repos.init_agent("alice")
    git(repos.proposed("alice"), "tag", "deployed-base")  # the manager's own marker for branching off
    return repos


def sonnet(repos):
    return repos.read("alice", "agent.nix").replace('"haiku"', '"sonnet"')


def test_init_seeds_both_repos_from_the_templates(repos):
    assert repos.exists("alice") and not repos.exists("bob")
    nix = repos.read("alice", "agent.nix")
    assert 'agent "alice"' in nix and 'hyperhive.model = "haiku";' in nix and "{name}" not in nix
    assert "environment.systemPackages = with pkgs; [ ];" in nix and "extraMcpServers" in nix
    hive = repos.read("alice", "hive.json")
    assert json.loads(hive) == {"model": "haiku", "env": {}, "extra_mcp": {},
                                "permissions": {"allow": [], "ask": [], "deny": []}, "packages_note": ""}
    assert hive.endswith("}\n") and '\n  "model"' in hive
    assert repos.read("alice", "agent.nix", repo="proposed") == nix
    head = git(repos.proposed("alice"), "rev-parse", "HEAD")
    assert repos.deployed_sha("alice") == head and tags(repos, "alice") == ["deployed/0"]
    assert git(repos.applied("alice"), "log", "-1", "--format=%an <%ae>") == "hive-c0re <hive-c0re@localhost>"
    assert git(repos.applied("alice"), "symbolic-ref", "HEAD") == "refs/heads/main"
    with open(os.path.join(repos.applied("alice"), "agent.nix")) as f:  # applied has a worktree to read
        assert f.read() == nix


def test_init_is_idempotent(repos):
    first = repos.deployed_sha("alice")
    edited = commit(repos, "alice", "# the manager's edit\n")
    assert repos.init_agent("alice") == first
    assert git(repos.proposed("alice"), "rev-parse", "HEAD") == edited  # proposed left alone
    assert tags(repos, "alice") == ["deployed/0"]


def test_init_with_given_files_purge_and_a_half_made_agent(tmp_path):
    repos = Repos(tmp_path)
    repos.init_agent("bob", files={"agent.nix": "{ }\n", "sub/x.txt": "x\n"})
    assert repos.read("bob", "sub/x.txt") == "x\n"
    repos.purge("bob")
    assert not repos.exists("bob") and repos.deployed_sha("bob") is None
    refused("bad_argument", repos.init_agent, "bob", files={"../escape": "x"})
    assert not os.path.exists(tmp_path / "escape") and not os.path.exists(repos.proposed("bob"))
    head = repos.init_agent("bob", files={"agent.nix": "{ }\n"})
    # a crash left applied missing and a half-built one beside it: init finishes the job
    os.rename(repos.applied("bob"), repos.applied("bob") + ".new")
    assert repos.init_agent("bob") == head and tags(repos, "bob") == ["deployed/0"]
    assert repos.read("bob", "agent.nix") == "{ }\n" and not os.path.exists(repos.applied("bob") + ".new")


def test_approve_walks_the_tag_trail_and_only_deploy_moves_main(repos):
    base = repos.deployed_sha("alice")
    sha = commit(repos, "alice", sonnet(repos))
    assert repos.pin_proposal("alice", 1, sha[:7].upper()) == sha
    assert repos.deployed_sha("alice") == base
    diff = repos.diff("alice", sha)
    assert '-  hyperhive.model = "haiku";' in diff and '+  hyperhive.model = "sonnet";' in diff
    assert repos.diff("alice", base) == ""
    for kind in ("approved", "building"):
        repos.tag("alice", kind, 1, sha)
        assert repos.deployed_sha("alice") == base
    repos.deploy("alice", 1, sha)
    assert repos.deployed_sha("alice") == sha
    assert tags(repos, "alice") == ["approved/1", "building/1", "deployed/0", "deployed/1", "proposal/1"]
    assert 'hyperhive.model = "sonnet";' in repos.read("alice", "agent.nix")
    assert 'hyperhive.model = "haiku";' in repos.read("alice", "agent.nix", rev="deployed/0")
    with open(os.path.join(repos.applied("alice"), "agent.nix")) as f:
        assert '"sonnet"' in f.read()
    assert tag_message(repos, "alice", "deployed/1") == ""


def test_deny_annotates_the_reason_and_leaves_main(repos):
    base = repos.deployed_sha("alice")
    sha = commit(repos, "alice", sonnet(repos))
    repos.pin_proposal("alice", 2, sha)
    reason = "not now\n# comment-looking lines survive"
    repos.tag("alice", "denied", "2", sha, message=reason)
    assert tag_message(repos, "alice", "denied/2") == reason
    assert tags(repos, "alice") == ["denied/2", "deployed/0", "proposal/2"]
    assert repos.deployed_sha("alice") == base


def test_failed_build_annotates_the_error_and_leaves_main(repos):
    base = repos.deployed_sha("alice")
    sha = commit(repos, "alice", "{ this is not nix\n")
    repos.pin_proposal("alice", 3, sha)
    for kind in ("approved", "building"):
        repos.tag("alice", kind, 3, sha)
    repos.tag("alice", "failed", 3, sha, message="error: syntax error, unexpected end of file")
    assert tag_message(repos, "alice", "failed/3") == "error: syntax error, unexpected end of file"
    assert repos.deployed_sha("alice") == base and "deployed/3" not in tags(repos, "alice")


@pytest.mark.parametrize("ref", ["main", "v1.0", "abcdef", "a" * 41, "xyz1234", "", None, 1234567, "-abcdef0"])
def test_commit_ref_must_be_a_sha(ref):
    message = refused("bad_argument", Repos.check_commit_ref, ref)
    assert "must be a commit sha" in message and "never a branch or tag name" in message


def test_commit_ref_is_lowercased():
    assert Repos.check_commit_ref("ABCDEF0") == "abcdef0" and Repos.check_commit_ref("a" * 40) == "a" * 40


def test_unknown_and_non_commit_objects_are_not_found(repos):
    proposed = repos.proposed("alice")
    for ref in ("0" * 40, git(proposed, "rev-parse", "HEAD:agent.nix"), git(proposed, "rev-parse", "HEAD^{tree}")):
        refused("not_found", repos.resolve, "alice", ref)
        refused("not_found", repos.pin_proposal, "alice", 4, ref)
    refused("bad_argument", repos.pin_proposal, "alice", 4, "main")
    assert tags(repos, "alice") == ["deployed/0"]


def test_a_commit_on_no_branch_is_not_found(repos):
    proposed = repos.proposed("alice")
    sha = commit(repos, "alice", "# dangling\n")
    git(proposed, "reset", "-q", "--hard", "HEAD~1")
    assert "on no branch" in refused("not_found", repos.pin_proposal, "alice", 5, sha)


def test_tags_the_manager_makes_never_reach_applied(repos):
    sha = commit(repos, "alice", sonnet(repos))
    git(repos.proposed("alice"), "tag", "deployed/99")
    repos.pin_proposal("alice", 6, sha)
    assert tags(repos, "alice") == ["deployed/0", "proposal/6"]


def test_non_fast_forward_deploy_is_refused(repos):
    base = repos.deployed_sha("alice")
    ahead = commit(repos, "alice", sonnet(repos))
    side = commit(repos, "alice", "# a different line of history\n", branch="side")
    repos.pin_proposal("alice", 7, ahead)
    repos.pin_proposal("alice", 8, side)
    repos.deploy("alice", 7, ahead)
    assert "non-fast-forward" in refused("conflict", repos.deploy, "alice", 8, side)
    refused("conflict", repos.deploy, "alice", 9, base)  # no rolling back either
    assert repos.deployed_sha("alice") == ahead
    assert "deployed/8" not in tags(repos, "alice") and "deployed/9" not in tags(repos, "alice")


def test_tagging_again_is_a_no_op_but_moving_a_tag_is_refused(repos):
    base = repos.deployed_sha("alice")
    sha = commit(repos, "alice", sonnet(repos))
    repos.pin_proposal("alice", 10, sha)
    repos.pin_proposal("alice", 10, sha)  # a retry
    assert "already marks" in refused("conflict", repos.tag, "alice", "proposal", 10, base)
    refused("bad_argument", repos.tag, "alice", "merged", 10, sha)
    for bad_id in (-1, "x", True, "1/2", None):
        refused("bad_argument", repos.tag, "alice", "approved", bad_id, sha)


def test_read_refuses_missing_files(repos):
    assert "nope.nix" in refused("not_found", repos.read, "alice", "nope.nix")
    refused("not_found", repos.read, "alice", "agent.nix", rev="0" * 40)
    refused("bad_argument", repos.read, "alice", "agent.nix", repo="elsewhere")
    refused("bad_argument", repos.read, "alice", "agent.nix", rev="--output=/tmp/x")


def test_git_failure_is_a_sentence_naming_the_operation(repos):
    sha = commit(repos, "alice", sonnet(repos))
    repos.pin_proposal("alice", 11, sha)
    open(os.path.join(repos.applied("alice"), ".git", "index.lock"), "w").close()  # a stuck git elsewhere
    message = refused("internal", repos.deploy, "alice", 11, sha)
    assert message.startswith("could not fast-forward alice's applied main") and "index.lock" in message
    assert repos.deployed_sha("alice") != sha


def test_missing_git_is_unavailable(repos, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "git is not installed" in refused("unavailable", repos.read, "alice", "agent.nix")


def test_the_callers_git_environment_is_ignored(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = trunk\n[user]\n\tname = someone\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))  # as inside a git hook
    monkeypatch.setenv("GIT_AUTHOR_NAME", "someone")
    repos = Repos(tmp_path / "repos")
    repos.init_agent("bob")
    monkeypatch.delenv("GIT_DIR")
    assert git(repos.proposed("bob"), "log", "-1", "--format=%an %cn") == "hive-c0re hive-c0re"
    assert repos.deployed_sha("bob") and not os.path.exists(tmp_path / "elsewhere")


@pytest.mark.parametrize("name", ["../x", "a/b", "Alice", "", "x" * 40, None])
def test_bad_names_are_refused(tmp_path, name):
    repos = Repos(tmp_path / "repos")
    for call in (repos.init_agent, repos.purge, repos.deployed_sha, repos.exists):
        refused("bad_argument", call, name)
    refused("bad_argument", repos.read, name, "agent.nix")
    refused("bad_argument", repos.pin_proposal, name, 1, "abcdef0")
    assert not os.path.exists(tmp_path / "repos") and not os.path.exists(tmp_path / "x")


def test_deployed_sha_is_read_without_git_even_when_refs_are_packed(tmp_path, monkeypatch):
    repos = Repos(str(tmp_path / "config"))
    sha = repos.init_agent("packed")
    subprocess.run(["git", "-C", repos.applied("packed"), "pack-refs", "--all"], check=True)
    assert not os.path.exists(os.path.join(repos.applied("packed"), ".git", "refs", "heads", "main"))
    monkeypatch.setenv("PATH", "/nonexistent")  # no git to fork
    assert repos.deployed_sha("packed") == sha


def test_work_tree_commits_only_changes_and_restores_files(tmp_path):
    from hyperhive.core.gitrepos import WorkTree

    tree, path = WorkTree(), str(tmp_path / "meta")
    tree.init(path)
    tree.init(path)  # idempotent
    with open(os.path.join(path, "flake.lock"), "w") as f:
        f.write("v1\n")
    first = tree.commit_all(path, "lock v1")
    assert first and tree.commit_all(path, "nothing new") is None
    with open(os.path.join(path, "flake.lock"), "w") as f:
        f.write("v2 (a failed build)\n")
    tree.restore(path, "flake.lock")
    assert open(os.path.join(path, "flake.lock")).read() == "v1\n"
    os.unlink(os.path.join(path, "flake.lock"))
    second = tree.commit_all(path, "deletions count")
    assert second and second != first
    log = subprocess.run(["git", "-C", path, "log", "--format=%an %s"], capture_output=True, text=True).stdout
    assert log.splitlines() == ["hive-c0re deletions count", "hive-c0re lock v1"]


# -- the manager writes proposed/: the core follows nothing it planted there (issue 14, class 1) ----------

def test_a_proposed_repo_or_its_git_dir_that_is_a_link_is_refused(repos, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    subprocess.run(["git", "init", "-q", str(elsewhere)], check=True)
    os.symlink(elsewhere, repos.proposed("bob"))
    said = refused("forbidden", repos.resolve, "bob", "abcdef0")
    assert "is a symbolic link" in said and repos.proposed("bob") in said
    assert refused("forbidden", repos.init_agent, "bob")
    os.unlink(repos.proposed("bob"))
    repo = repos.proposed("alice")
    os.rename(os.path.join(repo, ".git"), str(tmp_path / "alice.git"))
    with open(os.path.join(repo, ".git"), "w") as f:  # a gitfile: git would read the repo it names
        f.write(f"gitdir: {tmp_path / 'alice.git'}\n")
    assert "gitfile" in refused("forbidden", repos.proposed_main, "alice")


def test_git_never_reads_a_file_the_manager_linked_into_a_proposed_repo(repos, tmp_path):
    """A .git/packed-refs linked to a root-only file: git in place would quote its lines in the error
    the manager gets back. The core reads a copy that refuses the link, so nothing of it is read."""
    secret = tmp_path / "shadow"
    # short lines, as git quotes them (a line of 41 characters or more it reads as a sha and a name)
    secret.write_text("".join(f"{user}:not-for-the-manager:7:::\n" for user in ("root", "daemon", "bin")))
    secret.chmod(0o600)
    refs = os.path.join(repos.proposed("alice"), ".git", "packed-refs")
    os.symlink(secret, refs)
    said = []
    for call in (lambda: repos.read("alice", "hive.json", repo="proposed"), lambda: repos.proposed_main("alice"),
                 lambda: repos.resolve("alice", "abcdef0"), lambda: repos.pin_proposal("alice", 1, "abcdef0")):
        try:
            said.append(("answered", call()))
        except wire.HiveError as e:
            said.append((e.code, str(e)))
    assert not [s for s in said if "not-for-the-manager" in s[1]], said
    assert all(code == "forbidden" and "packed-refs" in text and "symbolic link" in text for code, text in said), said
    os.unlink(refs)
    # alternates (another repo's objects) and the repo's own config are never read at all
    sha = commit(repos, "alice", sonnet(repos))
    info = os.path.join(repos.proposed("alice"), ".git", "objects", "info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "alternates"), "w") as f:
        f.write(os.path.join(repos.applied("alice"), ".git", "objects") + "\n")
    with open(os.path.join(repos.proposed("alice"), ".git", "config"), "a") as f:
        f.write(f"[include]\n\tpath = {secret}\n")
    assert repos.pin_proposal("alice", 1, sha) == sha


def test_new_proposed_repos_are_built_aside_and_handed_to_the_managers_uid(tmp_path):
    owner = (70123, 70123)
    repos = Repos(tmp_path / "repos", proposed_owner=owner)
    planted = tmp_path / "host-file"
    planted.write_text("the host's\n")
    os.makedirs(repos.proposed_root)
    os.symlink(planted, os.path.join(repos.proposed_root, "bob.new"))  # where an older core built it
    repos.init_agent("bob")
    assert planted.read_text() == "the host's\n" and os.stat(planted).st_uid == 0
    for top, dirs, files in os.walk(repos.proposed("bob")):
        for entry in [top, *(os.path.join(top, n) for n in dirs + files)]:
            st = os.lstat(entry)
            assert (st.st_uid, st.st_gid) == owner, entry
    assert os.stat(repos.proposed("bob")).st_mode & 0o777 == 0o755  # the agent reads its own
    assert os.stat(repos.applied("bob")).st_uid == 0  # applied stays the core's
    assert not [e for e in os.listdir(repos.staging)]  # nothing left behind
    assert repos.read("bob", "hive.json", repo="proposed") == repos.read("bob", "hive.json")


def test_an_approvals_diff_is_bounded_whatever_the_manager_commits(repos):
    """The manager writes the proposed repo: a huge file is one "Binary files … differ" line, and many
    files' diff is cut at DIFF_BYTES with a line saying how to see it whole on the host."""
    from hyperhive.core import gitrepos

    repo = repos.proposed("alice")

    def committed(files, message):
        for path, text in files.items():
            with open(os.path.join(repo, path), "w") as f:
                f.write(text)
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", message)
        return git(repo, "rev-parse", "HEAD")

    huge = committed({"huge.txt": "x\n" * gitrepos.DIFF_FILE_BYTES}, "add a huge file")
    repos.pin_proposal("alice", 1, huge)
    diff = repos.diff("alice", huge)
    assert "Binary files /dev/null and b/huge.txt differ" in diff and len(diff) < 2048
    # each under the per-file threshold, together past the whole's bound
    many = committed({f"part{i}.txt": ("y" * 99 + "\n") * 2000 for i in range(12)}, "many parts")
    repos.pin_proposal("alice", 2, many)
    diff = repos.diff("alice", many)
    assert len(diff) < gitrepos.DIFF_BYTES + 1024
    last = diff.rstrip("\n").rsplit("\n", 1)[1]
    assert last.startswith("# … the diff is cut here: ") and f"diff main {many[:12]}` on the host" in last

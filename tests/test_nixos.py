"""The nixos backend and the meta flake, against recording fakes of nixos-container, nix and journalctl.

The fakes (tests/fakebin) check their arguments against the real CLIs'
grammar and keep container state in a JSON file, so these tests see the exact
command lines and what a container would have been built from. One test runs
the generated flake through the real nix when it is installed.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from hyperhive import wire
from hyperhive.core import metaflake
from hyperhive.core.containers import Launch, nixos
from hyperhive.core.gitrepos import WorkTree
from hyperhive.core.metaflake import MetaFlake

FAKEBIN = os.path.join(ROOT, "tests", "fakebin")


class PlainGit:
    """Plain git for the test's own stand-in config repos (the meta flake uses the real WorkTree)."""

    @staticmethod
    def _git(path, *args):
        return subprocess.run(["git", "-C", path, *args], check=True, capture_output=True, text=True).stdout

    def init(self, path):
        self._git(path, "init", "-q", "-b", "main")

    def commit_all(self, path, message):
        self._git(path, "add", "-A")
        if subprocess.run(["git", "-C", path, "diff", "--cached", "--quiet"]).returncode == 0:
            return None
        self._git(path, "commit", "-q", "-m", message)
        return self._git(path, "rev-parse", "HEAD").strip()

    def restore(self, path, relpath):
        self._git(path, "checkout", "HEAD", "--", relpath)


class Hive:
    def __init__(self, tmp):
        self.tmp = tmp
        self.log_path = tmp / "calls.jsonl"
        self.state_path = tmp / "fake-state.json"
        self.conf_dir = tmp / "nixos-containers"
        self.meta = MetaFlake(str(tmp / "meta"), nixos.nix, WorkTree(), system="x86_64-linux")
        self.backend = nixos.NixosBackend(self.meta, conf_dir=str(self.conf_dir))

    # applied config repos
    def applied(self, name):
        return str(self.tmp / "agents" / name / "applied")

    def commit(self, name, text):
        path = self.applied(name)
        if not os.path.isdir(path):
            os.makedirs(path)
            PlainGit().init(path)
        with open(os.path.join(path, "agent.nix"), "w") as f:
            f.write(text)
        return PlainGit().commit_all(path, f"config: {text.strip()}")

    def sync(self, *names):
        return self.meta.sync({n: self.applied(n) for n in names})

    def launch(self, name, config=True):
        home = self.tmp / "agents" / name
        run = self.tmp / "run" / "agents" / name
        run.mkdir(parents=True, exist_ok=True)
        sock = run / "agent.sock"
        sock.touch()
        return Launch(name, "agent", ["unused"], {"HIVE_SOCKET": str(sock)}, str(home / "state"),
                      str(home), str(home / "harness.log"), config_dir=str(home / "proposed") if config else None)

    def up(self, *names):
        for n in names:
            self.commit(n, f"# {n} v1\n")
        self.sync(*names)
        for n in names:
            self.backend.start(self.launch(n))
        self.clear()

    # what the fakes saw
    def calls(self):
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def clear(self):
        if self.log_path.exists():
            self.log_path.unlink()

    def box(self, name):
        return json.loads(self.state_path.read_text())["containers"][f"h-{name}"]

    def lock_bytes(self):
        return (self.tmp / "meta" / "flake.lock").read_bytes()

    def git(self, *args):
        return PlainGit._git(str(self.tmp / "meta"), *args)

    def clean(self):
        return self.git("status", "--porcelain") == ""


def fake_nixos(tmp_path, monkeypatch):
    """A Hive on the nixos backend whose nixos-container, nix and journalctl are tests/fakebin's, keeping
    their calls and state under tmp_path."""
    monkeypatch.setenv("PATH", os.pathsep.join([FAKEBIN, os.path.dirname(sys.executable), os.environ["PATH"]]))
    monkeypatch.setenv("HIVE_FAKE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("HIVE_FAKE_STATE", str(tmp_path / "fake-state.json"))
    monkeypatch.setenv("HIVE_FAKE_CONF_DIR", str(tmp_path / "nixos-containers"))
    monkeypatch.delenv("HIVE_FAKE_FAIL", raising=False)
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "hive test")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "hive@test.invalid")
    return Hive(tmp_path)


@pytest.fixture
def hive(tmp_path, monkeypatch):
    return fake_nixos(tmp_path, monkeypatch)


def fail(monkeypatch, what):
    monkeypatch.setenv("HIVE_FAKE_FAIL", what)


# -- the meta flake --------------------------------------------------------------------------

def test_sync_writes_one_input_per_agent_locks_and_commits(hive):
    sha_a = hive.commit("a", "# a v1\n")
    hive.commit("b", "# b v1\n")
    assert hive.sync("a", "b") is True
    text = (hive.tmp / "meta" / "flake.nix").read_text()
    assert f'"agent-a" = {{ url = "git+file://{hive.applied("a")}"; flake = false; }};' in text
    assert '"b" = nixpkgs.lib.nixosSystem' in text and '"${inputs."agent-b"}/agent.nix"' in text
    assert hive.meta.locked_revs()["agent-a"] == sha_a
    assert hive.git("log", "--format=%s").splitlines() == ["lock new inputs", "sync agents: a, b"]
    assert hive.clean()
    assert hive.sync("a", "b") is False  # nothing changed: no commit, no nix call
    assert hive.git("log", "--format=%s").count("\n") == 2
    assert hive.sync("a") is True and "agent-b" not in hive.meta.locked_revs()
    assert hive.calls() == [["nix", "flake", "lock"]] * 2


def test_names_and_paths_are_checked_where_they_enter(hive):
    for bad in ("../x", "A", "", "x" * 40):
        with pytest.raises(wire.HiveError):
            hive.meta.sync({bad: "/tmp/x"})
        with pytest.raises(wire.HiveError):
            nixos.container(bad)
    with pytest.raises(wire.HiveError, match="characters a flake URL"):
        hive.meta.sync({"a": "/tmp/has space"})
    with pytest.raises(wire.HiveError, match="not valid"):
        hive.backend.build("../etc")
    with pytest.raises(wire.HiveError, match="not valid"):
        hive.backend.journal("a b")
    with pytest.raises(wire.HiveError, match="40-character"):
        hive.meta.prepare("a", rev="main")
    assert hive.calls() == []


def real_nix_or_skip():
    """The real nix on PATH past the fakes, or skip."""
    found = shutil.which("nix", path=os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep) if os.path.abspath(d) != FAKEBIN))
    if found is None:
        pytest.skip("real nix is not installed")
    return found


def test_the_generated_flake_evaluates_with_real_nix(hive, tmp_path, monkeypatch):
    """The flake text is real Nix: locked and evaluated by the real nix, names like `if` included."""
    real_nix = real_nix_or_skip()
    stub = tmp_path / "nixpkgs"
    stub.mkdir()
    (stub / "flake.nix").write_text("""{ outputs = { self }: { lib.nixosSystem = args: {
      inherit (args) system;
      agent = builtins.readFile (builtins.elemAt args.modules 0);
      host = ((builtins.elemAt args.modules 1) { lib.mkDefault = x: x; }).networking.hostName;
    }; }; }\n""")

    def nix(*args, cwd=None):
        done = subprocess.run([real_nix, "--extra-experimental-features", "nix-command flakes", *args],
                              cwd=cwd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise wire.HiveError(done.stderr.strip(), "unavailable")
        return done.stdout

    old = hive.commit("if", "# if v1\n")
    hive.commit("if", "# if v2\n")
    hive.commit("a", "# a v1\n")
    meta = MetaFlake(str(tmp_path / "meta"), nix, WorkTree(), nixpkgs=f"path:{stub}", system="x86_64-linux")
    meta.sync({"if": hive.applied("if"), "a": hive.applied("a")})
    got = json.loads(nix("eval", "--json", f"{meta.path}#nixosConfigurations",
                         "--apply", "cs: builtins.mapAttrs (n: c: [c.system c.agent c.host]) cs"))
    assert got == {"a": ["x86_64-linux", "# a v1\n", "h-a"], "if": ["x86_64-linux", "# if v2\n", "h-if"]}
    # a pinned rev (tagged, not on the checked-out branch) goes into the url and the lock
    PlainGit._git(hive.applied("if"), "tag", "building/1", old)
    PlainGit._git(hive.applied("if"), "reset", "-q", "--hard", "HEAD~1")
    PlainGit._git(hive.applied("if"), "commit", "-q", "--allow-empty", "-m", "move main away")
    agents = meta.agents()
    agents["if"]["rev"] = old
    (tmp_path / "meta" / "flake.nix").write_text(metaflake.render(agents, f"path:{stub}", "x86_64-linux"))
    nix("flake", "lock", cwd=meta.path)
    got = json.loads(nix("eval", "--json", f"{meta.path}#nixosConfigurations", "--apply",
                         "cs: cs.\"if\".agent"))
    assert got == "# if v1\n" and meta.locked_revs()["agent-if"] == old


def test_prepare_refuses_a_second_operation_and_sync_waits_too(hive):
    hive.up("a", "b")
    hive.meta.prepare("a")
    with pytest.raises(wire.HiveError, match="busy rebuilding 'a'") as e:
        hive.meta.prepare("b")
    assert e.value.code == "conflict"
    with pytest.raises(wire.HiveError, match="busy"):
        hive.meta.prepare_all()
    with pytest.raises(wire.HiveError, match="busy"):
        hive.backend.build("b")
    hive.commit("c", "# c\n")
    with pytest.raises(wire.HiveError, match="syncing the agent list must wait"):
        hive.sync("a", "b", "c")
    with pytest.raises(wire.HiveError, match="no such operation"):
        hive.meta.finalize("b", "wrong one")
    assert hive.meta.abort("b") is False
    assert hive.meta.abort("a") is True and hive.clean()
    hive.backend.build("b")  # free again


def test_a_core_that_died_mid_operation_is_rolled_back_at_the_next_sync(hive):
    hive.up("a")
    before = hive.lock_bytes()
    hive.commit("a", "# a v2\n")
    hive.meta.prepare("a")
    assert hive.lock_bytes() != before
    again = MetaFlake(hive.meta.path, nixos.nix, WorkTree(), system="x86_64-linux")  # a restarted core
    assert again.sync({"a": hive.applied("a")}) is False
    assert hive.lock_bytes() == before and hive.clean()
    assert not os.path.exists(os.path.join(hive.meta.path, ".git", "hyperhive-op.json"))


# -- containers ----------------------------------------------------------------------------

def test_start_creates_from_the_meta_flake_and_binds_socket_state_and_config(hive):
    sha = hive.commit("a", "# a v1\n")
    hive.sync("a")
    hive.clear()
    launch = hive.launch("a")
    hive.backend.start(launch)
    meta = hive.meta.path
    assert hive.calls() == [
        ["nix", "flake", "update", "agent-a"],
        ["nixos-container", "create", "h-a", "--flake", f"{meta}#a"],
        ["nixos-container", "start", "h-a"],
    ]
    state = str(hive.tmp / "agents" / "a" / "state")
    config = str(hive.tmp / "agents" / "a" / "proposed")
    conf = (hive.conf_dir / "h-a.conf").read_text()
    assert conf.splitlines()[-1] == (f'EXTRA_NSPAWN_FLAGS="--bind={os.path.dirname(launch.env["HIVE_SOCKET"])}:/run/hyperhive '
                                     f'--bind={state}:/state --bind-ro={config}:/agents/a/config"')
    assert "PRIVATE_NETWORK=0" in conf and "PRIVATE_NETWORK=1" not in conf and f"FLAKE={meta}" in conf
    box = hive.box("a")
    assert box["up"] and not box["private_network"] and box["system"]["rev"] == sha
    assert box["binds"] == [
        {"src": os.path.dirname(launch.env["HIVE_SOCKET"]), "dst": "/run/hyperhive", "ro": False},
        {"src": state, "dst": "/state", "ro": False},
        {"src": config, "dst": "/agents/a/config", "ro": True},
    ]
    # the input was locked at sync and did not move since, so finalize had nothing to commit
    assert hive.git("log", "-1", "--format=%s") == "lock new inputs\n" and hive.clean()
    assert hive.backend.running("a") and hive.backend.names() == ["a"]
    with pytest.raises(wire.HiveError, match="already running") as e:
        hive.backend.start(launch)
    assert e.value.code == "conflict"


def test_a_spawn_on_a_pinned_commit_creates_the_container_from_it_not_head(hive):
    pinned = hive.commit("a", "# a as approved\n")
    hive.commit("a", "# a edited later\n")
    hive.sync("a")
    launch = dataclasses.replace(hive.launch("a"), rev=pinned)
    hive.backend.start(launch)
    assert hive.box("a")["system"]["rev"] == pinned and hive.meta.locked_revs()["agent-a"] == pinned
    assert f"?rev={pinned}&allRefs=1" in (hive.tmp / "meta" / "flake.nix").read_text()
    assert hive.git("log", "-1", "--format=%s") == f"create h-a at {pinned[:12]}\n" and hive.clean()


def test_restart_reuses_the_container_and_rewrites_its_binds(hive):
    hive.up("a")
    hive.backend.stop("a")
    hive.clear()
    hive.backend.start(hive.launch("a", config=False))
    assert hive.calls() == [["nixos-container", "status", "h-a"], ["nixos-container", "start", "h-a"]]
    assert [b["dst"] for b in hive.box("a")["binds"]] == ["/run/hyperhive", "/state"]


def test_bind_paths_nspawn_cannot_carry_are_refused_before_anything_runs(hive):
    hive.commit("a", "# a\n")
    hive.sync("a")
    hive.clear()
    launch = dataclasses.replace(hive.launch("a"), state_dir=str(hive.tmp / "with space"))
    with pytest.raises(wire.HiveError, match="only letters, digits"):
        hive.backend.start(launch)
    launch = hive.launch("a")
    os.unlink(launch.env["HIVE_SOCKET"])
    with pytest.raises(wire.HiveError, match="socket .* does not exist"):
        hive.backend.start(launch)
    assert hive.calls() == []


def test_a_name_too_long_for_nixos_container_is_a_clear_error(hive):
    hive.commit("abcdefghij", "# long\n")
    hive.sync("abcdefghij")
    hive.clear()
    with pytest.raises(wire.HiveError, match="at most 9"):
        hive.backend.start(hive.launch("abcdefghij"))
    assert hive.calls() == []


def test_a_failed_create_leaves_no_container_and_the_old_lock(hive, monkeypatch):
    hive.commit("a", "# a\n")
    hive.sync("a")
    before = hive.lock_bytes()
    hive.clear()
    fail(monkeypatch, "create:h-a")
    with pytest.raises(wire.HiveError) as e:
        hive.backend.start(hive.launch("a"))
    assert "could not create container h-a" in str(e.value) and "services.frobnicate" in str(e.value)
    assert hive.calls()[-1] == ["nixos-container", "destroy", "h-a"]
    assert not (hive.conf_dir / "h-a.conf").exists() and hive.lock_bytes() == before and hive.clean()
    monkeypatch.delenv("HIVE_FAKE_FAIL")
    hive.backend.start(hive.launch("a"))
    assert hive.backend.running("a")


def test_running_status_and_names(hive):
    assert hive.backend.running("a") is False and hive.calls() == []  # no conf: no container, no command
    hive.up("a", "b")
    (hive.conf_dir / "postgres.conf").write_text("PRIVATE_NETWORK=1\n")  # someone else's container
    assert hive.backend.names() == ["a", "b"]
    assert hive.backend.running("a") is True
    hive.backend.stop("b")
    assert hive.backend.running("b") is False
    assert ["nixos-container", "status", "h-a"] in hive.calls()


def test_stop_graceful_terminate_and_kill(hive):
    hive.up("a")
    assert hive.backend.stop("a", graceful=True) is True
    assert hive.calls()[-1] == ["nixos-container", "stop", "h-a"]
    assert hive.backend.stop("a") is False and hive.backend.kill("a") is False
    hive.backend.start(hive.launch("a"))
    hive.clear()
    assert hive.backend.stop("a", graceful=False) is True
    assert hive.calls() == [["nixos-container", "status", "h-a"], ["nixos-container", "terminate", "h-a"]]
    hive.backend.start(hive.launch("a"))
    hive.clear()
    assert hive.backend.kill("a") is True
    assert hive.calls()[-1] == ["nixos-container", "terminate", "h-a"] and not hive.backend.running("a")


def test_a_stop_that_hangs_past_its_timeout_is_terminated(hive, monkeypatch):
    hive.up("a")
    fail(monkeypatch, "stop-hang:h-a")
    assert hive.backend.stop("a", timeout=0.5) is True
    assert [c[1] for c in hive.calls()] == ["status", "stop", "terminate"]
    assert not hive.backend.running("a")


def test_destroy(hive):
    hive.up("a")
    assert hive.backend.destroy("a") is True
    assert hive.calls()[-1] == ["nixos-container", "destroy", "h-a"]
    assert hive.backend.names() == [] and not hive.backend.running("a")
    assert os.path.isdir(hive.tmp / "agents" / "a" / "state")  # the bound state is never touched
    assert hive.backend.destroy("a") is False


def test_journal_reads_the_machine_or_its_unit(hive):
    hive.up("a")
    out = hive.backend.journal("a", lines=5)
    assert hive.calls()[-1] == ["journalctl", "-M", "h-a", "-n", "5", "--no-pager"]
    assert "Started hyperhive harness." in out
    hive.backend.stop("a")
    out = hive.backend.journal("a", lines=50)
    assert hive.calls()[-1] == ["journalctl", "-u", "container@h-a.service", "-n", "50", "--no-pager"]
    assert "Stopped Container 'h-a'." in out
    with pytest.raises(wire.HiveError, match="1 to 10000"):
        hive.backend.journal("a", lines=0)


def test_log_tail_follows_the_journal_by_cursor(hive):
    hive.up("a")
    lines, cursor = hive.backend.log_tail("a", lines=500)
    assert hive.calls()[-1] == ["journalctl", "-M", "h-a", "-n", "500", "--no-pager", "--show-cursor"]
    assert any("Started hyperhive harness." in line for line in lines) and cursor
    assert not any(line.startswith("-- cursor:") for line in lines)
    state = json.loads(hive.state_path.read_text())
    state["journal"]["h-a"].append("harness: a new line")
    hive.state_path.write_text(json.dumps(state))
    more, after = hive.backend.log_tail("a", cursor=cursor)
    assert hive.calls()[-1] == ["journalctl", "-M", "h-a", f"--after-cursor={cursor}", "--no-pager",
                                "--show-cursor"]
    assert len(more) == 1 and more[0].endswith("harness: a new line") and after != cursor
    assert hive.backend.log_tail("a", cursor=after) == ([], after), "nothing new keeps the cursor"


def test_command_failures_are_sentences_with_stderr(hive, monkeypatch):
    hive.up("a")
    hive.backend.stop("a")
    fail(monkeypatch, "start:h-a")
    with pytest.raises(wire.HiveError) as e:
        hive.backend.start(hive.launch("a"))
    assert str(e.value).startswith("could not start container h-a. `nixos-container start h-a` failed (exit 1): ")
    assert "failed to start container" in str(e.value) and e.value.code == "unavailable"


def test_missing_binaries_are_a_clear_error(hive, monkeypatch, tmp_path):
    hive.commit("a", "# a\n")
    only_git = tmp_path / "only-git"
    only_git.mkdir()
    os.symlink(shutil.which("git"), only_git / "git")  # git stays; nixos-container and nix are gone
    monkeypatch.setenv("PATH", str(only_git))
    with pytest.raises(wire.HiveError) as e:
        hive.backend.names()
    assert "`nixos-container` is not on PATH" in str(e.value) and "NixOS host" in str(e.value)
    assert e.value.code == "unavailable"
    with pytest.raises(wire.HiveError, match="`nix` is not on PATH.*Nix 2.19"):
        hive.sync("a")


def test_the_fakes_refuse_what_the_real_clis_refuse(hive):
    def run(*argv):
        return subprocess.run([os.path.join(FAKEBIN, argv[0]), *argv[1:]], capture_output=True, text=True)

    for argv in (["nixos-container", "frobnicate", "h-a"], ["nixos-container", "start"],
                 ["nixos-container", "start", "h-a", "extra"], ["nixos-container", "start", "--flake", "x", "h-a"],
                 ["nixos-container", "create", "h-a", "--bogus"], ["nixos-container", "list", "h-a"],
                 ["nixos-container", "run", "h-a"], ["nixos-container"],
                 ["nix", "flake", "frob"], ["nix", "build"], ["nix", "flake", "update", "--bogus"],
                 ["nix", "flake", "lock", "a", "b"], ["journalctl", "-M"], ["journalctl", "--follow"]):
        done = run(*argv)
        assert done.returncode == 1, (argv, done.stdout)
        assert done.stderr, argv
    assert "Usage: nixos-container list" in run("nixos-container", "frobnicate", "h-a").stderr


# -- builds --------------------------------------------------------------------------------

def test_a_good_build_moves_the_lock_and_commits_it(hive):
    hive.up("a", "b")
    b_before = hive.box("b")["system"]
    sha = hive.commit("a", "# a v2\n")
    hive.backend.build("a")
    assert hive.calls() == [["nix", "flake", "update", "agent-a"],
                            ["nixos-container", "update", "h-a", "--flake", f"{hive.meta.path}#a"]]
    assert hive.meta.locked_revs()["agent-a"] == sha and hive.box("a")["system"]["rev"] == sha
    assert hive.box("b")["system"] == b_before
    assert hive.git("log", "-1", "--format=%s") == "rebuild h-a\n" and hive.clean()
    assert "flake.lock" in hive.git("show", "--name-only", "--format=", "HEAD")


def test_a_build_of_a_pinned_rev_builds_that_rev_not_head(hive):
    hive.up("a")
    old = hive.box("a")["system"]["rev"]
    hive.commit("a", "# a v2\n")
    hive.backend.build("a", rev=old)
    assert f"?rev={old}&allRefs=1" in (hive.tmp / "meta" / "flake.nix").read_text()
    assert hive.meta.agents()["a"]["rev"] == old and hive.box("a")["system"]["rev"] == old
    assert hive.git("log", "-1", "--format=%s") == f"rebuild h-a at {old[:12]}\n" and hive.clean()
    hive.backend.build("a")  # back to following HEAD
    assert "?rev=" not in (hive.tmp / "meta" / "flake.nix").read_text()


def test_a_failing_build_keeps_the_old_lock_and_the_old_container(hive, monkeypatch):
    hive.up("a")
    lock, nix_text, box = hive.lock_bytes(), (hive.tmp / "meta" / "flake.nix").read_bytes(), hive.box("a")
    head = hive.git("rev-parse", "HEAD")
    sha = hive.commit("a", "# a v2 with a typo\n")
    fail(monkeypatch, "update:h-a")
    with pytest.raises(wire.HiveError) as e:
        hive.backend.build("a", rev=sha)
    message = str(e.value)
    assert message.startswith("rebuilding container h-a failed; it keeps its previous configuration")
    assert "services.frobnicate' does not exist" in message and "Traceback" not in message
    assert hive.lock_bytes() == lock and (hive.tmp / "meta" / "flake.nix").read_bytes() == nix_text
    assert hive.box("a") == box and hive.git("rev-parse", "HEAD") == head and hive.clean()
    monkeypatch.delenv("HIVE_FAKE_FAIL")
    hive.backend.build("a")  # nothing left in flight
    assert hive.box("a")["system"]["rev"] == sha


def test_a_failed_reload_puts_the_container_back_on_its_old_system(hive, monkeypatch):
    hive.up("a")
    old = hive.box("a")["system"]
    lock = hive.lock_bytes()
    hive.commit("a", "# a v2\n")
    fail(monkeypatch, "reload:h-a")
    with pytest.raises(wire.HiveError, match="failed to reload container"):
        hive.backend.build("a")
    updates = [c for c in hive.calls() if c[:2] == ["nixos-container", "update"]]
    assert len(updates) == 2  # the failed one, then the rebuild from the restored lock
    assert hive.box("a")["system"] == old and hive.lock_bytes() == lock and hive.clean()


def test_a_failing_prepare_aborts_before_any_build(hive, monkeypatch):
    hive.up("a")
    lock = hive.lock_bytes()
    hive.commit("a", "# a v2\n")
    fail(monkeypatch, "nix:flake update")
    with pytest.raises(wire.HiveError) as e:
        hive.backend.build("a")
    assert str(e.value).startswith("could not update the meta flake's input for 'a'; the meta flake is unchanged.")
    assert "Could not resolve host" in str(e.value)
    assert not [c for c in hive.calls() if c[0] == "nixos-container" and c[1] == "update"]
    assert hive.lock_bytes() == lock and hive.clean()
    monkeypatch.delenv("HIVE_FAKE_FAIL")
    hive.backend.build("a")


def test_update_all_moves_every_input_and_rebuilds_every_container(hive):
    hive.up("a", "b")
    before = hive.meta.locked_revs()
    assert hive.backend.update_all() == ["a", "b"]
    after = hive.meta.locked_revs()
    assert after["nixpkgs"] != before["nixpkgs"]
    assert hive.calls()[0] == ["nix", "flake", "update"]
    assert hive.box("a")["system"]["nixpkgs"] == after["nixpkgs"] == hive.box("b")["system"]["nixpkgs"]
    assert hive.git("log", "-1", "--format=%s") == "update inputs\n" and hive.clean()


def test_update_all_that_fails_on_one_container_rolls_back_all(hive, monkeypatch):
    hive.up("a", "b")
    lock, a_before, b_before = hive.lock_bytes(), hive.box("a")["system"], hive.box("b")["system"]
    head = hive.git("rev-parse", "HEAD")
    fail(monkeypatch, "update:h-b")
    with pytest.raises(wire.HiveError, match="failed at h-b, so every container and the lock were left as before"):
        hive.backend.update_all()
    assert hive.lock_bytes() == lock and hive.git("rev-parse", "HEAD") == head and hive.clean()
    assert hive.box("a")["system"] == a_before and hive.box("b")["system"] == b_before
    updates = [c[2] for c in hive.calls() if c[:2] == ["nixos-container", "update"]]
    assert updates == ["h-a", "h-b", "h-a"]  # a was updated, then put back from the restored lock


def test_prepare_all_failure_and_finalize_of_the_wrong_operation(hive, monkeypatch):
    hive.up("a")
    lock = hive.lock_bytes()
    fail(monkeypatch, "nix:flake update")
    with pytest.raises(wire.HiveError, match="could not update the meta flake's inputs"):
        hive.backend.update_all()
    assert hive.lock_bytes() == lock and hive.clean()
    monkeypatch.delenv("HIVE_FAKE_FAIL")
    hive.meta.prepare_all()
    with pytest.raises(wire.HiveError, match="no such operation"):
        hive.meta.finalize("a", "not this one")
    assert hive.meta.abort(metaflake.ALL) is True and hive.lock_bytes() == lock and hive.clean()


def test_serve_wires_the_backend_to_the_meta_flake_under_the_state_dir(tmp_path):
    backend = nixos.NixosBackend.at(str(tmp_path), WorkTree())
    assert backend.meta.path == str(tmp_path / "meta") and backend.meta.nix is nixos.nix
    assert backend.name == "nixos" and backend.conf_dir == "/etc/nixos-containers"


def test_build_of_a_missing_container_is_not_found(hive):
    hive.commit("a", "# a\n")
    hive.sync("a")
    with pytest.raises(wire.HiveError, match="no container h-a") as e:
        hive.backend.build("a")
    assert e.value.code == "not_found"


# -- the core on this backend ---------------------------------------------------------

def test_the_core_runs_nixos_containers_and_rebuilds_them_on_approval(tmp_path):
    from conftest import Hive as Core, kill_harnesses, wait_until

    fake = tmp_path / "fake"
    fake.mkdir()
    env = {"PATH": f"{FAKEBIN}:{os.environ['PATH']}", "HIVE_FAKE_LOG": str(fake / "calls.jsonl"),
           "HIVE_FAKE_STATE": str(fake / "state.json"), "HIVE_FAKE_CONF_DIR": str(fake / "conf"),
           "HIVE_NIXOS_CONF_DIR": str(fake / "conf")}
    core = Core(tmp_path / "state", env=env, backend="auto")  # auto: nixos-container is on PATH

    def calls():
        with open(fake / "calls.jsonl") as f:
            return [" ".join(json.loads(line)[1:]) for line in f]

    def commit(model):
        repo = os.path.join(core.state_dir, "config", "proposed", "a")
        path = os.path.join(repo, "hive.json")
        config = json.load(open(path))
        config["model"] = model
        with open(path, "w") as f:
            json.dump(config, f)
        # as the manager commits (the repo is its uid's; this test is root, so it says the repo is safe)
        run = lambda *a: subprocess.run(["git", "-c", "safe.directory=*", "-C", repo, *a], check=True,  # noqa: E731
                                        capture_output=True, text=True).stdout.strip()
        run("-c", "user.name=m", "-c", "user.email=m@h", "commit", "-qam", f"model {model}")
        return run("rev-parse", "HEAD")

    meta = os.path.join(core.state_dir, "meta")
    applied = os.path.join(core.state_dir, "config", "applied", "a")
    try:
        core.start()
        assert "Traceback" not in core.log()
        core.call("spawn", name="a")
        wait_until(lambda: "start h-a" in calls(), 20, "h-a to start")
        seen = calls()
        assert f"create h-manager --flake {meta}#manager" in seen and "start h-manager" in seen
        assert f"create h-a --flake {meta}#a" in seen and "start h-a" in seen
        assert core.row("a")["running"]

        sha = commit("sonnet")
        approval = core.agent_call("manager", "request_apply_commit", agent="a", commit_ref=sha,
                                   description="sonnet")["id"]
        assert core.call("approve", id=approval)["approval"]["status"] == "approved"
        assert f"update h-a --flake {meta}#a" in calls()
        log = subprocess.run(["git", "-C", meta, "log", "--format=%s"], capture_output=True, text=True).stdout
        assert f"rebuild h-a at {sha[:12]}" in log
        assert subprocess.run(["git", "-C", applied, "rev-parse", "main"], capture_output=True,
                              text=True).stdout.strip() == sha

        core.stop()  # the next core's nixos-container fails every update of h-a
        core.env["HIVE_FAKE_FAIL"] = "update:h-a"
        core.start()
        wait_until(lambda: core.row("a")["running"], 20, "boot to start h-a again")
        lock = open(os.path.join(meta, "flake.lock"), "rb").read()
        bad = commit("opus")
        approval = core.agent_call("manager", "request_apply_commit", agent="a", commit_ref=bad,
                                   description="opus")["id"]
        answer = core.call("approve", id=approval)["approval"]
        assert answer["status"] == "failed" and "h-a" in answer["note"]
        assert open(os.path.join(meta, "flake.lock"), "rb").read() == lock  # the old lock stays
        assert subprocess.run(["git", "-C", applied, "rev-parse", "main"], capture_output=True,
                              text=True).stdout.strip() == sha  # and the old config
        assert core.row("a")["running"]

        # the manager's `update` is an approval too: nix flake update, every container updated, lock committed
        del core.env["HIVE_FAKE_FAIL"]
        core.stop()
        core.start()
        wait_until(lambda: core.row("a")["running"], 20, "boot to start h-a again")
        update = core.agent_call("manager", "update", description="bump nixpkgs")["id"]
        assert core.call("approve", id=update)["approval"]["status"] == "approved"
        assert "flake update" in calls() and "update h-manager --flake " + meta + "#manager" in calls()
        log = subprocess.run(["git", "-C", meta, "log", "-1", "--format=%s"], capture_output=True, text=True).stdout
        assert "update inputs" in log
    finally:
        core.stop()
        kill_harnesses(core.state_dir)


def test_the_manager_container_gets_every_proposed_repo_writable(hive, tmp_path):
    root = tmp_path / "config" / "proposed"
    for name in ("manager", "a"):
        (root / name).mkdir(parents=True)
    launch = dataclasses.replace(hive.launch("manager", config=False), role="manager", config_dir=str(root))
    flags = hive.backend._binds(launch)
    assert f"--bind={root / 'a'}:/agents/a/config" in flags
    assert f"--bind={root / 'manager'}:/agents/manager/config" in flags
    assert f"--bind={root}:{nixos.MANAGER_CONFIG_IN}" in flags  # its $HIVE_CONFIG_DIR, new agents included
    assert not [f for f in flags if f.startswith("--bind-ro")]


def test_a_link_among_the_binds_is_refused_and_left_out_of_the_managers(hive, tmp_path, caplog):
    """Issue 14, class 1, under nixos: nspawn binds what a link points to, so a proposed repo the manager
    swapped for one is left out of its container (with a sentence), and an agent whose own is one is not
    started; the same for a state dir."""
    root = tmp_path / "config" / "proposed"
    (root / "manager").mkdir(parents=True)
    os.symlink(tmp_path, root / "evil")
    launch = dataclasses.replace(hive.launch("manager", config=False), role="manager", config_dir=str(root),
                                 hidden_dirs=(str(tmp_path),))
    with caplog.at_level("ERROR"):
        flags = hive.backend._binds(launch)
    assert not [f for f in flags if "evil" in f] and f"--bind={root / 'manager'}:/agents/manager/config" in flags
    assert "leaves out evil's proposed config repo" in caplog.text and "symbolic link" in caplog.text
    agent = dataclasses.replace(hive.launch("a"), hidden_dirs=(str(tmp_path),))
    os.makedirs(os.path.dirname(agent.config_dir), exist_ok=True)
    os.symlink(tmp_path, agent.config_dir)  # its proposed repo, swapped for a link
    with pytest.raises(wire.HiveError, match="is a symbolic link") as e:
        hive.backend._binds(agent)
    assert e.value.code == "forbidden"
    agent = dataclasses.replace(hive.launch("b", config=False), hidden_dirs=(str(tmp_path),))
    os.makedirs(os.path.dirname(agent.state_dir), exist_ok=True)
    os.symlink("/", agent.state_dir)
    with pytest.raises(wire.HiveError, match="is a symbolic link"):
        hive.backend._binds(agent)
    assert hive.calls() == []


def test_start_hands_the_agents_dirs_to_its_uid_following_no_link(hive, tmp_path):
    """Issue 14, class 8, under nixos: the harness runs as the agent's uid (harness-base.nix), so its state
    dir becomes that uid's, its socket dir the core's with the agent's group; a link in the state dir
    (planted while it ran as root) keeps pointing at a file that stays root's."""
    from hyperhive.core import trees

    hive.commit("a", "# a\n")
    hive.sync("a")
    launch = dataclasses.replace(hive.launch("a", config=False), hidden_dirs=(str(tmp_path),))
    host_file = tmp_path / "host-file"
    host_file.write_text("the host's\n")
    os.makedirs(launch.state_dir)
    os.symlink(host_file, os.path.join(launch.state_dir, "link"))
    with open(os.path.join(launch.state_dir, "notes.txt"), "w") as f:
        f.write("its own\n")
    hive.backend.start(launch)
    uid, gid = trees.ids("a")
    assert os.stat(launch.state_dir).st_uid == uid
    assert os.stat(os.path.join(launch.state_dir, "notes.txt")).st_uid == uid
    assert os.stat(host_file).st_uid == 0
    sock_dir = os.stat(os.path.dirname(launch.env["HIVE_SOCKET"]))
    assert (sock_dir.st_uid, sock_dir.st_gid, sock_dir.st_mode & 0o7777) == (0, gid, 0o2770)
    assert f"hyperhive.uid = {uid};" in metaflake.render({"a": {"path": "/x"}}, "nixpkgs", "x86_64-linux", source="/s")


# -- the container source: the templates and the pyz in every container ---------------------

def source_dir(where):
    """A container source as the package installs it: hyperhive.pyz and nix/ (a stand-in pyz)."""
    os.makedirs(os.path.join(where, "nix", "templates"))
    with open(os.path.join(where, "hyperhive.pyz"), "wb") as f:
        f.write(b"#!/usr/bin/env python3\nstand-in\n")
    shutil.copy(os.path.join(ROOT, "nix", "python-deps.nix"), os.path.join(where, "nix"))
    for name in nixos.TEMPLATES:
        shutil.copy(os.path.join(ROOT, "nix", "templates", name), os.path.join(where, "nix", "templates"))
    return str(where)


def seeded(name):
    """agent.nix as a new agent's config repo gets it."""
    with open(os.path.join(ROOT, "assets", "templates", "agent.nix")) as f:
        return f.read().replace("{name}", name)


def test_the_meta_flake_adds_the_harness_template_and_the_pyz_from_the_container_source(hive, tmp_path):
    source = source_dir(tmp_path / "share" / "hyperhive")
    meta = MetaFlake(str(tmp_path / "meta"), nixos.nix, WorkTree(), system="x86_64-linux", source=source)
    hive.commit("a", seeded("a"))
    hive.commit("manager", seeded("manager"))
    meta.sync({"a": hive.applied("a"), "manager": hive.applied("manager")})
    text = (tmp_path / "meta" / "flake.nix").read_text()
    assert f'"hyperhive" = {{ url = "path:{source}"; flake = false; }};' in text
    assert '"${inputs."hyperhive"}/nix/templates/agent-base.nix"' in text
    assert '"${inputs."hyperhive"}/nix/templates/manager.nix"' in text
    assert 'hyperhive.name = "a";' in text and 'hyperhive.pyz = "${inputs."hyperhive"}/hyperhive.pyz";' in text
    assert "hyperhive" in meta.locked_revs()
    assert meta.stale("a") and meta.stale("manager")  # never built yet
    with pytest.raises(wire.HiveError, match="characters a flake URL cannot carry"):
        MetaFlake(str(tmp_path / "m2"), nixos.nix, WorkTree(), source=str(tmp_path / "has space"))


def test_the_container_source_must_hold_the_pyz_and_the_templates(tmp_path):
    source = source_dir(tmp_path / "ok")
    assert nixos.check_source(source) == source
    os.unlink(os.path.join(source, "hyperhive.pyz"))
    os.unlink(os.path.join(source, "nix", "templates", "manager.nix"))
    with pytest.raises(wire.HiveError, match=r"has no hyperhive.pyz, nix/templates/manager.nix; point "
                                             r"--container-source at the installed package's share/hyperhive"):
        nixos.check_source(source)
    backend = nixos.NixosBackend.at(str(tmp_path), WorkTree(), source=str(tmp_path / "ok"))
    assert backend.meta.source == str(tmp_path / "ok")


def test_a_container_built_from_an_older_hyperhive_is_rebuilt_before_it_starts(hive, tmp_path):
    old, new = source_dir(tmp_path / "v1"), source_dir(tmp_path / "v2")
    hive.meta = MetaFlake(hive.meta.path, nixos.nix, WorkTree(), system="x86_64-linux", source=old)
    hive.backend = nixos.NixosBackend(hive.meta, conf_dir=str(hive.conf_dir))
    hive.up("a")
    assert not hive.meta.stale("a") and hive.meta.agents()["a"]["source"] == old
    hive.backend.stop("a")
    # the package was upgraded: the restarted core names another source
    meta = MetaFlake(hive.meta.path, nixos.nix, WorkTree(), system="x86_64-linux", source=new)
    backend = nixos.NixosBackend(meta, conf_dir=str(hive.conf_dir))
    assert meta.stale("a")
    hive.clear()
    backend.start(hive.launch("a"))
    calls = [" ".join(c[1:]) for c in hive.calls()]
    assert calls.index(f"update h-a --flake {meta.path}#a") < calls.index("start h-a")
    assert not meta.stale("a") and f"path:{new}" in (tmp_path / "meta" / "flake.nix").read_text()
    assert hive.git("log", "-1", "--format=%s") == "rebuild h-a\n" and hive.clean()
    backend.stop("a")
    hive.clear()
    backend.start(hive.launch("a"))  # up to date now: no rebuild
    assert [c[1] for c in hive.calls()] == ["status", "start"]


def test_a_failed_catch_up_rebuild_still_starts_the_old_system(hive, tmp_path, monkeypatch):
    hive.meta = MetaFlake(hive.meta.path, nixos.nix, WorkTree(), system="x86_64-linux",
                          source=source_dir(tmp_path / "v1"))
    hive.backend = nixos.NixosBackend(hive.meta, conf_dir=str(hive.conf_dir))
    hive.up("a")
    hive.backend.stop("a")
    meta = MetaFlake(hive.meta.path, nixos.nix, WorkTree(), system="x86_64-linux", source=source_dir(tmp_path / "v2"))
    backend = nixos.NixosBackend(meta, conf_dir=str(hive.conf_dir))
    fail(monkeypatch, "update:h-a")
    backend.start(hive.launch("a"))
    assert backend.running("a") and meta.stale("a") and hive.clean()  # it tries again at the next start


def test_harness_env_carries_the_operators_variables_not_the_hosts(hive):
    hive.commit("a", "# a\n")
    hive.sync("a")
    launch = hive.launch("a")
    launch.env.update({"PATH": "/usr/bin", "HOME": "/host/home", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
                       "HIVE_STATE_DIR": "/host/state", "HIVE_CLAUDE_BIN": "/nix/store/abc-claude-code/bin/claude",
                       "ANTHROPIC_API_KEY": 'k"e\\y$HOME`x`', "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/"})
    hive.backend.start(launch)
    path = os.path.join(os.path.dirname(launch.env["HIVE_SOCKET"]), nixos.ENV_FILE)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with open(path) as f:
        assert f.read() == ('ANTHROPIC_API_KEY="k\\"e\\\\y\\$HOME\\`x\\`"\n'
                            'ANTHROPIC_BASE_URL="http://127.0.0.1:9/"\n'
                            'HIVE_CLAUDE_BIN="/nix/store/abc-claude-code/bin/claude"\n')
    assert nixos.container_env({"HIVE_CLAUDE_BIN": "/usr/local/bin/claude"}) == {}  # not in the shared store
    # a HIVE_ variable that names no host path goes in as it is
    assert nixos.container_env({"HIVE_OPERATOR_PRONOUNS": "he/him", "HIVE_SOCKET": "/host/run/a.sock"}) == \
        {"HIVE_OPERATOR_PRONOUNS": "he/him"}
    hive.backend.stop("a")
    launch.env["ANTHROPIC_API_KEY"] = "two\nlines"
    with pytest.raises(wire.HiveError, match="ANTHROPIC_API_KEY into a container: its value spans lines"):
        hive.backend.start(launch)


def test_the_pause_marker_reaches_the_container_read_only(hive):
    hive.commit("a", "# a\n")
    hive.sync("a")
    launch = hive.launch("a")
    launch.env["HIVE_PAUSE_FILE"] = os.path.join(launch.home_dir, "paused")
    hive.backend.start(launch)
    assert {"src": launch.home_dir, "dst": nixos.HOST_DIR_IN, "ro": True} in hive.box("a")["binds"]


def test_the_meta_flake_with_the_templates_evaluates_with_real_nix(hive, tmp_path):
    """The whole chain through the real nix: meta flake → agent.nix + agent-base.nix/manager.nix + the pyz.

    nixpkgs is a stand-in whose nixosSystem is the stub module system of tests/nix, so the result
    is each container's harness unit as the templates render it.
    """
    real_nix = real_nix_or_skip()
    stub = tmp_path / "nixpkgs"
    stub.mkdir()
    for name in ("lib.nix", "pkgs.nix", "eval.nix"):
        shutil.copy(os.path.join(ROOT, "tests", "nix", name), stub)
    (stub / "flake.nix").write_text("""{ outputs = { self }: { lib.nixosSystem = args:
      (import ./eval.nix { modules = args.modules; strict = [ "hyperhive" ]; }).config; }; }\n""")

    def nix(*args, cwd=None):
        done = subprocess.run([real_nix, "--extra-experimental-features", "nix-command flakes", *args],
                              cwd=cwd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise wire.HiveError(done.stderr.strip(), "unavailable")
        return done.stdout

    source = source_dir(tmp_path / "share" / "hyperhive")
    hive.commit("a", seeded("a"))
    hive.commit("manager", seeded("manager"))
    meta = MetaFlake(str(tmp_path / "meta"), nix, WorkTree(), nixpkgs=f"path:{stub}", system="x86_64-linux",
                     source=source)
    meta.sync({"a": hive.applied("a"), "manager": hive.applied("manager")})
    got = json.loads(nix("eval", "--json", f"{meta.path}#nixosConfigurations", "--apply", """cs:
      builtins.mapAttrs (n: c: let h = c.systemd.services.hyperhive-harness; in {
        start = h.serviceConfig.ExecStart; pre = h.serviceConfig.ExecStartPre; env = h.environment;
        host = c.networking.hostName; container = c.boot.isContainer; }) cs"""))
    for name, role in (("a", "agent"), ("manager", "manager")):
        python, pyz, *rest = got[name]["start"].split()
        assert rest == [role, "serve"] and python.endswith("/bin/python")
        assert pyz.startswith("/nix/store/") and pyz.endswith("/hyperhive.pyz")  # the source, copied in
        with open(pyz, "rb") as f:
            assert f.read() == b"#!/usr/bin/env python3\nstand-in\n"
        assert got[name]["env"]["HIVE_NAME"] == name and got[name]["env"]["HIVE_ROLE"] == role
        assert got[name]["host"] == f"h-{name}" and got[name]["container"] is True
        assert got[name]["pre"][0].endswith("/state/hyperhive-model haiku")  # the seeded agent.nix's model
    assert got["manager"]["env"]["HIVE_CONFIG_DIR"] == "/config"
    assert got["a"]["env"]["HIVE_CONFIG_DIR"] == "/agents/a/config"

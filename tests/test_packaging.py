"""hyperhive.pyz as shipped: reproducible, complete, and every role reachable from argv.

Builds the pyz once for the module with the real `build_zipapp.sh` into
tmp, then proves: a second build is byte-identical; every module has an
unchecked-hash pyc beside it and imports from it; the vendored packages
are the pins of requirements.txt and the compiled ones (gevent, greenlet)
are left to the interpreter; `--help` of the pyz and of hyperhive.py names
every role and verb; the symlink names hive-c0re / hive-ag3nt / hive-m1nd
pick their role; the MCP server and the CLI start without gevent, bottle,
peewee, markdown or sh; and `serve --help` carries every row of
settings.SERVE_OPTIONS.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import ENTRY, PYTHON, ROOT
from fakecore import FakeCore, ok, remove_tree, short_tmpdir
from hyperhive import settings

ROLES = ("serve", "agent serve", "agent mcp", "manager serve", "manager mcp")
VERBS = ("list", "status", "send", "inbox", "spawn", "start", "stop", "restart", "rebuild", "kill",
         "destroy", "pause", "resume", "pending", "urls")
VENDORED = ("bottle", "peewee", "docopt", "sh", "markdown")
COMPILED = ("gevent", "greenlet", "zope")
HEAVY = ("gevent", "greenlet", "bottle", "peewee", "markdown", "sh")  # never in the fast-start roles
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


def build(out):
    done = subprocess.run([os.path.join(ROOT, "build_zipapp.sh"), str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    return str(build(tmp_path_factory.mktemp("pyz") / "hyperhive.pyz"))


@pytest.fixture(scope="module")
def names(pyz):
    with zipfile.ZipFile(pyz) as zf:
        return zf.namelist()


def run(*argv, cwd=None, env=None, input=None, timeout=60):
    return subprocess.run(list(argv), cwd=cwd, env=env, input=input, capture_output=True, text=True,
                          timeout=timeout)


def pins():
    """{package: version} of requirements.txt."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return {name.lower(): version for name, version in (line.split("==") for line in lines if line)}


# -- the archive ----------------------------------------------------------------------

def test_two_builds_are_byte_identical(pyz, tmp_path):
    second = build(tmp_path / "again.pyz")
    with open(pyz, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()


def test_every_module_has_an_unchecked_hash_pyc_beside_it(pyz, names):
    sources = [n for n in names if n.endswith(".py") and n != "__main__.py"]
    assert "hyperhive/wire.py" in sources and "hyperhive/harness/turnloop.py" in sources
    for package in VENDORED:
        assert any(n == f"{package}.py" or n.startswith(f"{package}/") for n in sources), package
    missing = [n for n in sources if n + "c" not in names]
    assert missing == []
    assert not any("__pycache__" in n for n in names)
    with zipfile.ZipFile(pyz) as zf:
        for name in sources:
            header = zf.read(name + "c")[:8]
            assert header[:4] == importlib.util.MAGIC_NUMBER, name  # this interpreter's bytecode
            assert int.from_bytes(header[4:8], "little") == 0b01, name  # hash-based, never checked


def test_vendored_packages_are_the_pins_and_compiled_ones_are_left_out(pyz, names):
    wanted = pins()
    with zipfile.ZipFile(pyz) as zf:
        for package in VENDORED:
            [meta] = [n for n in names if re.fullmatch(rf"{package}-[^/]+\.dist-info/METADATA", n, re.I)]
            version = re.search(r"^Version: (\S+)$", zf.read(meta).decode(), re.M).group(1)
            assert version == wanted[package], (package, version)
    for package in COMPILED:
        assert not [n for n in names if n.lower().startswith(package)], package


def test_revision_names_the_commit_it_was_built_from(pyz):
    with zipfile.ZipFile(pyz) as zf:
        revision = zf.read("hyperhive/REVISION").decode()
    assert re.fullmatch(r"[0-9a-f]{12}\n", revision), revision
    # a commit of this repository (HEAD itself may have moved on since the build)
    assert run("git", "cat-file", "-e", revision.strip() + "^{commit}", cwd=ROOT).returncode == 0


def test_modules_import_from_the_pyc(pyz, tmp_path):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import hyperhive.wire, docopt, peewee; "
            "print(hyperhive.wire.__file__, docopt.__file__, peewee.__file__)")
    done = run(PYTHON, "-c", code, pyz, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = done.stdout.split()
    assert files == [os.path.join(pyz, "hyperhive/wire.pyc"), os.path.join(pyz, "docopt.pyc"),
                     os.path.join(pyz, "peewee.pyc")]


# -- --help -----------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["pyz", "hyperhive.py"])
def test_help_names_every_role_and_verb(entry, pyz):
    done = run(PYTHON, pyz if entry == "pyz" else ENTRY, "--help")
    assert done.returncode == 0, done.stderr
    usage_lines = [line.strip() for line in done.stdout.split("Usage:")[1].split("\n\n")[0].splitlines()]
    roles = done.stdout.split("Roles:")[1].split("\n\n")[0]
    for role in ROLES:
        assert re.search(rf"^  {role}  ", roles, re.M), role
        word, _, sub = role.partition(" ")
        assert any(line.startswith(f"hyperhive {word}") and (not sub or sub in line) for line in usage_lines), role
    for verb in VERBS:
        assert f"hyperhive [options] {verb}" in [" ".join(line.split()[:3]) for line in usage_lines], verb


def test_serve_help_carries_every_serve_option(pyz):
    done = run(PYTHON, pyz, "serve", "--help")
    assert done.returncode == 0, done.stderr
    options = done.stdout.split("Options:")[1]
    flat = " ".join(options.split())
    for flag, default, help_text in settings.SERVE_OPTIONS:
        assert re.search(rf"^  {re.escape(flag)}  ", options, re.M), flag
        assert help_text in flat, (flag, help_text)
        if default is not None:
            assert default in flat, (flag, default)


# -- argv[0] picks the role --------------------------------------------------------------

@pytest.fixture(scope="module")
def links(pyz, tmp_path_factory):
    where = tmp_path_factory.mktemp("bin")
    for name in ("hive-c0re", "hive-ag3nt", "hive-m1nd"):
        os.symlink(pyz, where / name)
    return where


@pytest.fixture
def core():
    tmp = short_tmpdir()
    fake = FakeCore(tmp / "hive.sock", {"list": ok(agents=["manager", "x"])})
    yield fake
    fake.stop()
    remove_tree(tmp)


def test_hive_c0re_alone_is_the_admin_cli(links):
    done = run(PYTHON, str(links / "hive-c0re"), "--help")
    assert done.returncode == 0 and "Verbs (one request on the core's admin socket):" in done.stdout


def test_hive_c0re_runs_a_verb(links, core):
    done = run(PYTHON, str(links / "hive-c0re"), "--socket", core.path, "list")
    assert (done.returncode, done.stdout) == (0, "manager\nx\n"), done.stderr
    assert [r["cmd"] for r in core.requests] == ["list"]


def test_hive_c0re_serve_help_is_the_daemon(links):
    done = run(PYTHON, str(links / "hive-c0re"), "serve", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hive-c0re, the core daemon") and "--state-dir DIR" in done.stdout


def test_hive_m1nd_serve_is_the_manager_harness(links, tmp_path):
    done = run(PYTHON, str(links / "hive-m1nd"), "serve", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hive-ag3nt / hive-m1nd, the harness") and "manager serve" in done.stdout
    # without its socket the manager harness refuses; a manager needs no --name (an agent would)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVE_")}
    done = run(PYTHON, str(links / "hive-m1nd"), "serve", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "missing --socket or HIVE_SOCKET" in done.stderr and "--name" not in done.stderr
    done = run(PYTHON, str(links / "hive-ag3nt"), "serve", env=env, cwd=tmp_path)
    assert done.returncode == 2 and "--name or HIVE_NAME" in done.stderr


def test_hive_ag3nt_mcp_answers_initialize_and_reaches_its_socket(links, core):
    lines = [INITIALIZE, {"jsonrpc": "2.0", "method": "notifications/initialized"},
             {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}]
    done = run(PYTHON, str(links / "hive-ag3nt"), "mcp", env=dict(os.environ, HIVE_SOCKET=core.path),
               input="".join(json.dumps(line) + "\n" for line in lines))
    assert done.returncode == 0, done.stderr
    init, call = map(json.loads, done.stdout.splitlines())
    assert init["id"] == 1 and init["result"]["serverInfo"]["name"] == "hyperhive"
    assert init["result"]["protocolVersion"] == "2025-06-18"
    assert call["id"] == 2 and "name: alice" in call["result"]["content"][0]["text"]
    assert [r["cmd"] for r in core.requests] == ["whoami"]


# -- fast start ----------------------------------------------------------------------

def imported(stderr):
    """Top-level module names from `python -X importtime` output."""
    return {line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def full_names(stderr):
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_the_mcp_server_starts_without_the_serving_stack(pyz, core, tmp_path):
    lines = [INITIALIZE, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami"}}]
    done = run(PYTHON, "-X", "importtime", pyz, "agent", "mcp", cwd=tmp_path,
               env=dict(os.environ, HIVE_SOCKET=core.path), input="".join(json.dumps(m) + "\n" for m in lines))
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 2 and "name: alice" in done.stdout
    assert "hyperhive.harness.mcp" in full_names(done.stderr)
    assert imported(done.stderr) & set(HEAVY) == set()


def test_a_cli_verb_starts_without_the_serving_stack(pyz, core, tmp_path):
    done = run(PYTHON, "-X", "importtime", pyz, "--socket", core.path, "list", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "manager\nx\n")
    assert "hyperhive.cli" in full_names(done.stderr)
    assert imported(done.stderr) & set(HEAVY) == set()


def test_the_built_pyz_serves_a_hive_and_runs_its_harnesses(pyz, tmp_path):
    """The same pyz is the core, every harness it starts and their MCP servers."""
    from conftest import Hive, kill_harnesses, wait_until
    from hyperhive.core.containers.bwrap import BwrapBackend

    backend = "bwrap" if BwrapBackend.works()[0] else "process"
    hive = Hive(tmp_path / "state", pyz=str(pyz), backend=backend, env={"ANTHROPIC_API_KEY": "k"},
                extra_args=["--pass-env", "ANTHROPIC_API_KEY"])
    try:
        hive.start()
        hive.call("spawn", name="zed")
        hive.call("send", to="zed", body="FAKE: send operator hello from the pyz")
        wait_until(lambda: "hello from the pyz" in [m["body"] for m in hive.call("inbox")["messages"]], 30,
                   "zed's answer through the pyz's harness and MCP server")
        with open(f"/proc/{hive.harness_pid('zed')}/cmdline", "rb") as f:
            assert str(pyz).encode() in f.read()  # the harness is the pyz too
    finally:
        hive.stop()
        kill_harnesses(hive.state_dir)


def test_assets_travel_inside_the_pyz_and_load_through_the_one_loader(pyz, names, tmp_path):
    for rel in ("assets/prompts/agent.md", "assets/prompts/manager.md", "assets/prompts/claude-settings.json",
                "assets/templates/agent.nix", "assets/templates/hive.json"):
        assert rel in names
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from hyperhive import resources; "
            "assert resources.IN_ZIP; print(json.dumps([resources.text('assets/prompts/agent.md')[:40], "
            "json.loads(resources.text('assets/templates/hive.json'))['model']]))")
    done = run(sys.executable, "-c", code, pyz, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    first, model = json.loads(done.stdout)
    assert first.startswith("You are **{name}**") and model == "haiku"

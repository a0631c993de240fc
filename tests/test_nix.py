"""The nix files: every one parses; the NixOS module and the container templates evaluate (over the
stub in tests/nix/) to the units, files and rules they promise; and the ExecStart the module renders,
run against a built pyz, brings up a core with the rendered settings.
"""

import glob
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from docopt import docopt

from conftest import FAKE_CLAUDE, PYZ, PYZ_PYTHON, ROOT, wait_until
from fakecore import remove_tree, short_tmpdir
from hyperhive import jsonline, settings
from hyperhive.core import daemon
from hyperhive.core.containers import nixos
from hyperhive.core.layout import Layout
from nixstub import container, evaluate, host, modules_expr, nix_string, require_nix, systemd_words

NIX_FILES = sorted({os.path.relpath(p, ROOT) for pattern in ("flake.nix", "nix/**/*.nix", "tests/nix/*.nix")
                    for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)})
PYTHON_PACKAGES = {"gevent", "psycopg2", "bottle", "peewee", "docopt", "sh", "markdown"}
# PyPI ships psycopg2 prebuilt as psycopg2-binary; nixpkgs builds the same module as psycopg2
PYPI_NAMES = {"psycopg2-binary": "psycopg2"}


def requirements():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        names = {line.split("==")[0].strip().lower() for line in f if line.strip() and not line.startswith("#")}
    names = {PYPI_NAMES.get(n, n) for n in names}
    return names - {"greenlet", "zope.event", "zope.interface"}  # gevent's own dependencies


def exec_start(settings_, extra=()):
    return systemd_words(host(settings_, "ev: ev.config.systemd.services.hive-c0re.serviceConfig.ExecStart", extra))


# -- parsing -------------------------------------------------------------------------------

def test_the_nix_files_are_the_ones_we_ship():
    assert {"flake.nix", "nix/package.nix", "nix/python-deps.nix", "nix/modules/hive-c0re.nix",
            "nix/templates/harness-base.nix", "nix/templates/agent-base.nix",
            "nix/templates/manager.nix"} <= set(NIX_FILES)


@pytest.mark.parametrize("path", NIX_FILES + ["assets/templates/agent.nix"])
def test_nix_file_parses(path):
    require_nix()
    done = subprocess.run(["nix-instantiate", "--parse", os.path.join(ROOT, path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- the stub is honest ----------------------------------------------------------------------

def test_the_stub_refuses_what_nixos_would():
    missing = modules_expr(["{ lib, ... }: { config.x = lib.notInTheStub 1; }"], [], "ev: ev.config")
    ok, out = evaluate(missing, check=False)
    assert not ok and "notInTheStub" in out
    ok, out = evaluate(modules_expr(["{ pkgs, ... }: { x = pkgs.notAPackage; }"], [], "ev: ev.config"), check=False)
    assert not ok and "notAPackage" in out
    with pytest.raises(AssertionError, match="services.hyperhive.typo' does not exist"):
        host({"enable": True, "typo": 1})
    with pytest.raises(AssertionError, match="dashboard.port' has a value of the wrong type"):
        host({"enable": True, "dashboard": {"port": "seven"}})
    with pytest.raises(AssertionError, match="every option needs a description"):
        evaluate(modules_expr(["{ lib, ... }: { options.x = lib.mkOption { type = lib.types.str; }; }"], [],
                              "ev: ev.options"))


def leaves(value, path=""):
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in leaves(v, f"{path}.{k}")]
    return [(path, value)]


def test_a_disabled_module_defines_nothing():
    # the stub keeps the names of switched-off settings (their values null), never their values
    config = host({}, "ev: { inherit (ev.config) systemd users networking environment assertions; }")
    assert [(p, v) for p, v in leaves(config) if v is not None] == []
    assert host({"backend": "nixos"}, "ev: ev.config.boot.enableContainers") is False  # NixOS's own default


# -- the host module ---------------------------------------------------------------------------

def test_exec_start_is_python_running_the_pyz_with_flags_the_daemon_accepts():
    argv = exec_start({"enable": True, "passEnv": ["ANTHROPIC_API_KEY"], "extraAgentEnv": {"LANGUAGE": "de"}})
    python, pyz, verb, *flags = argv
    assert python.startswith("/nix/store/") and python.endswith("/bin/python")
    assert pyz.startswith("/nix/store/") and pyz.endswith("-hyperhive-0.1.0/share/hyperhive/hyperhive.pyz")
    assert verb == "serve"
    args = docopt(daemon.__doc__, argv=["serve", *flags])  # exactly what the daemon parses
    assert args["--state-dir"] == "/var/lib/hyperhive" and args["--run-dir"] == "/run/hyperhive"
    assert args["--backend"] == "nixos" and args["--dashboard-port"] == "7000" and args["--listen"] == "127.0.0.1"
    assert args["--claude"].startswith("/nix/store/") and args["--claude"].endswith("-claude-code-2.1.0/bin/claude")
    assert args["--container-source"] == os.path.dirname(pyz)
    assert args["--pass-env"] == ["ANTHROPIC_API_KEY", "LANGUAGE"] and args["--log-level"] == "info"
    used = {f for f in flags if f.startswith("--")}
    assert used <= {flag.split()[0] for flag, _, _ in settings.SERVE_OPTIONS}


def test_the_python_environment_has_what_the_pyz_imports():
    env = host({"enable": True}, "ev: ev.config.services.hyperhive.python.stubPackages")
    assert {p.removeprefix("python3.12-") for p in env} == PYTHON_PACKAGES
    assert PYTHON_PACKAGES == requirements()
    deps = evaluate(f"let pkgs = import {nix_string(ROOT + '/tests/nix/pkgs.nix')} "
                    f"{{ lib = import {nix_string(ROOT + '/tests/nix/lib.nix')}; }}; "
                    f"in map (p: p.pname) (import {nix_string(ROOT + '/nix/python-deps.nix')} pkgs.python3.pkgs)")
    assert {d.removeprefix("python3.12-") for d in deps} == PYTHON_PACKAGES


def test_the_service_unit():
    unit = host({"enable": True, "environmentFile": "/run/secrets/hive.env", "extraAgentEnv": {"X_Y": "z"}},
                "ev: ev.config.systemd.services.hive-c0re")
    service = unit["serviceConfig"]
    assert service["Group"] == "hyperhive" and service["UMask"] == "0007"  # host.sock root:hyperhive 0660
    assert service["KillMode"] == "process" and service["Restart"] == "on-failure"
    assert service["LimitNOFILE"] == 65536  # the core raises its soft limit to this hard one at start
    assert service["EnvironmentFile"] == ["/run/secrets/hive.env"]
    assert service["ProtectHome"] is True and "ProtectSystem" not in service  # nixos-container writes /etc
    assert unit["environment"]["X_Y"] == "z" and unit["wantedBy"] == ["multi-user.target"]
    assert "HIVE_OPERATOR_PRONOUNS" not in unit["environment"]  # unset unless the operator says
    assert host({"enable": True, "operatorPronouns": "she/her"}, "ev: ev.config.systemd.services.hive-c0re"
                )["environment"]["HIVE_OPERATOR_PRONOUNS"] == "she/her"
    assert unit["environment"]["XDG_CACHE_HOME"] == "/var/cache/" + service["CacheDirectory"]
    path = " ".join(unit["path"])
    assert "-git-" in path and "-nixos-container-" in path and "-nix-2." in path and "bubblewrap" not in path
    assert "bubblewrap" in " ".join(host({"enable": True, "backend": "bwrap"},
                                         "ev: ev.config.systemd.services.hive-c0re.path"))


def test_state_sockets_group_and_cli():
    config = host({"enable": True, "adminGroup": "hivers"},
                  "ev: { inherit (ev.config) users environment; rules = ev.config.systemd.tmpfiles.rules; }")
    assert config["users"]["groups"] == {"hivers": {}}
    assert config["rules"] == ["d /var/lib/hyperhive 0700 root root - -", "d /run/hyperhive 0750 root hivers - -",
                               "L+ /var/lib/hyperhive/run - - - - /run/hyperhive"]
    assert config["environment"]["variables"]["HIVE_HOST_SOCKET"] == "/run/hyperhive/host.sock"
    assert config["environment"]["systemPackages"][0].endswith("-hyperhive-0.1.0")
    rules = host({"enable": True, "stateDir": "/srv/hive", "runDir": "/srv/hive/run"},
                 "ev: ev.config.systemd.tmpfiles.rules")
    assert rules == ["d /srv/hive 0700 root root - -", "d /srv/hive/run 0750 root hyperhive - -"]


@pytest.mark.parametrize("dashboard, ports, flag", [
    ({}, [], "7000"),
    ({"listen": "0.0.0.0"}, [7000], "7000"),
    ({"listen": "::", "port": 8080}, [8080], "8080"),
    ({"listen": "0.0.0.0", "openFirewall": False}, [], "7000"),
    ({"listen": "0.0.0.0", "port": 0}, [], "0"),
    ({"listen": "0.0.0.0", "port": None}, [], "off"),
    ({"listen": "127.0.0.2"}, [], "7000"),
    ({"listen": "::1"}, [], "7000"),
])
def test_the_firewall_opens_only_beyond_loopback(dashboard, ports, flag):
    got = host({"enable": True, "dashboard": dashboard},
               "ev: { ports = ev.config.networking.firewall.allowedTCPPorts; "
               "start = ev.config.systemd.services.hive-c0re.serviceConfig.ExecStart; }")
    assert got["ports"] == ports
    argv = systemd_words(got["start"])
    assert argv[argv.index("--dashboard-port") + 1] == flag


def test_assertions_say_what_to_fix():
    def failing(settings_, extra=()):
        found = host(settings_, "ev: ev.config.assertions", extra)
        return [a["message"] for a in found if not a["assertion"]]

    assert failing({"enable": True}) == []
    assert any("may not name HIVE_*" in m for m in failing({"enable": True, "extraAgentEnv": {"HIVE_X": "1"}}))
    assert any("may not name HIVE_*" in m for m in failing({"enable": True, "passEnv": ["PATH"]}))
    old_nix = "({ pkgs, lib, ... }: { nix.package = lib.mkForce (pkgs.nix // { version = \"2.18.9\"; }); })"
    assert any("Nix 2.19 or later" in m for m in failing({"enable": True}, [old_nix]))
    no_containers = "({ lib, ... }: { boot.enableContainers = lib.mkForce false; })"
    assert any("boot.enableContainers" in m for m in failing({"enable": True}, [no_containers]))
    assert any("boot.enableContainers" in m for m in failing({"enable": True, "backend": "auto"},
                                                             ["{ boot.enableContainers = false; }"]))
    assert failing({"enable": True, "backend": "bwrap"}, [no_containers]) == []
    assert any("forge.credentialFile needs forge.url" in m
               for m in failing({"enable": True, "forge": {"credentialFile": "/run/secrets/forge"}}))


def test_the_forge_and_the_domain_reach_the_daemon_and_stay_off_unless_set():
    flags = exec_start({"enable": True, "domain": "hive.example.org",
                        "forge": {"url": "https://forge.example.org/hive", "credentialFile": "/run/secrets/forge"}})[3:]
    args = docopt(daemon.__doc__, argv=["serve", *flags])
    assert args["--domain"] == "hive.example.org" and args["--forge-url"] == "https://forge.example.org/hive"
    assert args["--forge-credential-file"] == "/run/secrets/forge", "a string: the secret stays out of the store"
    off = exec_start({"enable": True})
    assert not {"--domain", "--forge-url", "--forge-credential-file"} & set(off)


def test_the_database_and_the_node_reach_the_daemon_and_stay_off_unless_set():
    off = exec_start({"enable": True})
    assert not {"--database", "--node"} & set(off), "null: serve's own defaults, hive.db and the host's name"
    args = docopt(daemon.__doc__, argv=["serve", *off[3:]])
    assert args["--database"] is None and args["--node"] is None
    for database in ("postgresql://hyperhive@db.example/hyperhive",
                     "postgresql://hyperhive@/hyperhive?host=/run/postgresql",  # the socket: & ? / quoted right
                     "postgresql://hyperhive@db.example:5433/hyperhive?sslmode=require&connect_timeout=10",
                     "postgresql://hyperhive@%2Frun%2Fpostgresql/hyperhive",  # % is a specifier to systemd
                     "sqlite:///srv/$HOME/hive.db"):  # and $ a variable
        argv = exec_start({"enable": True, "database": database, "node": "builder-1"})
        args = docopt(daemon.__doc__, argv=["serve", *argv[3:]])  # exactly what the daemon parses
        assert (args["--database"], args["--node"]) == (database, "builder-1")


POSTGRESQL = "{ services.postgresql.enable = true; }"
ORDER = "ev: { inherit (ev.config.systemd.services.hive-c0re) after wants; }"


@pytest.mark.parametrize("database, local, waits", [
    ("postgresql://hyperhive@/hyperhive?host=/run/postgresql", True, True),
    ("postgresql://hyperhive@db.example/hyperhive", True, True),  # the host's own server, for all we know
    ("postgresql://hyperhive@db.example/hyperhive", False, False),
    ("sqlite:///srv/hive/hive.db", True, False),
    (None, True, False),
])
def test_the_core_waits_for_the_hosts_postgresql_only_when_its_database_is_one(database, local, waits):
    unit = host({"enable": True, "database": database}, ORDER, [POSTGRESQL] if local else [])
    # 25.11's postgresql.target is reached once ensureUsers and ensureDatabases are done; 25.05 has only the service
    ours = ["postgresql.service", "postgresql.target"]
    assert [u for u in unit["after"] if u.startswith("postgresql")] == (ours if waits else [])
    assert unit["wants"] == (ours if waits else [])
    assert "network.target" in unit["after"]


def test_the_password_file_is_named_to_libpq_and_never_enters_the_store():
    settings_ = {"enable": True, "database": "postgresql://hyperhive@db.example/hyperhive",
                 "databasePasswordFile": "/run/secrets/hyperhive-pgpass"}
    unit = host(settings_, "ev: ev.config.systemd.services.hive-c0re")
    assert unit["environment"]["PGPASSFILE"] == "/run/secrets/hyperhive-pgpass"
    assert "pgpass" not in unit["serviceConfig"]["ExecStart"]
    assert "PGPASSFILE" not in host({"enable": True, "database": settings_["database"]},
                                    "ev: ev.config.systemd.services.hive-c0re.environment")
    with pytest.raises(AssertionError, match="databasePasswordFile' has a value of the wrong type"):
        host({"enable": True}, "ev: builtins.typeOf ev.config.services.hyperhive.databasePasswordFile",
             ["{ services.hyperhive.databasePasswordFile = /etc/pgpass; }"])  # a path literal is copied into the store


@pytest.mark.parametrize("settings_, refused", [
    ({"database": "postgresql://hyperhive:s3cret@db.example/hyperhive"}, "database has a password in it"),
    ({"database": "postgresql://hyperhive:@db.example/hyperhive"}, "database has a password in it"),
    ({"database": "postgresql://db.example/hyperhive?sslmode=require&password=s3cret"}, "database has a password in it"),
    ({"database": "postgresql://hyperhive@db.example:5432/hyperhive?host=/run/postgresql"}, None),
    ({"database": "postgresql://[::1]:5432/hyperhive"}, None),
    ({"database": "sqlite:///srv/a:b@c/hive.db"}, None),
    ({"databasePasswordFile": "/run/secrets/pgpass"}, "databasePasswordFile needs a postgresql:// database"),
    ({"database": "sqlite:///srv/hive.db", "databasePasswordFile": "/run/secrets/pgpass"},
     "databasePasswordFile needs a postgresql:// database"),
])
def test_a_password_stays_out_of_the_database_url(settings_, refused):
    found = host({"enable": True, **settings_}, "ev: ev.config.assertions")
    failing = [a["message"] for a in found if not a["assertion"]]
    assert [refused in m for m in failing] == ([] if refused is None else [True]), failing


def test_the_claude_engine_options_reach_the_daemon_with_the_defaults_serve_has():
    def engine(config):
        args = docopt(daemon.__doc__, argv=["serve", *exec_start(config)[3:]])
        return daemon.engine_env(args)
    defaults = engine({"enable": True})
    assert defaults == daemon.engine_env(docopt(daemon.__doc__, argv=["serve"])), "the module and serve agree"
    assert defaults["HIVE_CLAUDE_MODE"] == "session"
    chosen = engine({"enable": True, "claude": {"mode": "spawn", "hangSeconds": 60,
                                                "recycle": {"turns": 5, "rssMb": 512, "idleSeconds": 600}}})
    assert chosen == {"HIVE_CLAUDE_MODE": "spawn", "HIVE_HANG_SECONDS": "60", "HIVE_RECYCLE_TURNS": "5",
                      "HIVE_RECYCLE_RSS_MB": "512", "HIVE_RECYCLE_IDLE": "600"}
    with pytest.raises(AssertionError, match="claude.mode' has a value of the wrong type"):
        exec_start({"enable": True, "claude": {"mode": "forever"}})
    with pytest.raises(AssertionError, match="claude.hangSeconds' has a value of the wrong type"):
        exec_start({"enable": True, "claude": {"hangSeconds": 0}})


CONTAINERS = ("ev: { on = ev.config.boot.enableContainers; "
              "failing = map (a: a.message) (builtins.filter (a: !a.assertion) ev.config.assertions); }")


@pytest.mark.parametrize("backend", [{}, {"backend": "nixos"}, {"backend": "auto"}])
def test_a_container_backend_turns_nixos_containers_on(backend):
    # NixOS 25.11 turns them on only for a host with `containers` of its own, and the core's are not
    assert host({"enable": True, **backend}, CONTAINERS) == {"on": True, "failing": []}


@pytest.mark.parametrize("backend", ["bwrap", "process"])
def test_the_other_backends_leave_nixos_containers_to_the_host(backend):
    assert host({"enable": True, "backend": backend}, CONTAINERS) == {"on": False, "failing": []}
    declared = "{ containers.web = { }; }"
    assert host({"enable": True, "backend": backend}, CONTAINERS, [declared]) == {"on": True, "failing": []}


# -- the container templates -----------------------------------------------------------------

def harness(base, name, settings_=None, **kwargs):
    return container(base, name, settings_, "ev: ev.config.systemd.services.hyperhive-harness", **kwargs)


def test_the_harness_unit_runs_the_pyz_in_its_role():
    agent = harness("agent-base.nix", "alice")
    manager = harness("manager.nix", "manager")
    assert agent["serviceConfig"]["ExecStart"].endswith(" /nix/store/stub-source/hyperhive.pyz agent serve")
    assert manager["serviceConfig"]["ExecStart"].endswith(" /nix/store/stub-source/hyperhive.pyz manager serve")
    assert shlex.split(agent["serviceConfig"]["ExecStart"])[0].endswith("-env-0/bin/python")
    assert agent["serviceConfig"]["KillMode"] == "mixed" and agent["wantedBy"] == ["multi-user.target"]
    assert manager["environment"]["GIT_AUTHOR_NAME"] and "GIT_AUTHOR_NAME" not in agent["environment"]
    own = harness("agent-base.nix", "alice", extra=["({ pkgs, ... }: { hyperhive.claudePackage = pkgs.claude-code; })"])
    assert own["serviceConfig"]["ExecStart"].endswith("agent serve --claude " + own["path"][-1] + "/bin/claude")


def test_the_harness_unit_leaves_nothing_behind_and_comes_back_by_itself():
    # what the process and bwrap backends promise, as systemd keeps it inside the container
    for base, name in (("agent-base.nix", "alice"), ("manager.nix", "manager")):
        service = harness(base, name)["serviceConfig"]
        # mixed: a stop's SIGTERM reaches the harness alone (it finishes its turn); whatever is
        # left in the unit's cgroup once it exits -- on its own, killed, or stopped -- is
        # SIGKILLed before the unit starts again. A process cannot leave its cgroup.
        assert service["KillMode"] == "mixed"
        assert "SendSIGKILL" not in service  # systemd's default, yes: the leftovers are killed, not asked
        # a harness that died on its own is started again (systemd's own backoff is RestartSec)
        assert service["Restart"] == "always" and service["RestartSec"] == 2


def test_the_harness_environment_matches_the_backends_bind_mounts():
    """Where nixos.py binds the host's directories in is where the templates point the harness."""
    for base, name in (("agent-base.nix", "alice"), ("manager.nix", "manager")):
        unit = harness(base, name)
        env = unit["environment"]
        layout = Layout("/x")
        assert env["HIVE_SOCKET"] == f"{nixos.SOCKET_DIR_IN}/{os.path.basename(layout.socket(name))}"
        assert env["HIVE_STATE_DIR"] == env["HOME"] == nixos.STATE_IN
        assert env["HIVE_SHARED_DIR"] == nixos.SHARED_IN
        config = nixos.MANAGER_CONFIG_IN if name == "manager" else nixos.CONFIG_IN.format(name=name)
        assert env["HIVE_CONFIG_DIR"] == config
        assert env["HIVE_PAUSE_FILE"] == f"{nixos.HOST_DIR_IN}/{os.path.basename(layout.pause_marker(name))}"
        assert env["HIVE_NAME"] == name and env["HIVE_ROLE"] == ("manager" if name == "manager" else "agent")
        assert env["HIVE_EXTRA_MCP"] == "/etc/hyperhive/extra-mcp.json"
        assert env["HIVE_PERMISSIONS"] == "/etc/hyperhive/permissions.json"
        assert unit["serviceConfig"]["EnvironmentFile"] == f"-{nixos.SOCKET_DIR_IN}/{nixos.ENV_FILE}"
        assert unit["serviceConfig"]["WorkingDirectory"] == nixos.STATE_IN


def test_the_harness_runs_as_an_unprivileged_user_whose_uid_the_core_hands_its_dirs_to():
    """Issue 14, class 8, under nixos: the harness is the container's user `hive`, never root, with the uid
    (and gid) the meta flake sets from the agent's name: the same number on the host, where the core hands
    the agent's state and socket dirs to it."""
    from hyperhive.core import trees

    for base, name in (("agent-base.nix", "alice"), ("manager.nix", "manager")):
        uid, gid = trees.ids(name)
        service = harness(base, name)["serviceConfig"]
        assert (service["User"], service["Group"]) == ("hive", "hive")
        users = container(base, name, select="ev: { u = ev.config.users.users.hive; g = ev.config.users.groups.hive; }")
        assert users["u"]["uid"] == uid and users["u"]["group"] == "hive" and users["u"]["isSystemUser"] is True
        assert users["g"]["gid"] == gid and uid != 0
    ok, out = container("agent-base.nix", "alice", {"hyperhive": {"uid": 0}}, "ev: ev.config.users", check=False)
    assert not ok and "hyperhive.uid" in out  # root is never one


def test_extra_mcp_servers_are_written_as_the_harness_reads_them(tmp_path):
    from hyperhive.harness.claude import load_extra_mcp

    servers = {"notes": {"command": "/nix/store/x-notes/bin/notes", "args": ["--dir", "/state/notes"],
                         "env": {"NOTES_MODE": "ro"}, "allowedTools": ["read_*", "search"]},
               "bare": {"command": "/bin/true"}}
    etc = container("agent-base.nix", "alice", {"hyperhive": {"extraMcpServers": servers}},
                    "ev: ev.config.environment.etc")
    path = tmp_path / "extra-mcp.json"
    path.write_text(etc["hyperhive/extra-mcp.json"]["text"])
    expected = {"notes": servers["notes"], "bare": {"command": "/bin/true", "args": [], "env": {}, "allowedTools": []}}
    assert json.loads(path.read_text()) == expected
    assert load_extra_mcp(str(path)) == expected
    none = container("agent-base.nix", "alice", select="ev: ev.config.environment.etc")
    assert json.loads(none["hyperhive/extra-mcp.json"]["text"]) == {}


def test_the_permission_policy_is_written_as_the_harness_reads_it(tmp_path):
    from hyperhive import permissions

    policy = {"allow": ["Read", "Bash(git status:*)"], "ask": ["Bash(git push:*)"],
              "deny": ["WebFetch(domain:example.com)"]}
    for base, name in (("agent-base.nix", "alice"), ("manager.nix", "manager")):
        etc = container(base, name, {"hyperhive": {"permissions": policy}}, "ev: ev.config.environment.etc")
        path = tmp_path / f"{name}.json"
        path.write_text(etc["hyperhive/permissions.json"]["text"])
        assert permissions.load(str(path)).to_json() == policy
        assert permissions.load(str(path)).decide("Bash", {"command": "git push"}).verdict == "ask"
    partial = container("agent-base.nix", "alice", {"hyperhive": {"permissions": {"ask": ["Bash"]}}},
                        "ev: ev.config.environment.etc")
    assert json.loads(partial["hyperhive/permissions.json"]["text"]) == {"allow": [], "ask": ["Bash"], "deny": []}
    none = container("agent-base.nix", "alice", select="ev: ev.config.environment.etc")
    assert json.loads(none["hyperhive/permissions.json"]["text"]) == {"allow": [], "ask": [], "deny": []}
    ok, out = container("agent-base.nix", "alice", {"hyperhive": {"permissions": {"alow": ["Read"]}}},
                        "ev: ev.config.hyperhive.permissions", check=False)
    assert not ok and "hyperhive.permissions.alow' does not exist" in out
    ok, out = container("agent-base.nix", "alice", {"hyperhive": {"permissions": {"ask": "Bash"}}},
                        "ev: ev.config.environment.etc", check=False)
    assert not ok and "hyperhive.permissions.ask' has a value of the wrong type" in out


def test_extra_mcp_servers_refuse_the_hives_own_name_and_unknown_keys():
    found = container("agent-base.nix", "alice", {"hyperhive": {"extraMcpServers": {"hyperhive": {"command": "x"}}}},
                      "ev: ev.config.assertions")
    assert [a["message"] for a in found if not a["assertion"]] == [
        "hyperhive.extraMcpServers.hyperhive: the key `hyperhive` is the hive's own MCP server; pick another."]
    typo = {"hyperhive": {"extraMcpServers": {"x": {"command": "x", "cmd": 1}}}}
    ok, out = container("agent-base.nix", "alice", typo, "ev: ev.config.environment.etc", check=False)
    assert not ok and "hyperhive.extraMcpServers.x.cmd' does not exist" in out
    ok, out = container("agent-base.nix", "Alice!", select="ev: ev.config.systemd", check=False)
    assert not ok and "hyperhive.name' has a value of the wrong type" in out


def test_a_new_agents_config_evaluates_with_its_container_template(tmp_path):
    """assets/templates/agent.nix, as a new agent's repo is seeded, sets options the templates declare."""
    with open(os.path.join(ROOT, "assets", "templates", "agent.nix")) as f:
        (tmp_path / "agent.nix").write_text(f.read().replace("{name}", "alice"))
    unit = harness("agent-base.nix", "alice", extra=[nix_string(str(tmp_path / "agent.nix"))])
    assert unit["serviceConfig"]["ExecStartPre"][0].endswith(" /state/hyperhive-model haiku")


def test_the_model_fallback_is_written_only_when_no_model_is_set(tmp_path):
    pre = harness("agent-base.nix", "alice", {"hyperhive": {"model": "sonnet[1m]"}})["serviceConfig"]["ExecStartPre"]
    argv = shlex.split(pre[0])  # no quotes, % or $ inside: systemd splits it the same way
    model = tmp_path / "hyperhive-model"
    argv = [sys.executable] + [str(model) if a == "/state/hyperhive-model" else a for a in argv[1:]]
    subprocess.run(argv, check=True, timeout=30)
    assert model.read_text() == "sonnet[1m]\n"
    model.write_text("opus\n")  # the core's or the operator's choice stays
    subprocess.run(argv, check=True, timeout=30)
    assert model.read_text() == "opus\n"
    assert harness("agent-base.nix", "alice")["serviceConfig"]["ExecStartPre"] == []


# -- the flake -----------------------------------------------------------------------------

def test_the_flake_exposes_the_package_the_module_and_the_templates():
    lib = nix_string(ROOT + "/tests/nix/lib.nix")
    pkgs = nix_string(ROOT + "/tests/nix/pkgs.nix")
    got = evaluate(f"""let
      lib = import {lib};
      pkgs = import {pkgs} {{ inherit lib; }};
      nixpkgs = {{ inherit lib; legacyPackages = {{ x86_64-linux = pkgs; aarch64-linux = pkgs; }}; }};
      flake = import {nix_string(ROOT + '/flake.nix')};
      out = flake.outputs {{ self = out; inherit nixpkgs; }};
    in {{
      inputs = flake.inputs.nixpkgs.url;
      package = out.packages.x86_64-linux.default.name;
      modules = builtins.mapAttrs (n: m: toString m) out.nixosModules;
    }}""")
    assert got["package"] == "hyperhive-0.1.0" and got["inputs"].startswith("github:NixOS/nixpkgs")
    assert got["modules"] == {
        "default": os.path.join(ROOT, "nix/modules/hive-c0re.nix"),
        "hive-c0re": os.path.join(ROOT, "nix/modules/hive-c0re.nix"),
        "harness-base": os.path.join(ROOT, "nix/templates/harness-base.nix"),
        "agent-base": os.path.join(ROOT, "nix/templates/agent-base.nix"),
        "manager": os.path.join(ROOT, "nix/templates/manager.nix"),
    }


# -- the rendered ExecStart, run ----------------------------------------------------------------

@pytest.fixture(scope="module")
def built_pyz():
    """The pyz this run built (conftest), which the module's store path stands for."""
    return PYZ


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_rendered_exec_start_runs_a_core(built_pyz, tmp_path):
    """The module's command line, with the stub's store paths swapped for this run's pyz and its runtime Python."""
    require_nix()
    tmp = short_tmpdir()  # the run dir holds sockets: keep its path short
    state, run = str(tmp / "state"), str(tmp / "run")
    port = free_port()
    unit = host({"enable": True, "stateDir": state, "runDir": run, "backend": "process",
                 "dashboard": {"port": port}, "logLevel": "debug", "operatorPronouns": "they/them",
                 "extraAgentEnv": {"HYPERHIVE_TEST_VAR": "from the module"}},
                "ev: ev.config.systemd.services.hive-c0re")
    argv = systemd_words(unit["serviceConfig"]["ExecStart"])
    python, pyz = argv[0], argv[1]
    swap = {python: PYZ_PYTHON, pyz: built_pyz, os.path.dirname(pyz): os.path.dirname(built_pyz)}
    claude = argv[argv.index("--claude") + 1]
    swap[claude] = FAKE_CLAUDE
    argv = [swap.get(a, a) for a in argv]
    assert not [a for a in argv if a.startswith("/nix/store/")], argv
    env = dict(os.environ, **unit["environment"])
    log = tmp / "core.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    host_sock = os.path.join(run, "host.sock")

    def answers():
        if proc.poll() is not None:
            raise AssertionError(f"the core exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return "manager" in jsonline.call(host_sock, "list", timeout=10)["agents"]
        except jsonline.Unreachable:
            return False

    try:
        wait_until(answers, 30, f"the core to answer on {host_sock}")
        assert oct(os.stat(host_sock).st_mode & 0o777) == "0o660"
        assert os.path.isdir(os.path.join(state, "agents", "manager"))  # state where rendered

        def dashboard():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            except urllib.error.HTTPError:
                return True  # it answered (the shell wants a login)
            except OSError:
                return False
            return True

        wait_until(dashboard, 20, f"the dashboard on the rendered port {port}")
        pidfile = os.path.join(state, "agents", "manager", "harness.pid")
        wait_until(lambda: os.path.exists(pidfile), 20, "the manager's harness")
        with open(pidfile) as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        assert b"HYPERHIVE_TEST_VAR=from the module\0" in environ  # extraAgentEnv reached the harness
        assert b"HIVE_OPERATOR_PRONOUNS=they/them\0" in environ  # and the operator's pronouns
        assert jsonline.call(os.path.join(run, "manager", "manager.sock"), "whoami",
                             timeout=10)["operator_pronouns"] == "they/them"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        text = log.read_text()
        remove_tree(tmp)
    assert code == 0, text
    assert "hive-c0re INFO stopped" in text and "backend process" in text


def test_service_flags_are_daemon_options():
    """Checked on the text too, so a machine without nix still holds the module to the daemon's flags."""
    with open(os.path.join(ROOT, "nix", "modules", "hive-c0re.nix")) as f:
        module = f.read()
    used = set(re.findall(r'"(--[a-z-]+)"', module))
    known = {flag.split()[0] for flag, _, _ in settings.SERVE_OPTIONS}
    assert used and used <= known, used - known

"""The bwrap backend: harnesses in a bubblewrap sandbox, proven from inside the sandbox.

A real core daemon runs with the bwrap backend (registered by a test-only
start script, so these tests do not depend on `containers.BACKENDS` listing
it). Agents named probe* run a small Python probe instead of the harness: it
tries what an agent must and must not be able to do, writes what happened to
its own state dir, then keeps reporting whether its pause marker exists and
whether its socket answers, until SIGTERM. Other agents run the real harness
with the fake claude.

Skipped, with the reason, where bwrap cannot make a sandbox; HIVE_REQUIRE_BWRAP=1
turns that into a failure (CI on a host that must have it).
"""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from conftest import FAKE_CLAUDE, PYTHON, PYZ, PYZ_PYTHON, ROOT, Hive, kill_harnesses, wait_until
from hyperhive import wire
from hyperhive.core.containers import Launch
from hyperhive.core import trees
from hyperhive.core.containers.bwrap import INIT, BwrapBackend, command, descendants, inside
from hyperhive.core.containers.sandbox import NAMESPACES, Sandbox, sandbox_argv
from hyperhive.core.layout import Layout

WORKS, WHY = BwrapBackend.works()

# The core, with the bwrap backend registered and probe* agents running PROBE.
DAEMON = r"""
import dataclasses, os, sys, zipimport
# the core under test is the built pyz's, patched as its __main__ patches the core; its harnesses
# run the pyz too
sys.path.insert(0, %(pyz)r)
entry = {"__name__": "hyperhive_entry"}
exec(zipimport.zipimporter(%(pyz)r).get_code("__main__"), entry)
profile = entry["resolve"]("hyperhive.pyz", ["serve"])[1]
from gevent import monkey
monkey.patch_all(**entry["PATCHES"][profile])
from hyperhive.core import containers, lifecycle
from hyperhive.core.containers.bwrap import BwrapBackend
containers.BACKENDS["bwrap"] = BwrapBackend
probes = os.environ.get("HIVE_TEST_PROBES", "").split(",")
_launch = lifecycle.Lifecycle.launch
def launch(self, agent, *args, **kwargs):
    l = _launch(self, agent, *args, **kwargs)
    if agent.name.startswith("probe") or agent.name in probes:
        l = dataclasses.replace(l, argv=[l.argv[0], "-c", os.environ["HIVE_TEST_PROBE"]])
    return l
lifecycle.Lifecycle.launch = launch
from hyperhive.core import daemon
sys.exit(daemon.main(sys.argv[1:]))
""" % {"pyz": PYZ}

# Runs inside the sandbox as an agent's "harness". Paths follow the core's Layout.
PROBE = r"""
import json, os, signal, socket, subprocess, sys, time
state = os.environ["HIVE_STATE_DIR"]
me = os.environ["HIVE_NAME"]
root = os.path.dirname(os.path.dirname(os.path.dirname(state)))
run = os.path.join(root, "run")
config = os.environ.get("HIVE_CONFIG_DIR", "")

def put(name, value):
    tmp = os.path.join(state, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, os.path.join(state, name))

def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}

def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")[:100]

def write(path):
    with open(path, "w") as f:
        f.write("x")
    return "written"

def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(path)
    finally:
        s.close()
    return "connected"

def whoami():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(os.environ["HIVE_SOCKET"])
        s.sendall(b'{"cmd":"whoami"}\n')
        return json.loads(s.makefile("rb").readline())
    finally:
        s.close()

def same_core_pattern():
    path = "/proc/sys/kernel/core_pattern"
    value = read(path)
    with open(path, "w") as f:
        f.write(value)  # the value it already has: harmless should the write ever go through
    return "written"

def beside_the_interpreter():
    path = os.path.join(os.path.dirname(sys.executable), ".bwrap-probe-leak")
    try:
        return write(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)

def unshare_user():
    code = ("import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
            "sys.exit(0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno())")
    done = subprocess.run([sys.executable, "-c", code])
    if done.returncode:
        raise OSError(done.returncode, os.strerror(done.returncode))
    return "a user namespace of its own"

def user_name():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name

def request(verb, **args):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    try:
        s.connect(os.environ["HIVE_SOCKET"])
        s.sendall(json.dumps(dict(args, cmd=verb)).encode() + b"\n")
        return json.loads(s.makefile("rb").readline())
    finally:
        s.close()

sock_dir = os.path.dirname(os.environ["HIVE_SOCKET"])
plant = os.environ.get("HIVE_TEST_PLANT")  # the manager plants a link among the proposed repos
if plant and os.environ.get("HIVE_ROLE") == "manager" and not os.path.lexists(os.path.join(config, "evil")):
    os.symlink(plant, os.path.join(config, "evil"))
exfil = os.environ.get("HIVE_TEST_EXFIL")  # ... or in its own repo's .git, then asks the core to read it
if exfil and os.environ.get("HIVE_ROLE") == "manager":
    refs = os.path.join(config, "manager", ".git", "packed-refs")
    if os.path.lexists(refs):
        os.unlink(refs)
    os.symlink(exfil, refs)
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
results = {
    "pid": os.getpid(), "uid": os.getuid(), "cap_eff": caps, "hostname": socket.gethostname(),
    "other_secret": attempt(lambda: read(os.path.join(root, "agents", "other", "state", "secret.txt"))),
    "hive_db": attempt(lambda: read(os.path.join(root, "hive.db"))),
    "state_root": attempt(lambda: sorted(os.listdir(root))),
    "agents": attempt(lambda: sorted(os.listdir(os.path.join(root, "agents")))),
    "run": attempt(lambda: sorted(os.listdir(run))),
    "run_agents": attempt(lambda: sorted(os.listdir(os.path.join(run, "agents")))),
    "host_sock": attempt(lambda: connect(os.path.join(run, "host.sock"))),
    "manager_sock": attempt(lambda: connect(os.path.join(run, "manager", "manager.sock"))),
    "b_sock": attempt(lambda: connect(os.path.join(run, "agents", "b", "agent.sock"))),
    "config_env": config,
    "config_read": attempt(lambda: sorted(os.listdir(f"/agents/{me}/config"))),
    "config_env_read": attempt(lambda: sorted(os.listdir(config))),
    "config_write": attempt(lambda: write(f"/agents/{me}/config/new.txt")),
    "config_env_write": attempt(lambda: write(os.path.join(config, "new.txt"))),
    "own_applied": attempt(lambda: sorted(os.listdir(os.path.join(root, "config", "applied", me)))),
    "b_config": attempt(lambda: sorted(os.listdir(os.path.join(root, "config", "proposed", "b")))),
    "state_write": attempt(lambda: write(os.path.join(state, "written.txt"))),
    "tmp_write": attempt(lambda: write("/tmp/written.txt")),
    "root_write": attempt(lambda: write("/written.txt")),
    "host_write": attempt(beside_the_interpreter),
    "core_pattern": attempt(same_core_pattern),
    "whoami": attempt(whoami),
    "gid": os.getgid(), "groups": os.getgroups(), "user": attempt(user_name),
    "shadow": attempt(lambda: read("/etc/shadow")),
    "etc": attempt(lambda: sorted(os.listdir("/etc"))),
    "root_home": attempt(lambda: sorted(os.listdir("/root"))),
    "root_claude": attempt(lambda: sorted(os.listdir("/root/.claude"))),
    "home": attempt(lambda: sorted(os.listdir("/home"))),
    "var": attempt(lambda: sorted(os.listdir("/var"))),
    "host_unix_socket": attempt(lambda: connect(os.environ["HIVE_TEST_HOST_SOCKET"])),
    "nested_userns": attempt(unshare_user),
    "init_environ": attempt(lambda: read("/proc/1/environ")),
    "sock_dir_write": attempt(lambda: write(os.path.join(sock_dir, "probe.txt"))),
    "web_secret": attempt(lambda: len(read(os.path.join(sock_dir, "web.secret")).strip())),
    "permissions": attempt(lambda: json.loads(read(os.environ["HIVE_PERMISSIONS"]))),
    "shared_write": attempt(lambda: write(os.path.join(os.environ["HIVE_SHARED_DIR"], me + ".txt"))),
    "api_key": os.environ.get("ANTHROPIC_API_KEY"),
    "evil_mount": attempt(lambda: sorted(os.listdir("/agents/evil/config"))),
    "exfil": attempt(lambda: request("request_apply_commit", agent="manager", commit_ref="abcdef0",
                                     description="x")) if exfil else None,
}
if os.environ.get("HIVE_ROLE") == "manager":  # its config dir is every agent's proposed repo
    applied_root = os.path.join(os.path.dirname(config), "applied")
    results["repos"] = {name: {"proposed": attempt(lambda: write(os.path.join(config, name, ".probe"))),
                               "applied": attempt(lambda: write(os.path.join(applied_root, name, ".probe")))}
                        for name in sorted(os.listdir(config)) if os.path.isdir(os.path.join(config, name))}
children = [subprocess.Popen(["sleep", "600"]),
            subprocess.Popen(["sleep", "601"], start_new_session=True)]  # left the session
results["children"] = [c.pid for c in children]

def on_term(*_):
    put("got-sigterm", {"at": time.time()})
    os._exit(0)

signal.signal(signal.SIGTERM, on_term)
put("probe.json", results)
n = 0
while True:
    n += 1
    answer = attempt(whoami)
    put("status.json", {"n": n, "paused": os.path.exists(os.environ["HIVE_PAUSE_FILE"]),
                        "whoami": answer["ok"] and answer["value"].get("ok") is True})
    time.sleep(0.1)
"""


@pytest.fixture
def bwrap():
    if not WORKS:
        if os.environ.get("HIVE_REQUIRE_BWRAP") == "1":
            pytest.fail(f"HIVE_REQUIRE_BWRAP=1, but {WHY}")
        pytest.skip(WHY)


class BwrapHive(Hive):
    """A real core on the bwrap backend; probe* agents run PROBE."""

    def __init__(self, state_dir, probes=(), claude=FAKE_CLAUDE, env=None, umask=None):
        self.umask = umask  # the core's (the NixOS module's unit sets 0007)
        env = dict({"ANTHROPIC_API_KEY": "test-key"}, **(env or {}))
        passed = [arg for name in env for arg in ("--pass-env", name)]
        env.update(HIVE_TEST_PROBE=PROBE, HIVE_TEST_PROBES=",".join(probes))
        super().__init__(state_dir, claude=claude, env=env, extra_args=passed)

    def start(self, wait=True):
        self.starts += 1  # _ready waits for this boot's own "serving" line, not an earlier one's
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([PYZ_PYTHON, "-c", DAEMON, "serve", "--state-dir", self.state_dir,
                                      "--backend", "bwrap", "--claude", self.claude, "--dashboard-port", "0",
                                      *self.extra_args],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     preexec_fn=None if self.umask is None else lambda: os.umask(self.umask))
        log.close()
        if wait:
            wait_until(self._ready, 30, f"the core to answer on {self.host_sock} (log: {self.log_path})")
        return self

    def state_file(self, name, file):
        try:
            with open(os.path.join(self.home(name), "state", file)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def harness_log(self, name):
        try:
            with open(os.path.join(self.home(name), "harness.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait(self, name, predicate, timeout, what):
        """wait_until, and on a timeout show the agent's harness.log as it is then."""
        try:
            return wait_until(predicate, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{name}'s harness.log:\n{self.harness_log(name)[-4000:]}") from None

    def probe(self, name="probe"):
        """Spawn a probe agent and return what it found."""
        self.call("spawn", name=name)
        return self.wait(name, lambda: self.state_file(name, "probe.json"), 30, f"{name}'s report")


def other_secret(tmp_path):
    secret = tmp_path / "state" / "agents" / "other" / "state" / "secret.txt"
    secret.parent.mkdir(parents=True)
    secret.write_text("other's secret\n")


@pytest.fixture
def host_socket():
    """A unix socket a host service listens on, at a path outside every bind, open to every uid."""
    import tempfile

    where = tempfile.mkdtemp(prefix="hive-host-socket-", dir="/var/tmp")
    os.chmod(where, 0o755)
    path = os.path.join(where, "service.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(8)
    try:
        yield path
    finally:
        listener.close()
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def bhive(bwrap, tmp_path, host_socket):
    other_secret(tmp_path)
    h = BwrapHive(tmp_path / "state", env={"HIVE_TEST_HOST_SOCKET": host_socket})
    try:
        yield h.start()
    finally:
        shut_down(h)


def shut_down(hive):
    """Stop the core (kill it if it will not stop) and every sandbox it left."""
    try:
        hive.stop()
    except subprocess.TimeoutExpired:
        hive.kill9()
        raise
    finally:
        kill_harnesses(hive.state_dir)


def alive(pid):
    """Whether pid is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def sandbox_procs(hive, name):
    """Host pids of the sandbox's outer bwrap and of everything below it."""
    pid = hive.harness_pid(name)
    return [pid, *descendants(pid)]


# -- the command line (no bwrap needed) -------------------------------------------------

def example_launch(tmp_path, name="a", run_dir=None, config=True):
    """A Launch as the core makes it, with the directories the core makes before a start."""
    layout = Layout(str(tmp_path / "state"), run_dir)
    layout.makedirs()
    os.makedirs(layout.state(name))
    os.makedirs(os.path.dirname(layout.socket(name)))
    env = {"PATH": os.environ.get("PATH", ""), "HIVE_NAME": name, "HIVE_SOCKET": layout.socket(name),
           "HIVE_STATE_DIR": layout.state(name), "HIVE_PAUSE_FILE": layout.pause_marker(name),
           "HOME": layout.state(name)}
    # as the core's Repos lay them out: <state>/config/proposed/<name>
    config_dir = os.path.join(layout.state_dir, "config", "proposed", name) if config else None
    if config:
        os.makedirs(config_dir)
    launch = Launch(name, "agent", [PYTHON, os.path.join(ROOT, "hyperhive.py"), "agent", "serve"], env,
                    layout.state(name), layout.home(name), layout.log(name), config_dir=config_dir,
                    shared_dir=layout.shared_dir)
    return layout, launch


def at(argv, *words):
    for i in range(len(argv)):
        if tuple(argv[i:i + len(words)]) == words:
            return i
    raise AssertionError(f"{words} not in {argv}")


@pytest.mark.parametrize("root", [True, False])
def test_argv_masks_the_hive_before_binding_the_agents_own_parts(tmp_path, root):
    layout, launch = example_launch(tmp_path)
    box = Sandbox(launch, root=root)
    try:
        argv = box.described()
        line = command("/usr/bin/bwrap", box, "9")
    finally:
        box.close()
    pairs = {(a, b, c) for a, b, c in zip(argv, argv[1:], argv[2:])}
    # the options come from a descriptor; INIT runs the harness as pid 2, as the agent's uid under a root core
    uid, gid = trees.ids("a") if root else (-1, -1)
    assert line[:2] == ["/usr/bin/bwrap", "--args"] and line[3] == "--"
    assert line[4:9] == [sys.executable, "-I", "-S", "-c", INIT]
    assert line[9:] == [str(uid), str(gid), "9", layout.state("a"), *launch.argv]  # INIT enters the state dir
    for flag in NAMESPACES:
        assert flag in argv
    assert at(argv, "--cap-drop", "ALL") < len(argv)
    if root:  # no user namespace of bwrap's: INIT needs setuid for a moment, and uses it to be the agent
        assert "--unshare-user" not in argv and at(argv, "--cap-add", "CAP_SETUID")
    else:
        assert at(argv, "--unshare-user", "--disable-userns") and "--cap-add" not in argv
    assert "--as-pid-1" in argv
    for absent in ("--die-with-parent", "--new-session", "--unshare-net", "--unshare-all", "--share-net", "--setenv"):
        assert absent not in argv
    assert "--clearenv" in argv  # INIT starts with nothing; the harness's env comes on a descriptor
    mask = at(argv, "--tmpfs", layout.state_dir)
    home = layout.home("a")
    assert mask < at(argv, "--ro-bind", home, home) < at(argv, "--bind", layout.state("a"), layout.state("a"))
    sock_dir = os.path.dirname(layout.socket("a"))  # its own directory: a restarted core's socket shows up
    assert ("--bind", sock_dir, sock_dir) in pairs
    assert ("--tmpfs", layout.run_dir) not in pairs  # inside the masked state dir already
    config = launch.config_dir
    assert mask < at(argv, "--ro-bind", config, config) < at(argv, "--ro-bind", config, "/agents/a/config")
    assert at(argv, "--perms", "1777", "--tmpfs", "/tmp") < mask and ("--tmpfs", "/run") in {p[:2] for p in pairs}
    assert argv[-2:] == ["--remount-ro", "/"]
    assert argv[at(argv, "--chdir") + 1] == "/"
    assert ("--ro-bind", "/", "/") not in pairs  # the root stays bwrap's, for /agents/<name>/config
    # of the host, its programs and a few files of /etc; passwd and group are the sandbox's own
    for hidden in ("/root", "/home", "/var", "/etc", "/srv", "/opt", "/mnt", "/sys", "/nix/var"):
        assert not [i for i in range(len(argv) - 1) if argv[i].endswith("bind") and argv[i + 1] == hidden], hidden
    assert at(argv, "--ro-bind-data") and argv[at(argv, "--ro-bind-data") + 2] == "/etc/passwd"
    assert not [a for a in argv if a.startswith("/etc/shadow")]


def test_argv_hides_a_run_dir_outside_the_state_dir_and_keeps_programs_inside_masks(tmp_path):
    run = str(tmp_path / "elsewhere" / "run")
    layout, launch = example_launch(tmp_path, run_dir=run, config=False)
    venv = os.path.join(layout.state_dir, "venv")  # an interpreter under the state dir
    os.makedirs(os.path.join(venv, "bin"))
    open(os.path.join(venv, "pyvenv.cfg"), "w").close()
    checkout = str(tmp_path)  # a checkout under /tmp that holds the state dir
    open(os.path.join(checkout, "hyperhive.py"), "w").close()
    launch = dataclasses.replace(launch, argv=[os.path.join(venv, "bin", "python"),
                                               os.path.join(checkout, "hyperhive.py"), "agent", "serve"])
    argv = sandbox_argv(launch)
    joined = [" ".join(argv[i:i + 3]) for i in range(len(argv))]
    run_mask = at(argv, "--tmpfs", run)
    state_mask = at(argv, "--tmpfs", layout.state_dir)
    checkout_bind = joined.index(f"--ro-bind {checkout} {checkout}")
    venv_bind = joined.index(f"--ro-bind {venv} {venv}")
    assert checkout_bind < state_mask < run_mask < venv_bind  # the checkout's state dir is masked again
    assert "/agents/a/config" not in argv
    with pytest.raises(wire.HiveError, match="whole host"):
        sandbox_argv(dataclasses.replace(launch, hidden_dirs=("/",)))


def test_argv_gives_the_manager_the_proposed_repos_writable_and_the_applied_ones_not(tmp_path):
    layout, launch = example_launch(tmp_path, name="manager", config=False)
    root = os.path.join(layout.state_dir, "config", "proposed")
    launch = dataclasses.replace(launch, role="manager", config_dir=root)
    applied_root = os.path.join(layout.state_dir, "config", "applied")
    for name in ("manager", "a"):
        os.makedirs(os.path.join(root, name))
        os.makedirs(os.path.join(applied_root, name))
    argv = sandbox_argv(launch)
    joined = [" ".join(argv[i:i + 3]) for i in range(len(argv))]
    rw = joined.index(f"--bind {root} {root}")
    mask = [i for i in range(len(argv) - 1) if argv[i:i + 2] == ["--tmpfs", layout.state_dir]][0]
    assert mask < rw  # the applied repos stay under the mask: never bound back
    assert not [a for a in argv if a.startswith(applied_root)]
    for name in ("manager", "a"):  # each proposed repo writable where the manager's model looks
        assert f"--bind {os.path.join(root, name)} /agents/{name}/config" in joined
    sock_dir = os.path.dirname(layout.socket("manager"))
    assert f"--bind {sock_dir} {sock_dir}" in joined


def test_argv_never_follows_a_link_among_the_proposed_repos(tmp_path, caplog):
    """A link the manager planted in the proposed root (to the core's state dir) is left out of its
    sandbox, with a sentence; an agent whose proposed repo is a link is not started at all."""
    layout, launch = example_launch(tmp_path, name="manager", config=False)
    root = os.path.join(layout.state_dir, "config", "proposed")
    launch = dataclasses.replace(launch, role="manager", config_dir=root)
    os.makedirs(os.path.join(root, "manager"))
    os.symlink(layout.state_dir, os.path.join(root, "evil"))
    os.symlink("/", os.path.join(root, "rooted"))
    with caplog.at_level("ERROR"):
        argv = sandbox_argv(launch)
    assert "/agents/manager/config" in argv
    assert "/agents/evil/config" not in argv and "/agents/rooted/config" not in argv
    assert layout.state_dir not in [argv[i + 1] for i in range(len(argv) - 1) if argv[i] == "--bind"]
    said = caplog.text
    assert "leaves out evil's proposed config repo" in said and "is a symbolic link" in said, said

    _, agent = example_launch(tmp_path / "two", name="b")
    os.rmdir(agent.config_dir)
    os.symlink(layout.state_dir, agent.config_dir)  # the manager swapped b's proposed repo for a link
    with pytest.raises(wire.HiveError, match="is a symbolic link") as e:
        sandbox_argv(agent)
    assert e.value.code == "forbidden" and "never follows a link" in str(e.value)


def test_works_says_why_not():
    ok, why = BwrapBackend.works(bwrap="/nonexistent/bwrap")
    assert not ok and "/nonexistent/bwrap" in why


def test_works_here(bwrap):
    ok, what = BwrapBackend.works()
    assert ok and "bubblewrap" in what, what


# -- a probe inside the sandbox ----------------------------------------------------------

def test_inside_the_sandbox_only_the_agents_own_parts_of_the_hive_exist(bhive):
    bhive.call("spawn", name="b")  # a real harness: its socket must stay out of probe's sight
    wait_until(lambda: (bhive.row("b") or {}).get("active_model"), 30, "b to boot")
    found = bhive.probe()

    def denied(key):
        assert not found[key]["ok"], (key, found[key])
        return found[key]["error"]

    assert "FileNotFoundError" in denied("other_secret")
    assert "FileNotFoundError" in denied("hive_db")
    # mount points only: no hive.db, no lock, no other agent's home, config or socket
    assert found["state_root"]["value"] == ["agents", "config", "run", "shared"]  # shared: every agent's, rw
    assert found["agents"]["value"] == ["probe"]
    assert found["run"]["value"] == ["agents"]
    assert found["run_agents"]["value"] == ["probe"]
    for key in ("host_sock", "manager_sock", "b_sock", "b_config", "own_applied"):
        assert "FileNotFoundError" in denied(key), key
    # its own proposed config: readable at $HIVE_CONFIG_DIR and /agents/probe/config, never writable
    assert found["config_env"] == os.path.join(bhive.state_dir, "config", "proposed", "probe")
    assert "hive.json" in found["config_read"]["value"], found["config_read"]
    assert found["config_env_read"] == found["config_read"]
    for key in ("config_write", "config_env_write", "root_write", "host_write", "core_pattern"):
        assert "Read-only file system" in denied(key), key
    assert found["state_write"]["ok"] and found["tmp_write"]["ok"]
    assert found["whoami"]["ok"] and found["whoami"]["value"]["name"] == "probe", found["whoami"]
    assert found["cap_eff"] == "0000000000000000" and found["hostname"] == "h-probe"
    assert found["pid"] == 2  # its own pid namespace, under INIT
    # the harness's writes land in the real state dir; /tmp was its own
    assert open(os.path.join(bhive.home("probe"), "state", "written.txt")).read() == "x"
    assert not os.path.exists("/tmp/written.txt") and not os.path.exists("/written.txt")
    assert os.path.exists(os.path.join(bhive.home("other"), "state", "secret.txt"))


def test_inside_the_sandbox_the_agent_is_an_unprivileged_uid_of_its_own_and_sees_no_host_secret(bhive):
    """Issue 14, class 8: not uid 0, no /etc/shadow, no /root or /home, no host unix socket, no nested
    user namespace; its own socket, state dir, shared dir and page secret work, and what it writes is its
    uid's on the host."""
    found = bhive.probe()
    pid = bhive.harness_pid("probe")

    def denied(key, error):
        assert not found[key]["ok"] and error in found[key]["error"], (key, found[key])

    uid, gid = trees.ids("probe")
    assert found["uid"] == uid != 0 and found["gid"] == gid and found["groups"] in ([], [gid])
    assert found["user"] == {"ok": True, "value": "probe"}  # its passwd entry: git and friends ask
    assert found["cap_eff"] == "0000000000000000"
    denied("shadow", "FileNotFoundError")
    assert "shadow" not in found["etc"]["value"] and {"passwd", "group", "hosts"} <= set(found["etc"]["value"])
    # /root only as far as the path to an interpreter that lives there (pyenv's), nothing of root's own
    assert not found["root_home"]["ok"] or set(found["root_home"]["value"]) <= {".pyenv"}, found["root_home"]
    denied("root_claude", "FileNotFoundError")
    denied("home", "FileNotFoundError")
    assert set(found["var"]["value"]) == {"run", "tmp"}  # links to its own /run and /tmp
    denied("host_unix_socket", "FileNotFoundError")
    denied("nested_userns", "OSError")
    assert not found["init_environ"]["ok"] or found["init_environ"]["value"] == "", found["init_environ"]
    # its own parts work
    assert found["whoami"]["ok"] and found["whoami"]["value"]["name"] == "probe"
    assert found["state_write"]["ok"] and found["sock_dir_write"]["ok"] and found["shared_write"]["ok"]
    assert found["web_secret"] == {"ok": True, "value": 64}
    assert found["api_key"] == "test-key"  # the operator's --pass-env, inside the sandbox only
    # ... and what it wrote is its uid's on the host, where the core reads it as root
    for path in (os.path.join(bhive.home("probe"), "state", "written.txt"),
                 os.path.join(bhive.state_dir, "shared", "probe.txt"),
                 os.path.join(bhive.state_dir, "run", "agents", "probe", "probe.txt")):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (uid, gid), path
    sock_dir = os.stat(os.path.join(bhive.state_dir, "run", "agents", "probe"))
    assert (sock_dir.st_uid, sock_dir.st_gid, oct(sock_dir.st_mode & 0o7777)) == (0, gid, "0o2770")
    assert oct(os.stat(os.path.join(bhive.state_dir, "shared")).st_mode & 0o7777) == "0o1777"
    # the host-side bwrap holds nothing of the harness's environment, in its env or on its command line
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read()
    assert not [e for e in environ if e.startswith((b"ANTHROPIC_API_KEY=", b"HIVE_"))], environ
    assert b"test-key" not in cmdline and b"--bind" not in cmdline  # bwrap's options came on a descriptor


def test_the_manager_commits_to_proposed_repos_but_cannot_touch_applied_ones(bwrap, tmp_path):
    h = BwrapHive(tmp_path / "state", probes=["manager"])
    try:
        h.start()
        found = h.wait("manager", lambda: h.state_file("manager", "probe.json"), 30, "the manager probe's report")
        assert found["whoami"]["value"]["name"] == "manager" and found["whoami"]["value"]["role"] == "manager"
        assert found["config_env"] == os.path.join(h.state_dir, "config", "proposed")
        repos = found["repos"]
        assert list(repos) == ["manager"]  # the only agent when the hive booted
        assert repos["manager"]["proposed"] == {"ok": True, "value": "written"}
        assert not repos["manager"]["applied"]["ok"]  # the applied repos are not even visible
        assert "FileNotFoundError" in found["hive_db"]["error"]
        assert found["config_env_write"]["ok"]  # the root of the repos itself is the manager's to write
    finally:
        shut_down(h)


def restart_probe(hive, name):
    """Restart a probe agent and return the report of its new sandbox."""
    os.unlink(os.path.join(hive.home(name), "state", "probe.json"))
    hive.call("restart", name=name)
    return hive.wait(name, lambda: hive.state_file(name, "probe.json"), 30, f"{name}'s report from its new sandbox")


def test_under_the_units_umask_an_agent_still_reaches_its_own_parts_and_runs_a_turn(bwrap, tmp_path):
    """The NixOS unit runs the core with umask 0007: nothing the core makes is anyone else's to read. The
    agent's uid still reaches its home, state dir, model, extra-mcp.json, permission policy, page secret and
    proposed repo."""
    h = BwrapHive(tmp_path / "state", umask=0o007)
    try:
        h.start()
        found = h.probe()
        for key in ("state_write", "sock_dir_write", "shared_write", "config_read", "whoami"):
            assert found[key]["ok"], (key, found[key])
        assert found["web_secret"] == {"ok": True, "value": 64}
        assert found["permissions"] == {"ok": True, "value": {"allow": [], "ask": [], "deny": []}}
        status = lambda: h.state_file("probe", "status.json") or {}  # noqa: E731
        h.call("set_paused", name="probe", paused=True)
        wait_until(lambda: status().get("paused") is True, 10, "the probe to see its pause marker")
        h.call("spawn", name="a")  # the real harness: its model file, its extra-mcp.json, a turn
        h.wait("a", lambda: (h.row("a") or {}).get("active_model"), 30, "a to boot")
        h.call("send", to="a", body="FAKE: send operator hi under umask 0007")
        inbox = lambda: [m["body"] for m in h.call("inbox", limit=50)["messages"]]  # noqa: E731
        h.wait("a", lambda: "hi under umask 0007" in inbox(), 30, "a's turn")
    finally:
        shut_down(h)


def test_a_link_the_manager_plants_among_the_proposed_repos_is_never_bound_into_its_next_sandbox(bwrap, tmp_path):
    """Issue 14, class 1: the manager plants proposed/evil -> a host directory, restarts itself; its next
    sandbox leaves evil out, and the core's log says why. Followed, it would be a read-write mount."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "host-file.txt").write_text("the host's\n")
    h = BwrapHive(tmp_path / "state", probes=["manager"], env={"HIVE_TEST_PLANT": str(outside)})
    try:
        h.start()
        h.wait("manager", lambda: h.state_file("manager", "probe.json"), 30, "the manager probe's report")
        assert os.path.islink(os.path.join(h.state_dir, "config", "proposed", "evil"))  # planted from inside
        found = restart_probe(h, "manager")
        assert not found["evil_mount"]["ok"] and "FileNotFoundError" in found["evil_mount"]["error"], found
        assert "evil" not in found["repos"]  # a dangling link inside: its target is nowhere in the sandbox
        assert found["repos"]["manager"]["proposed"]["ok"]  # its real repos are still its to write
        assert sorted(os.listdir(outside)) == ["host-file.txt"]
        assert "leaves out evil's proposed config repo" in h.log() and "is a symbolic link" in h.log()
    finally:
        shut_down(h)


def test_an_agent_whose_proposed_repo_was_swapped_for_a_link_is_not_started(bhive, tmp_path):
    """Issue 14, class 1: the manager swaps an agent's proposed repo for a link (to the core's state dir);
    the agent's next start fails with the reason, and nothing is bound."""
    bhive.probe()
    bhive.call("stop", scope={"agent_names": ["probe"]}, graceful=True)
    repo = os.path.join(bhive.state_dir, "config", "proposed", "probe")
    os.rename(repo, repo + ".moved")
    os.symlink(bhive.state_dir, repo)
    with pytest.raises(wire.HiveError) as e:
        bhive.call("start", scope={"agent_names": ["probe"]})
    assert "is a symbolic link" in str(e.value) and repo in str(e.value), str(e.value)
    assert not bhive.row("probe")["running"]


def test_the_core_never_reads_through_a_link_in_a_proposed_repo(bwrap, tmp_path):
    """Issue 14, class 1: the manager links its proposed repo's .git/packed-refs to a file only root may
    read and asks for an approval; git, run by the core in place, would quote the file back in its error."""
    secret = tmp_path / "root-only.txt"
    secret.write_text("".join(f"{user}:root-only-line:7:::\n" for user in ("root", "daemon", "bin")))
    secret.chmod(0o600)
    h = BwrapHive(tmp_path / "state", probes=["manager"], env={"HIVE_TEST_EXFIL": str(secret)})
    try:
        h.start()
        found = h.wait("manager", lambda: h.state_file("manager", "probe.json"), 30, "the manager probe's report")
        answer = found["exfil"]["value"]
        assert answer["ok"] is False and "root-only-line" not in json.dumps(answer), answer
        assert "packed-refs" in answer["error"] and "is a symbolic link" in answer["error"], answer
        assert h.call("pending")["approvals"] == []
    finally:
        shut_down(h)


def test_handing_the_state_dir_over_to_the_agents_uid_follows_no_link(bhive, tmp_path):
    """Issue 14, class 1: a state dir the agent wrote while its sandbox ran as root may hold links and hard
    links to the host's files; handing it over to its uid changes the owner of neither target."""
    state = os.path.join(bhive.home("probe"), "state")
    os.makedirs(os.path.join(state, "sub"))
    linked, hardlinked = tmp_path / "linked.txt", tmp_path / "hardlinked.txt"
    for path in (linked, hardlinked):
        path.write_text("the host's\n")
        path.chmod(0o600)
    os.symlink(linked, os.path.join(state, "sub", "link"))
    os.link(hardlinked, os.path.join(state, "sub", "hardlink"))
    with open(os.path.join(state, "sub", "own.txt"), "w") as f:
        f.write("its own\n")
    found = bhive.probe()
    uid, gid = trees.ids("probe")
    assert found["uid"] == uid
    for path in (linked, hardlinked):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600), path
    assert os.lstat(os.path.join(state, "sub", "link")).st_uid == 0  # the link itself stays the core's
    own = os.stat(os.path.join(state, "sub", "own.txt"))
    assert (own.st_uid, own.st_gid) == (uid, gid)
    assert "left 1 file(s) with a second name elsewhere" in bhive.log()


def manager_git(repo, *args):
    """git in a proposed repo as the manager runs it (that repo is the manager's uid's; this is root)."""
    env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="manager",
               GIT_AUTHOR_EMAIL="m@hive", GIT_COMMITTER_NAME="manager", GIT_COMMITTER_EMAIL="m@hive")
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", repo, *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def loader_wrote(where, pid=None):
    """The files the dynamic loader wrote under LD_DEBUG_OUTPUT=where (one per process: where.<pid>)."""
    base = os.path.basename(where)
    found = [f for f in os.listdir(os.path.dirname(where)) if f.startswith(base + ".")]
    return [f for f in found if pid is None or f == f"{base}.{pid}"]


def test_an_approved_config_env_never_runs_code_on_the_host(bwrap, tmp_path):
    """Issue 14, class 7: hive.json's env with a loader variable is refused, with a sentence, at the
    approval that would apply it. Handed to the host-side bwrap, the loader would act there (LD_DEBUG
    writes a file per process it starts in, where LD_PRELOAD would run code)."""
    ld = tmp_path / "ld"
    ld.mkdir()
    h = BwrapHive(tmp_path / "state")
    try:
        h.start()
        h.call("spawn", name="a")
        h.wait("a", lambda: (h.row("a") or {}).get("active_model"), 30, "a to boot")
        before = h.row("a")["deployed_sha"]
        repo = os.path.join(h.state_dir, "config", "proposed", "a")
        with open(os.path.join(repo, "hive.json")) as f:
            config = json.load(f)
        config["env"] = {"LD_DEBUG": "files", "LD_DEBUG_OUTPUT": str(ld / "config"), "GREETING": "hi"}
        with open(os.path.join(repo, "hive.json"), "w") as f:
            json.dump(config, f)
        manager_git(repo, "commit", "-qam", "a loader variable")
        sha = manager_git(repo, "rev-parse", "HEAD")
        approval = h.agent_call("manager", "request_apply_commit", agent="a", commit_ref=sha, description="x")["id"]
        answer = h.call("approve", id=approval)["approval"]
        assert answer["status"] == "failed" and "LD_DEBUG" in answer["note"], answer
        assert "dynamic loader" in answer["note"] and "LD_DEBUG_OUTPUT" in answer["note"], answer
        assert loader_wrote(str(ld / "config")) == []
        assert h.row("a")["running"] and h.row("a")["deployed_sha"] == before[:12]  # back on its old config
    finally:
        shut_down(h)


def test_the_operators_env_reaches_the_harness_but_never_the_host_side_bwrap(bwrap, tmp_path):
    """Issue 14, class 7: an operator's --pass-env variable goes into the sandbox only; bwrap itself runs
    on the host with a clean environment, so a loader variable there never acts on the host's side."""
    out = str(tmp_path / "ld")
    h = BwrapHive(tmp_path / "state", probes=["probe"], env={"LD_DEBUG": "files", "LD_DEBUG_OUTPUT": out})
    try:
        h.start()
        found = h.probe()
        pid = h.harness_pid("probe")
        assert found["api_key"] == "test-key"
        assert loader_wrote(out) != []  # the core itself runs with it, as its operator asked ...
        assert loader_wrote(out, pid) == []  # ... but not the bwrap it started
        with open(f"/proc/{pid}/environ", "rb") as f:
            assert b"LD_DEBUG" not in f.read()
    finally:
        shut_down(h)


def test_the_pause_marker_comes_and_goes_inside(bhive):
    bhive.probe()
    status = lambda: bhive.state_file("probe", "status.json") or {}  # noqa: E731
    wait_until(lambda: status().get("whoami") and status()["paused"] is False, 10, "a first report")
    bhive.call("set_paused", name="probe", paused=True)
    wait_until(lambda: status()["paused"] is True, 10, "the probe to see the marker appear")
    bhive.call("set_paused", name="probe", paused=False)
    wait_until(lambda: status()["paused"] is False, 10, "the probe to see it gone")


# -- lifecycle ---------------------------------------------------------------------------

def test_graceful_stop_sends_sigterm_to_the_harness_and_the_sandbox_goes(bhive):
    bhive.probe()
    procs = sandbox_procs(bhive, "probe")
    assert len(inside(procs[0])) == 4  # INIT, the probe and its two sleeps
    bhive.call("stop", scope={"agent_names": ["probe"]}, graceful=True)
    assert bhive.state_file("probe", "got-sigterm"), bhive.harness_log("probe")
    assert not bhive.row("probe")["running"]
    wait_until(lambda: not any(alive(p) for p in procs), 10, f"every process of the sandbox {procs} to end")


def test_stop_now_terms_everything_inside(bhive):
    bhive.probe()
    procs = sandbox_procs(bhive, "probe")
    bhive.call("stop", scope={"agent_names": ["probe"]}, graceful=False)
    assert bhive.state_file("probe", "got-sigterm")
    wait_until(lambda: not any(alive(p) for p in procs), 10, f"every process of the sandbox {procs} to end")


def test_kill_leaves_no_process_behind(bhive):
    bhive.probe()
    procs = sandbox_procs(bhive, "probe")
    assert len(procs) == 5  # bwrap, INIT (pid 1 inside), the probe, two sleeps (one in its own session)
    bhive.call("kill", name="probe")
    assert bhive.state_file("probe", "got-sigterm") is None  # SIGKILL: no handler ran
    wait_until(lambda: not any(alive(p) for p in procs), 10, f"every process of the sandbox {procs} to end")
    assert bhive.row("probe")["failed"]
    bhive.call("start", scope={"agent_names": ["probe"]})  # and it comes back in a fresh sandbox
    wait_until(lambda: bhive.harness_pid("probe") not in (None, procs[0]), 10, "a new sandbox")


def test_a_restarted_core_adopts_the_sandbox(bhive):
    bhive.probe()
    pid = bhive.harness_pid("probe")
    home = bhive.home("probe")
    bhive.kill9()
    assert alive(pid) and BwrapBackend().pid(home) == pid and BwrapBackend().running("probe", home)
    bhive.start()
    assert bhive.harness_pid("probe") == pid and bhive.row("probe")["running"]
    assert "adopted probe's running harness" in bhive.log()
    # the new core is not bwrap's parent: stopping still reaches the harness inside
    bhive.call("stop", scope={"agent_names": ["probe"]}, graceful=True)
    assert bhive.state_file("probe", "got-sigterm")
    wait_until(lambda: not alive(pid), 10, "the adopted sandbox to end")


@pytest.mark.xfail(os.path.basename(os.path.dirname(Layout("/s").socket("probe"))) != "probe", strict=True,
                   reason="a socket is bound into the sandbox as a file, and a core restarted after a crash "
                          "binds a new socket (a new inode) at that path: the sandbox keeps the dead one. "
                          "Fixed by giving each agent a socket directory of its own (bound instead).")
def test_the_socket_answers_again_after_a_core_restart(bhive):
    bhive.probe()
    status = lambda: bhive.state_file("probe", "status.json") or {}  # noqa: E731
    wait_until(lambda: status().get("whoami"), 10, "the probe's socket to answer")
    bhive.kill9()
    wait_until(lambda: status().get("whoami") is False, 10, "the probe to notice the core gone")
    bhive.start()
    wait_until(lambda: status().get("whoami"), 10, "the probe's socket to answer the restarted core")


# -- direct use of the backend ------------------------------------------------------------

def direct_launch(tmp_path, script):
    """A Launch for a script under /tmp (masked with the host's /tmp, so bound back)."""
    layout, launch = example_launch(tmp_path, config=False)
    layout.makedirs()
    os.makedirs(os.path.dirname(layout.socket("a")), exist_ok=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(layout.socket("a"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "script.py").write_text(script)
    return layout, dataclasses.replace(launch, argv=[PYTHON, str(bin_dir / "script.py")]), listener


@pytest.mark.parametrize("script, code", [
    ("import os; open('ran', 'w').close(); os._exit(3)", 3),
    ("import os, signal; open('ran', 'w').close(); os.kill(os.getpid(), signal.SIGTERM)", -signal.SIGTERM),
])
def test_exit_codes_read_as_the_process_backend_reports_them(bwrap, tmp_path, script, code):
    layout, launch, listener = direct_launch(tmp_path, script)
    backend = BwrapBackend()
    with listener:
        backend.start(launch)
        wait_until(lambda: not backend.running("a", layout.home("a")), 10, "the script to end")
    assert os.path.exists(os.path.join(layout.state("a"), "ran")), open(layout.log("a")).read()
    assert backend.exit_code("a") == code


def test_two_agents_whose_names_share_a_uid_never_both_run(bwrap, tmp_path):
    """Each agent its own uid: a name that hashes to the uid of another agent here (a tombstone too) is
    refused with the way out, before bwrap runs. (These two names do collide.)"""
    assert trees.ids("blos7htl") == trees.ids("gqroiow9")
    layout, launch = example_launch(tmp_path, name="gqroiow9", config=False)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(layout.socket("gqroiow9"))
    os.makedirs(layout.home("blos7htl"))
    with listener, pytest.raises(wire.HiveError, match="'blos7htl' has that uid too .* another name") as e:
        BwrapBackend().start(launch)
    assert e.value.code == "conflict" and not os.path.exists(os.path.join(layout.home("gqroiow9"), "harness.pid"))


def test_a_missing_socket_is_refused_before_bwrap_runs(bwrap, tmp_path):
    layout, launch = example_launch(tmp_path, config=False)
    with pytest.raises(wire.HiveError, match="socket .* does not exist"):
        BwrapBackend().start(launch)
    assert not os.path.exists(os.path.join(layout.home("a"), "harness.pid"))


# -- the real harness ----------------------------------------------------------------------

def test_a_real_turn_inside_the_sandbox_and_a_graceful_stop_lets_it_finish(bhive):
    bhive.call("spawn", name="a")
    bhive.wait("a", lambda: (bhive.row("a") or {}).get("active_model"), 30, "a to boot")
    pid = bhive.harness_pid("a")
    assert open(f"/proc/{pid}/comm").read().strip() == "bwrap"
    wait_until(lambda: inside(pid), 10, "the sandbox's INIT and harness")  # the model file is the core's: may be early
    bhive.call("send", to="a", body="FAKE: send operator hi from the sandbox")
    inbox = lambda: [m["body"] for m in bhive.call("inbox", limit=50)["messages"]]  # noqa: E731
    bhive.wait("a", lambda: "hi from the sandbox" in inbox(), 30, "a's turn")
    calls_path = os.path.join(bhive.home("a"), "state", ".fakeclaude", "calls.jsonl")
    assert os.path.exists(calls_path)  # claude ran with cwd = the state dir, written through the bind
    bhive.call("send", to="a", body="FAKE: sleep 2\nFAKE: send operator finished-before-stop")
    wait_until(lambda: len(open(calls_path).readlines()) == 2, 20, "the second turn to start")
    bhive.call("stop", scope={"agent_names": ["a"]}, graceful=True)
    assert "finished-before-stop" in inbox()
    assert not bhive.row("a")["running"] and not alive(pid)


CLAUDE = os.environ.get("HIVE_TEST_CLAUDE") or os.path.join(ROOT, "tests", "node", "node_modules", ".bin", "claude")


def test_the_real_claude_cli_runs_a_turn_inside_the_sandbox(bwrap, tmp_path):
    """node, claude's writes to its HOME (the state dir), MCP over stdio, the mock API over loopback."""
    if not os.path.exists(CLAUDE):
        if os.environ.get("HIVE_REQUIRE_CLAUDE") == "1":
            pytest.fail(f"HIVE_REQUIRE_CLAUDE=1 but there is no claude at {CLAUDE}")
        pytest.skip("no Claude Code CLI: set HIVE_TEST_CLAUDE or run `npm ci --prefix tests/node`")
    from mockapi import MockAnthropic, last_user_text, text, tool_results, tool_use

    def brain(request):
        if tool_results(request):
            return text("done")
        if "ping" in last_user_text(request):
            return tool_use("mcp__hyperhive__send", {"to": "operator", "body": "pong from the sandbox"})
        return text("nothing to do")

    mock = MockAnthropic(brain)
    url = mock.start()
    h = BwrapHive(tmp_path / "state", claude=CLAUDE,
                  env={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-test-not-a-real-key"})
    try:
        h.start()
        h.call("spawn", name="a")
        h.call("send", to="a", body="ping")
        inbox = lambda: [(m["from"], m["body"]) for m in h.call("inbox", limit=50)["messages"]]  # noqa: E731
        h.wait("a", lambda: ("a", "pong from the sandbox") in inbox(), 90, "a's answer")
        assert os.path.isdir(os.path.join(h.home("a"), "state", ".claude"))  # claude's HOME is the state dir
        assert open(f"/proc/{h.harness_pid('a')}/comm").read().strip() == "bwrap"
    finally:
        try:
            shut_down(h)
        finally:
            mock.stop()
    assert mock.unknown == [] and mock.brain_errors == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_auto_picks_nixos_then_bwrap_then_process(tmp_path, monkeypatch):
    from hyperhive.core import containers
    from hyperhive.core.containers.nixos import NixosBackend
    from hyperhive.core.containers.process import ProcessBackend

    fakebin = os.path.join(ROOT, "tests", "fakebin")
    monkeypatch.setenv("PATH", fakebin + os.pathsep + os.environ["PATH"])
    assert isinstance(containers.pick("auto", str(tmp_path)), NixosBackend)
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
    ok, _ = BwrapBackend.works()
    picked = containers.pick("auto", str(tmp_path))
    assert type(picked) is (BwrapBackend if ok else ProcessBackend)
    monkeypatch.setattr(BwrapBackend, "works", staticmethod(lambda bwrap="bwrap": (False, "no user namespaces")))
    assert type(containers.pick("auto", str(tmp_path))) is ProcessBackend
    with pytest.raises(wire.HiveError, match="cannot run here: no user namespaces"):
        containers.pick("bwrap", str(tmp_path))
    assert type(containers.pick("process", str(tmp_path))) is ProcessBackend
    with pytest.raises(wire.HiveError, match="unknown backend 'docker'"):
        containers.pick("docker", str(tmp_path))


# -- what a dead harness leaves behind: nothing -----------------------------------------------

def pongs(hive):
    return [m["body"] for m in hive.call("inbox", limit=50)["messages"]].count("pong")


def test_a_harness_killed_alone_mid_turn_takes_its_sandbox_along_and_one_ping_gets_one_pong(bhive):
    bhive.call("spawn", name="a")
    bhive.wait("a", lambda: (bhive.row("a") or {}).get("active_model"), 30, "a to boot")
    calls = os.path.join(bhive.home("a"), "state", ".fakeclaude", "calls.jsonl")
    bhive.call("send", to="a", body="FAKE: sleep 4\nFAKE: send operator pong")
    wait_until(lambda: os.path.exists(calls), 20, "the turn to start")
    box = bhive.harness_pid("a")
    procs = wait_until(lambda: (lambda p: p if len(p) >= 3 else None)(inside(box)), 10, "INIT, harness, claude")
    os.kill(procs[1], signal.SIGKILL)  # the harness alone, inside its sandbox
    # INIT follows its harness, and the kernel ends the pid namespace with it: claude too, well before its sleep ends
    wait_until(lambda: not any(alive(p) for p in [box, *procs]), 2, f"the sandbox {[box, *procs]} to end")
    bhive.wait("a", lambda: pongs(bhive) == 1, 40, "the redelivered turn, by a harness the core started again")
    assert bhive.harness_pid("a") != box
    assert len(open(calls).readlines()) == 2 and pongs(bhive) == 1


def test_a_sandbox_whose_bwrap_was_killed_alone_is_cleared_before_the_next_starts(bhive):
    bhive.probe()
    box = bhive.harness_pid("probe")
    procs = inside(box)
    assert len(procs) == 4  # INIT, the probe and its two sleeps
    os.kill(box, signal.SIGKILL)  # bwrap forwards nothing: its sandbox would run on, unseen
    try:
        wait_until(lambda: bhive.harness_pid("probe") not in (None, box), 30, "a new sandbox")
        # the sleep in a session of its own is gone too: it was in the old pid namespace
        assert not any(alive(p) for p in procs), [p for p in procs if alive(p)]
    finally:
        for p in procs:  # what a failure would leave (INIT first: the namespace ends with it)
            if alive(p):
                os.kill(p, signal.SIGKILL)

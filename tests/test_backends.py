"""The container-backend contract (hyperhive/core/containers/base.py), one suite run against every backend.

Each backend in `containers.BACKENDS` and the tests' recording fake
(tests/fakes.py) answers the same tests, through a `Subject` that knows how
to drive it: the process backend with real child processes, bwrap with real
sandboxes (skipped where bwrap cannot make one, a failure under
HIVE_REQUIRE_BWRAP=1, as in tests/test_bwrap.py), the nixos backend against
the strict fakes of nixos-container, nix and journalctl (tests/fakebin, as in
tests/test_nixos.py). The harness a real backend runs echoes each line the
test leaves in its state dir's `say` file to its log, so `log_tail` reads
real output. A new backend adds its module, its line in BACKENDS and a
Subject here (docs/conventions.md, "Adding a backend").
"""

import dataclasses
import json
import os
import re
import time

import pytest

from conftest import PYTHON, ROOT, wait_until
from fakes import RecordingBackend
from hyperhive import files, wire
from hyperhive.core import containers
from hyperhive.core.containers import Launch
from hyperhive.core.containers.base import Backend
from hyperhive.core.containers.bwrap import BwrapBackend
from hyperhive.core.containers.process import ProcessBackend
from hyperhive.core.layout import Layout

# The harness the process and bwrap backends run: each line left in ./say goes to its log.
ECHO = """\
import os, sys, time
print("harness up", flush=True)
while True:
    try:
        with open("say") as f:
            text = f.read()
    except FileNotFoundError:
        time.sleep(0.02)
        continue
    os.unlink("say")
    print(text, flush=True)
"""


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


class Subject:
    """One backend under the contract, with the hooks a test needs to drive it."""

    backend: Backend

    def __init__(self, tmp_path):
        self.layout = Layout(str(tmp_path / "state"))
        self.layout.makedirs()

    def home(self, name):
        return self.layout.home(name)

    def launch(self, name):
        """A Launch made whole, as `Lifecycle.launch` makes it, with the dirs the core makes before a start."""
        layout = self.layout
        os.makedirs(layout.state(name), exist_ok=True)
        os.makedirs(os.path.dirname(layout.socket(name)), exist_ok=True)
        open(layout.socket(name), "a").close()  # the core opens the agent's socket before its start
        env = {"PATH": os.environ.get("PATH", ""), "HIVE_NAME": name, "HIVE_SOCKET": layout.socket(name),
               "HIVE_STATE_DIR": layout.state(name), "HIVE_PAUSE_FILE": layout.pause_marker(name),
               "HOME": layout.state(name)}
        return Launch(name, "agent", self.argv(name), env, layout.state(name), layout.home(name),
                      layout.log(name), shared_dir=layout.shared_dir,
                      hidden_dirs=(layout.state_dir, layout.run_dir))

    def argv(self, name):
        script = os.path.join(os.path.dirname(self.layout.state_dir), "bin", "echo.py")
        if not os.path.exists(script):
            os.makedirs(os.path.dirname(script), exist_ok=True)
            files.replace(script, ECHO, 0o755)
        return [PYTHON, script, self.layout.state(name)]  # the last word tells this test's harnesses apart

    def say(self, launch, line):
        """Make the agent's harness write `line` to its log."""
        files.replace(os.path.join(launch.state_dir, "say"), line, 0o644)

    def instances(self, launch):
        """How many harnesses run for the launch now: each process tree whose top runs its argv.

        A child of this test caught between fork and exec (its command line
        still empty) is waited for, so a harness just started counts."""
        def look():
            mine = {}
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                pid = int(entry)
                argv = _cmdline(pid)
                if argv[-len(launch.argv):] == launch.argv:
                    mine[pid] = _parent(pid)
                elif not argv and _parent(pid) == os.getpid() and not _zombie(pid):
                    return None
            return [len([pid for pid, parent in mine.items() if parent not in mine])]

        return wait_until(look, 10, f"every new process of {launch.name}'s to show its command line")[0]

    def close(self):
        for name in os.listdir(self.layout.agents_dir):
            self.backend.kill(name, self.home(name))


class ProcessSubject(Subject):
    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.backend = ProcessBackend()


class BwrapSubject(Subject):
    def __init__(self, tmp_path):
        ok, why = BwrapBackend.works()
        if not ok:
            if os.environ.get("HIVE_REQUIRE_BWRAP") == "1":
                pytest.fail(f"HIVE_REQUIRE_BWRAP=1, but {why}")
            pytest.skip(why)
        super().__init__(tmp_path)
        self.backend = BwrapBackend()


class FakeSubject(Subject):
    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        self.backend = RecordingBackend()

    def say(self, launch, line):
        with open(launch.log_path, "a") as f:  # the fake reads the log the process backend would write
            f.write(line + "\n")

    def instances(self, launch):
        return len([one for one in self.backend.launches if one.name == launch.name]) \
            if launch.name in self.backend.up else 0


class NixosSubject(Subject):
    """The nixos backend against tests/fakebin's nixos-container, nix and journalctl (see test_nixos.py)."""

    def __init__(self, tmp_path, monkeypatch):
        from test_nixos import fake_nixos

        super().__init__(tmp_path)
        fakes = tmp_path / "nixos"
        fakes.mkdir()
        self.hive = fake_nixos(fakes, monkeypatch)
        self.backend = self.hive.backend

    def launch(self, name):
        self.hive.commit(name, f"# {name} v1\n")  # the meta flake builds h-<name> from its applied repo
        self.hive.sync(name)
        return dataclasses.replace(super().launch(name), argv=["unused"])

    def say(self, launch, line):
        state = json.loads(self.hive.state_path.read_text())
        state.setdefault("journal", {}).setdefault(f"h-{launch.name}", []).append(line)
        files.replace(str(self.hive.state_path), json.dumps(state), 0o644)

    def instances(self, launch):
        running = 0  # starts of h-<name> since its last stop or terminate
        for call in self.hive.calls():
            if call[:1] == ["nixos-container"] and call[2:3] == [f"h-{launch.name}"]:
                if call[1] == "start":
                    running += 1
                elif call[1] in ("stop", "terminate"):
                    running = 0
        return running


SUBJECTS = {"process": ProcessSubject, "bwrap": BwrapSubject, "nixos": NixosSubject, "fake": FakeSubject}


@pytest.fixture(params=sorted(SUBJECTS))
def subject(request, tmp_path, monkeypatch):
    cls = SUBJECTS[request.param]
    made = cls(tmp_path, monkeypatch) if cls is NixosSubject else cls(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_every_backend_of_the_registry_has_a_subject_here():
    assert set(containers.BACKENDS) | {"fake"} == set(SUBJECTS)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_backend_is_a_named_subclass_in_the_registry():
    found = [cls for cls in _subclasses(Backend) if cls.__module__.startswith("hyperhive.")]
    assert {cls.name for cls in found} == set(containers.BACKENDS)
    for cls in found:
        assert "name" in vars(cls) and isinstance(cls.name, str), f"{cls.__qualname__} names itself"
        assert containers.BACKENDS[cls.name] is cls
    assert RecordingBackend.name not in containers.BACKENDS


def test_every_backend_is_offered_by_name_wherever_backend_is():
    """`serve --backend`'s help, its usage, the README's options table and the NixOS module's enum."""
    from hyperhive import settings
    from hyperhive.core import daemon

    places = {"settings.SERVE_OPTIONS": dict((o, h) for o, _, h in settings.SERVE_OPTIONS)["--backend NAME"],
              "daemon's usage": next(ln for ln in daemon.__doc__.splitlines() if ln.strip().startswith("--backend")),
              "README.md": next(ln for ln in open(os.path.join(ROOT, "README.md")) if ln.startswith("| `--backend")),
              "nix/modules/hive-c0re.nix": next(ln for ln in open(os.path.join(ROOT, "nix", "modules", "hive-c0re.nix"))
                                                if "types.enum" in ln and '"process"' in ln)}
    for name in containers.BACKENDS:
        for where, text in places.items():
            assert re.search(rf"\b{name}\b", text), f"{where} does not offer the {name} backend: {text.strip()}"


def refused(code, action, *args, **kwargs):
    with pytest.raises(wire.HiveError) as e:
        action(*args, **kwargs)
    assert e.value.code == code, (e.value.code, str(e.value))
    return str(e.value)


# -- the contract ----------------------------------------------------------------------------------------


def test_what_the_class_says(subject):
    b = subject.backend
    assert isinstance(b, Backend) and isinstance(b.name, str) and b.name
    assert isinstance(b.watch_seconds, (int, float)) and b.watch_seconds > 0
    works = type(b).works()
    assert isinstance(works, tuple) and isinstance(works[0], bool) and isinstance(works[1], str), works
    ids = b.ids("a")
    assert ids is None or (len(ids) == 2 and all(isinstance(i, int) for i in ids)), ids


def test_started_runs_and_stopped_does_not(subject):
    b, launch = subject.backend, subject.launch("a")
    b.start(launch)
    assert b.running("a", launch.home_dir) is True
    assert subject.instances(launch) == 1
    code = b.exit_code("a")
    assert code is None or isinstance(code, int)
    assert b.stop("a", launch.home_dir) is True
    assert b.running("a", launch.home_dir) is False
    wait_until(lambda: subject.instances(launch) == 0, 10, "nothing of a's harness left")
    code = b.exit_code("a")
    assert code is None or isinstance(code, int)


def test_a_stop_right_after_the_start_does_not_wait_out_its_timeout(subject):
    b, launch = subject.backend, subject.launch("a")
    b.start(launch)
    asked = time.monotonic()
    assert b.stop("a", launch.home_dir) is True  # the harness ends on its stop signal: no kill at 60 s
    assert time.monotonic() - asked < 30 and b.running("a", launch.home_dir) is False


def test_a_second_start_is_a_conflict_and_leaves_nothing_extra(subject):
    b, launch = subject.backend, subject.launch("a")
    b.start(launch)
    refused("conflict", b.start, launch)
    assert b.running("a", launch.home_dir) is True and subject.instances(launch) == 1


def test_kill_ends_it_now(subject):
    b, launch = subject.backend, subject.launch("a")
    b.start(launch)
    assert b.kill("a", launch.home_dir) is True
    assert b.running("a", launch.home_dir) is False
    wait_until(lambda: subject.instances(launch) == 0, 10, "nothing of a's harness left")
    assert isinstance(b.destroy("a"), bool)


def test_an_agent_never_started_is_not_running_and_stopping_it_is_no_error(subject):
    b, home = subject.backend, subject.home("ghost")
    assert b.running("ghost", home) is False
    assert b.stop("ghost", home) is False
    assert b.stop("ghost", home, graceful=False) is False
    assert b.kill("ghost", home) is False
    assert b.sweep("ghost", home) == 0
    assert b.destroy("ghost") is False
    code = b.exit_code("ghost")
    assert code is None or isinstance(code, int)


def test_sweep_counts_what_it_killed(subject):
    b, launch = subject.backend, subject.launch("a")
    b.start(launch)
    b.stop("a", launch.home_dir)
    swept = b.sweep("a", launch.home_dir)
    assert isinstance(swept, int) and not isinstance(swept, bool) and swept >= 0


def test_no_log_yet_is_no_lines_and_the_same_cursor(subject):
    b, home = subject.backend, subject.home("ghost")
    assert b.log_tail("ghost", home) == ([], None)
    assert b.log_tail("ghost", home, "kept") == ([], "kept")


def _read_until(b, launch, cursor, line):
    """log_tail from cursor until `line` shows; everything read on the way, and the last cursor."""
    got = []

    def more():
        nonlocal cursor
        lines, cursor = b.log_tail(launch.name, launch.home_dir, cursor)
        got.extend(lines)
        return any(line in one for one in got)

    wait_until(more, 15, f"{line!r} in {launch.name}'s log")
    return got, cursor


def test_the_log_cursor_yields_only_what_is_new(subject):
    b, launch = subject.backend, subject.launch("a")
    b.start(launch)
    subject.say(launch, "first words")
    got, cursor = _read_until(b, launch, None, "first words")
    assert isinstance(cursor, str) and cursor
    subject.say(launch, "second words")
    got, after = _read_until(b, launch, cursor, "second words")
    assert not any("first words" in one for one in got), got
    assert b.log_tail("a", launch.home_dir, after) == ([], after), "nothing new keeps the cursor"
    tail, _ = b.log_tail("a", launch.home_dir, lines=1)
    assert len(tail) == 1 and "second words" in tail[0]


def test_a_cursor_not_recognized_reads_from_the_tail(subject):
    b, launch = subject.backend, subject.launch("a")
    b.start(launch)
    subject.say(launch, "only words")
    _read_until(b, launch, None, "only words")
    for stranger in ("not-a-cursor", "1:2:3", "h-zz:99"):
        lines, cursor = b.log_tail("a", launch.home_dir, stranger)
        assert any("only words" in one for one in lines), (stranger, lines)
        assert b.log_tail("a", launch.home_dir, cursor) == ([], cursor)


def test_update_is_refused_without_a_meta_flake(subject):
    b = subject.backend
    subject.launch("a")  # an agent the backend knows of (the meta flake's input, under nixos), not started
    if b.meta is not None:
        assert b.update_all() == [] and b.meta is not None  # no container yet: nothing rebuilt
    else:
        assert "no meta flake" in refused("conflict", b.update_all)

"""Claude's login: the probe, `claude auth login` over pipes, the parked loop, the page, end to end.

The probe is fed scripted `auth status` runs and, once, the real CLI's
(skipped without it unless HIVE_REQUIRE_CLAUDE=1). LoginSession drives
tests/fakeclaude.py's `auth login`, which prints the real CLI's lines and
takes FAKE_CLAUDE_LOGIN_CODE. The turn loop runs with a scripted core client
and a recording sleep, so parking and re-probing are stepped, never slept.
The page is called in process as WSGI (tests/wsgi.py). The last test is a
real core on the process backend without an API key: the agent parks, the
manager hears of it, the operator logs it in through the dashboard's proxy,
and the next message runs a turn. Every wait is on a condition with a
deadline.

Proves: an API key counts without running anything; `auth status` JSON
is read for logged in / not, and garbage, a missing binary or a timeout
count as not logged in with a sentence; the real CLI's shapes with and
without a key; the session's URL, code, output, exit and cancel; the loop
reports at boot, receives nothing while parked, re-probes every 30 stepped
seconds and at once after a login that ended well, and probes again after
a turn that says "Please run /login"; the page's status words, session
view, routes and refusals.
"""

import json
import os
import re
import shutil
import subprocess

import gevent
import gevent.lock
import pytest

import wsgi
from conftest import FAKE_CLAUDE, ROOT, Hive, browser_missing, green_wait, running, wait_until
from fakecore import FakeCore, ok
from fakes import IdleEngine
from hyperhive import wire
from hyperhive.harness import login as loginmod
from hyperhive.harness import loginsession, turnloop, webui
from hyperhive.harness.bus import Bus
from hyperhive.harness.claude import Outcome
from hyperhive.harness.login import Login, probe
from hyperhive.harness.loginsession import LoginSession
from hyperhive.harness.session import Session
from hyperhive.schema import agent_db, open_agent

WAIT = 15.0
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
CODE = "fake-code#fake-state"
SECRET = "cd" * 32
REAL_CLAUDE = (os.environ.get("HIVE_TEST_CLAUDE")
               or os.path.join(ROOT, "tests", "node", "node_modules", ".bin", "claude"))
# The real CLI's result line for a turn without a login (2.1.197, measured), trimmed to what is read.
NOT_LOGGED_IN_RESULT = {"type": "result", "subtype": "success", "is_error": True, "num_turns": 1,
                        "result": "Not logged in · Please run /login", "terminal_reason": "completed"}


# -- helpers -------------------------------------------------------------------------------

def keyless_env(home, **extra):
    """An environment without any API key, HOME in a temp dir (where the fake records its login)."""
    env = {k: v for k, v in os.environ.items() if k not in loginmod.KEY_VARS}
    env.update(HOME=str(home), FAKE_CLAUDE_LOGIN_CODE=CODE, **extra)
    return env


class StatusRun:
    """`subprocess.run` for `claude auth status`, scripted: records each argv, answers as told."""

    def __init__(self, logged_in=False, stdout=None, code=None, raises=None):
        self.logged_in, self.stdout, self.code, self.raises = logged_in, stdout, code, raises
        self.argvs = []

    def __call__(self, argv, **kwargs):
        self.argvs.append(argv)
        assert kwargs["timeout"] == loginmod.STATUS_TIMEOUT
        if self.raises is not None:
            raise self.raises
        if self.stdout is not None:
            return subprocess.CompletedProcess(argv, self.code or 0, self.stdout, b"")
        answer = {"loggedIn": self.logged_in, "authMethod": "claude.ai" if self.logged_in else "none",
                  "apiProvider": "firstParty"}
        return subprocess.CompletedProcess(argv, 0 if self.logged_in else 1, json.dumps(answer).encode(), b"")


class Client:
    """The core as the loop sees it: every call recorded; report_login may be refused."""

    def __init__(self, messages=None, refuse_report=False):
        self.calls = []
        self.messages = list(messages or [])
        self.refuse_report = refuse_report

    def call(self, verb, timeout=30.0, **args):
        self.calls.append((verb, args))
        if verb == "report_login":
            if self.refuse_report:
                raise wire.HiveError("unknown verb 'report_login'", "unknown_verb")
            return {"changed": True}
        if verb == "recv":
            return {"messages": [self.messages.pop(0)] if self.messages else [], "unread": 0}
        return {"requeue_inflight": {"requeued": 0}, "ack_turn": {"acked": 1}}[verb]

    def try_call(self, verb, timeout=5.0, **args):
        return None

    def verbs(self):
        return [verb for verb, _ in self.calls]

    def reports(self):
        return [args for verb, args in self.calls if verb == "report_login"]


class Runner:
    def __init__(self, outcome=None):
        self.outcome = outcome or Outcome("ok")
        self.prompts = []

    def __call__(self, prompt, resume):
        self.prompts.append(prompt)
        return self.outcome


def message(body="hello"):
    return {"id": 1, "from": "operator", "body": body, "sent_at": "2026-01-01T00:00:00.000Z",
            "redelivered": False, "file_refs": []}


def events(bus, kind):
    return [e for e in bus.history(limit=2000) if e["kind"] == kind]


@pytest.fixture
def bus(tmp_path):
    open_agent(os.path.join(tmp_path, "events.sqlite"))
    yield Bus(str(tmp_path))
    agent_db.close()


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


def fake_login(bus, home, client=None, run=subprocess.run, **kwargs):
    """A Login whose claude is the fake, with no API key and HOME in `home`."""
    sleeps = []
    login = Login(FAKE_CLAUDE, keyless_env(home), str(home), client or Client(), bus, sleep=sleeps.append,
                  run=run, **kwargs)
    login.sleeps = sleeps
    return login


# -- the probe ------------------------------------------------------------------------------

@pytest.mark.parametrize("var", loginmod.KEY_VARS)
def test_an_api_key_in_the_environment_counts_without_running_claude(var):
    run = StatusRun(raises=AssertionError("claude must not run when a key is set"))
    assert probe("claude", {var: "sk-ant-x"}, run=run) == (True, "")
    assert run.argvs == []


def test_an_empty_api_key_does_not_count():
    run = StatusRun(logged_in=False)
    logged_in, note = probe("claude", {"ANTHROPIC_API_KEY": "  "}, run=run)
    assert not logged_in and run.argvs == [["claude", "auth", "status"]]
    assert note == "claude is not logged in (auth method none); log it in on the agent's page"


def test_auth_status_json_is_read_for_logged_in_and_not():
    assert probe("/bin/claude", {}, run=StatusRun(logged_in=True)) == (True, "")
    logged_in, note = probe("/bin/claude", {}, run=StatusRun(logged_in=False))
    assert logged_in is False and "not logged in" in note


@pytest.mark.parametrize("stdout, says", [
    (b"", "said: nothing"),
    (b"Error: something broke\n", "said: Error: something broke"),
    (b'{"authMethod": "none"}', "'loggedIn'"),
    (b'{"loggedIn": "yes"}', "loggedIn is not true or false"),
    (b"[1, 2]", "said: [1, 2]"),
])
def test_output_without_the_login_json_is_not_logged_in_with_what_it_said(stdout, says):
    logged_in, note = probe("claude", {}, run=StatusRun(stdout=stdout, code=2))
    assert logged_in is False
    assert note.startswith("`claude auth status` exited 2 without the login JSON") and says in note, note


def test_a_missing_binary_or_a_timeout_is_not_logged_in_with_a_sentence(tmp_path):
    logged_in, note = probe(str(tmp_path / "no-claude"), {})  # the real subprocess.run
    assert logged_in is False
    assert note.startswith(f"could not run `{tmp_path}/no-claude auth status`: No such file or directory")
    assert "HIVE_CLAUDE_BIN" in note
    hung = StatusRun(raises=subprocess.TimeoutExpired(["claude"], loginmod.STATUS_TIMEOUT))
    logged_in, note = probe("claude", {}, run=hung)
    assert logged_in is False and note.startswith("`claude auth status` did not answer within 20s")


def test_the_real_cli_auth_status_is_read_right(tmp_path):
    if not os.path.exists(REAL_CLAUDE):
        if os.environ.get("HIVE_REQUIRE_CLAUDE") == "1":
            pytest.fail(f"HIVE_REQUIRE_CLAUDE=1 but there is no claude at {REAL_CLAUDE}; run npm ci --prefix tests/node")
        pytest.skip("no Claude Code CLI: set HIVE_TEST_CLAUDE or run `npm ci --prefix tests/node`")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           # offline: nothing is listening there, and it is never asked
           "ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "DISABLE_AUTOUPDATER": "1"}
    logged_in, note = probe(REAL_CLAUDE, env, cwd=str(tmp_path))
    assert (logged_in, note) == (False, "claude is not logged in (auth method none); log it in on the agent's page")
    # with a key the probe never runs claude; its logged-in answer is read through the runner instead
    keyed = subprocess.run([REAL_CLAUDE, "auth", "status"], env=dict(env, ANTHROPIC_API_KEY="sk-ant-test-x"),
                           cwd=str(tmp_path), capture_output=True, timeout=60)
    assert keyed.returncode == 0 and json.loads(keyed.stdout)["authMethod"] == "api_key"
    assert probe(REAL_CLAUDE, env, run=lambda argv, **kw: keyed) == (True, "")


def test_a_key_is_checked_against_the_api_where_claude_would_send_it():
    from mockapi import MockAnthropic, text

    with MockAnthropic(lambda request: text("x")) as mock:
        mock.accept_key = lambda key: key == "sk-good"
        env = {"ANTHROPIC_BASE_URL": mock.base_url}
        assert loginmod.verify_key(dict(env, ANTHROPIC_API_KEY="sk-good")) == (True, "")
        refused, why = loginmod.verify_key(dict(env, ANTHROPIC_API_KEY="sk-bad"))
        assert refused is False
        assert why.startswith("the API refuses the key in ANTHROPIC_API_KEY (401: invalid x-api-key)")
        assert loginmod.verify_key(dict(env, ANTHROPIC_AUTH_TOKEN="sk-good"))[0] is True  # as a bearer token
        assert mock.model_checks == 2 and mock.refused == [("/v1/models", None)]
    unknown, why = loginmod.verify_key({"ANTHROPIC_BASE_URL": "http://127.0.0.1:9", "ANTHROPIC_API_KEY": "k"})
    assert unknown is None and "could not ask http://127.0.0.1:9/v1/models" in why


class Verdicts:
    """What the API says of a key, scripted: records each check."""

    def __init__(self, *verdicts):
        self.verdicts, self.checks = list(verdicts), 0

    def __call__(self, env):
        self.checks += 1
        return self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]


REFUSED = "the API refused claude's login (401 authentication_failed)"
BAD_KEY = ("the API refuses the key in ANTHROPIC_API_KEY (401: invalid x-api-key); turns resume by themselves once "
           "it takes the key again (a new key needs a restart of the agent)")


def test_a_refused_key_parks_the_loop_tells_the_core_once_and_resumes_when_the_api_takes_it(bus, tmp_path):
    client = Client(messages=[message("first"), message("second")])
    verdicts = Verdicts((False, BAD_KEY))
    sleeps = []
    login = Login(FAKE_CLAUDE, {"ANTHROPIC_API_KEY": "sk-bad"}, str(tmp_path), client, bus, sleep=sleeps.append,
                  verify=verdicts, state_dir=str(tmp_path))
    runner = Runner(Outcome("auth_failed", REFUSED))
    loop = turnloop.TurnLoop(client, bus, runner, lambda: Outcome("ok"), Session(bus.state_dir),
                             sleep=sleeps.append, login=login)
    loop.boot()
    assert client.reports() == [{"logged_in": True}] and verdicts.checks == 0, "a key is trusted until refused"
    loop.step()
    assert client.verbs()[-3:] == ["recv", "requeue_inflight", "report_login"], "requeued, not acked, reported"
    assert client.reports()[-1] == {"logged_in": False, "note": BAD_KEY}
    assert login.status == "needs_login_idle" and verdicts.checks == 1 and loop.failures == 0
    assert any("its message(s) wait in the queue until claude can run again" in e["text"]
               for e in events(bus, "note"))
    for _ in range(int(loginmod.REPROBE_SECONDS / loginmod.PARK_SLICE) * 3):
        assert loop.step() is None
    assert len(runner.prompts) == 1 and client.verbs().count("recv") == 1, "parked: no turn is spent"
    assert verdicts.checks == 4 and len(client.reports()) == 2, "checked every 30 s, told once"
    verdicts.verdicts = [(True, "")]
    runner.outcome = Outcome("ok")
    for _ in range(int(loginmod.REPROBE_SECONDS / loginmod.PARK_SLICE) + 1):
        loop.step()
    assert client.reports()[-1] == {"logged_in": True} and login.status == "online"
    assert runner.prompts[-1].endswith("second") and client.verbs().count("ack_turn") == 1
    assert not os.path.exists(os.path.join(tmp_path, loginmod.REFUSED_FILE))


def test_a_refusal_outlives_a_restart_so_no_turn_is_spent_to_learn_it_again(bus, tmp_path):
    env = {"ANTHROPIC_API_KEY": "sk-bad"}
    first = Login(FAKE_CLAUDE, env, str(tmp_path), Client(), bus, sleep=lambda s: None,
                  verify=Verdicts((False, BAD_KEY)), state_dir=str(tmp_path))
    first.refused(REFUSED)
    verdicts = Verdicts((False, BAD_KEY))
    restarted = Login(FAKE_CLAUDE, env, str(tmp_path), Client(), bus, sleep=lambda s: None, verify=verdicts,
                      state_dir=str(tmp_path))
    assert restarted.check() is False and verdicts.checks == 1
    other = Login(FAKE_CLAUDE, {"ANTHROPIC_API_KEY": "sk-new"}, str(tmp_path), Client(), bus, sleep=lambda s: None,
                  verify=Verdicts((False, "must not be asked")), state_dir=str(tmp_path))
    assert other.check() is True, "another key is another login: it gets its chance"
    assert not os.path.exists(os.path.join(tmp_path, loginmod.REFUSED_FILE))


def test_a_refused_credentials_login_waits_for_the_operator_to_log_in_anew(bus, home):
    credentials = home / ".claude" / ".credentials.json"
    credentials.parent.mkdir()
    credentials.write_text('{"token": "revoked"}')
    client = Client()
    login = Login(FAKE_CLAUDE, keyless_env(home), str(home), client, bus, sleep=lambda s: None,
                  run=StatusRun(logged_in=True), verify=Verdicts((False, "must not be asked")), state_dir=str(home))
    login.refused("the API refused claude's login (401 authentication_failed)")
    assert login.status == "needs_login_idle"
    assert client.reports()[-1]["note"] == ("the API refused claude's login (401 authentication_failed); log claude "
                                            "in again on the agent's page")
    assert login.check() is False, "auth status still says logged in, but the API said otherwise"
    credentials.write_text('{"token": "fresh"}')  # what a new `claude auth login` leaves
    assert login.check() is True and client.reports()[-1] == {"logged_in": True}


def test_a_missing_claude_is_its_own_state_not_a_login_to_fix(bus, tmp_path):
    client = Client(messages=[message()])
    claude = tmp_path / "bin" / "claude"
    sleeps = []
    login = Login(str(claude), {"ANTHROPIC_API_KEY": "k"}, str(tmp_path), client, bus, sleep=sleeps.append)
    loop = turnloop.TurnLoop(client, bus, Runner(), lambda: Outcome("ok"), Session(bus.state_dir),
                             sleep=sleeps.append, login=login)
    loop.boot()
    assert login.status == "claude_missing"
    [report] = client.reports()
    assert report["logged_in"] is False and report["claude_missing"] is True
    assert report["note"].startswith(f"claude not found at {claude}; install Claude Code there")
    assert [e["status"] for e in events(bus, "status_changed")] == ["claude_missing"]
    for _ in range(int(loginmod.REPROBE_SECONDS / loginmod.PARK_SLICE)):
        loop.step()
    assert "recv" not in client.verbs(), "parked: the message waits"
    claude.parent.mkdir()
    shutil.copy(FAKE_CLAUDE, claude)
    for _ in range(int(loginmod.REPROBE_SECONDS / loginmod.PARK_SLICE)):
        loop.step()
    assert login.status == "online" and client.reports()[-1] == {"logged_in": True}
    assert client.verbs()[-1] == "ack_turn"


def test_a_turn_that_could_not_start_claude_checks_it_before_the_next_recv(bus, tmp_path):
    client = Client(messages=[message(), message()])
    claude = tmp_path / "claude"
    shutil.copy(FAKE_CLAUDE, claude)
    login = Login(str(claude), {"ANTHROPIC_API_KEY": "k"}, str(tmp_path), client, bus, sleep=lambda s: None)
    runner = Runner(Outcome("claude_missing", f"claude not found at {claude} (No such file or directory)"))
    loop = turnloop.TurnLoop(client, bus, runner, lambda: Outcome("ok"), Session(bus.state_dir),
                             sleep=lambda s: None, login=login)
    loop.boot()
    os.unlink(claude)  # removed between the check at boot and the turn
    loop.step()
    assert client.verbs()[-1] == "requeue_inflight" and login.recheck
    recvs = client.verbs().count("recv")
    assert loop.step() is None and login.status == "claude_missing"
    assert client.verbs().count("recv") == recvs


# -- one `claude auth login` -------------------------------------------------------------------

def test_the_right_code_logs_in_and_the_probe_then_says_so(home):
    env = keyless_env(home)
    ended = []
    session = LoginSession(FAKE_CLAUDE, env, str(home), on_exit=ended.append)
    green_wait(lambda: "Paste code here if prompted > " in session.output, "the prompt without a newline")
    assert session.url.startswith("https://claude.com/cai/oauth/authorize?code=true&client_id=")
    assert session.url.endswith("&state=fake-state"), "the whole URL, up to the end of its line"
    assert session.output.startswith("Opening browser to sign in…\nIf the browser didn't open, visit: https://")
    assert not session.finished and session.exit_code is None
    assert probe(FAKE_CLAUDE, env, cwd=str(home))[0] is False
    session.submit_code(f"  {CODE}\n")  # pasted with blanks around it
    assert session.done.wait(WAIT)
    assert (session.finished, session.exit_code, session.exit_note) == (True, 0, "claude auth login succeeded")
    assert session.output.endswith("> Login successful.\n")
    assert ended == [session]
    assert probe(FAKE_CLAUDE, env, cwd=str(home)) == (True, "")
    with pytest.raises(wire.HiveError) as late:
        session.submit_code(CODE)
    assert late.value.code == "conflict" and "start a new one" in str(late.value)


def test_a_wrong_code_ends_with_the_clis_own_words(home):
    session = LoginSession(FAKE_CLAUDE, keyless_env(home), str(home))
    green_wait(lambda: session.url, "the URL")
    session.submit_code("not-the-code#x")
    assert session.done.wait(WAIT)
    assert session.exit_code == 1
    assert "Invalid code. Please make sure the full code was copied." in session.output
    assert session.exit_note == ("claude auth login failed (exit 1): Invalid code. Please make sure the full code "
                                 "was copied. Start a new login to retry.")
    assert probe(FAKE_CLAUDE, keyless_env(home), cwd=str(home))[0] is False


def test_bad_codes_are_refused_before_they_reach_the_cli(home):
    session = LoginSession(FAKE_CLAUDE, keyless_env(home), str(home))
    try:
        for bad, says in (("", "'code' is required"), ("   ", "'code' is required"), (None, "'code' is required"),
                          ("a\nb", "one line"), ("x" * (loginsession.CODE_MAX + 1), "characters")):
            with pytest.raises(wire.HiveError) as refused:
                session.submit_code(bad)
            assert refused.value.code == "bad_argument" and says in str(refused.value)
        assert not session.finished
    finally:
        session.cancel()


def test_cancel_stops_it_and_finished_follows(home):
    session = LoginSession(FAKE_CLAUDE, keyless_env(home), str(home))
    green_wait(lambda: session.url, "the URL")
    pid = session.proc.pid
    session.cancel()
    assert session.finished and session.exit_note == "the login was cancelled"
    assert session.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    session.cancel()  # twice is harmless


def test_a_cli_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    stubborn = tmp_path / "claude"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\necho 'visit: https://example.test/x'\n"
                        "while :; do sleep 0.05; done\n")
    stubborn.chmod(0o755)
    session = LoginSession(str(stubborn), dict(os.environ), str(tmp_path), grace=0.2)
    green_wait(lambda: session.url, "the URL")
    session.cancel()
    assert session.finished and session.exit_code == -9


def test_a_child_left_holding_the_pipe_does_not_keep_the_session_open(tmp_path):
    leaver = tmp_path / "claude"
    # a browser opener the CLI started may outlive it with the CLI's stdout
    leaver.write_text("#!/bin/sh\necho 'visit: https://example.test/x'\nsleep 60 &\necho $! > opener.pid\nexit 3\n")
    leaver.chmod(0o755)
    session = LoginSession(str(leaver), dict(os.environ), str(tmp_path))
    try:
        assert session.done.wait(WAIT)
        assert session.exit_code == 3 and session.output == "visit: https://example.test/x\n"
    finally:
        os.kill(int((tmp_path / "opener.pid").read_text()), 9)


def test_a_missing_cli_is_a_sentence_not_a_session(tmp_path):
    with pytest.raises(wire.HiveError) as refused:
        LoginSession(str(tmp_path / "nope"), {}, str(tmp_path))
    assert refused.value.code == "unavailable"
    assert f"could not run `{tmp_path}/nope auth login`" in str(refused.value)


def test_output_is_bounded_to_its_newest_part(tmp_path):
    loud = tmp_path / "claude"
    loud.write_text("#!/bin/sh\necho 'visit: https://example.test/first'\nhead -c 200000 /dev/zero | tr '\\0' x\n"
                    "echo\necho the-end\n")
    loud.chmod(0o755)
    session = LoginSession(str(loud), dict(os.environ), str(tmp_path))
    assert session.done.wait(WAIT)
    assert len(session.output) == loginsession.OUTPUT_MAX and session.output.endswith("x\nthe-end\n")
    assert session.url == "https://example.test/first", "the URL stays once seen"


# -- the loop waits for a login ------------------------------------------------------------------

def test_the_loop_parks_without_a_login_and_proceeds_once_logged_in(bus):
    status = StatusRun(logged_in=False)
    client = Client(messages=[message("FAKE: say hi")])
    sleeps = []
    login = Login(FAKE_CLAUDE, {}, "/nonexistent", client, bus, sleep=sleeps.append, run=status)
    runner = Runner()
    loop = turnloop.TurnLoop(client, bus, runner, lambda: Outcome("ok"), Session(bus.state_dir), sleep=sleeps.append,
                             login=login)
    assert login.status == "online", "nothing is claimed before the first probe"
    loop.boot()
    assert client.verbs() == ["requeue_inflight", "report_login"]
    assert client.reports() == [{"logged_in": False,
                                 "note": "claude is not logged in (auth method none); log it in on the agent's page"}]
    assert login.status == "needs_login_idle"
    assert [e["status"] for e in events(bus, "status_changed")] == ["needs_login_idle"]
    for _ in range(29):
        assert loop.step() is None
    assert "recv" not in client.verbs() and len(status.argvs) == 1, "parked: no recv, no probe yet"
    assert sleeps == [loginmod.PARK_SLICE] * 29
    assert loop.step() is None
    assert len(status.argvs) == 2 and client.reports()[1:] == [], "30 s: probed again; no change, no report"
    status.logged_in = True
    for _ in range(30):
        loop.step()
    assert len(status.argvs) == 3
    assert client.reports()[1:] == [{"logged_in": True}]
    assert login.status == "online" and [e["status"] for e in events(bus, "status_changed")][-1] == "online"
    assert "recv" in client.verbs() and runner.prompts and "FAKE: say hi" in runner.prompts[0]
    assert client.verbs()[-1] == "ack_turn"


def test_a_logged_in_boot_is_still_reported_and_runs_at_once(bus):
    client = Client()
    login = Login(FAKE_CLAUDE, {"ANTHROPIC_API_KEY": "k"}, "/nonexistent", client, bus, sleep=pytest.fail)
    loop = turnloop.TurnLoop(client, bus, Runner(), lambda: Outcome("ok"), Session(bus.state_dir), sleep=pytest.fail,
                             login=login)
    loop.boot()
    loop.step()
    assert client.verbs() == ["requeue_inflight", "report_login", "recv"]
    assert client.reports() == [{"logged_in": True}], "a core that thought it needed a login learns"
    assert events(bus, "status_changed") == [], "online from the start: no flip"


def test_a_login_that_ends_well_is_probed_at_the_next_step(bus, home):
    client = Client(messages=[message()])
    login = fake_login(bus, home, client)
    loop = turnloop.TurnLoop(client, bus, Runner(), lambda: Outcome("ok"), Session(bus.state_dir), sleep=login.sleep,
                             login=login)
    loop.boot()
    assert login.status == "needs_login_idle"
    session = login.start()
    assert login.status == "needs_login_in_progress"
    green_wait(lambda: session.url, "the URL")
    login.submit_code(CODE)
    assert session.done.wait(WAIT) and session.exit_code == 0
    assert login.recheck
    loop.step()  # no 30 s wait: the recheck probes before any slice
    assert login.sleeps == [] and login.status == "online" and login.session is None
    assert [r["logged_in"] for r in client.reports()] == [False, True]
    assert "recv" in client.verbs()
    statuses = [e["status"] for e in events(bus, "status_changed")]
    assert statuses == ["needs_login_idle", "needs_login_in_progress", "needs_login_in_progress", "online"]


def test_a_turn_that_says_please_run_login_parks_before_the_next_recv(bus, home):
    status = StatusRun(logged_in=True)
    client = Client(messages=[message(), message()])
    runner = Runner(Outcome("auth_failed", "the API refused claude's login: Not logged in · Please run /login",
                            NOT_LOGGED_IN_RESULT))
    login = Login(FAKE_CLAUDE, keyless_env(home), str(home), client, bus, sleep=lambda s: None, run=status)
    loop = turnloop.TurnLoop(client, bus, runner, lambda: Outcome("ok"), Session(bus.state_dir),
                             sleep=lambda s: None, login=login)
    loop.boot()
    loop.step()
    assert len(status.argvs) == 2, "probed at once after the refusal"
    assert login.status == "needs_login_idle"
    recvs = client.verbs().count("recv")
    assert loop.step() is None
    assert client.verbs().count("recv") == recvs, "parked before receiving"
    assert [r["logged_in"] for r in client.reports()] == [True, False]


def test_an_ordinary_failed_turn_does_not_probe(bus):
    status = StatusRun(logged_in=True)
    client = Client(messages=[message()])
    login = Login(FAKE_CLAUDE, {}, "/nonexistent", client, bus, sleep=lambda s: None, run=status)
    loop = turnloop.TurnLoop(client, bus, Runner(Outcome("failed", "claude exited with code 1 without a result "
                                                                   "line")),
                             lambda: Outcome("ok"), Session(bus.state_dir), sleep=lambda s: None, login=login)
    loop.boot()
    loop.step()
    loop.step()
    assert len(status.argvs) == 1 and not login.recheck


def test_a_core_that_refuses_report_login_does_not_stop_the_loop(bus):
    client = Client(refuse_report=True)
    login = Login(FAKE_CLAUDE, {"ANTHROPIC_API_KEY": "k"}, "/nonexistent", client, bus, sleep=lambda s: None)
    loop = turnloop.TurnLoop(client, bus, Runner(), lambda: Outcome("ok"), Session(bus.state_dir),
                             sleep=lambda s: None, login=login)
    loop.boot()
    loop.step()
    assert client.verbs() == ["requeue_inflight", "report_login", "recv"]
    assert any("could not tell the core about claude's login: unknown verb" in e["text"]
               for e in events(bus, "note"))


# -- the page ------------------------------------------------------------------------------------

class PageHarness:
    def __init__(self, bus, socket, login):
        self.name, self.role, self.socket, self.bus, self.login = "alice", "agent", socket, bus, login
        self.current = None
        self.engine = IdleEngine()
        self.loop = turnloop.TurnLoop(Client(), bus, Runner(), self.compact, Session(bus.state_dir),
                                      sleep=lambda s: None,
                                      turn_lock=gevent.lock.Semaphore(), login=login)

    def compact(self):
        return Outcome("ok")


@pytest.fixture
def page(bus, home, sockdir):
    core = FakeCore(sockdir / "agent.sock", {"inbox": ok(messages=[])})
    (sockdir / "web.secret").write_text(SECRET)
    login = fake_login(bus, home)
    harness = PageHarness(bus, core.path, login)
    app = webui.make_app(harness, str(sockdir / "web.secret"))
    yield app, login
    login.close()
    core.stop()


def ask(app, method, path, body=None):
    reply = wsgi.call(app, method, path, headers={"X-Hive-Secret": SECRET}, body=body)
    return reply.status, reply.json()


def test_the_page_drives_a_login_from_start_to_online(page, bus):
    app, login = page
    login.check()
    status, state = ask(app, "GET", "/api/state")
    assert status == 200 and state["status"] == "needs_login_idle" and "session" not in state
    status, answer = ask(app, "POST", "/login/code", {"code": CODE})
    assert (status, answer["code"]) == (409, "conflict")
    assert answer["error"] == "no login session is running; press log in first"
    status, answer = ask(app, "POST", "/login/start")
    assert status == 200 and answer["status"] == "needs_login_in_progress"
    session = login.session
    status, again = ask(app, "POST", "/login/start")
    assert status == 200 and login.session is session, "a running session is kept"
    green_wait(lambda: ask(app, "GET", "/api/state")[1]["session"]["url"], "the URL in the snapshot")
    state = ask(app, "GET", "/api/state")[1]
    assert state["status"] == "needs_login_in_progress"
    assert set(state["session"]) == {"url", "output", "finished", "exit_code", "exit_note"}
    assert state["session"]["url"].startswith("https://claude.com/cai/oauth/authorize?")
    assert "Paste code here if prompted > " in state["session"]["output"]
    status, answer = ask(app, "POST", "/login/code", {"code": ""})
    assert (status, answer["code"]) == (400, "bad_argument") and "'code' is required" in answer["error"]
    status, answer = ask(app, "POST", "/login/code", {"code": CODE})
    assert status == 200
    green_wait(lambda: ask(app, "GET", "/api/state")[1]["session"]["finished"], "the login to finish")
    session_view = ask(app, "GET", "/api/state")[1]["session"]
    assert session_view["exit_code"] == 0 and session_view["output"].endswith("Login successful.\n")
    assert login.ready() is True
    state = ask(app, "GET", "/api/state")[1]
    assert state["status"] == "online" and "session" not in state
    status, answer = ask(app, "POST", "/login/start")
    assert (status, answer["code"]) == (409, "conflict")
    assert answer["error"] == "claude is already logged in; there is nothing to log in to"
    assert [e["status"] for e in events(bus, "status_changed")] == [
        "needs_login_idle", "needs_login_in_progress", "needs_login_in_progress", "needs_login_in_progress",
        "online"]


def test_the_page_cancels_a_login(page, bus):
    app, login = page
    login.check()
    ask(app, "POST", "/login/start")
    session = login.session
    green_wait(lambda: session.url, "the URL")
    status, answer = ask(app, "POST", "/login/cancel")
    assert status == 200 and answer == {"ok": True, "status": "needs_login_idle", "session": None}
    assert session.done.wait(WAIT) and session.exit_note == "the login was cancelled"
    assert session.proc.poll() is not None
    assert ask(app, "GET", "/api/state")[1]["status"] == "needs_login_idle"
    assert ask(app, "POST", "/login/cancel")[0] == 200, "nothing to cancel is fine"
    assert [e["status"] for e in events(bus, "status_changed")][-2:] == ["needs_login_idle"] * 2
    # a wrong code ends the session; its output stays on the page until the next start
    ask(app, "POST", "/login/start")
    green_wait(lambda: login.session.url, "the URL")
    ask(app, "POST", "/login/code", {"code": "wrong#code"})
    green_wait(lambda: login.session.finished, "the wrong code to end it")
    view = ask(app, "GET", "/api/state")[1]["session"]
    assert view["exit_code"] == 1 and "Invalid code." in view["exit_note"]
    status, answer = ask(app, "POST", "/login/code", {"code": CODE})
    assert status == 409 and "start a new one" in answer["error"]
    first = login.session
    ask(app, "POST", "/login/start")
    assert login.session is not first and not login.session.finished, "a finished session is replaced"


def test_before_the_first_probe_the_page_is_online_and_start_waits(page):
    app, login = page
    assert ask(app, "GET", "/api/state")[1]["status"] == "online"
    status, answer = ask(app, "POST", "/login/start")
    assert status == 409 and answer["error"] == ("the harness has not checked claude's login yet; try again "
                                                 "in a moment")


# -- end to end on the process backend -------------------------------------------------------------

def dashboard(hive, method, path, body=None):
    return hive.dashboard(method, path, body)


def manager_heard(hive, text):
    return any(text in m["body"] for m in hive.agent_call("manager", "recent", limit=50)["messages"])


@pytest.fixture
def keyless_hive(tmp_path):
    # no --pass-env for a key: a harness gets only the variables passed on
    with running(Hive(tmp_path / "state", env={"FAKE_CLAUDE_LOGIN_CODE": CODE},
                      extra_args=["--pass-env", "FAKE_CLAUDE_LOGIN_CODE"])) as h:
        yield h


def test_an_agent_without_a_login_parks_until_the_operator_logs_it_in(keyless_hive):
    hive = keyless_hive
    hive.call("spawn", name="a")
    wait_until(lambda: (hive.row("a") or {}).get("needs_login"), 30, "a's row to say it needs a login")
    wait_until(lambda: manager_heard(hive, "[helper event] needs_login: a's claude has no valid login"), 30,
               "the manager to hear that a needs a login")
    assert hive.row("manager")["needs_login"], "the manager has no key either"
    hive.call("send", to="a", body="FAKE: send operator after-login")
    status, state = dashboard(hive, "GET", "/agent/a/api/state")
    assert status == 200 and state["status"] == "needs_login_idle"
    assert hive.claude_calls("a") == [], "parked: the message waits"
    status, answer = dashboard(hive, "POST", "/agent/a/login/code", {"code": CODE})
    assert status == 409 and answer["error"] == "no login session is running; press log in first"
    status, answer = dashboard(hive, "POST", "/agent/a/login/start", {})
    assert status == 200 and answer["status"] == "needs_login_in_progress"
    url = wait_until(lambda: (dashboard(hive, "GET", "/agent/a/api/state")[1].get("session") or {}).get("url"),
                     30, "the login URL on a's page")
    assert url.startswith("https://claude.com/cai/oauth/authorize?code=true")
    status, _ = dashboard(hive, "POST", "/agent/a/login/code", {"code": CODE})
    assert status == 200
    wait_until(lambda: hive.row("a")["needs_login"] is False, 30, "a's row to say it is logged in")
    wait_until(lambda: manager_heard(hive, "[helper event] logged_in: a's claude runs again"), 30,
               "the manager to hear that a is logged in")
    told = [m["body"] for m in hive.call("inbox", limit=50)["messages"] if m["from"] == "core"]
    assert [t.split(":")[0] for t in told if ": a's claude" in t] == ["[helper event] logged_in",
                                                                        "[helper event] needs_login"], \
        "the operator hears each change once"
    assert dashboard(hive, "GET", "/agent/a/api/state")[1]["status"] == "online"
    wait_until(lambda: "after-login" in [m["body"] for m in hive.call("inbox", limit=20)["messages"]], 30,
               "the waiting message to run a turn")
    assert len(hive.claude_calls("a")) == 1
    status, answer = dashboard(hive, "POST", "/agent/a/login/start", {})
    assert status == 409 and "already logged in" in answer["error"]


# -- the panel in a real browser -------------------------------------------------------------------

def test_the_agent_page_logs_claude_in_in_a_browser(keyless_hive):
    why = browser_missing()
    if why:
        if os.environ.get("HIVE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"HIVE_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    from playwright.sync_api import expect, sync_playwright

    hive = keyless_hive
    hive.call("spawn", name="a")
    wait_until(lambda: (hive.row("a") or {}).get("needs_login"), 30, "a's row to say it needs a login")
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                    headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                                         "--disable-background-networking", "--disable-dev-shm-usage"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(WAIT * 1000)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(hive.login_url())
            page.goto(f"{hive.url}/agent/a/")
            panel = page.locator("#login-panel")
            expect(panel).to_be_visible()
            expect(page.locator("#login-state")).to_have_text("not logged in")
            expect(page.locator("#status-chip")).to_have_text("needs login")
            expect(page.locator("#login-session")).to_be_hidden()

            page.click("#login-start")
            link = page.locator("#login-url")
            expect(link).to_have_attribute("href", re.compile(r"^https://claude\.com/cai/oauth/authorize\?code=true"))
            expect(link).to_have_attribute("target", "_blank")
            expect(link).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
            expect(page.locator("#login-output")).to_contain_text("Paste code here if prompted >")
            expect(page.locator("#login-cancel")).to_be_visible()
            expect(page.locator("#login-start")).to_be_hidden()

            page.fill("#login-code", "wrong#code")
            page.click("#login-code-send")
            expect(page.locator("#login-result")).to_contain_text("Invalid code. Please make sure the full code "
                                                                  "was copied.")
            expect(page.locator("#login-code-form")).to_be_hidden()
            expect(page.locator("#login-start")).to_have_text("log in again")
            os.makedirs(ARTIFACTS, exist_ok=True)
            page.screenshot(path=os.path.join(ARTIFACTS, "agent-login-failed.png"))

            page.click("#login-start")
            expect(page.locator("#login-code-form")).to_be_visible()
            page.click("#login-cancel")
            expect(page.locator("#login-session")).to_be_hidden()
            expect(page.locator("#login-state")).to_have_text("not logged in")

            page.click("#login-start")
            expect(link).to_have_attribute("href", re.compile(r"^https://"))
            page.fill("#login-code", CODE)
            page.press("#login-code", "Enter")
            expect(panel).to_be_hidden()  # status_changed online
            expect(page.locator("#status-chip")).to_be_hidden()
        finally:
            browser.close()
    assert not errors, f"errors in the page: {errors}"
    assert hive.row("a")["needs_login"] is False


# -- without claude at all -------------------------------------------------------------------------

def test_a_missing_claude_is_named_at_start_in_status_on_the_card_and_the_page(tmp_path):
    from conftest import pyz_argv

    missing = str(tmp_path / "nowhere" / "claude")
    with running(Hive(tmp_path / "state", claude=missing, env={"ANTHROPIC_API_KEY": "k"},
                      extra_args=["--pass-env", "ANTHROPIC_API_KEY"])) as hive:
        said = f"claude not found at {missing}; install Claude Code there or point the hive at it"
        assert said in hive.log().split("hive-c0re INFO serving")[0], "serve says so as it starts"
        hive.call("spawn", name="a")
        row = wait_until(lambda: (r := hive.row("a")) and r["claude_missing"] and r, 30, "a's row to name it")
        assert row["claude_missing"].startswith(said) and row["needs_login"] is False, "not a login problem"
        status = subprocess.run(pyz_argv("--socket", hive.host_sock, "status"), capture_output=True, text=True,
                                timeout=60).stdout
        assert re.search(r"^a\s+running\s+\S+\s+claude missing\s", status, re.M), status
        _, state = hive.dashboard("GET", "/api/state")
        assert [c["claude_missing"] for c in state["containers"] if c["name"] == "a"] == [row["claude_missing"]]
        _, page = hive.dashboard("GET", "/agent/a/api/state")
        assert page["status"] == "claude_missing"
        hive.call("send", to="a", body="FAKE: send operator never")
        told = wait_until(lambda: [m["body"] for m in hive.call("inbox", limit=50)["messages"]
                                   if m["body"].startswith("[helper event] claude_missing: a ")], 30,
                          "the operator to be told")
        assert said in told[0] and len(told) == 1
        assert hive.db_rows("select delivered_at from message where recipient='a'") == [(None,)], "it waits"

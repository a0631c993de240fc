"""The pages a user meets, in a real browser: a question answered on its agent's page, one cancelled on
the dashboard, and what a page says when something is off (an agent stopped, no login, a used login
link, an unknown agent, the core gone), with the config page's files shown as text.

Its own hive and Chromium, started as tests/test_browser.py starts them (its helpers are used here);
skipped or failed as that module is, by HIVE_REQUIRE_BROWSER. Screenshots go to tests/artifacts/.
"""

import os
import re
import socket
import subprocess

import pytest

from conftest import Hive, running, wait_until
import test_browser as tb
from test_browser import (shot, assert_no_reload, ensure_agent, new_context, open_agent_page, open_dashboard,
                          unique, wait_page_up, web_sock)

from playwright.sync_api import expect  # noqa: E402  (after test_browser's skip)

# the fixtures of test_browser.py: one hive (with `a` spawned and its page up) and one Chromium for this module
hv, browser, operator = tb.hv, tb.browser, tb.operator

# What Chromium logs by itself for a page that is down (the very thing these tests look at): not a fault.
EXPECTED_CONSOLE = ("the server responded with a status of 503", "the server responded with a status of 401",
                    "the server responded with a status of 404", "ERR_CONNECTION_REFUSED",
                    "EventSource's response has a MIME type",
                    "Failed to load resource: net::ERR_")  # a connection the killed core cut or refused


def watched(p):
    """Fail the test on a script error or a console error, but for what a down page makes Chromium log."""
    errors = []
    p.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    p.on("console", lambda m: errors.append(f"console: {m.text}")
         if m.type == "error" and not any(s in m.text for s in EXPECTED_CONSOLE) else None)
    return errors


@pytest.fixture
def page(operator):
    p = operator.new_page()
    errors = watched(p)
    yield p
    p.close()
    assert not errors, f"errors in the page: {errors}"


def inbox_of(hv, name, words):
    """Bodies of messages to `name` that hold `words`, as (sender, body), from the core's database."""
    return hv.db_rows("SELECT sender, body FROM message WHERE recipient = ? AND body LIKE ? ORDER BY id",
                      name, f"%{words}%")


def stop(hv, name):
    hv.call("stop", scope={"agent_names": [name]}, graceful=False)
    wait_until(lambda: hv.row(name)["state"] == "stopped", 30, f"{name} to stop")
    wait_until(lambda: not os.path.exists(web_sock(hv, name)), 30, f"{name}'s web.sock to go")


# -- item 3: questions ------------------------------------------------------------------------------

def test_an_operator_question_is_answered_inline_on_the_agent_page(page, hv):
    mark = unique("q-")
    # the agent asks through its own socket (what its ask tool does); the asks wait on nothing
    qid = hv.agent_call("a", "ask", question=f"Ship {mark} now?", options=["yes", "not yet"])["id"]
    free = hv.agent_call("a", "ask", question=f"Which branch for {mark}?")["id"]
    ensure_agent(hv, "b")
    peer = hv.agent_call("a", "ask", question=f"Did you see {mark}?", to="b")["id"]

    open_agent_page(page, hv, "a")
    item = page.locator(f'#loose-ends .loose[data-kind="question"][data-id="{qid}"]')
    expect(item).to_contain_text(f"Ship {mark} now?")
    expect(item.locator('[data-action="option"]')).to_have_text(["yes", "not yet"])
    expect(item.locator('form.answer-form [data-action="answer"]')).to_be_visible()
    expect(page.locator(f'#loose-ends .loose[data-id="{free}"] [data-action="option"]')).to_have_count(0)
    expect(page.locator(f'#loose-ends .loose[data-id="{free}"] form.answer-form')).to_be_visible()
    # a question to a peer is the peer's to answer: no box, only the asker's withdraw
    expect(page.locator(f'#loose-ends .loose[data-id="{peer}"] .loose-cancel')).to_be_visible()
    expect(page.locator(f'#loose-ends .loose[data-id="{peer}"] form.answer-form')).to_have_count(0)
    item.scroll_into_view_if_needed()
    shot(page, "agent-answer-inline.png")

    # the answer goes as the operator, through the core's own route: never through a's harness
    with page.expect_response(lambda r: r.request.method == "POST" and "answer-question" in r.url) as answered:
        item.locator('[data-action="option"]', has_text="not yet").click()
    assert answered.value.url == f"{hv.url}/answer-question/{qid}" and answered.value.status == 200
    expect(item).to_have_count(0)
    wait_until(lambda: inbox_of(hv, "a", f"question {qid} "), 10, f"a's answer to question {qid}")
    [(sender, body)] = inbox_of(hv, "a", f"question {qid} ")
    assert sender == "operator" and body.endswith("> not yet"), body

    other = page.locator(f'#loose-ends .loose[data-id="{free}"]')
    other.locator("input[name=answer]").fill(f"main, for {mark}")
    other.locator('[data-action="answer"]').click()
    expect(other).to_have_count(0)
    wait_until(lambda: inbox_of(hv, "a", f"question {free} "), 10, f"a's answer to question {free}")
    assert inbox_of(hv, "a", f"question {free} ")[0][1].endswith(f"> main, for {mark}")
    assert [q["id"] for q in hv.call("questions")["questions"] if q["id"] in (qid, free)] == []
    hv.agent_call("a", "cancel_loose_end", kind="question", id=peer)
    assert_no_reload(page)


def test_the_dashboard_cancels_an_operator_question_and_its_asker_is_told(page, hv):
    mark = unique("c-")
    qid = hv.agent_call("a", "ask", question=f"Shall I {mark}?", options=["yes", "no"])["id"]
    open_dashboard(page, hv)
    card = page.locator(f'#questions [data-question="{qid}"]')
    expect(card).to_contain_text(f"Shall I {mark}?")
    expect(card.locator('[data-action="option"]')).to_have_text(["yes", "no"])
    card.scroll_into_view_if_needed()
    shot(page, "dashboard-question-cancel.png")
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda r: r.request.method == "POST" and "cancel-question" in r.url) as cancelled:
        card.locator('[data-action="cancel-question"]').click()
    assert cancelled.value.url == f"{hv.url}/cancel-question/{qid}" and cancelled.value.status == 200
    expect(card.locator(".outcome")).to_have_text("✕ cancelled")  # from the question_resolved event
    expect(card).to_have_count(0, timeout=10000)
    assert qid not in [q["id"] for q in hv.call("questions")["questions"]]
    wait_until(lambda: inbox_of(hv, "a", f"question {qid} "), 10, f"a to be told of question {qid}")
    [(sender, body)] = inbox_of(hv, "a", f"question {qid} ")
    assert sender == "operator" and "was cancelled by the operator" in body, body
    assert_no_reload(page)


# -- item 7: pages when something is off ------------------------------------------------------------

def test_a_stopped_agents_page_says_so_and_its_start_button_brings_it_live(page, hv):
    ensure_agent(hv, "s")
    stop(hv, "s")
    page.goto(f"{hv.url}/agent/s/")
    panel = page.locator("#down-panel")
    expect(panel).to_be_visible()
    expect(page.locator("#down-sentence")).to_contain_text("s's harness is not running — start it")
    expect(page.locator("#down-sentence code")).to_have_text("hyperhive start s")
    expect(page.locator("#live .live-text")).to_have_text("not running")
    expect(page.locator("#agent-name")).to_have_text("s")
    expect(page.locator("body")).to_have_class(re.compile(r"\bagent-down\b"))
    start = page.locator("#down-start")
    expect(start).to_be_visible()
    # it keeps saying why across the terminal's own retries, never "reconnecting…"
    page.wait_for_function("() => window.hive.term.backoff >= 4000", timeout=15000)
    expect(page.locator("#live .live-text")).to_have_text("not running")
    shot(page, "agent-not-running.png")

    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/start/s")) as started:
        start.click()
    assert started.value.status == 200
    expect(page.locator("#live")).to_have_attribute("data-live", "true", timeout=30000)
    expect(panel).to_be_hidden()
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bagent-down\b"))
    expect(page.locator("#live .live-text")).to_have_text("alive")
    assert hv.row("s")["state"] == "running"


def test_error_pages_are_pages_for_a_browser_and_json_for_a_script(browser, operator, hv):
    stranger = new_context(browser)
    try:
        p = stranger.new_page()
        res = p.goto(hv.url + "/")
        assert res.status == 401 and res.headers["content-type"].startswith("text/html")
        expect(p.locator("#error-title")).to_have_text("not logged in")
        expect(p.locator("#error-sentence")).to_contain_text("run hyperhive login-url on the hive's host")
        expect(p.locator("#error-sentence code")).to_have_text("hyperhive login-url")
        # its style came inline (the CSP allows it by its hash): it is a page, not a bare sentence
        assert p.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(14, 12, 9)"
        shot(p, "not-logged-in.png")
        # the same routes asked by a script (the error page itself may fetch nothing): the one JSON shape
        for path in ("/", "/api/state"):
            res = stranger.request.get(hv.url + path, headers={"Accept": "application/json"})
            assert res.status == 401 and res.headers["content-type"] == "application/json", path
            assert res.json()["ok"] is False and res.json()["code"] == "unauthorized", res.json()

        url = hv.login_url()
        assert p.goto(url).status == 200 and p.url == hv.url + "/"
        res = p.goto(url)  # good once
        assert res.status == 401 and res.headers["content-type"].startswith("text/html")
        expect(p.locator("#error-sentence")).to_contain_text("this login link is used up or expired; run "
                                                             "hyperhive login-url on the hive's host for a new one")
        shot(p, "login-link-used.png")
    finally:
        stranger.close()

    p = operator.new_page()
    try:
        res = p.goto(f"{hv.url}/agent/nobody/")
        assert res.status == 404 and res.headers["content-type"].startswith("text/html")
        expect(p.locator("#error-title")).to_have_text("not found")
        expect(p.locator("#error-sentence")).to_contain_text("there is no agent named 'nobody' in this hive: the "
                                                             "dashboard lists the agents there are")
        expect(p.locator(".back a")).to_have_attribute("href", "/")
        shot(p, "unknown-agent.png")
        open_dashboard(p, hv)  # a fetch from a page of the dashboard, as its scripts make them
        answer = p.evaluate("""async () => {
            const res = await fetch('/agent/nobody/', {headers: {Accept: 'application/json'}});
            return {status: res.status, body: await res.json()};
        }""")
        assert answer["status"] == 404 and answer["body"]["code"] == "not_found", answer
        assert "there is no agent named 'nobody'" in answer["body"]["error"]
    finally:
        p.close()


def commit_to_proposed(hv, name, files):
    repo = os.path.join(hv.state_dir, "config", "proposed", name)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for path, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(repo, path)), exist_ok=True)
        with open(os.path.join(repo, path), "w") as f:
            f.write(text)
    subprocess.run(["git", "-C", repo, "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", repo, "commit", "-qm", "notes"], check=True, env=env)
    return subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], check=True, env=env, capture_output=True,
                          text=True).stdout.strip()


def test_the_config_page_shows_the_deployed_files_as_text(page, hv):
    ensure_agent(hv, "cfg")
    hostile = '<script>document.title = "owned"</script><b>not bold</b> & "quoted"\n'
    sha = commit_to_proposed(hv, "cfg", {"notes/<i>odd</i>.md": hostile})
    approval = hv.agent_call("manager", "request_apply_commit", agent="cfg", commit_ref=sha,
                             description="a note with markup in it")["id"]
    hv.call("approve", id=approval)
    wait_until(lambda: (hv.row("cfg")["deployed_sha"] or "") == sha[:12], 60, "cfg's config to be deployed")

    page.goto(f"{hv.url}/agent-config/cfg")
    files = page.locator("#config-files .config-file")
    expect(page.locator("#config-files .config-file summary", has_text=re.compile(r"^hive\.json$"))).to_have_count(1)
    odd = files.filter(has=page.locator("summary", has_text="notes/<i>odd</i>.md"))
    expect(odd.locator("pre.config-text")).to_have_text(hostile)
    expect(page.locator("#config-files script, #config-files b, #config-files i")).to_have_count(0)
    expect(page.locator("#config-sha")).to_have_text("@" + sha[:8])
    assert page.title() != "owned"
    shot(page, "agent-config.png")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_core_going_down_greys_the_dashboard_and_the_agent_page(browser, tmp_path):
    hive = Hive(tmp_path / "state", env={"ANTHROPIC_API_KEY": "k"},
                extra_args=["--pass-env", "ANTHROPIC_API_KEY", "--dashboard-port", str(free_port())])
    with running(hive) as h:
        h.call("spawn", name="a")
        wait_page_up(h, "a")
        ctx = new_context(browser)
        try:
            board, agent = ctx.new_page(), ctx.new_page()
            errors = [watched(board), watched(agent)]
            board.goto(h.login_url())
            expect(board.locator("#live")).to_have_attribute("data-live", "true")
            open_agent_page(agent, h, "a")
            for p in (board, agent):
                expect(p.locator("body")).not_to_have_class(re.compile(r"\bcore-down\b"))
                expect(p.locator("#core-down")).to_have_count(0)

            h.kill9()
            for p in (board, agent):
                expect(p.locator("body")).to_have_class(re.compile(r"\bcore-down\b"))
                expect(p.locator("#core-down")).to_contain_text("The hyperhive core does not answer")
                expect(p.locator("#core-down")).to_contain_text("this page reconnects by itself")
                expect(p.locator("#live .live-text")).to_have_text("core down")
                # greyed: every part of the page but the banner
                assert p.evaluate("getComputedStyle(document.querySelector('main')).filter").startswith("grayscale")
            shot(board, "dashboard-core-down.png")
            shot(agent, "agent-core-down.png")

            h.start()  # the same port: the pages come back by themselves
            for p in (board, agent):
                expect(p.locator("#live")).to_have_attribute("data-live", "true", timeout=30000)
                expect(p.locator("body")).not_to_have_class(re.compile(r"\bcore-down\b"))
                expect(p.locator("#core-down")).to_be_hidden()
            assert errors == [[], []], errors
        finally:
            ctx.close()

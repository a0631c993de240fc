"""The web pages in a real browser: login, live updates, approvals, an agent's turn, reconnects, file previews,
page secrets.

One `hyperhive serve` (process backend, the fake claude) and one headless
Chromium (Debian's, driven by Playwright; never a downloaded browser) are
shared by every test here. Pages are checked through the test hooks the
frontend exposes (docs/web.md; `window.hive`, `#live[data-live]`,
`[data-key]` rows, `[data-agent]` cards, `[data-approval]` cards).
Screenshots go to tests/artifacts/.

Skipped, with the reason, when Playwright or Chromium is missing, unless
HIVE_REQUIRE_BROWSER=1 (CI sets it), which makes that a failure.
"""

import http.client
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid

import pytest

from conftest import Hive, browser_missing, running, wait_until

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
TIMEOUT_MS = 15000


WHY = browser_missing()
if WHY:
    if os.environ.get("HIVE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"HIVE_REQUIRE_BROWSER=1 but {WHY}")
    pytest.skip(WHY, allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hv(tmp_path_factory):
    """One hive for the module, with agent `a` running and its page up."""
    with running(Hive(tmp_path_factory.mktemp("browser") / "state", env={"ANTHROPIC_API_KEY": "test-key"},
                      extra_args=["--pass-env", "ANTHROPIC_API_KEY"])) as h:
        h.call("spawn", name="a")
        wait_page_up(h, "a")
        yield h


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                              headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def operator(browser, hv):
    """A browser context logged in the way the operator does it: through a one-time login URL."""
    ctx = new_context(browser)
    page = ctx.new_page()
    page.goto(hv.login_url())
    assert page.url == hv.url + "/"
    page.close()
    yield ctx
    ctx.close()


@pytest.fixture
def page(operator):
    """A fresh tab in the operator's context; an uncaught script error or a console error fails the test."""
    p = operator.new_page()
    errors = []
    p.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    p.on("console", lambda m: errors.append(f"console: {m.text} at {m.location.get('url')}") if m.type == "error" else None)
    yield p
    p.close()
    assert not errors, f"errors in the page: {errors}"


def new_context(browser):
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    return ctx


# -- helpers -----------------------------------------------------------------------------

def web_sock(hv, name):
    return os.path.join(hv.run_dir, "agents", name, "web.sock")


def wait_page_up(hv, name):
    wait_until(lambda: os.path.exists(web_sock(hv, name)), 20,
               f"{name}'s web.sock (harness log: {hv.log_of(name)})")


def ensure_agent(hv, name):
    if name not in hv.call("list")["agents"]:
        hv.call("spawn", name=name)
    wait_page_up(hv, name)


def open_dashboard(page, hv):
    page.goto(hv.url + "/")
    expect(page.locator("#live")).to_have_attribute("data-live", "true")
    page.evaluate("window.__marker = 1")  # a reload or navigation would lose it


def open_agent_page(page, hv, name):
    page.goto(f"{hv.url}/agent/{name}/")
    expect(page.locator("#live")).to_have_attribute("data-live", "true")
    expect(page.locator("#agent-name")).to_have_text(name)
    page.evaluate("window.__marker = 1")


def shot(p, name):
    """A full-page screenshot in tests/artifacts/, for a person to look at."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    p.screenshot(path=path, full_page=True)
    assert os.path.getsize(path) > 0


def assert_no_reload(page):
    assert page.evaluate("window.__marker") == 1, "the page reloaded or navigated"


def flow_row(page, message_id):
    return page.locator(f'#msgflow [data-key="m{message_id}"]')


def flow_key_counts(page):
    return page.evaluate("""() => {
        const counts = {};
        for (const el of document.querySelectorAll('#msgflow .term-rows > [data-key]'))
            counts[el.dataset.key] = (counts[el.dataset.key] || 0) + 1;
        return counts;
    }""")


def unique(s=""):
    return f"{s}{uuid.uuid4().hex[:8]}"


def web_get(path, secret):
    """GET on an agent's web.sock, as the core's proxy does it; (status, parsed JSON)."""
    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(path)

    conn = Conn("localhost", timeout=10)
    try:
        conn.request("GET", "/api/state", headers={"X-Hive-Secret": secret} if secret is not None else {})
        res = conn.getresponse()
        return res.status, json.loads(res.read() or b"null")
    finally:
        conn.close()


def assert_error_shape(data, code):
    assert data["version"] == 1 and data["ok"] is False and data["code"] == code, data
    assert isinstance(data["error"], str) and data["error"], data


# -- 1. login --------------------------------------------------------------------------------

def test_login_url_lands_on_the_dashboard_listing_the_agents(browser, hv):
    ctx = new_context(browser)
    try:
        page = ctx.new_page()
        url = hv.login_url()
        res = page.goto(url)
        assert page.url == hv.url + "/" and res.status == 200, "the key's fragment is taken off the address"
        cookie = {c["name"]: c for c in ctx.cookies()}["hive_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        key = page.evaluate("localStorage.getItem('hive.key')")
        assert key and len(key) >= 40 and key != cookie["value"], "the key stays with this origin's storage"

        card = page.locator('#containers [data-agent="a"]')
        expect(card).to_have_attribute("data-state", "running")
        expect(page.locator('#containers [data-agent="manager"]')).to_have_attribute("data-role", "manager")
        expect(page.locator("#live")).to_have_attribute("data-live", "true")
        expect(page.locator("#containers-count")).to_have_text(str(len(hv.call("list")["agents"])))
        # the manager is listed first
        assert page.locator("#containers [data-agent]").first.get_attribute("data-agent") == "manager"

        # the link is good once
        again = ctx.new_page()
        assert again.goto(url).status == 401
    finally:
        ctx.close()


# -- 2. no cookie, no entry ----------------------------------------------------------------------

def test_requests_without_the_cookie_are_refused(browser, hv):
    ctx = new_context(browser)
    try:
        res = ctx.request.get(hv.url + "/api/state")
        assert res.status == 401
        assert_error_shape(res.json(), "unauthorized")
        page = ctx.new_page()
        assert page.goto(hv.url + "/").status == 401
        for path in ("/agent/a/", "/agent/a/api/state", "/dashboard/stream"):
            res = ctx.request.get(hv.url + path)
            assert res.status == 401, path
            assert_error_shape(res.json(), "unauthorized")
        # with the cookie, an action from another origin is still refused
        res = ctx.request.post(hv.url + "/op-send", data={"to": "a", "body": "hi"},
                               headers={**hv.session(), "Origin": "http://evil.example"})
        assert res.status == 403
        assert_error_shape(res.json(), "forbidden")
    finally:
        ctx.close()


# -- 3. compose ------------------------------------------------------------------------------------

def test_compose_sends_and_the_row_appears_without_a_reload(page, hv):
    open_dashboard(page, hv)
    text = unique("hello ")
    compose = page.locator("#compose")
    compose.fill("")
    compose.press_sequentially(f"@a {text}")
    with page.expect_response(lambda r: r.url.endswith("/op-send")) as answer:
        compose.press("Enter")
    assert answer.value.status == 200
    message_id = answer.value.json()["id"]

    row = flow_row(page, message_id)
    expect(row).to_have_count(1)
    expect(row).to_contain_text(text)
    expect(row).to_have_attribute("data-from", "operator")
    expect(row).to_have_attribute("data-to", "a")
    expect(row).to_have_attribute("data-delivered", "true")  # a's harness picked it up: another event
    expect(compose).to_have_value("@a ")  # ready for the next one
    assert_no_reload(page)


# -- 4. approvals ------------------------------------------------------------------------------

def test_approving_from_the_dashboard_resolves_the_card_and_takes_effect(page, hv):
    open_dashboard(page, hv)
    init_id = hv.agent_call("manager", "request_init_config", name="c", description="config for c")["id"]
    card = page.locator(f'#approvals [data-approval="{init_id}"]')
    expect(card).to_be_visible()
    expect(card).to_have_attribute("data-kind", "init_config")
    expect(page.locator("#approvals-count")).to_have_text("1")
    card.locator('[data-action="approve"]').click()
    expect(card).to_have_attribute("data-status", "approved")
    # the core tells the manager: a row in the flow
    expect(page.locator('#msgflow [data-from="core"][data-to="manager"]', has_text=f"approval {init_id} ")
           ).to_contain_text("approved")

    spawn_id = hv.call("request_spawn", name="c")["id"]
    spawn_card = page.locator(f'#approvals [data-approval="{spawn_id}"]')
    expect(spawn_card).to_have_attribute("data-kind", "spawn")
    spawn_card.locator('[data-action="approve"]').click()
    expect(page.locator('#containers [data-agent="c"]')).to_have_attribute("data-state", "running")

    # resolved cards linger a moment, then go
    expect(card).to_have_count(0, timeout=10000)
    expect(spawn_card).to_have_count(0, timeout=10000)
    expect(page.locator("#approvals-count")).to_have_text("0")
    expect(page.locator("#approvals .empty")).to_be_visible()
    assert hv.call("pending")["approvals"] == []
    assert_no_reload(page)


def test_denying_with_a_reason_and_the_attention_chip(page, hv):
    open_dashboard(page, hv)
    expect(page.locator("#attention")).to_be_hidden()
    deny_id = hv.agent_call("manager", "request_init_config", name="e", description="config for e")["id"]
    card = page.locator(f'#approvals [data-approval="{deny_id}"]')
    expect(card).to_be_visible()
    # the header says what waits for the operator, and only that
    expect(page.locator("#attention")).to_have_text("⚑ 1 approval", timeout=3000)
    expect(page).to_have_title("(1) hyperhive", timeout=3000)

    card.locator('[data-action="deny"]').click()
    reason = card.locator('[data-test="deny-reason"]')
    expect(reason).to_be_focused()
    reason.fill("not now")
    card.locator('[data-action="deny-confirm"]').click()
    expect(card).to_have_attribute("data-status", "denied")
    expect(card.locator(".outcome")).to_contain_text("not now")
    expect(page.locator('#msgflow [data-from="core"][data-to="manager"]', has_text=f"approval {deny_id} ")
           ).to_contain_text("denied by the operator: not now")
    expect(page.locator("#attention")).to_be_hidden()
    expect(page).to_have_title("hyperhive")
    expect(card).to_have_count(0, timeout=10000)
    assert_no_reload(page)


# -- 5. an agent's turn, live --------------------------------------------------------------------

STATES_JS = """() => {
    const ts = document.querySelector('#turn-state');
    window.__states = [ts.dataset.state];
    const push = (v) => { if (window.__states[window.__states.length - 1] !== v) window.__states.push(v); };
    // every value it took, even two changes within one task: each record's old value, then the current
    new MutationObserver((recs) => {
        recs.slice(1).forEach((r) => push(r.oldValue));
        push(ts.dataset.state);
    }).observe(ts, {attributes: true, attributeFilter: ['data-state'], attributeOldValue: true});
}"""

# the rows after the turn_start row whose text has `mark`, up to its turn_end (null until it ends)
TURN_ROWS_JS = """(mark) => {
    const rows = [...document.querySelectorAll('#terminal .term-rows > [data-key]')];
    const start = rows.findIndex((r) => r.classList.contains('turn-start') && r.textContent.includes(mark));
    if (start < 0) return null;
    const end = rows.findIndex((r, i) => i > start && r.classList.contains('turn-end'));
    if (end < 0) return null;
    return rows.slice(start, end + 1).map((r) => ({key: r.dataset.key, cls: r.className, tool: r.dataset.tool || null,
                                                    text: r.textContent}));
}"""


def wait_turn(page, mark):
    return page.wait_for_function(TURN_ROWS_JS, arg=mark, timeout=30000).json_value()


def test_agent_page_streams_a_turn(page, hv):
    open_agent_page(page, hv, "a")
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle", timeout=30000)
    page.evaluate(STATES_JS)
    mark = unique("turn-")
    page.locator("#agent-compose").fill(f"{mark}\nFAKE: send operator reply {mark}\nFAKE: say done {mark}")
    page.locator("#agent-send").click()
    expect(page.locator("#agent-compose")).to_have_value("")

    rows = wait_turn(page, mark)
    kinds = [r["cls"] for r in rows]
    assert "turn-start" in kinds[0] and "turn-end" in kinds[-1] and "ok" in kinds[-1], kinds
    tools = [r for r in rows if r["tool"] == "send"]
    assert tools and f"reply {mark}" in tools[0]["text"], rows
    assert any("say" in r["cls"].split() and f"done {mark}" in r["text"] for r in rows), rows
    assert [int(r["key"]) for r in rows] == sorted(int(r["key"]) for r in rows)
    # the send tool's result was folded into its row
    expect(page.locator('#terminal details.tool[data-tool="send"]', has_text=f"reply {mark}")
           ).to_have_class(re.compile(r"\bdone\b"))

    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle")
    states = page.evaluate("window.__states")
    assert "thinking" in states and states[-1] == "idle", states
    assert states.index("thinking") < len(states) - 1
    assert page.locator("#ctx-badge").text_content() != "– ctx"
    assert_no_reload(page)


def test_cancel_on_the_page_stops_the_turn_marks_its_message_and_retry_runs_it_on_purpose(operator, page, hv):
    open_agent_page(page, hv, "a")
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle", timeout=30000)
    mark = unique("long-")
    with page.expect_response(lambda r: r.url.endswith("/agent/a/send")) as sent:
        page.locator("#agent-compose").fill(f"FAKE: sleep 60\n{mark}")
        page.locator("#agent-send").click()
    message_id = sent.value.json()["id"]
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "thinking", timeout=30000)
    page.locator("#cancel-turn").click()
    ended = page.locator("#terminal .trow.turn-end.cancelled").last
    expect(ended).to_contain_text("turn cancelled")
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle")
    board = operator.new_page()
    try:
        open_dashboard(board, hv)
        expect(flow_row(board, message_id).locator(".chip.cancelled")).to_have_text("✕ cancelled")
        ended.locator("button.retry").click()
        expect(ended.locator("button.retry")).to_have_text("queued again")
        expect(flow_row(board, message_id).locator(".chip.cancelled")).to_have_count(0)  # live, from the event
    finally:
        board.close()
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "thinking", timeout=30000)
    page.locator("#cancel-turn").click()
    expect(page.locator("#terminal .trow.turn-end.cancelled")).to_have_count(2)
    assert_no_reload(page)


def test_a_report_buried_under_a_flood_is_one_click_away_and_marked_read(page, hv):
    report = hv.agent_call("a", "send", to="operator", body=unique("the report "))["id"]
    # past the snapshot's 50 and the message flow's backfill of 200
    flood = [hv.agent_call("manager", "send", to="operator", body=f"flood {i}")["id"] for i in range(250)]
    open_dashboard(page, hv)
    inbox = page.locator("#inbox")
    expect(inbox.locator(f'[data-message="{flood[-1]}"]')).to_have_count(1)
    expect(inbox.locator(f'[data-message="{report}"]')).to_have_count(0)  # buried
    chip = page.locator('#inbox-senders [data-sender="manager"]')
    expect(chip).to_contain_text("250 unread")
    page.locator('#inbox-senders [data-sender="a"]').click()
    item = inbox.locator(f'[data-message="{report}"]')
    expect(item).to_have_attribute("data-read", "false")
    item.locator('[data-action="read"]').click()
    expect(inbox.locator(f'[data-message="{report}"]')).to_have_attribute("data-read", "true")
    hv.call("mark_read")
    # what earlier tests' agents still send may arrive after: the count is what the core holds unread
    wait_until(lambda: page.locator("#inbox-count").text_content()
               == str(sum(s["unread"] for s in hv.call("inbox", limit=1)["senders"])), 30, "the unread count to agree")
    assert_no_reload(page)


def test_the_unread_count_keeps_a_message_that_arrives_while_its_refresh_is_on_the_way(page, hv):
    open_dashboard(page, hv)
    core_count = lambda: str(sum(s["unread"] for s in hv.call("inbox", limit=1)["senders"]))
    hv.agent_call("a", "send", to="operator", body=unique("read soon "))
    held = []
    page.route("**/api/inbox?limit=1",  # the first answer is held back, later ones go through
               lambda route: route.continue_() if held else held.append((route, route.fetch())))
    hv.call("mark_read")  # the page refreshes its counts: that answer is held back
    deadline = time.monotonic() + 15
    while not held:
        assert time.monotonic() < deadline, "the page never refreshed its counts after a read"
        page.wait_for_timeout(20)  # lets the page run while the condition is polled
    late = hv.agent_call("a", "send", to="operator", body=unique("while the counts are on the way "))["id"]
    expect(page.locator(f'#inbox [data-message="{late}"]')).to_have_count(1)  # counted as it arrived
    route, stale = held[0]
    route.fulfill(response=stale)  # counts taken before `late`
    wait_until(lambda: page.locator("#inbox-count").text_content() == core_count(), 30, "the unread count to agree")
    assert core_count() != "0"


def test_sessions_are_listed_and_logging_out_ends_this_one(browser, hv):
    ctx = new_context(browser)
    try:
        other = ctx.new_page()
        other.goto(hv.login_url())  # a second browser session beside this one
        other_key = other.evaluate("localStorage.getItem('hive.key')")
        mine = new_context(browser)
        page = mine.new_page()
        page.goto(hv.login_url())
        expect(page.locator("#live")).to_have_attribute("data-live", "true")
        page.locator("#sessions > summary").click()
        rows = page.locator("#sessions-list .session")
        expect(rows.filter(has_text="this browser")).to_have_count(1)
        assert rows.count() >= 2
        page.locator("#logout").click()
        expect(page.locator("body")).to_have_class(re.compile(r"\blogged-out\b"))
        assert page.evaluate("localStorage.getItem('hive.key')") is None
        res = mine.request.get(hv.url + "/api/state")
        assert res.status == 401, "the session is over on the server, not only in this tab"
        res = ctx.request.get(hv.url + "/api/state", headers={"X-Hive-Key": other_key})
        assert res.status == 200, "the other session lives on"
        mine.close()
    finally:
        ctx.close()


def test_a_missing_claude_is_named_on_the_card_and_the_page(browser, tmp_path):
    missing = str(tmp_path / "no" / "claude")
    with running(Hive(tmp_path / "state", claude=missing, env={"ANTHROPIC_API_KEY": "k"},
                      extra_args=["--pass-env", "ANTHROPIC_API_KEY"])) as h:
        h.call("spawn", name="a")
        wait_until(lambda: h.row("a")["claude_missing"], 30, "a's row to name the missing claude")
        ctx = new_context(browser)
        try:
            p = ctx.new_page()
            p.goto(h.login_url())
            card = p.locator('[data-agent="a"]')
            expect(card.locator(".chip.red")).to_have_text("claude not found")
            expect(card.locator(".status-text.problem")).to_contain_text(f"claude not found at {missing}")
            p.goto(f"{h.url}/agent/a/")
            expect(p.locator("#status-chip")).to_have_text("claude not found")
            expect(p.locator("#login-panel")).to_be_hidden()  # nothing to log in: it is not a login problem
        finally:
            ctx.close()


# -- 6. reconnects ------------------------------------------------------------------------------

def test_dashboard_reconnect_shows_everything_once(page, hv):
    open_dashboard(page, hv)
    first = hv.call("send", to="a", body=unique("before "))["id"]
    expect(flow_row(page, first)).to_have_count(1)

    page.evaluate("hive.term.eventSource.close()")
    expect(page.locator("#live")).to_have_attribute("data-live", "false")
    ids = [hv.call("send", to="a", body=unique(f"while down {i} "))["id"] for i in range(5)]
    expect(page.locator("#live")).to_have_attribute("data-live", "true")

    # and a reconnect while messages are flowing: the snapshot and the stream overlap
    done = threading.Event()
    flowing = []

    def sender():
        for i in range(12):
            flowing.append(hv.call("send", to="manager", body=unique(f"flowing {i} "))["id"])
        done.set()

    t = threading.Thread(target=sender)
    t.start()
    for _ in range(3):
        page.evaluate("hive.term.reconnect()")
        expect(page.locator("#live")).to_have_attribute("data-live", "true")
    t.join(30)
    assert done.is_set()
    ids += flowing

    for message_id in ids:
        expect(flow_row(page, message_id)).to_have_count(1)
    counts = flow_key_counts(page)
    assert {k: n for k, n in counts.items() if n != 1} == {}
    assert all(f"m{i}" in counts for i in [first] + ids)
    assert_no_reload(page)


APPLIED_JS = """() => {
    window.__applied = [];
    const orig = hive.term.opts.onEvent;
    hive.term.opts.onEvent = (ev, ctx) => { window.__applied.push(ev.seq); return orig(ev, ctx); };
    return hive.term.maxSeq;
}"""

HISTORY_JS = """async (after) => {
    const res = await fetch('events/history?limit=2000&after=' + after,
                            {cache: 'no-store', headers: {'X-Hive-Key': window.Hive.key()}});
    return (await res.json()).events.map((e) => e.seq);
}"""


def test_agent_page_reconnect_shows_every_event_once(page, hv):
    open_agent_page(page, hv, "a")
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle", timeout=30000)
    start = page.evaluate(APPLIED_JS)

    page.evaluate("hive.term.eventSource.close()")
    expect(page.locator("#live")).to_have_attribute("data-live", "false")
    mark = unique("down-")
    hv.call("send", to="a", body=f"{mark}\nFAKE: say while down {mark}")
    expect(page.locator("#live")).to_have_attribute("data-live", "true")
    wait_turn(page, mark)
    # once more mid-stream, then let the turn's trailing events (usage, idle) land
    mark2 = unique("mid-")
    hv.call("send", to="a", body=f"{mark2}\nFAKE: say mid {mark2}")
    page.evaluate("hive.term.reconnect()")
    wait_turn(page, mark2)
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle", timeout=30000)

    server = page.evaluate(HISTORY_JS, start)
    assert server == list(range(start + 1, start + 1 + len(server))), f"the server's seqs have gaps: {server}"
    page.wait_for_function("(n) => window.__applied.filter((s) => s > 0).length >= n", arg=len(server))
    applied = [s for s in page.evaluate("window.__applied") if s > start]
    assert applied == server, "events shown twice or lost across the reconnects"

    keys = page.evaluate("[...document.querySelectorAll('#terminal .term-rows > [data-key]')].map((r) => r.dataset.key)")
    assert len(keys) == len(set(keys)), "a row drawn twice"
    new = [int(k) for k in keys if k.isdigit() and int(k) > start]
    assert new == sorted(new) and set(new) <= set(server)
    assert_no_reload(page)


# -- 6b. file references ---------------------------------------------------------------------------

def write_file(directory, name, text):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def tolerant_page(operator, status):
    """A tab (a generator, for a fixture) that fails the test on a script error, but lets the browser log
    the one error status the test brings about."""
    p = operator.new_page()
    errors = []
    p.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    p.on("console", lambda m: errors.append(f"console: {m.text}")
         if m.type == "error" and f"the server responded with a status of {status}" not in m.text else None)
    yield p
    p.close()
    assert not errors, f"errors in the page: {errors}"


@pytest.fixture
def lenient_page(operator):
    """A tab that lets the browser log the 404 a test asks for."""
    yield from tolerant_page(operator, 404)


def test_dashboard_file_refs_open_into_previews(lenient_page, hv):
    page = lenient_page
    mark = unique()
    report = write_file(os.path.join(hv.home("a"), "state"), f"report-{mark}.md", f"# report {mark}\n<b>not bold</b>\n")
    plan = write_file(os.path.join(hv.state_dir, "shared"), f"plan-{mark}.txt", f"the plan {mark}\n")
    gone = write_file(os.path.join(hv.state_dir, "shared"), f"gone-{mark}.txt", "soon gone\n")
    big = write_file(os.path.join(hv.state_dir, "shared"), f"big-{mark}.log", "a line of the log\n" * 6000)
    blob = os.path.join(hv.state_dir, "shared", f"blob-{mark}.bin")
    with open(blob, "wb") as f:
        f.write(b"\x89PNG\0\0" * 100)
    message_id = hv.agent_call("a", "send", to="operator",
                               body=f"see {report}, {plan} and {gone}; also {big} {blob}")["id"]
    os.remove(gone)

    open_dashboard(page, hv)
    refs = flow_row(page, message_id).locator("details.fref")
    expect(refs).to_have_count(5)
    first = refs.nth(0)
    expect(first.locator("summary")).to_have_text(f"▤{report}· {os.path.getsize(report)} B")
    expect(first).not_to_have_attribute("open", "")
    expect(first).to_have_attribute("data-state", "unopened")  # nothing fetched until it is opened
    with page.expect_response(lambda r: f"/file-ref/{message_id}/0" in r.url) as answer:
        first.locator("summary").click()
    assert answer.value.status == 200
    text = first.locator("pre.fref-text")
    expect(text).to_have_text(f"# report {mark}\n<b>not bold</b>\n")
    expect(first.locator("pre.fref-text b")).to_have_count(0)  # the file is text, never markup
    refs.nth(1).locator("summary").click()
    expect(refs.nth(1).locator("pre.fref-text")).to_have_text(f"the plan {mark}\n")
    refs.nth(2).locator("summary").click()
    expect(refs.nth(2).locator(".fref-error")).to_have_text(f"{gone} does not exist")
    refs.nth(3).locator("summary").click()
    expect(refs.nth(3).locator(".fref-note")).to_have_text("first 64 KiB of 105 KiB")
    expect(refs.nth(3).locator("pre.fref-text")).to_contain_text("a line of the log")
    refs.nth(4).locator("summary").click()
    expect(refs.nth(4).locator(".fref-note")).to_have_text("binary file, 600 bytes")
    expect(refs.nth(4).locator("pre")).to_have_count(0)

    # the operator's inbox shows the same refs; closing and reopening does not fetch again
    inbox_ref = page.locator(f'#inbox [data-message="{message_id}"] details.fref').nth(1)
    inbox_ref.locator("summary").click()
    expect(inbox_ref.locator("pre.fref-text")).to_have_text(f"the plan {mark}\n")
    first.locator("summary").click()
    expect(first).not_to_have_attribute("open", "")
    first.locator("summary").click()
    expect(text).to_have_text(f"# report {mark}\n<b>not bold</b>\n")
    expect(first).to_have_attribute("data-state", "loaded")
    flow_row(page, message_id).scroll_into_view_if_needed()
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "dashboard-file-refs.png"), full_page=True)
    assert_no_reload(page)


def test_agent_page_file_refs_open_into_previews(page, hv):
    mark = unique("refs-")
    notes = write_file(os.path.join(hv.home("a"), "state"), f"notes-{mark}.md", f"notes for {mark}\n")
    message_id = hv.call("send", to="a", body=f"{mark}: read {notes}\nFAKE: say read it")["id"]
    open_agent_page(page, hv, "a")
    wait_turn(page, mark)
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle", timeout=30000)

    start = page.locator("#terminal .trow.turn-start", has_text=mark)
    started = start.locator("details.fref")
    expect(started).to_have_count(1)
    expect(started.locator(".fref-path")).to_have_text(notes)
    started.locator("summary").click()
    expect(started.locator("pre.fref-text")).to_have_text(f"notes for {mark}\n")

    item = page.locator(f'#inbox [data-message="{message_id}"] details.fref')
    expect(item).to_have_count(1)
    item.locator("summary").click()
    expect(item.locator("pre.fref-text")).to_have_text(f"notes for {mark}\n")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "agent-file-refs.png"), full_page=True)
    assert_no_reload(page)


def test_agent_page_shows_the_status_line_and_withdraws_a_reminder(page, hv):
    ensure_agent(hv, "a")
    mark = unique("status-")
    open_agent_page(page, hv, "a")
    remind = {"message": f"come back to {mark}", "in_seconds": 3600}
    hv.call("send", to="a", body=f"{mark}\nFAKE: call set_status {json.dumps({'text': f'working on {mark}'})}\n"
                                 f"FAKE: call remind {json.dumps(remind)}")
    # live, from the event the set_status result made: no reload
    expect(page.locator("#status-line")).to_have_text(f"working on {mark}", timeout=30000)
    item = page.locator('#loose-ends .loose[data-kind="reminder"]', has_text=f"come back to {mark}")
    expect(item).to_be_visible(timeout=30000)  # the loose ends refresh when the turn ends
    assert_no_reload(page)

    open_dashboard(page, hv)  # the container row: the status line and the pending reminder
    row = page.locator('#containers [data-agent="a"]')
    expect(row.locator(".status-text")).to_contain_text(f"working on {mark}")
    expect(row.locator(".chip", has_text="⏰ 1")).to_be_visible()

    open_agent_page(page, hv, "a")
    expect(page.locator("#status-line")).to_have_text(f"working on {mark}")  # cold, from the snapshot
    page.once("dialog", lambda dialog: dialog.accept())
    item.locator("button.loose-cancel").click()
    expect(item).to_have_count(0)
    assert hv.agent_call("a", "count_pending_reminders")["count"] == 0
    expect(page.locator("#terminal .trow", has_text=f"status line → working on {mark}")).to_be_visible()
    assert_no_reload(page)

    page.goto(f"{hv.url}/agent/a/stats")
    expect(page.locator("#tiles .tile", has_text="reminders pending")).to_be_visible()
    assert page.evaluate("!!window.hive.charts['c-backlog']")


# -- 7. page secrets -------------------------------------------------------------------------------

def test_one_agents_secret_does_not_open_anothers_page(hv):
    ensure_agent(hv, "b")
    secrets = {}
    for name in ("a", "b"):
        with open(os.path.join(hv.run_dir, "agents", name, "web.secret")) as f:
            secrets[name] = f.read().strip()
    assert secrets["a"] != secrets["b"]
    sock = web_sock(hv, "b")

    status, data = web_get(sock, secrets["a"])
    assert status == 403
    assert_error_shape(data, "forbidden")
    status, data = web_get(sock, None)
    assert status == 403
    assert_error_shape(data, "forbidden")
    status, data = web_get(sock, "")
    assert status == 403
    status, data = web_get(sock, secrets["b"])
    assert status == 200 and data["name"] == "b"


# -- 8. screenshots -------------------------------------------------------------------------------

def test_screenshots(page, hv):
    os.makedirs(ARTIFACTS, exist_ok=True)
    for name in ("b", "c"):
        ensure_agent(hv, name)
    hv.call("send", to="b", body="**Markdown** check: `code`, a [link](https://example.com) and\n\n- a\n- list")
    hv.call("send", to="a", body="FAKE: send operator a reply for the **operator** inbox")
    pending = hv.agent_call("manager", "request_init_config", name="d",
                            description="a new agent d, to take over the reports")["id"]

    open_dashboard(page, hv)
    expect(page.locator(f'#approvals [data-approval="{pending}"]')).to_be_visible()
    expect(page.locator("#inbox [data-message]", has_text="a reply for the operator inbox")).to_be_visible(timeout=30000)
    for name in ("manager", "a", "b", "c"):
        expect(page.locator(f'#containers [data-agent="{name}"]')).to_have_attribute("data-state", "running")
    page.screenshot(path=os.path.join(ARTIFACTS, "dashboard.png"), full_page=True)
    page.set_viewport_size({"width": 420, "height": 900})
    page.screenshot(path=os.path.join(ARTIFACTS, "dashboard-narrow.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})

    open_agent_page(page, hv, "a")
    mark = unique("shot-")
    page.locator("#agent-compose").fill(f"{mark}: please report\nFAKE: send operator report {mark}\n"
                                        f"FAKE: say All **done**: see `report {mark}`")
    page.locator("#agent-send").click()
    wait_turn(page, mark)
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle", timeout=30000)
    page.screenshot(path=os.path.join(ARTIFACTS, "agent.png"), full_page=True)

    page.goto(f"{hv.url}/agent/a/stats")
    # (the numbers are not checked here: a screenshot of what the page makes of this hive's turns)
    expect(page.locator("#tiles > *, #stats-empty:not([hidden])").first).to_be_visible()
    expect(page.locator("#stats-error")).to_be_hidden()
    page.screenshot(path=os.path.join(ARTIFACTS, "stats.png"), full_page=True)

    page.goto(f"{hv.url}/journal/a")
    expect(page.locator("#live")).to_have_attribute("data-live", "true")
    expect(page.locator("#journal .trow", has_text="serving").first).to_be_visible()
    page.screenshot(path=os.path.join(ARTIFACTS, "journal.png"), full_page=True)


def test_a_harness_that_died_on_its_own_shows_the_core_starting_it_again(page, hv):
    ensure_agent(hv, "crashy")
    open_dashboard(page, hv)
    row = page.locator('#containers [data-agent="crashy"]')
    expect(row).to_have_attribute("data-state", "running")
    os.killpg(hv.harness_pid("crashy"), 9)
    # live, from the watch's row events: why it died and that it comes back, then back by itself
    chip = row.locator(".chip.restart")
    expect(chip).to_contain_text("1 death in a row", timeout=30000)
    expect(chip).to_have_attribute("title", re.compile("killed by SIGKILL"))
    expect(row).to_have_attribute("data-state", "running", timeout=30000)
    expect(chip).to_contain_text("↻ restarted")
    assert_no_reload(page)

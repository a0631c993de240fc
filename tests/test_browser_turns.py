"""An agent's page in a real browser: a sub-agent's work as its own ⌁ row, and the badges on a cold load.

Its own hive (process backend, the fake claude: `FAKE: task` runs a
sub-agent printed as claude 2.1.197 prints one) and the Chromium of
`test_browser.py`, whose fixtures and helpers this module shares. Screenshots
go to tests/artifacts/ (agent-subagent.png, agent-badges-cold.png).
"""

import http.client
import json
import os
import socket

import pytest

import test_browser as tb
from conftest import wait_until
from test_browser import ARTIFACTS, expect, open_agent_page, unique, wait_page_up, wait_turn

# the fixtures of test_browser.py, one hive and one browser for this module
hv, browser, operator, page = tb.hv, tb.browser, tb.operator, tb.page

# where the page's rows are: the terminal's own rows (keyed by seq) and what is nested in them
TOP = "#terminal .term-rows > [data-key]"


def idle(page):
    expect(page.locator("#turn-state")).to_have_attribute("data-state", "idle", timeout=30000)


def run_turn(page, mark, prompt):
    page.locator("#agent-compose").fill(f"{mark}\n{prompt}")
    page.locator("#agent-send").click()
    expect(page.locator("#agent-compose")).to_have_value("")
    rows = wait_turn(page, mark)
    idle(page)
    return rows


# -- 1. a sub-agent ------------------------------------------------------------------------------

def test_a_sub_agents_work_is_a_task_row_with_its_tool_calls_nested_under_it(page, hv):
    open_agent_page(page, hv, "a")
    idle(page)
    mark = unique("task-")
    rows = run_turn(page, mark, f"FAKE: task Explore survey the {mark} notes\nFAKE: whoami\n"
                                f"FAKE: send operator sub-agent report {mark}\n"
                                f"FAKE: say **found** it <b>bold</b> {mark}\nFAKE: task-end\n"
                                f"FAKE: say main done {mark}")
    # the session's own flow: the Agent call, the ⌁ row of its sub-agent, the ⌁ row of its end, the reply
    classes = [r["cls"] for r in rows]
    task_at = next(i for i, c in enumerate(classes) if c.split()[0] == "task")
    end_at = next(i for i, c in enumerate(classes) if "task-end" in c.split())
    assert rows[task_at - 1]["tool"] == "Agent" and task_at < end_at, rows
    assert not [r for r in rows if r["tool"] in ("whoami", "send")], "a sub-agent's calls are not the session's"
    assert any("say" in c.split() and f"main done {mark}" in r["text"] for c, r in zip(classes, rows))

    task = page.locator(f'{TOP}.task:has-text("survey the {mark} notes")')
    head = task.locator("> summary")
    expect(head.locator(".pfx")).to_have_text("⌁")
    expect(head).to_contain_text(f"sub-agent Explore · survey the {mark} notes")
    expect(task).to_have_attribute("data-status", "completed")
    expect(head.locator(".task-status")).to_have_text("✓ done")
    expect(head.locator(".task-stats")).to_contain_text("2 tool uses")
    # its own lines, nested in it in order: its prompt, its two calls (their results folded in), its reply
    flow = task.locator("> .subflow > *")
    expect(flow).to_have_count(4)
    expect(flow.nth(0)).to_contain_text(f"prompt · survey the {mark} notes")
    expect(flow.nth(1)).to_have_attribute("data-tool", "whoami")
    expect(flow.nth(2)).to_have_attribute("data-tool", "send")
    expect(flow.nth(2)).to_contain_text(f"sub-agent report {mark}")
    for call in (flow.nth(1), flow.nth(2)):
        expect(call).to_have_class(tb.re.compile(r"\bdone\b"))
    say = flow.nth(3)
    expect(say).to_have_class(tb.re.compile(r"\bsay\b"))
    # its prose is the core's rendering: markdown made, the harness's HTML shown as text
    expect(say.locator(".md strong")).to_have_text("found")
    expect(say.locator("b")).to_have_count(0)
    expect(say).to_contain_text(f"<b>bold</b> {mark}")

    end = page.locator(f"{TOP}.task-end").last
    expect(end.locator(".pfx")).to_have_text("⌁")
    expect(end).to_contain_text(f"sub-agent ✓ done Explore · survey the {mark} notes")
    expect(end).to_contain_text("2 tool uses")
    # the Agent call got its result: the sub-agent's reply
    agent_call = page.locator(f'{TOP}[data-tool="Agent"]', has_text=f"survey the {mark} notes")
    expect(agent_call).to_have_class(tb.re.compile(r"\bdone\b"))
    # the badges count the session's context, never the sub-agent's (its inferences are 5000 tokens)
    assert page.locator("#ctx-badge").text_content() != "5k ctx"

    os.makedirs(ARTIFACTS, exist_ok=True)
    task.scroll_into_view_if_needed()
    page.screenshot(path=os.path.join(ARTIFACTS, "agent-subagent.png"), full_page=True)

    # the same rows from the history on a cold load
    open_agent_page(page, hv, "a")
    task = page.locator(f'{TOP}.task:has-text("survey the {mark} notes")')
    expect(task.locator("> .subflow > *")).to_have_count(4)
    expect(task).to_have_attribute("data-status", "completed")


def test_a_sub_agent_split_by_the_history_page_is_one_row_in_order_once_older_lines_load(page, hv):
    open_agent_page(page, hv, "a")
    idle(page)
    mark = unique("long-task-")
    calls = 70  # three events each: more than the newest page of history a cold load shows
    run_turn(page, mark, f"FAKE: task general-purpose sift the {mark} logs\n" + "FAKE: whoami\n" * calls +
             f"FAKE: say sifted {mark}\nFAKE: task-end")

    page.goto(f"{hv.url}/agent/a/")  # its start is older than the loaded page: its lines draw the row
    expect(page.locator("#live")).to_have_attribute("data-live", "true")
    task = page.locator(f'{TOP}.task:has-text("sift the {mark} logs")')
    expect(task).to_have_count(1)
    expect(task.locator("> summary")).to_contain_text(f"sub-agent general-purpose · sift the {mark} logs")
    shown = task.locator("> .subflow > [data-tool]").count()
    assert 0 < shown < calls
    page.locator("#terminal .term-older").click()
    # the older lines join the same row, before the later ones; its start adds its prompt
    expect(task.locator("> .subflow > [data-tool]")).to_have_count(calls)
    expect(task.locator("> .subflow > .task-prompt")).to_have_count(1)
    expect(page.locator(f'{TOP}.task:has-text("sift the {mark} logs")')).to_have_count(1)
    keys = task.evaluate("(t) => [...t.querySelectorAll(':scope > .subflow > [data-sub-key]')]"
                         ".map((n) => Number(n.dataset.subKey))")
    assert keys == sorted(keys) and len(keys) == len(set(keys)) == calls + 1, keys


# -- 2. the badges on a cold load ---------------------------------------------------------------

def badges(page):
    return page.evaluate("""() => ({ctx: document.querySelector('#ctx-badge').textContent,
                                   cost: document.querySelector('#cost-badge').textContent,
                                   title: document.querySelector('#cost-badge').title})""")


def web_post(hv, name, path, body):
    """A POST on an agent's web.sock with its secret, as the core's proxy makes it."""
    with open(os.path.join(hv.run_dir, "agents", name, "web.secret")) as f:
        secret = f.read().strip()

    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(os.path.join(hv.run_dir, "agents", name, "web.sock"))

    conn = Conn("localhost", timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"X-Hive-Secret": secret, "Content-Type": "application/json"})
        res = conn.getresponse()
        assert res.status == 200, res.read()
        res.read()
    finally:
        conn.close()


@pytest.fixture
def restart_page(operator):
    """A tab that fails the test on a script error, but lets the browser log the 503 of the agent's page
    while its harness is down (what the page says then, not a fault of it)."""
    yield from tb.tolerant_page(operator, 503)


LIVES_JS = """() => {
    const live = document.querySelector('#live');
    window.__lives = [live.dataset.live];
    new MutationObserver(() => window.__lives.push(live.dataset.live))
        .observe(live, {attributes: true, attributeFilter: ['data-live']});
}"""


def test_the_badges_show_the_last_turns_numbers_after_a_reload_and_a_harness_restart(restart_page, hv):
    page = restart_page
    open_agent_page(page, hv, "a")
    idle(page)
    mark = unique("badges-")
    run_turn(page, mark, f"FAKE: whoami\nFAKE: say counted {mark}")
    expect(page.locator("#ctx-badge")).not_to_have_text("– ctx")
    shown = badges(page)
    assert shown["cost"] != "– tok" and "input " in shown["title"], shown

    page.reload()  # a cold load of the same harness
    expect(page.locator("#live")).to_have_attribute("data-live", "true")
    assert badges(page) == shown

    # the harness starts again while the page is open: the page reconnects and keeps the numbers
    page.evaluate(LIVES_JS)
    before = hv.harness_pid("a")
    hv.call("restart", name="a")
    wait_until(lambda: hv.harness_pid("a") not in (None, before), 30, "a's harness to start again")
    wait_page_up(hv, "a")
    page.wait_for_function("() => window.__lives.includes('false') && "
                           "window.__lives[window.__lives.length - 1] === 'true'", timeout=30000)
    assert badges(page) == shown, "a reconnect to the restarted harness lost the badges"

    # a cold load of the restarted harness, its usage event far beyond the history a page loads
    for i in range(210):
        web_post(hv, "a", "/api/model", {"model": "sonnet" if i % 2 == 0 else "haiku"})
    page.goto(f"{hv.url}/agent/a/")
    expect(page.locator("#live")).to_have_attribute("data-live", "true")
    expect(page.locator("#model-chip")).to_have_text("haiku")
    idle(page)
    assert badges(page) == shown, "a cold load of a restarted harness showed other numbers than its last turn's"
    assert page.locator(f'{TOP}.turn-start:has-text("{mark}")').count() == 0  # far out of the loaded history
    expect(page.locator("#loose-ends")).to_contain_text("nothing left open")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "agent-badges-cold.png"))


# -- 3. the session's claude -------------------------------------------------------------------------

def test_the_page_shows_the_sessions_claude_and_the_same_one_runs_the_next_turn(page, hv):
    open_agent_page(page, hv, "a")
    idle(page)
    run_turn(page, unique("claude-"), "FAKE: say one")
    pid = hv.claude_calls("a")[-1]["pid"]
    page.reload()  # the chip comes with the state: a turn's end does not carry it
    chip = page.locator("#claude-chip")
    expect(chip).to_have_attribute("data-pid", str(pid))
    expect(chip).to_contain_text(f"claude {pid}")
    expect(chip).to_contain_text(" MiB")
    turns = int(chip.text_content().split(" turn")[0].rsplit("· ", 1)[1])
    run_turn(page, unique("claude-"), "FAKE: say two")
    assert hv.claude_calls("a")[-1]["pid"] == pid, "the next turn ran on the same claude"
    page.reload()
    expect(chip).to_contain_text(f"· {turns + 1} turn")
    assert "replaced between turns after 200 turns" in chip.get_attribute("title")

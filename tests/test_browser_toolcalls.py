"""Tool calls an agent's policy asks the operator about, in a real browser: the card on the dashboard and on
the agent's page shows the call's input as text (never markup), and allow once, always allow and deny with a
reason answer the harness that waits.

Its own hive and Chromium, started as tests/test_browser.py starts them (its fixtures and helpers are used
here); skipped or failed as that module is, by HIVE_REQUIRE_BROWSER. Screenshots go to tests/artifacts/.
"""

import concurrent.futures
import json

import pytest

import test_browser as tb
from conftest import wait_until
from hyperhive import wire
from test_browser import shot, assert_no_reload, open_agent_page, open_dashboard, unique

from playwright.sync_api import expect  # noqa: E402  (after test_browser's skip)

# the fixtures of test_browser.py: one hive (with `a` spawned and its page up) and one Chromium for this module
hv, browser, operator, page = tb.hv, tb.browser, tb.operator, tb.page

HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


@pytest.fixture(scope="module")
def waiter():
    """Where a harness's ask_tool_use waits for the operator while the test clicks."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def ask(hv, tool_use_id, wait_seconds=0, command=None, rule="Bash(echo:*)"):
    """a's harness asks, as it does for a call matching `ask` (over a's own socket)."""
    return hv.agent_call("a", "ask_tool_use", tool="Bash", tool_use_id=tool_use_id, rule=rule,
                         input={"command": command or f"echo {HOSTILE}", "description": "say hello"},
                         wait_seconds=wait_seconds)["approval"]


def shows_the_input_as_text(p, card, command):
    expect(card.locator("pre.tool-input")).to_contain_text(f'"command": {json.dumps(command)}')  # pretty JSON
    expect(card.locator(".tool-name")).to_have_text("Bash")
    expect(card.locator(".tool-rule")).to_have_text("Bash(echo:*)")
    assert card.locator("img, script").count() == 0  # the input's markup is text in the <pre>
    assert p.evaluate("window.__pwned") is None


def manager_told(hv, approval_id):
    return hv.db_rows("SELECT body FROM message WHERE sender = 'core' AND recipient = 'manager' AND body LIKE ?",
                      f"%always_allow%(approval {approval_id})%")


def test_on_the_dashboard_a_tool_call_card_shows_its_input_as_text_and_its_answers_reach_the_harness(page, hv,
                                                                                                      waiter):
    open_dashboard(page, hv)
    mark = unique("toolu_")
    first = ask(hv, mark)
    card = page.locator(f'#approvals [data-approval="{first["id"]}"]')
    expect(card).to_have_attribute("data-kind", "tool_use")
    shows_the_input_as_text(page, card, f"echo {HOSTILE}")
    expect(card.locator('[data-action="allow-once"]')).to_have_text("✓ allow once")
    expect(card.locator('[data-action="always-allow"]')).to_have_text("✓ always allow")
    expect(card.locator('[data-action="deny"]')).to_have_text("✗ deny…")
    card.scroll_into_view_if_needed()
    shot(page, "dashboard-tool-call.png")

    # allow once: the harness that waits hears "approved" at once, and the manager hears nothing
    waiting = waiter.submit(ask, hv, mark, 30)
    with page.expect_response(lambda r: r.request.method == "POST" and "/approve/" in r.url) as answered:
        card.locator('[data-action="allow-once"]').click()
    assert answered.value.url == f"{hv.url}/approve/{first['id']}" and answered.value.status == 200
    assert waiting.result(timeout=10)["status"] == "approved"
    expect(card).to_have_attribute("data-status", "approved")
    assert manager_told(hv, first["id"]) == []

    # deny with a reason: the reason is the waiter's note
    second = ask(hv, mark + "-2", command="echo again")
    card = page.locator(f'#approvals [data-approval="{second["id"]}"]')
    waiting = waiter.submit(ask, hv, mark + "-2", 30, "echo again")
    card.locator('[data-action="deny"]').click()
    reason = card.locator('[data-test="deny-reason"]')
    expect(reason).to_be_focused()
    reason.fill("not in this repo")
    card.locator('[data-action="deny-confirm"]').click()
    got = waiting.result(timeout=10)
    assert (got["status"], got["note"]) == ("denied", "not in this repo")
    expect(card).to_have_attribute("data-status", "denied")
    expect(card.locator(".outcome")).to_contain_text("not in this repo")

    # always allow: approved, and the manager is asked to allow the rule
    third = ask(hv, mark + "-3", command="echo always")
    card = page.locator(f'#approvals [data-approval="{third["id"]}"]')
    card.locator('[data-action="always-allow"]').click()
    expect(card).to_have_attribute("data-status", "approved")
    wait_until(lambda: manager_told(hv, third["id"]), 10, "the manager's always_allow helper event")
    assert page.evaluate("window.__pwned") is None
    assert_no_reload(page)


def test_on_the_agent_page_its_tool_calls_wait_near_the_top_and_are_decided_there(page, hv, waiter):
    mark = unique("toolu_")
    before = ask(hv, mark)  # waiting before the page opens: its snapshot has it
    open_agent_page(page, hv, "a")
    panel = page.locator("#tool-calls-panel")
    expect(panel).to_be_visible()
    card = panel.locator(f'[data-approval="{before["id"]}"]')
    shows_the_input_as_text(page, card, f"echo {HOSTILE}")
    # one that comes while the page is open: drawn from the core's stream of a's tool calls
    live = ask(hv, mark + "-live", command="echo live")
    live_card = panel.locator(f'[data-approval="{live["id"]}"]')
    expect(live_card.locator("pre.tool-input")).to_contain_text('"command": "echo live"')
    expect(page.locator("#tool-calls-count")).to_have_text("2")
    # another agent's is not a's: never on a's page
    other = hv.agent_call("manager", "ask_tool_use", tool="Bash", tool_use_id=mark, rule="Bash",
                          input={"command": "echo the manager's"})["approval"]
    shot(page, "agent-tool-calls.png")

    # allow once, as the operator, through the core's own route (never a's harness)
    waiting = waiter.submit(ask, hv, mark, 30)
    with page.expect_response(lambda r: r.request.method == "POST" and "/approve/" in r.url) as answered:
        card.locator('[data-action="allow-once"]').click()
    assert answered.value.url == f"{hv.url}/approve/{before['id']}" and answered.value.status == 200
    assert waiting.result(timeout=10)["status"] == "approved"
    expect(card).to_have_count(0)

    # deny with a reason
    waiting = waiter.submit(ask, hv, mark + "-live", 30, "echo live")
    live_card.locator('[data-action="deny"]').click()
    live_card.locator('[data-test="deny-reason"]').fill("use the staging remote")
    with page.expect_response(lambda r: r.request.method == "POST" and "/deny/" in r.url) as answered:
        live_card.locator('[data-action="deny-confirm"]').click()
    assert answered.value.url == f"{hv.url}/deny/{live['id']}"
    got = waiting.result(timeout=10)
    assert (got["status"], got["note"]) == ("denied", "use the staging remote")
    expect(panel).to_be_hidden()
    assert page.locator(f'[data-approval="{other["id"]}"]').count() == 0
    try:
        hv.call("deny", id=other["id"], reason="")
    except wire.HiveError as e:  # the manager's harness ended a turn of its own meanwhile, which cancels its calls
        assert f"approval {other['id']} is already cancelled" in str(e), e

    # the turn that made a call ended: it goes from the page by itself
    gone = ask(hv, mark + "-end", command="echo ended")
    expect(panel.locator(f'[data-approval="{gone["id"]}"]')).to_be_visible()
    hv.agent_call("a", "ack_turn")
    expect(panel).to_be_hidden()
    assert page.evaluate("window.__pwned") is None
    assert_no_reload(page)

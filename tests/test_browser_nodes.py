"""A real browser on one dashboard of a hive of two cores: every node, every agent, and a node gone silent."""

import os
import shutil

import pytest

from conftest import browser_missing, kill_harnesses, wait_until
from test_browser import CHROMIUM_ARGS, TIMEOUT_MS
from test_nodes import node, silent_on, started

WHY = browser_missing()
if WHY:
    if os.environ.get("HIVE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"HIVE_REQUIRE_BROWSER=1 but {WHY}")
    pytest.skip(WHY, allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402


def test_one_dashboard_shows_both_nodes_their_agents_and_a_node_that_went_silent(tmp_path, pg_url):
    with started(node(tmp_path, pg_url, "n1"), node(tmp_path, pg_url, "n2")) as (n1, n2), sync_playwright() as p:
        n2.spawn("b")
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(n1.login_url())
            nodes = page.locator("#nodes")
            expect(nodes).to_be_visible()
            expect(nodes.locator("[data-node='n1']")).to_have_attribute("data-alive", "yes")
            expect(nodes.locator("[data-node='n2']")).to_have_attribute("data-alive", "yes")
            # n2's agent is on n1's dashboard, with its node, and its page link is n2's
            card = page.locator("article.agent-card[data-agent='b']")
            expect(card.locator(".node-of")).to_have_text("on n2")
            expect(card.locator("a.agent-name")).to_have_attribute("href", f"{n2.url}/agent/b/")
            expect(page.locator("article.agent-card[data-agent='manager'] .node-of")).to_have_text("on n1")
            # n2's host dies: the open page hears it, live, and says which node is silent
            n2.kill9()
            kill_harnesses(n2.state_dir)
            wait_until(lambda: silent_on(n1, "n2"), 30, "n1 to see n2 silent")
            expect(nodes.locator("[data-node='n2']")).to_have_attribute("data-alive", "no", timeout=30000)
            expect(card.locator(".node-of")).to_have_text("n2 silent")
            assert not errors, errors
        finally:
            browser.close()

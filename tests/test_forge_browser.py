"""The forge mirror as the operator sees it on the dashboard: an agent whose applied repo the forge
lacks carries a `forge behind` chip with git's reason, gone once the forge has caught up. Skipped like
tests/test_browser.py (whose browser it shares) when Playwright or Chromium is missing."""

import os

from conftest import running
import test_browser as tb  # skips this module as it skips its own
from test_browser import ARTIFACTS, new_context
from test_forge import GitForge, core_with_forge, deploy_a_change

from playwright.sync_api import expect  # noqa: E402

browser = tb.browser  # the one Chromium of test_browser.py, for this module


def test_a_forge_that_is_behind_shows_on_the_agents_card_until_it_catches_up(browser, tmp_path):
    forge = GitForge(tmp_path / "forge")  # down: its port is closed
    h, _ = core_with_forge(tmp_path, forge)
    with running(h):
        h.spawn("a")
        ctx = new_context(browser)
        page = ctx.new_page()
        page.goto(h.login_url())
        expect(page.locator("#live")).to_have_attribute("data-live", "true")
        chip = page.locator('#containers [data-agent="a"] .chip.forge')
        expect(chip).to_have_text("forge behind", timeout=30000)
        title = chip.get_attribute("title")
        assert title.startswith(f"could not push a's applied config repo to {forge.url}/a.git") and "retry at" in title
        page.screenshot(path=os.path.join(ARTIFACTS, "forge-behind.png"))
        forge.start()
        try:
            deploy_a_change(h, "a", "the forge is back")
            expect(chip).to_have_count(0, timeout=30000)
        finally:
            forge.stop()
            ctx.close()

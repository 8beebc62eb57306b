"""The lists keep themselves current: the runs list follows `/api/v1/stream` without a
reload, the agents and queues tables refresh from the API; the theme toggle is remembered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.web.browser.conftest import artifact
from tests.web.browser.driving import WAIT_MS, expect, schedule

if TYPE_CHECKING:
    from playwright.async_api import Page


async def test_the_runs_list_updates_live(page: Page, live_system: str) -> None:
    await page.goto(f"{live_system}/runs")
    await page.evaluate("window.__sameDocument = true")
    run_id = await schedule(live_system, {"dag": "diamond"})
    row = page.locator(f'#live-runs tr[data-run-id="{run_id}"]')
    await expect()(row).to_have_count(1, timeout=WAIT_MS)  # a new run appears on top
    await expect()(row.locator(".badge")).to_have_text("succeeded", timeout=WAIT_MS)
    await expect()(row.locator(".progress-cell")).to_contain_text("4/4")
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    # Filtered by another status, the list does not take the run in.
    await page.goto(f"{live_system}/runs?status=failed")
    assert await page.locator("#live-runs tbody tr").count() == 0


async def test_the_theme_toggle_is_remembered(page: Page, published_ui: str) -> None:
    await page.emulate_media(color_scheme="light")
    await page.goto(f"{published_ui}/")
    html = page.locator("html")
    assert await html.get_attribute("data-theme") is None  # the system's, until chosen
    await page.click("#theme-toggle")
    assert await html.get_attribute("data-theme") == "dark"
    background = "() => getComputedStyle(document.body).backgroundColor"
    dark = await page.evaluate(background)
    await page.goto(f"{published_ui}/runs")
    assert await html.get_attribute("data-theme") == "dark"
    assert await page.evaluate(background) == dark
    await page.screenshot(path=artifact("runs-dark.png"))
    await page.click("#theme-toggle")
    assert await html.get_attribute("data-theme") == "light"
    assert await page.evaluate(background) != dark


async def test_agents_and_queues_refresh_by_themselves(page: Page, live_system: str) -> None:
    """The tables are rendered by the server, then refreshed from the API every 5 s (the
    page's clock is driven by the test: no waiting for it)."""
    await page.clock.install()
    await page.goto(f"{live_system}/agents")
    await expect()(page.locator("#agents tbody tr")).to_have_count(1)
    assert await page.locator("#agents tr[data-agent]").count() == 0  # the server's rows
    await page.clock.fast_forward(6000)
    await expect()(page.locator("#agents tr[data-agent]")).to_have_count(1, timeout=WAIT_MS)
    await expect()(page.locator("#agents tbody")).to_contain_text("default")
    await page.goto(f"{live_system}/queues")
    await page.clock.fast_forward(6000)
    await expect()(page.locator('#queues tr[data-queue="default"]')).to_have_count(
        1, timeout=WAIT_MS
    )

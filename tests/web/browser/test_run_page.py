"""The issue's browser scenarios, in headless Chromium against a live system (conftest.py):
schedule the diamond from the form and watch it turn green without a reload; a task's log
lines arriving while it runs; cancel a long run; rerun a failed run once its task is fixed;
the history slider's earlier colours; markup in names, parameters and logs shown as text.

Every wait is a condition with a deadline (Playwright's `expect` and `wait_for_function`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.web.browser.conftest import EVIL, UNICODE, artifact
from tests.web.browser.driving import (
    ALL_GREEN,
    WAIT_MS,
    click_node,
    ended,
    expect,
    open_run,
    run_status,
    schedule,
)

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = pytest.mark.timeout(120)


async def test_schedule_the_diamond_from_the_form_and_watch_it_turn_green(
    page: Page, live_system: str
) -> None:
    await page.goto(f"{live_system}/dags/diamond")
    await page.click("#schedule-submit")
    await page.wait_for_url(re.compile(r"/runs/[^/]+$"), timeout=WAIT_MS)
    run_id = page.url.rsplit("/", 1)[1]
    await page.wait_for_selector("#graph[data-ready=yes]", state="attached")
    await page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    first = await page.evaluate("window.cxRun.statuses()")
    assert set(first) == {"top", "left", "right", "bottom"}
    assert set(first.values()) != {"succeeded"}, "the run ended before the page showed it"
    await page.wait_for_function(ALL_GREEN, timeout=WAIT_MS)
    await expect()(page.locator("#run-status .badge")).to_have_text("succeeded", timeout=WAIT_MS)
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    await click_node(page, "bottom")
    await expect()(page.locator("#panel-log")).to_contain_text("bottom done", timeout=WAIT_MS)
    await expect()(page.locator("#panel-attempts tbody tr")).to_have_count(1, timeout=WAIT_MS)
    await page.screenshot(path=artifact("run.png"))

    await page.goto(f"{live_system}/runs/{run_id}/timeline")
    await expect()(page.locator("#gantt .gbar")).to_have_count(4)
    await page.screenshot(path=artifact("timeline.png"))
    await page.goto(f"{live_system}/")
    await expect()(page.locator(f'#live-runs tr[data-run-id="{run_id}"]')).to_have_count(1)
    await page.screenshot(path=artifact("dashboard.png"))


async def test_the_form_shows_a_bad_value_next_to_its_field(page: Page, published_ui: str) -> None:
    await page.goto(f"{published_ui}/tasks/talker")
    await page.fill("textarea[name=parameters]", "not a pair")
    await page.click("#schedule-submit")
    await expect()(page.locator('[data-error-for="parameters"]')).to_contain_text("KEY=value")
    await page.fill("textarea[name=parameters]", "1BAD=x")
    await page.click("#schedule-submit")
    await expect()(page.locator('[data-error-for="parameters"]')).not_to_be_empty(timeout=WAIT_MS)
    await page.fill("textarea[name=parameters]", "")
    await page.fill("input[name=run_id]", "bad id with spaces")
    await page.click("#schedule-submit")
    await expect()(page.locator('[data-error-for="run_id"]')).not_to_be_empty(timeout=WAIT_MS)
    assert "/tasks/talker" in page.url


async def test_a_task_log_arrives_while_it_runs_and_markup_stays_text(
    page: Page, live_system: str
) -> None:
    run_id = await schedule(live_system, {"task": "talker"})
    await open_run(page, live_system, run_id)
    await click_node(page, "talker")
    log = page.locator("#panel-log")
    await expect()(log).to_contain_text("line 1:", timeout=WAIT_MS)
    # The first lines are shown while the command still runs (it prints six, 0.5 s apart).
    assert "line 6:" not in (await log.text_content() or "")
    assert await run_status(live_system, run_id) == "running"
    await expect()(log).to_contain_text("line 6:", timeout=WAIT_MS)
    await expect()(page.locator("#log-state")).to_have_text("(ended)", timeout=WAIT_MS)
    # Markup in the task's name, its parameters and its output is text, and Unicode round-trips.
    assert f"line 1: {EVIL} {UNICODE}" in (await log.text_content() or "")
    assert await page.locator("#panel-title").text_content() == f"Talker {EVIL} {UNICODE}"
    assert EVIL in (await page.locator("#panel-params").text_content() or "")
    assert await page.evaluate("window.pwned === undefined")
    await page.goto(f"{live_system}/tasks")
    await expect()(page.locator("#task-list")).to_contain_text(f"Talker {EVIL}")
    assert await page.evaluate("window.pwned === undefined")


async def test_cancel_a_long_run(page: Page, live_system: str) -> None:
    run_id = await schedule(live_system, {"task": "sleeper"})
    await open_run(page, live_system, run_id)
    await page.wait_for_function(
        "() => window.cxRun.statuses().sleeper === 'running'", timeout=WAIT_MS
    )
    await expect()(page.locator("#live-state")).to_have_text("● live")
    await page.click("#cancel")
    await expect()(page.locator("#cancel")).to_have_text("Really cancel?")
    await page.click("#cancel")
    await expect()(page.locator("#run-status .badge")).to_have_text("cancelled", timeout=WAIT_MS)
    await expect()(page.locator("#cancel")).to_be_disabled()
    await expect()(page.locator("#live-state")).to_have_text("")  # the run ended: stream closed
    await page.wait_for_function(
        "() => window.cxRun.statuses().sleeper === 'cancelled'", timeout=WAIT_MS
    )


async def test_rerun_a_failed_run_and_from_one_task_once_it_is_fixed(
    page: Page, live_system: str, tmp_path: Path
) -> None:
    run_id = await schedule(live_system, {"task": "after_fragile"})
    assert await ended(live_system, run_id) == "failed"
    await open_run(page, live_system, run_id)
    await expect()(page.locator("#run-status .badge")).to_have_text("failed")
    statuses = await page.evaluate("window.cxRun.statuses()")
    assert statuses == {"fragile": "failed", "after_fragile": "skipped"}
    (tmp_path / "fixed").touch()  # the fix: what the task checks for now exists
    await page.click("#rerun")
    await page.wait_for_url(re.compile(r"/runs/(?!" + re.escape(run_id) + r")[^/]+$"))
    await page.wait_for_selector("#graph[data-ready=yes]", state="attached")
    await expect()(page.locator("#run-status .badge")).to_have_text("succeeded", timeout=WAIT_MS)
    await page.wait_for_function(ALL_GREEN, timeout=WAIT_MS)
    await expect()(page.locator("#rerun-of")).to_have_text(run_id)  # linked to the failed run

    # Rerun from one task of the failed run: that task and what is downstream of it run again.
    await open_run(page, live_system, run_id)
    await click_node(page, "fragile")
    await expect()(page.locator("#panel-attempts tbody tr")).to_have_count(1, timeout=WAIT_MS)
    await page.click("#rerun-task")
    await page.wait_for_url(re.compile(r"/runs/(?!" + re.escape(run_id) + r")[^/#]+$"))
    await page.wait_for_selector("#graph[data-ready=yes]", state="attached")
    await expect()(page.locator("#run-status .badge")).to_have_text("succeeded", timeout=WAIT_MS)
    await page.wait_for_function(ALL_GREEN, timeout=WAIT_MS)


async def test_the_history_slider_shows_earlier_colours(page: Page, live_system: str) -> None:
    run_id = await schedule(live_system, {"dag": "diamond"})
    assert await ended(live_system, run_id) == "succeeded"
    await open_run(page, live_system, run_id)
    await page.wait_for_function(ALL_GREEN)
    slider = page.locator("#history")
    await expect()(slider).to_be_enabled(timeout=WAIT_MS)
    # Back to the second event (the first task queued): nothing has succeeded yet.
    await slider.evaluate("r => { r.value = '2'; r.dispatchEvent(new Event('input')); }")
    await page.wait_for_function(
        "() => { const s = window.cxRun.statuses();"
        " return s.top === 'queued' && s.bottom === 'pending'; }",
        timeout=WAIT_MS,
    )
    await expect()(page.locator("#history-label")).to_contain_text("event 2 of")
    await page.click("#history-live")
    await page.wait_for_function(ALL_GREEN, timeout=WAIT_MS)

"""The issue's browser scenarios, in headless Chromium against a live `cyclonetix dev` process
(conftest.py's `live_dev`, one for the module): schedule the diamond from the form and watch it
turn green without a reload; a task's log lines arriving while it runs; cancel a long run; rerun
a failed run once its task is fixed; the history slider's earlier colours; markup in names,
parameters and logs shown as text. The form's field errors use the in-process system.

Every wait is a condition with a deadline (Playwright's `expect` and `wait_for_function`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
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

pytestmark = pytest.mark.timeout(180)


async def test_schedule_the_diamond_from_the_form_and_watch_it_turn_green(
    dev_page: Page, live_dev: str
) -> None:
    await dev_page.goto(f"{live_dev}/dags/diamond")
    await dev_page.click("#schedule-submit")
    await dev_page.wait_for_url(re.compile(r"/runs/[^/]+$"), timeout=WAIT_MS)
    run_id = dev_page.url.rsplit("/", 1)[1]
    await dev_page.wait_for_selector("#graph[data-ready=yes]", state="attached")
    await dev_page.evaluate("window.__sameDocument = true")  # gone if the dev_page reloads
    first = await dev_page.evaluate("window.cxRun.statuses()")
    assert set(first) == {"top", "left", "right", "bottom"}
    assert set(first.values()) != {"succeeded"}, "the run ended before the dev_page showed it"
    await dev_page.wait_for_function(ALL_GREEN, timeout=WAIT_MS)
    await expect()(dev_page.locator("#run-status .badge")).to_have_text(
        "succeeded", timeout=WAIT_MS
    )
    assert await dev_page.evaluate("window.__sameDocument === true"), "the dev_page was reloaded"
    await click_node(dev_page, "bottom")
    await expect()(dev_page.locator("#panel-log")).to_contain_text("bottom done", timeout=WAIT_MS)
    await expect()(dev_page.locator("#panel-attempts tbody tr")).to_have_count(1, timeout=WAIT_MS)
    await dev_page.screenshot(path=artifact("run.png"))

    await dev_page.goto(f"{live_dev}/runs/{run_id}/timeline")
    await expect()(dev_page.locator("#gantt .gbar")).to_have_count(4)
    await dev_page.screenshot(path=artifact("timeline.png"))
    await dev_page.goto(f"{live_dev}/")
    await expect()(dev_page.locator(f'#live-runs tr[data-run-id="{run_id}"]')).to_have_count(1)
    await dev_page.screenshot(path=artifact("dashboard.png"))


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
    dev_page: Page, live_dev: str
) -> None:
    run_id = await schedule(live_dev, {"task": "talker"})
    await open_run(dev_page, live_dev, run_id)
    await click_node(dev_page, "talker")
    log = dev_page.locator("#panel-log")
    await expect()(log).to_contain_text("line 1:", timeout=WAIT_MS)
    # The first lines are shown while the command still runs (it prints six, 1 s apart).
    assert "line 6:" not in (await log.text_content() or "")
    assert await run_status(live_dev, run_id) == "running"
    await expect()(log).to_contain_text("line 6:", timeout=WAIT_MS)
    await expect()(dev_page.locator("#log-state")).to_have_text("(ended)", timeout=WAIT_MS)
    # Markup in the task's name, its parameters and its output is text, and Unicode round-trips.
    assert f"line 1: {EVIL} {UNICODE}" in (await log.text_content() or "")
    assert await dev_page.locator("#panel-title").text_content() == f"Talker {EVIL} {UNICODE}"
    assert EVIL in (await dev_page.locator("#panel-params").text_content() or "")
    assert await dev_page.evaluate("window.pwned === undefined")
    await dev_page.goto(f"{live_dev}/tasks")
    await expect()(dev_page.locator("#task-list")).to_contain_text(f"Talker {EVIL}")
    assert await dev_page.evaluate("window.pwned === undefined")


async def test_cancel_a_long_run(dev_page: Page, live_dev: str) -> None:
    run_id = await schedule(live_dev, {"task": "sleeper"})
    await open_run(dev_page, live_dev, run_id)
    await dev_page.wait_for_function(
        "() => window.cxRun.statuses().sleeper === 'running'", timeout=WAIT_MS
    )
    await expect()(dev_page.locator("#live-state")).to_have_text("● live")
    await dev_page.click("#cancel")
    await expect()(dev_page.locator("#cancel")).to_have_text("Really cancel?")
    await dev_page.click("#cancel")
    await expect()(dev_page.locator("#run-status .badge")).to_have_text(
        "cancelled", timeout=WAIT_MS
    )
    await expect()(dev_page.locator("#cancel")).to_be_disabled()
    await expect()(dev_page.locator("#live-state")).to_have_text("")  # the run ended: stream closed
    await dev_page.wait_for_function(
        "() => window.cxRun.statuses().sleeper === 'cancelled'", timeout=WAIT_MS
    )


async def test_rerun_a_failed_run_and_from_one_task_once_it_is_fixed(
    dev_page: Page, live_dev: str, dev_folder: Path
) -> None:
    fixed = dev_folder / "fixed"
    fixed.unlink(missing_ok=True)  # broken until the test fixes it (also when run again)
    run_id = await schedule(live_dev, {"task": "after_fragile"})
    assert await ended(live_dev, run_id) == "failed"
    await open_run(dev_page, live_dev, run_id)
    await expect()(dev_page.locator("#run-status .badge")).to_have_text("failed")
    statuses = await dev_page.evaluate("window.cxRun.statuses()")
    assert statuses == {"fragile": "failed", "after_fragile": "skipped"}
    fixed.touch()  # the fix: what the task checks for now exists
    await a_new_run_succeeds(dev_page, "#rerun", run_id)
    await expect()(dev_page.locator("#rerun-of")).to_have_text(run_id)  # linked to the failed run

    # Rerun from one task of the failed run: that task and what is downstream of it run again.
    await open_run(dev_page, live_dev, run_id)
    await click_node(dev_page, "fragile")
    await expect()(dev_page.locator("#panel-attempts tbody tr")).to_have_count(1, timeout=WAIT_MS)
    await a_new_run_succeeds(dev_page, "#rerun-task", run_id)


async def a_new_run_succeeds(page: Page, button: str, old_run_id: str) -> None:
    """Click `button`; the page moves to the new run (not `old_run_id`), which all succeeds."""
    await page.click(button)
    await page.wait_for_url(re.compile(r"/runs/(?!" + re.escape(old_run_id) + r")[^/#]+$"))
    await page.wait_for_selector("#graph[data-ready=yes]", state="attached")
    await expect()(page.locator("#run-status .badge")).to_have_text("succeeded", timeout=WAIT_MS)
    await page.wait_for_function(ALL_GREEN, timeout=WAIT_MS)


async def test_the_history_slider_shows_earlier_colours(dev_page: Page, live_dev: str) -> None:
    run_id = await schedule(live_dev, {"dag": "diamond"})
    assert await ended(live_dev, run_id) == "succeeded"
    await open_run(dev_page, live_dev, run_id)
    await dev_page.wait_for_function(ALL_GREEN)
    slider = dev_page.locator("#history")
    await expect()(slider).to_be_enabled(timeout=WAIT_MS)
    # Back to the second event (the first task queued): nothing has succeeded yet.
    await slider.evaluate("r => { r.value = '2'; r.dispatchEvent(new Event('input')); }")
    await dev_page.wait_for_function(
        "() => { const s = window.cxRun.statuses();"
        " return s.top === 'queued' && s.bottom === 'pending'; }",
        timeout=WAIT_MS,
    )
    await expect()(dev_page.locator("#history-label")).to_contain_text("event 2 of")
    await expect()(dev_page.locator("#history-label")).to_contain_text("TasksQueued top")
    # left and right, ready together once top succeeded, were queued by one TasksQueued
    async with httpx.AsyncClient(base_url=live_dev, timeout=10) as c:
        stored = (await c.get(f"/api/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    both = 1 + next(
        i
        for i, e in enumerate(stored)
        if e["type"] == "TasksQueued" and len(json.loads(e["body"])["tasks"]) == 2
    )
    await slider.evaluate(f"r => {{ r.value = '{both}'; r.dispatchEvent(new Event('input')); }}")
    await dev_page.wait_for_function(
        "() => { const s = window.cxRun.statuses();"
        " return s.top === 'succeeded' && s.left === 'queued' && s.right === 'queued'; }",
        timeout=WAIT_MS,
    )
    await expect()(dev_page.locator("#history-label")).to_contain_text(
        f"event {both} of {len(stored)}: TasksQueued (2 tasks)"
    )
    await dev_page.click("#history-live")
    await dev_page.wait_for_function(ALL_GREEN, timeout=WAIT_MS)
    # a task's panel lists the TasksQueued that queued it among its events
    await click_node(dev_page, "right")
    events = dev_page.locator("#panel-events li")
    await expect()(events.first).to_contain_text(f"#{stored[both - 1]['seq']} TasksQueued")
    await expect()(events).to_have_count(3)  # queued, started, succeeded

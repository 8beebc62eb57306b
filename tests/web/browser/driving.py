"""What the browser tests share: starting runs through the API, waiting for their end, and
driving the run page (open it, click a node of its canvas graph)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from tests.waiting import eventually

if TYPE_CHECKING:
    from playwright.async_api import Page

WAIT_MS = 30_000  # Playwright's deadline for anything the UI should show (generous: CI is loaded)
ENDED = ("succeeded", "failed", "cancelled")
ALL_GREEN = (
    "() => { const s = window.cxRun.statuses(); const v = Object.values(s);"
    " return v.length > 0 && v.every(x => x === 'succeeded'); }"
)


def expect() -> Any:
    """Playwright's `expect`, imported once the `page` fixture found Playwright."""
    from playwright.async_api import expect as playwright_expect

    return playwright_expect


async def schedule(base_url: str, body: dict[str, Any]) -> str:
    """POST /api/v1/runs; the new run's id."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        r = await c.post("/api/v1/runs", json=body)
        assert r.status_code == 201, r.text
        run_id: str = r.json()["run_id"]
        return run_id


async def run_status(base_url: str, run_id: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        r = await c.get(f"/api/v1/runs/{run_id}")
        status: str = r.json()["run"]["status"] if r.status_code == 200 else ""
        return status


async def ended(base_url: str, run_id: str, timeout: float = 60) -> str:
    """The run's final status, once it has one."""

    async def final() -> str | None:
        status = await run_status(base_url, run_id)
        return status if status in ENDED else None

    return await eventually(final, timeout=timeout, what=f"the end of run {run_id}")


async def open_run(page: Page, base_url: str, run_id: str) -> None:
    await page.goto(f"{base_url}/runs/{run_id}")
    await page.wait_for_selector("#graph[data-ready=yes]", state="attached", timeout=WAIT_MS)


async def click_node(page: Page, node_id: str) -> None:
    """Click the node where the graph draws it (a canvas: no element to click)."""
    at = await page.evaluate("id => window.cxRun.at(id)", node_id)
    await page.mouse.click(at["x"], at["y"])
    await expect()(page.locator("#panel")).to_have_attribute("data-task", node_id, timeout=WAIT_MS)

"""A run of 2,000 tasks stays usable: its page draws the whole graph (the cheap layered layout
of static/js/run.js, not dagre) and a click on a task opens its panel, within a budget."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

from core.definitions import DagDef, DagTask, Definitions, TaskDef
from services.nats import NatsBackplane
from tests.web.browser.driving import expect

if TYPE_CHECKING:
    from playwright.async_api import Page

LAYERS, WIDTH = 40, 50  # 2,000 tasks; each depends on two of the layer before
EDGES_OF_T20_25 = [
    ("t19_25", "t20_25"),
    ("t19_26", "t20_25"),
    ("t20_25", "t21_24"),
    ("t20_25", "t21_25"),
]
BUDGET_S = 10.0  # generous for a loaded CI machine; the figure is printed (issue: < 2 s)


def big() -> Definitions:
    def tid(layer: int, j: int) -> str:
        return f"t{layer:02d}_{j:02d}"

    tasks = {
        tid(layer, j): TaskDef(
            id=tid(layer, j),
            command="true",
            dependencies=() if layer == 0 else (tid(layer - 1, j), tid(layer - 1, (j + 1) % WIDTH)),
        )
        for layer in range(LAYERS)
        for j in range(WIDTH)
    }
    dag = DagDef(id="big", tasks=tuple(DagTask(id=t) for t in tasks))
    return Definitions(tasks=tasks, dags={"big": dag})


async def test_a_run_of_2000_tasks_is_interactive(
    page: Page, base_url: str, backplane: NatsBackplane
) -> None:
    await backplane.definitions.put(big())
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        r = await c.post("/api/v1/runs", json={"dag": "big"})
        assert r.status_code == 201, r.text
        assert r.json()["visible"], "the read model did not show the run in time"
        run_id = r.json()["run_id"]

    started = time.monotonic()
    await page.goto(f"{base_url}/runs/{run_id}")
    await page.wait_for_selector("#graph[data-ready=yes]", state="attached", timeout=30_000)
    at = await page.evaluate("() => window.cxRun.at('t20_25')")
    await page.mouse.click(at["x"], at["y"])
    await expect()(page.locator("#panel")).to_have_attribute("data-task", "t20_25", timeout=30_000)
    elapsed = time.monotonic() - started
    print(f"2,000-task run page interactive after {elapsed:.2f} s")
    statuses = await page.evaluate("() => window.cxRun.statuses()")
    assert len(statuses) == LAYERS * WIDTH
    # Drawn without its 3,900 edges: the selected task shows its own, both ways.
    edges = await page.evaluate("() => window.cxRun.edges()")
    assert sorted(edges) == [f"{a}\u2192{b}" for a, b in EDGES_OF_T20_25]
    assert elapsed < BUDGET_S, f"{elapsed:.1f} s to an interactive page of 2,000 tasks"
    # Any task is found by its id, its panel opened and the graph centred on it.
    await page.fill("#find-task", "t39_07")
    await page.press("#find-task", "Enter")
    await expect()(page.locator("#panel")).to_have_attribute("data-task", "t39_07")
    at = await page.evaluate("() => window.cxRun.at('t39_07')")
    box = await page.locator("#graph").bounding_box()
    assert box is not None
    assert abs(at["x"] - (box["x"] + box["width"] / 2)) < 5
    edges = await page.evaluate("() => window.cxRun.edges()")
    assert sorted(edges) == ["t38_07\u2192t39_07", "t38_08\u2192t39_07"]  # (the last layer)
    await page.keyboard.press("Escape")  # the panel closed: no task, no edges
    await expect()(page.locator("#panel")).to_be_hidden()
    assert await page.evaluate("() => window.cxRun.edges()") == []

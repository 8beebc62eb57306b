"""Small steps the API tests share: start a run through the API, wait for it to end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.waiting import eventually

if TYPE_CHECKING:
    import httpx

ENDED = {"succeeded", "failed", "cancelled"}


async def start(client: httpx.AsyncClient, **body: Any) -> str:
    """POST /runs; the new run's id (the read model already shows it)."""
    r = await client.post("/api/v1/runs", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["visible"] is True
    run_id: str = r.json()["run_id"]
    return run_id


async def ended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The run's detail once the read model shows it ended."""

    async def probe() -> dict[str, Any] | None:
        detail: dict[str, Any] = (await client.get(f"/api/v1/runs/{run_id}")).json()
        return detail if detail["run"]["status"] in ENDED else None

    return await eventually(probe, timeout=20, what=f"run {run_id} to end")

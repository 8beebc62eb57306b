"""Small steps the API tests share: start a run through the API, wait for it to end, read
server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import msgspec

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


class Frame(msgspec.Struct):
    """One server-sent event: its fields as sent (comment lines in `comments`)."""

    event: str = "message"
    id: str = ""
    data: str = ""
    comments: tuple[str, ...] = ()


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of an open SSE response, as they arrive."""
    fields: dict[str, str] = {}
    comments: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if fields or comments:
                yield Frame(**fields, comments=tuple(comments))
            fields, comments = {}, []
        elif line.startswith(":"):
            comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")


async def frame_where(
    response: httpx.Response, wanted: Callable[[Frame], bool], timeout: float = 10
) -> Frame:
    """The first frame of `response` that `wanted` accepts (fails after `timeout`)."""
    async with asyncio.timeout(timeout):
        async for frame in frames(response):
            if wanted(frame):
                return frame
    raise AssertionError("the stream ended before the awaited frame")

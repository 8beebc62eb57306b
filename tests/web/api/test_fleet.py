"""Definitions, agents and queues, read live from NATS; a task's log from the log store."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

from core.agents import AgentInfo
from core.events import Dispatch
from tests.waiting import eventually
from tests.web.api.helpers import start

if TYPE_CHECKING:
    import httpx

    from services.nats import NatsBackplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_definitions(client: httpx.AsyncClient, published: object) -> None:
    body = (await client.get("/api/v1/definitions")).json()
    assert [t["id"] for t in body["tasks"]] == ["a", "b", "c", "d", "greet"]
    assert body["tasks"][3]["name"] == "Diamond end"
    assert body["tasks"][4]["parameters"] == {"WHO": "world"}
    assert [d["id"] for d in body["dags"]] == ["diamond"]
    assert [c["id"] for c in body["contexts"]] == ["prod"]
    assert body["parameter_sets"] == []


async def test_agents_and_queues(client: httpx.AsyncClient, backplane: NatsBackplane) -> None:
    assert (await client.get("/api/v1/agents")).json() == []
    now = dt.datetime.now(dt.UTC)
    await backplane.agents.heartbeat(
        AgentInfo(id="agent-1", host="h", pid=1, queues=["gpu"], started_at=now, seen_at=now)
    )
    agents = (await client.get("/api/v1/agents")).json()
    assert [(a["id"], a["queues"]) for a in agents] == [("agent-1", ["gpu"])]

    for n in range(3):
        await backplane.work.dispatch(
            Dispatch(run_id=f"r{n}", task_id="t", attempt=1, queue="cpu", command="true")
        )

    async def listed() -> list[dict[str, object]] | None:
        queues: list[dict[str, object]] = (await client.get("/api/v1/queues")).json()
        return queues if any(q["name"] == "cpu" for q in queues) else None

    queues = await eventually(listed, timeout=10, what="the cpu queue")
    assert {q["name"]: (q["depth"], q["agents"]) for q in queues} == {"cpu": (3, 0), "gpu": (0, 1)}


async def test_a_task_log_a_page_at_a_time(
    client: httpx.AsyncClient, backplane: NatsBackplane, published: object
) -> None:
    run_id = await start(client, task="greet")
    text = "héllo <script>x</script>\n日本🚀\n"
    data = text.encode()
    await backplane.logs.write_nowait(run_id, "greet", 1, data[:8])  # cuts "é" in two
    await backplane.logs.write_nowait(run_id, "greet", 1, data[8:])
    await backplane.logs.write_nowait(run_id, "greet", 2, b"second\n")
    url = f"/api/v1/runs/{run_id}/tasks/greet/log"

    whole = (await client.get(url, params={"attempt": 1})).json()
    assert whole["text"] == text
    assert (whole["offset"], whole["next_offset"], whole["complete"]) == (0, len(data), True)

    # Pages of 2 bytes: a character cut in two waits for the next page, nothing is lost.
    pieces, offset = [], 0
    while True:
        page = (await client.get(url, params={"attempt": 1, "offset": offset, "limit": 2})).json()
        pieces.append(page["text"])
        if page["next_offset"] == offset:
            break
        offset = page["next_offset"]
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)

    both = (await client.get(url)).json()
    assert both["text"] == text + "second\n"
    assert both["attempt"] is None
    tail = (await client.get(url, params={"offset": len(data)})).json()
    assert tail["text"] == "second\n"
    assert (await client.get(url, params={"attempt": 0})).status_code == 422
    missing = await client.get(f"/api/v1/runs/{run_id}/tasks/zzz/log")
    assert missing.status_code == 404

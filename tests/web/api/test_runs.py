"""The runs resource over a real NATS, orchestrator and projector: list (filters, cursor pages),
counts, one run, its tasks, a task's attempts, its events and its past states."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.web.api.helpers import ended, start

if TYPE_CHECKING:
    import httpx

    from web.context import UiContext

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_a_run_from_schedule_to_its_end(client: httpx.AsyncClient, system: None) -> None:
    run_id = await start(client, task="d")
    detail = await ended(client, run_id)
    assert detail["run"]["status"] == "succeeded"
    assert detail["run"]["trigger"] == "api"
    assert [t["task_id"] for t in detail["tasks"]] == ["a", "b", "c", "d"]
    assert {t["status"] for t in detail["tasks"]} == {"succeeded"}
    assert detail["as_of_seq"] >= detail["run"]["last_seq"]

    tasks = (await client.get(f"/api/v1/runs/{run_id}/tasks")).json()
    assert tasks == detail["tasks"]
    attempts = (await client.get(f"/api/v1/runs/{run_id}/tasks/b/attempts")).json()
    assert [(a["attempt"], a["status"], a["agent_id"]) for a in attempts] == [
        (1, "succeeded", "stand-in")
    ]

    events = (await client.get(f"/api/v1/runs/{run_id}/events", params={"limit": 3})).json()
    assert [e["type"] for e in events] == ["RunScheduled", "TasksQueued", "TaskStarted"]
    queued = events[1]  # one row per TasksQueued: its tasks are in its body
    assert queued["task_id"] is None
    assert [t["task_id"] for t in json.loads(queued["body"])["tasks"]] == ["a"]
    rest = (
        await client.get(
            f"/api/v1/runs/{run_id}/events", params={"after_seq": events[-1]["seq"], "limit": 1000}
        )
    ).json()
    assert rest[-1]["type"] == "RunSucceeded"
    assert all(e["seq"] > events[-1]["seq"] for e in rest)


async def test_states_at_a_sequence_are_the_run_as_it_stood(
    client: httpx.AsyncClient, system: None, ui: UiContext
) -> None:
    await start(client, task="a")  # (so the log holds events before the run's first)
    run_id = await start(client, task="d")
    await ended(client, run_id)
    events = (await client.get(f"/api/v1/runs/{run_id}/events", params={"limit": 1000})).json()
    first, last = events[0]["seq"], events[-1]["seq"]

    at_start = (await client.get(f"/api/v1/runs/{run_id}/states", params={"at_seq": first})).json()
    assert at_start["seq"] == first
    assert at_start["events"] == 1
    assert at_start["summary"]["status"] == "scheduled"
    assert set(at_start["summary"]["tasks"].values()) == {"pending"}

    a_done = next(e["seq"] for e in events if e["type"] == "TaskSucceeded" and e["task_id"] == "a")
    middle = (await client.get(f"/api/v1/runs/{run_id}/states", params={"at_seq": a_done})).json()
    assert middle["summary"]["tasks"]["a"] == "succeeded"
    assert middle["summary"]["tasks"]["d"] == "pending"

    assert run_id in ui.extras["ended_histories"]  # an ended run's log is read once
    at_end = (await client.get(f"/api/v1/runs/{run_id}/states", params={"at_seq": last})).json()
    assert at_end["summary"]["status"] == "succeeded"
    assert at_end["events"] == len(events)

    before = await client.get(f"/api/v1/runs/{run_id}/states", params={"at_seq": first - 1})
    assert before.status_code == 404, before.text
    missing = await client.get(f"/api/v1/runs/{run_id}/states")
    assert missing.status_code == 422
    assert missing.json()["error"]["field"] == "at_seq"


async def test_list_filters_and_pages_with_a_cursor(
    client: httpx.AsyncClient, published: object
) -> None:
    ids = [await start(client, task="a") for _ in range(3)]
    ids += [await start(client, dag="diamond") for _ in range(2)]
    newest_first = list(reversed(ids))

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while pages < 5:  # (a cursor that does not move on must not loop forever)
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/runs", params=params)).json()
        seen += [row["run_id"] for row in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first
    assert pages == 3

    dags = (await client.get("/api/v1/runs", params={"dag": "diamond"})).json()
    assert [r["run_id"] for r in dags["items"]] == newest_first[:2]
    by_task = (await client.get("/api/v1/runs", params={"task": "d"})).json()
    assert [r["run_id"] for r in by_task["items"]] == newest_first[:2]  # only the dags hold d
    outcomes = (await client.get("/api/v1/runs", params={"kind": "outcome"})).json()
    assert [r["run_id"] for r in outcomes["items"]] == newest_first[2:]
    scheduled = (await client.get("/api/v1/runs", params={"status": "scheduled"})).json()
    assert len(scheduled["items"]) == 5  # no orchestrator here: nothing was queued
    future = (await client.get("/api/v1/runs", params={"since": "2999-01-01T00:00:00"})).json()
    assert future == {"items": [], "next_cursor": None}
    until = (await client.get("/api/v1/runs", params={"until": "2999-01-01T00:00:00Z"})).json()
    assert len(until["items"]) == 5

    counts = (await client.get("/api/v1/runs/counts")).json()
    assert counts["scheduled"] == 5
    assert counts["succeeded"] == 0
    dag_counts = (await client.get("/api/v1/runs/counts", params={"dag": "diamond"})).json()
    assert dag_counts["scheduled"] == 2


async def test_bad_queries_are_422_naming_the_parameter(
    client: httpx.AsyncClient, published: object
) -> None:
    for params, field in (
        ({"status": "sleeping"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "abc"}, None),
    ):
        r = await client.get("/api/v1/runs", params=params)
        assert r.status_code == 422, (params, r.text)
        error = r.json()["error"]
        assert error["status"] == 422
        if field is not None:
            assert error["field"] == field
            assert field in error["message"]
        else:
            assert "cursor" in error["message"]
    r = await client.get(
        "/api/v1/runs", params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}
    )
    assert r.status_code == 422
    assert "since must be before until" in r.json()["error"]["message"]


async def test_unknown_run_or_task_is_404_in_the_envelope(
    client: httpx.AsyncClient, published: object
) -> None:
    for path in (
        "/api/v1/runs/nope",
        "/api/v1/runs/nope/tasks",
        "/api/v1/runs/nope/events",
        "/api/v1/runs/nope/states?at_seq=5",
        "/api/v1/runs/nope/tasks/a/attempts",
        "/api/v1/runs/nope/tasks/a/log",
    ):
        r = await client.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.json() == {"error": {"status": 404, "message": r.json()["error"]["message"]}}, path
        assert "nope" in r.json()["error"]["message"]
    run_id = await start(client, task="a")
    r = await client.get(f"/api/v1/runs/{run_id}/tasks/zzz/attempts")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == f"run {run_id!r} has no task 'zzz'"
    r = await client.get("/api/v1/no/such/route")
    assert r.status_code == 404
    assert r.json()["error"]["status"] == 404

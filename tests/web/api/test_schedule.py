"""Writes through the API: schedule a task or a DAG (what the CLI's `schedule` does), cancel,
rerun; bad bodies are 422 naming the field; text comes back as data, Unicode intact."""

from __future__ import annotations

import json

import httpx
import pytest

from core.env_policy import parse_deny_env
from projections.memory import MemoryReadModel
from services.nats import NatsBackplane
from tests.rolekit import history
from tests.web.api.helpers import ended, start
from web.api import common
from web.app import create_app, listening
from web.context import UiContext

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_schedule_a_dag_with_context_parameters_and_run_id(
    client: httpx.AsyncClient, backplane: NatsBackplane, published: object
) -> None:
    r = await client.post(
        "/api/v1/runs",
        json={
            "dag": "diamond",
            "context": "prod",
            "parameters": {"MODE": "full", "b.LEVEL": 3, "FLAG": True},
            "run_id": "my-run",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["run_id"], body["status"], body["tasks"], body["visible"]) == (
        "my-run",
        "scheduled",
        4,
        True,
    )
    scheduled = (await history(backplane, "my-run"))[0]
    assert scheduled.context["ENV"] == "prod"  # type: ignore[union-attr]
    assert scheduled.params == {"MODE": "full", "b.LEVEL": "3", "FLAG": "true"}  # type: ignore[union-attr]
    assert scheduled.trigger == "api"  # type: ignore[union-attr]
    detail = (await client.get("/api/v1/runs/my-run")).json()  # read-your-writes
    assert detail["run"]["context_id"] == "prod"

    again = await client.post("/api/v1/runs", json={"dag": "diamond", "run_id": "my-run"})
    assert again.status_code == 409
    assert "my-run" in again.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"task": "nope"}, "task", "unknown task 'nope'"),
        ({"dag": "nope"}, "dag", "unknown dag 'nope'"),
        ({}, "task", "either task"),
        ({"task": "a", "dag": "diamond"}, "task", "either task"),
        ({"task": "a", "context": "nope"}, "context", "nope"),
        ({"task": "a", "parameters": {"bad key": "1"}}, "parameters", "bad key"),
        ({"task": "a", "parameters": {"zzz.K": "1"}}, "parameters", "zzz"),
        ({"task": "a", "run_id": "no spaces"}, "run_id", "invalid run id"),
        ({"task": 5}, "task", "Expected `str | null`"),
        ({"task": "a", "parameters": {"K": [1]}}, "parameters", "got `array`"),
        ({"task": "a", "colour": "red"}, "colour", "unknown field"),
        ({"task": "a", "parameters": {"LD_PRELOAD": "/tmp/x.so"}}, "parameters", "LD_PRELOAD"),
        ({"task": "a", "parameters": {"K": "a\u0000b"}}, "parameters", "NUL"),
    ],
)
async def test_a_bad_body_is_422_naming_the_field(
    client: httpx.AsyncClient, published: object, body: dict[str, object], field: str, words: str
) -> None:
    r = await client.post("/api/v1/runs", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["status"] == 422
    assert error["field"] == field, error
    assert field in error["message"]
    assert words.lower() in error["message"].lower(), error


async def test_malformed_json_is_a_clear_error(
    client: httpx.AsyncClient, published: object
) -> None:
    r = await client.post(
        "/api/v1/runs", content=b'{"task": "a",', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == (
        "the request body is not valid JSON: Input data was truncated"
    )
    r = await client.post(
        "/api/v1/runs", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text


async def test_script_and_unicode_come_back_as_data(
    client: httpx.AsyncClient, backplane: NatsBackplane, published: object
) -> None:
    value = '<script>alert("x")</script> — héllo 日本 🚀'
    run_id = await start(client, task="greet", parameters={"WHO": value})
    assert (await history(backplane, run_id))[0].params == {"WHO": value}  # type: ignore[union-attr]
    r = await client.get(f"/api/v1/runs/{run_id}/events", params={"limit": 1})
    assert r.headers["content-type"].startswith("application/json")
    stored = json.loads(r.json()[0]["body"])  # the stored event, as JSON text inside JSON
    assert stored["params"] == {"WHO": value}
    detail = await client.get(f"/api/v1/runs/{run_id}")
    assert detail.headers["content-type"].startswith("application/json")  # never markup
    assert detail.json()["graph"][0]["parameters"]["WHO"] == value
    names = (await client.get("/api/v1/definitions")).json()
    assert [t["id"] for t in names["tasks"]] == ["a", "b", "c", "d", "greet"]


async def test_cancel_and_rerun(client: httpx.AsyncClient, system: None) -> None:
    run_id = await start(client, task="d")
    done = await ended(client, run_id)
    assert done["run"]["status"] == "succeeded"

    r = await client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "late"})
    assert r.status_code == 409, r.text  # it already ended
    r = await client.post("/api/v1/runs/nope/cancel")
    assert r.status_code == 404

    r = await client.post(f"/api/v1/runs/{run_id}/rerun", json={"from_task": "b"})
    assert r.status_code == 201, r.text
    again = r.json()
    assert again["tasks"] == 2  # b and its dependent d
    detail = await ended(client, again["run_id"])
    assert [t["task_id"] for t in detail["tasks"]] == ["b", "d"]
    assert detail["run"]["trigger"] == "rerun"

    r = await client.post(f"/api/v1/runs/{run_id}/rerun")
    assert r.status_code == 201
    assert r.json()["tasks"] == 4
    assert (await ended(client, r.json()["run_id"]))["run"]["status"] == "succeeded"
    r = await client.post(f"/api/v1/runs/{run_id}/rerun", json={"from_task": "zzz"})
    assert r.status_code == 404
    assert "zzz" in r.json()["error"]["message"]
    # Nothing failed: a rerun from failure has nothing to run (422, one clear line).
    r = await client.post(f"/api/v1/runs/{run_id}/rerun", json={"from_failure": True})
    assert r.status_code == 422, r.text
    assert "has nothing to rerun from failure" in r.json()["error"]["message"]


async def test_cancel_a_run_that_waits(client: httpx.AsyncClient, published: object) -> None:
    run_id = await start(client, task="d")  # no orchestrator: it stays scheduled
    r = await client.post(f"/api/v1/runs/{run_id}/cancel")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "cancel_requested"
    assert r.json()["visible"] is True
    detail = (await client.get(f"/api/v1/runs/{run_id}")).json()
    assert detail["run"]["cancel_requested"] is True


async def test_the_installation_s_denied_variables_hold_for_runs_scheduled_here(
    backplane: NatsBackplane, read_model: MemoryReadModel, published: object
) -> None:
    """`cyclonetix ui` passes $CYCLONETIX_DENY_ENV's policy: a name it adds is refused too."""
    policy = parse_deny_env("MY_SECRET_KNOB")
    app = create_app(UiContext(read_model, backplane, env_policy=policy))
    async with listening(app, port=0) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"task": "a", "parameters": {"MY_SECRET_KNOB": "1"}}
        r = await client.post("/api/v1/runs", json=body)
        assert r.status_code == 422, r.text
        assert "MY_SECRET_KNOB" in r.json()["error"]["message"]
        r = await client.post("/api/v1/runs", json={"task": "a", "parameters": {"OTHER": "1"}})
        assert r.status_code == 201, r.text


async def test_a_write_says_whether_the_read_model_shows_it_yet(
    backplane: NatsBackplane, published: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "WRITE_VISIBLE_S", 0.2)
    unfed = MemoryReadModel()  # no projector applies anything to it
    app = create_app(UiContext(unfed, backplane))
    async with listening(app, port=0) as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/api/v1/runs", json={"task": "a"})
    assert r.status_code == 201, r.text
    assert r.json()["visible"] is False  # stored in the log, not shown yet: said so
    assert await backplane.events.first_seq(r.json()["run_id"]) == r.json()["seq"]

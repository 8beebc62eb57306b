"""A secret's value is nowhere in what a run leaves behind (README, Security).

A real agent (in-process, on its own NATS connection) runs a command that prints its secret
(`${secret:API_TOKEN}`, resolved from the agent's $CYCLONETIX_SECRET_API_TOKEN); then the value is
searched for in every event's JSON, the stored log bytes, the read model (memory through the
projector, Redis and Postgres with the run's events applied: every protocol read, and a raw dump
of their keys and tables) and the pages and API responses about the run."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest
import redis.asyncio as aioredis

from core.definitions import TaskDef
from core.events import RunSucceeded, encode
from projections.postgres import PostgresReadModel
from projections.redis import RedisReadModel
from services.agent import Agent, AgentConfig
from services.nats import connect
from tests.contract.test_read_model_postgres import postgres_db
from tests.contract.test_read_model_redis import redis_url
from tests.rolekit import defs, running_orchestrator, schedule, until_end, until_stopped
from tests.waiting import eventually

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from projections.memory import MemoryReadModel
    from projections.protocol import ReadModel
    from services.nats import NatsBackplane

__all__ = ["postgres_db", "redis_url"]  # (fixtures)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

VALUE = "s3cr3t-value-xyz"
SECRET = VALUE.encode()
LEAK = defs(
    TaskDef(
        id="leak",
        # An evaluation point, so that its decision (stored in TaskSucceeded) holds it too.
        command='echo "token=$API_TOKEN"; echo "twice: $API_TOKEN$API_TOKEN"; '
        'printf \'{"context_updates": {"LEAKED": "%s"}, "metadata": {"k%s": ["a%sb"]}}\' '
        '"$API_TOKEN" "$API_TOKEN" "$API_TOKEN" > "$CYCLONETIX_EVAL_RESULT"',
        parameters={"API_TOKEN": "${secret:API_TOKEN}"},
        evaluation_point=True,
    )
)


async def protocol_dump(store: ReadModel, run_id: str) -> bytes:
    """Everything readable about the run through the read-model protocol, as JSON."""
    detail = await store.get_run(run_id)
    assert detail is not None
    parts: list[Any] = [
        detail,
        await store.list_runs(),
        await store.count_runs(),
        await store.task_attempts(run_id, "leak"),
        await store.recent_events(run_id, 0, 1000),
    ]
    return b"\n".join(msgspec.json.encode(p) for p in parts)


async def redis_dump(url: str, prefix: str) -> bytes:
    client: Any = aioredis.from_url(url)  # (untyped replies: bytes here)
    out: list[Any] = []
    try:
        keys = await client.keys(f"{prefix}*")
        assert keys
        for key in keys:
            kind = (await client.type(key)).decode()
            out.append(key)
            if kind == "string":
                out.append(await client.get(key) or b"")
            elif kind == "hash":
                for k, v in (await client.hgetall(key)).items():
                    out += [k, v]
            elif kind == "list":
                out += await client.lrange(key, 0, -1)
            elif kind == "set":
                out += list(await client.smembers(key))
            elif kind == "zset":
                out += [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                for _id, fields in await client.xrange(key):
                    for k, v in fields.items():
                        out += [k, v]
            else:
                out.append(await client.dump(key) or b"")
        await client.delete(*keys)
    finally:
        await client.aclose()
    return b"\n".join(x if isinstance(x, bytes) else str(x).encode() for x in out)


async def postgres_dump(dsn: str, schema: str) -> bytes:
    con = await asyncpg.connect(dsn)
    try:
        tables = [
            r["table_name"]
            for r in await con.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                schema,
            )
        ]
        assert tables
        out = []
        for table in tables:
            for row in await con.fetch(f'SELECT t::text AS row FROM "{schema}"."{table}" t'):
                out.append(row["row"])
        return "\n".join(out).encode()
    finally:
        await con.close()


async def run_leak(backplane: NatsBackplane, tmp_path: Path) -> list[tuple[int, Any]]:
    """Run `leak` with an orchestrator and a real agent; the run's stored events."""

    async def own() -> NatsBackplane:
        return await connect(backplane.url, name="orchestrator")

    agent_conn = await connect(backplane.url, name="agent")
    agent = Agent(agent_conn, AgentConfig(workdir=tmp_path, guardian=False))
    async with running_orchestrator(own), until_stopped(agent.run, agent_conn):
        run_id = await schedule(backplane, LEAK, "leak")
        events = await until_end(backplane, run_id)
    assert isinstance(events[-1], RunSucceeded)
    return await backplane.events.history(run_id)


@pytest.fixture
def agent_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYCLONETIX_SECRET_API_TOKEN", VALUE)


@pytest.mark.usefixtures("agent_secret", "projector")
async def test_a_secret_is_not_in_events_logs_or_read_models(
    backplane: NatsBackplane,
    read_model: MemoryReadModel,
    redis_url: str,
    postgres_db: str,
    tmp_path: Path,
) -> None:
    history = await run_leak(backplane, tmp_path)
    run_id = history[0][1].run_id

    # The events: only the reference.
    stored = b"\n".join(encode(e) for _, e in history)
    assert b"${secret:API_TOKEN}" in stored
    assert b'"context_updates":{"LEAKED":"***"}' in stored  # the decision, masked
    assert b'"metadata":{"k***":["a***b"]}' in stored
    assert SECRET not in stored
    # The log: masked.
    log = b"".join([c async for _, c in backplane.logs.read(run_id, "leak")])
    assert log == b"token=***\ntwice: ***\n"

    # The read model: memory (the projector), Redis and Postgres (the run's events applied).
    last = history[-1][0]
    await eventually(lambda: read_model.wait_for(last, 0.5), what="the projector applied the run")
    assert SECRET not in await protocol_dump(read_model, run_id)
    prefix = f"cx:test:secrets:{uuid.uuid4().hex[:8]}:"
    schema = f"t_{uuid.uuid4().hex[:16]}"
    stores: list[tuple[ReadModel, Any]] = [
        (RedisReadModel(redis_url, prefix=prefix), lambda: redis_dump(redis_url, prefix)),
        (PostgresReadModel(postgres_db, schema=schema), lambda: postgres_dump(postgres_db, schema)),
    ]
    for store, raw in stores:
        try:
            await store.apply_batch(history)
            readable = await protocol_dump(store, run_id)
            assert b"${secret:API_TOKEN}" in readable and b"token=***" in readable
            assert SECRET not in readable
        finally:
            await store.close()
        dumped = await raw()
        assert b"token=***" in dumped and SECRET not in dumped


@pytest.mark.usefixtures("agent_secret")
async def test_a_secret_is_not_in_pages_or_api_responses(
    backplane: NatsBackplane,
    read_model: MemoryReadModel,
    client: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    history = await run_leak(backplane, tmp_path)
    run_id = history[0][1].run_id
    last = history[-1][0]
    await eventually(lambda: read_model.wait_for(last, 0.5), what="the projector applied the run")
    paths = [
        f"/runs/{run_id}",
        f"/runs/{run_id}/timeline",
        f"/api/v1/runs/{run_id}",
        f"/api/v1/runs/{run_id}/tasks",
        f"/api/v1/runs/{run_id}/tasks/leak/attempts",
        f"/api/v1/runs/{run_id}/events",
        f"/api/v1/runs/{run_id}/tasks/leak/log",
        "/api/v1/runs",
        "/runs",
    ]
    for path in paths:
        response = await client.get(path)
        assert response.status_code == 200, path
        assert SECRET not in response.content, path
    log_response = await client.get(f"/api/v1/runs/{run_id}/tasks/leak/log")
    assert b"token=***" in log_response.content

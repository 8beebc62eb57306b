"""Retention of CX_EVENTS on a real nats-server: the `nats.events_max_age` setting becomes the
stream's max_age when it is created, and a changed setting updates the existing stream on the
next connect (through the same path every role takes, `services.cli.common.connect`); and the
Postgres read model keeps a run's history after the stream no longer has it.

The Postgres test talks to the machine's server (see tests/contract/test_read_model_postgres.py);
without one it skips (fails under CYCLONETIX_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import argparse
import asyncio

import pytest

from core.events import decode
from core.run import RunStatus
from projections.postgres import PostgresReadModel
from services.cli.common import connect as role_connect
from services.nats import NatsBackplane, connect
from services.nats.names import EVENTS_STREAM
from services.ports import Backplane
from services.projector import Projector
from services.settings import FIELDS, SettingsError
from tests.contract.test_read_model_postgres import postgres_db, schema  # noqa: F401 - fixtures
from tests.rolekit import (
    DIAMOND,
    Connect,
    running_orchestrator,
    schedule,
    stand_in_agent,
    until_end,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HOUR = 3600.0


@pytest.fixture(autouse=True)
def _no_settings_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CYCLONETIX_* setting of the caller's shell (or a cyclonetix.yaml) must not steer these."""
    monkeypatch.delenv("CYCLONETIX_CONFIG", raising=False)
    for field in FIELDS:
        monkeypatch.delenv(field.env, raising=False)


async def max_age_of(backplane: NatsBackplane) -> float:
    info = await backplane.connection.js.stream_info(EVENTS_STREAM)
    return float(info.config.max_age or 0.0)


async def test_the_stream_gets_the_max_age_and_a_changed_one_updates_it(nats_url: str) -> None:
    async with await connect(nats_url, name="t", events_max_age=2 * HOUR) as first:
        assert await max_age_of(first) == 2 * HOUR
        run_id = await schedule(first, DIAMOND, "d")
        kept = await first.events.last_seq()
        await first.provisioner.provision()  # as after a reconnect: the same age, no change
        assert await max_age_of(first) == 2 * HOUR
    async with await connect(nats_url, name="t", events_max_age=30 * 24 * HOUR) as longer:
        assert await max_age_of(longer) == 30 * 24 * HOUR
        # Updated in place: the events already there are still there.
        assert await longer.events.last_seq() == kept
        assert [type(e).__name__ for _, e in await longer.events.history(run_id)] == [
            "RunScheduled"
        ]
    async with await connect(nats_url, name="t") as forever:  # 0: keep every event again
        assert await max_age_of(forever) == 0.0


async def test_a_role_connects_with_the_setting_and_refuses_a_too_short_one(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = argparse.Namespace(nats_url=nats_url)
    monkeypatch.setenv("CYCLONETIX_EVENTS_MAX_AGE", "12h")
    async with await role_connect(args, "t") as role:
        assert await max_age_of(role) == 12 * HOUR
    monkeypatch.setenv("CYCLONETIX_EVENTS_MAX_AGE", "2d")
    async with await role_connect(args, "t") as role:
        assert await max_age_of(role) == 2 * 24 * HOUR
    monkeypatch.setenv("CYCLONETIX_EVENTS_MAX_AGE", "10m")  # an open run could lose its start
    with pytest.raises(SettingsError, match=r"^\$CYCLONETIX_EVENTS_MAX_AGE: expected 0 .* '10m'$"):
        await role_connect(args, "t")
    # (Every connection reads this process's settings, for NATS's credentials: valid again.)
    monkeypatch.delenv("CYCLONETIX_EVENTS_MAX_AGE")
    async with await connect(nats_url, name="t", provision=False) as untouched:
        assert await max_age_of(untouched) == 2 * 24 * HOUR


async def test_postgres_keeps_a_runs_history_after_the_stream_lost_it(
    backplane: NatsBackplane,
    postgres_db: str,  # noqa: F811 - the fixture imported above
    schema: str,  # noqa: F811 - the fixture imported above
) -> None:
    async def new() -> Backplane:
        return await connect(backplane.url, name="orchestrator")

    own: Connect = new
    async with running_orchestrator(own), stand_in_agent(backplane):
        run_id = await schedule(backplane, DIAMOND, "d")
        await until_end(backplane, run_id)
    in_log = await backplane.events.history(run_id)
    last = await backplane.events.last_seq()

    store = PostgresReadModel.from_url(postgres_db, schema=schema)
    try:
        stop = asyncio.Event()
        projector = Projector(backplane.events, store)
        task = asyncio.ensure_future(projector.run(stop))
        try:

            async def applied() -> int | None:
                return last if await store.checkpoint() >= last else None

            await eventually(applied, timeout=30, what=f"the store to apply up to {last}")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

        # What retention does to the stream, at once: every event is gone from it.
        await backplane.connection.js.purge_stream(EVENTS_STREAM)
        assert await backplane.events.history(run_id) == []

        rows = await store.recent_events(run_id, limit=1000)
        assert [(r.seq, decode(r.body.encode())) for r in rows] == in_log
        detail = await store.get_run(run_id)
        assert detail is not None
        assert detail.run.status == RunStatus.SUCCEEDED
    finally:
        await store.close()

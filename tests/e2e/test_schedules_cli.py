"""Cron in real processes: `cyclonetix orchestrator` runs the cron loop (a slot missed while it
was down fires when it starts, and an agent runs it), and `cyclonetix schedules` shows the
schedule, its next fire times and that run."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import TYPE_CHECKING

import pytest

from core.definitions import DagDef, DagTask, Definitions, Schedule, TaskDef
from core.events import TERMINAL, RunScheduled
from core.schedules import ScheduleMark, slot_run_id
from services.cluster import LocalCluster
from services.nats import connect
from tests.e2e.test_cli import cli
from tests.waiting import eventually

if TYPE_CHECKING:
    from pathlib import Path

    from services.embedded_nats import EmbeddedNats

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DEFS = Definitions(
    tasks={"work": TaskDef(id="work", command="true")},
    dags={
        "minutely": DagDef(
            id="minutely",
            tasks=(DagTask(id="work"),),
            schedule=Schedule(cron="* * * * *", timezone="Europe/London"),
        )
    },
)


async def test_the_orchestrator_fires_a_missed_slot_and_schedules_lists_it(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    url = nats_server.url
    async with await connect(url, name="pytest-e2e") as backplane:
        # As if the orchestrators had last looked three minutes ago and then all went away.
        now = dt.datetime.now(dt.UTC)
        await backplane.schedules.put(
            "dag.minutely", ScheduleMark(last=now - dt.timedelta(minutes=3)), 0
        )
        cluster = LocalCluster(definitions=DEFS, data_dir=tmp_path / "cx", agents=1, nats_url=url)
        await cluster.start()
        try:

            async def cron_run() -> RunScheduled | None:
                async for _seq, event, pending in backplane.events.tail():
                    if isinstance(event, RunScheduled) and event.trigger == "cron":
                        return event
                    if pending == 0:
                        return None
                return None

            run = await eventually(cron_run, timeout=30, what="a run started by cron")
            # Catch-up is off: only the newest missed minute fires, with its slot's run id.
            slot = now.replace(second=0, microsecond=0)
            assert run.run_id in {
                slot_run_id("dag", "minutely", slot + dt.timedelta(minutes=m)) for m in (0, 1)
            }
            async with asyncio.timeout(30):
                async for _seq, event in backplane.events.follow_run(run.run_id):
                    if isinstance(event, TERMINAL):
                        break
        finally:
            await cluster.stop()
    done = await asyncio.to_thread(
        cli, "schedules", "--json", "--next", "2", "--nats-url", url, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    [info] = json.loads(done.stdout)
    assert info["owner"] == "dag.minutely"
    assert (info["cron"], info["timezone"], info["catchup"], info["max_active_runs"]) == (
        "* * * * *",
        "Europe/London",
        False,
        1,
    )
    assert len(info["next"]) == 2
    # The orchestrator was stopped within the minute or so after the run: it may have fired
    # the next minute too; the newest run is whichever it fired last.
    assert info["last_run"].startswith("minutely-cron-")
    assert info["last_status"] in {"succeeded", "running", "queued", "scheduled"}
    text = await asyncio.to_thread(cli, "schedules", "--nats-url", url, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert (
        "dag minutely   '* * * * *' Europe/London (catchup off, max_active_runs 1)" in text.stdout
    )
    assert f"  last  {info['last_run']}" in text.stdout
    helped = await asyncio.to_thread(cli, "schedules", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "--next N" in helped.stdout

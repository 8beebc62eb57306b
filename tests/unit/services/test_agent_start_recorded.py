"""An execution is always recorded, and every recorded start ran: the agent runs a command only
once its TaskStarted is stored, and keeps asking until it knows whether it was (on the
in-memory backplane, whose faults make an append fail or lose its acknowledgement)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from core.errors import Conflict
from core.events import AnyEvent, Dispatch, TaskStarted, TaskSucceeded
from services.agent import Agent, AgentConfig
from services.ports import Backplane
from tests.fakes import MemoryServer
from tests.waiting import eventually


@contextlib.asynccontextmanager
async def agent_with_one_dispatch(
    server: MemoryServer, tmp_path: Path, *, ack_wait: float = 30.0
) -> AsyncIterator[Backplane]:
    """An agent serving `default`, and a dispatch on it whose command counts its runs."""
    backplane = server.connect("agent")
    agent = Agent(backplane, AgentConfig(workdir=tmp_path, ack_wait=ack_wait, guardian=False))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        command = f"echo x >> {tmp_path / 'count'}; echo done"
        await backplane.work.dispatch(
            Dispatch(run_id="r1", task_id="t", attempt=1, queue="default", command=command)
        )
        yield backplane
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await backplane.close()


async def succeeded(backplane: Backplane) -> TaskSucceeded:
    async def found() -> TaskSucceeded | None:
        for _, event in await backplane.events.history("r1"):
            if isinstance(event, TaskSucceeded):
                return event
        return None

    return await eventually(found, timeout=10, what="the dispatch to succeed")


async def starts(backplane: Backplane) -> list[int]:
    """The delivery of every stored start."""
    return [
        e.delivery for _, e in await backplane.events.history("r1") if isinstance(e, TaskStarted)
    ]


async def test_a_start_that_failed_to_store_is_retried_and_runs_once(tmp_path: Path) -> None:
    server = MemoryServer()
    server.faults.fail_appends(2)  # the first two tries of TaskStarted store nothing
    async with agent_with_one_dispatch(server, tmp_path) as backplane:
        done = await succeeded(backplane)
        assert await starts(backplane) == [1]
    assert (tmp_path / "count").read_text() == "x\n"
    assert done.output_tail == "done\n"


async def test_a_start_stored_without_its_ack_is_recognised_and_runs_once(tmp_path: Path) -> None:
    # Handing the dispatch back here would leave a recorded start that never ran.
    server = MemoryServer()
    server.faults.lose_append_acks(1)
    async with agent_with_one_dispatch(server, tmp_path) as backplane:
        await succeeded(backplane)
        assert await starts(backplane) == [1]
    assert (tmp_path / "count").read_text() == "x\n"


async def test_a_start_rejected_for_a_reason_the_adapter_does_not_know_is_retried(
    tmp_path: Path,
) -> None:
    """Seen in the chaos suite: a clustered server answered a conditional append with an error
    code the adapter did not translate; the agent's task crashed with the dispatch unsettled."""
    server = MemoryServer()
    backplane = server.connect("agent")
    real = backplane.events.append_expected
    rejected: list[AnyEvent] = []

    async def reject_once(event: AnyEvent, expected: int) -> int:
        if not rejected:
            rejected.append(event)
            raise RuntimeError("code=400 err_code=99999")
        return await real(event, expected)

    backplane.events.append_expected = reject_once  # type: ignore[method-assign]
    agent = Agent(backplane, AgentConfig(workdir=tmp_path, guardian=False))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        command = f"echo x >> {tmp_path / 'count'}"
        await backplane.work.dispatch(
            Dispatch(run_id="r1", task_id="t", attempt=1, queue="default", command=command)
        )
        await succeeded(backplane)
        assert await starts(backplane) == [1]
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await backplane.close()
    assert [type(e) for e in rejected] == [TaskStarted]
    assert (tmp_path / "count").read_text() == "x\n"


async def test_a_start_not_confirmed_in_time_runs_nothing_and_is_handed_back(
    tmp_path: Path,
) -> None:
    # Nothing stored for longer than the claim's share of ack_wait: the dispatch goes back
    # before JetStream could give it to another agent under this one.
    server = MemoryServer()
    server.faults.fail_appends(10**9)
    async with agent_with_one_dispatch(server, tmp_path, ack_wait=1.0) as backplane:

        async def handed_back() -> bool | None:
            shared = server.work.consumers.get("default")
            return True if shared is not None and shared.deliveries.get(1, 0) >= 2 else None

        await eventually(handed_back, what="the dispatch handed back")
        assert not (tmp_path / "count").exists()
        server.faults.failing_appends = 0  # NATS is back
        await succeeded(backplane)
        deliveries = await starts(backplane)
        assert len(deliveries) == 1 and deliveries[0] >= 2  # the first delivery left no start
    assert (tmp_path / "count").read_text() == "x\n"


async def test_an_agent_whose_queue_does_not_answer_at_first_waits_for_it(tmp_path: Path) -> None:
    # During a stream leader election the consumer's info request times out: the agent keeps
    # asking instead of exiting, and serves once the queue answers.
    server = MemoryServer()
    server.faults.fail_consumer_binds(3)
    async with agent_with_one_dispatch(server, tmp_path) as backplane:
        await succeeded(backplane)
    assert server.faults.failing_consumer_binds == 0
    assert (tmp_path / "count").read_text() == "x\n"


async def test_the_starts_of_one_runs_dispatches_are_claimed_in_turn(tmp_path: Path) -> None:
    """A fan-out: every dispatch of one run on one agent expects the run's newest event; made
    at once, each start would void the others' expectation (a conflict, and a new read each:
    the throughput benchmark fell to 40 %). In turn, after its own start, none conflicts."""
    server = MemoryServer()
    backplane = server.connect("agent")
    agent = Agent(backplane, AgentConfig(workdir=tmp_path, concurrency=8, guardian=False))
    real = backplane.events.append_expected
    conflicts: list[Exception] = []

    async def counting(event: AnyEvent, expected: int) -> int:
        try:
            return await real(event, expected)
        except Conflict as exc:
            conflicts.append(exc)
            raise

    backplane.events.append_expected = counting  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        go = tmp_path / "go"  # (no result lands among the starts: they alone are measured)
        command = f'while [ ! -e "{go}" ]; do sleep 0.01; done'
        for i in range(8):
            await backplane.work.dispatch(
                Dispatch(run_id="r1", task_id=f"t{i}", attempt=1, queue="default", command=command)
            )

        async def count(kind: type) -> int:
            return sum(isinstance(e, kind) for _, e in await backplane.events.history("r1"))

        async def all_started() -> bool | None:
            return True if await count(TaskStarted) == 8 else None

        async def all_succeeded() -> bool | None:
            return True if await count(TaskSucceeded) == 8 else None

        await eventually(all_started, what="eight tasks of one run started")
        go.touch()
        await eventually(all_succeeded, what="eight tasks of one run")
        history = [e for _, e in await backplane.events.history("r1")]
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await backplane.close()
    assert sum(isinstance(e, TaskStarted) for e in history) == 8
    assert conflicts == []

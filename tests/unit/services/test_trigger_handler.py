"""The trigger handler's decisions (services/triggers.py) over the in-memory event log and a
small in-memory inbox: every delivery is settled exactly once (ack, term or nak), and — fuzzed —
no message, however malformed, lets an exception escape the handler. What needs NATS itself
(request/reply, the shared consumer, the KV window, two handlers) is in
tests/integration/test_triggers.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.definitions import ContextDef, DagDef, DagTask, Definitions, TaskDef
from core.errors import Unavailable
from core.events import RunScheduled
from core.triggers import AnyOutcome, TriggerAccepted, TriggerRejected
from services.triggers import UNEXPECTED_ATTEMPTS, TriggerHandler
from tests.fakes import MemoryBackplane

DEFS = Definitions(
    tasks={
        "extract": TaskDef(id="extract", command="true"),
        "load": TaskDef(id="load", command="true", dependencies=("extract",)),
    },
    dags={"etl": DagDef(id="etl", tasks=(DagTask(id="extract"), DagTask(id="load")))},
    contexts={"prod": ContextDef(id="prod", variables={"ENV": "prod"})},
)
T0 = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)


class Delivery:
    """A stored trigger handed to the handler; remembers how it was settled."""

    def __init__(self, subject: str, data: bytes, seq: int = 1, delivery: int = 1) -> None:
        self.subject = subject
        self.data = data
        self.seq = seq
        self.received = T0 + dt.timedelta(seconds=seq)
        self.delivery = delivery
        self.settled: list[str] = []
        parts = subject.split(".")
        self.target: tuple[Literal["outcome", "dag"], str] | None = None
        if len(parts) == 4 and parts[:2] == ["cx", "trigger"] and parts[2] in ("task", "dag"):
            self.target = ("outcome" if parts[2] == "task" else "dag", parts[3])

    async def ack(self) -> None:
        self.settled.append("ack")

    async def term(self) -> None:
        self.settled.append("term")

    async def nak(self, delay: float) -> None:
        self.settled.append("nak")


class Inbox:
    """The idempotency keys and the trigger log, in memory."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.records: list[AnyOutcome] = []
        self.fail_records = False

    async def fetch(self, count: int, timeout: float) -> list[Any]:
        return []

    async def claim(self, kind: str, target: str, key: str, run_id: str) -> str:
        return self.keys.setdefault(f"{kind}.{target}.{key}", run_id)

    async def release(self, kind: str, target: str, key: str, run_id: str) -> None:
        if self.keys.get(f"{kind}.{target}.{key}") == run_id:
            del self.keys[f"{kind}.{target}.{key}"]

    async def record(self, outcome: AnyOutcome) -> None:
        if self.fail_records:
            raise Unavailable("NATS did not answer")
        self.records.append(outcome)

    async def definitions_version(self) -> int:
        return 1

    async def outcomes(self, *, limit: int, rejected_only: bool = False) -> list[AnyOutcome]:
        return self.records[-limit:]

    async def close(self) -> None:
        pass


@pytest.fixture
async def ports() -> AsyncIterator[MemoryBackplane]:
    backplane = MemoryBackplane()
    await backplane.definitions.put(DEFS)
    try:
        yield backplane
    finally:
        await backplane.close()


def handler_on(bp: MemoryBackplane, inbox: Inbox) -> TriggerHandler:
    return TriggerHandler(bp.events, bp.definitions, inbox, max_bytes=1024, clock=lambda: T0)


async def test_a_good_trigger_is_scheduled_recorded_and_acked(ports: MemoryBackplane) -> None:
    inbox = Inbox()
    d = Delivery("cx.trigger.dag.etl", b'{"context": "prod", "requested_by": "ci"}')
    outcome = await handler_on(ports, inbox).handle(d)
    assert isinstance(outcome, TriggerAccepted) and outcome.status == "scheduled"
    assert d.settled == ["ack"] and inbox.records == [outcome]
    [(_, event)] = await ports.events.history(outcome.run_id)
    assert isinstance(event, RunScheduled)
    assert (event.trigger, event.context_id, event.context["ENV"]) == ("subject", "prod", "prod")


async def test_a_redelivered_trigger_finds_its_run_instead_of_starting_another(
    ports: MemoryBackplane,
) -> None:
    """A crash after the append and before the ack: the next delivery plans the same run id."""
    inbox = Inbox()
    handler = handler_on(ports, inbox)
    first = await handler.handle(Delivery("cx.trigger.task.load", b"{}", seq=5))
    again = await handler.handle(Delivery("cx.trigger.task.load", b"{}", seq=5, delivery=2))
    assert isinstance(first, TriggerAccepted) and isinstance(again, TriggerAccepted)
    assert (again.run_id, again.status) == (first.run_id, "existing")
    other = await handler.handle(Delivery("cx.trigger.task.load", b"{}", seq=6))
    assert isinstance(other, TriggerAccepted) and other.run_id != first.run_id


async def test_a_run_id_taken_by_another_run_is_a_rejection(ports: MemoryBackplane) -> None:
    inbox = Inbox()
    handler = handler_on(ports, inbox)
    await handler.handle(Delivery("cx.trigger.task.load", b'{"run_id": "r1"}'))
    d = Delivery("cx.trigger.dag.etl", b'{"run_id": "r1", "idempotency_key": "k"}', seq=2)
    outcome = await handler.handle(d)
    assert isinstance(outcome, TriggerRejected) and outcome.reason == "run id 'r1' is already taken"
    assert d.settled == ["term"]
    assert inbox.keys == {}  # the key it bound to someone else's run is free again


async def test_unreachable_definitions_are_retried_not_rejected(ports: MemoryBackplane) -> None:
    inbox = Inbox()
    handler = handler_on(ports, inbox)

    async def unavailable() -> Definitions:
        raise Unavailable("NATS did not answer")

    handler.definitions.load = unavailable  # type: ignore[method-assign]
    await handler.refresh_definitions()
    d = Delivery("cx.trigger.dag.etl", b"{}")
    assert await handler.handle(d) is None
    assert d.settled == ["nak"] and inbox.records == []


async def test_a_record_that_cannot_be_stored_is_retried(ports: MemoryBackplane) -> None:
    inbox = Inbox()
    inbox.fail_records = True
    d = Delivery("cx.trigger.task.nope", b"{}")
    assert await handler_on(ports, inbox).handle(d) is None
    assert d.settled == ["nak"]


async def test_an_unforeseen_error_is_retried_a_few_times_then_rejected(
    ports: MemoryBackplane,
) -> None:
    inbox = Inbox()
    handler = handler_on(ports, inbox)

    async def broken(*_: Any) -> str:
        raise KeyError("a bug")

    inbox.claim = broken  # type: ignore[method-assign,assignment]
    body = b'{"idempotency_key": "k"}'
    early = Delivery("cx.trigger.dag.etl", body, delivery=1)
    assert await handler.handle(early) is None and early.settled == ["nak"]
    last = Delivery("cx.trigger.dag.etl", body, delivery=UNEXPECTED_ATTEMPTS)
    outcome = await handler.handle(last)
    assert isinstance(outcome, TriggerRejected) and "a bug" in outcome.reason
    assert last.settled == ["term"]


# --- fuzzing the whole handler -------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
names = st.sampled_from(["etl", "extract", "load", "nope", "prod", "", "a:b", "=2E"]) | st.text(
    max_size=6
)
near = st.fixed_dictionaries(
    {},
    optional={
        "context": names | scalars,
        "params": st.dictionaries(
            st.sampled_from(["N", "load.N", "extract.N", "nope.N", "bad key", "x.y.z"])
            | st.text(max_size=6),
            json_values,
            max_size=3,
        )
        | json_values,
        "run_id": names | scalars,
        "idempotency_key": names | scalars,
        "requested_by": names | scalars,
        "extra": json_values,
    },
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | near.map(lambda v: json.dumps(v).encode())
)
subjects = st.builds(
    lambda kind, target: f"cx.trigger.{kind}.{target}",
    st.sampled_from(["task", "dag", "job"]),
    names,
) | st.text(max_size=20)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=subjects, body=bodies, delivery=st.integers(1, 6))
async def test_no_message_lets_an_exception_escape_and_each_is_settled_once(
    subject: str, body: bytes, delivery: int
) -> None:
    backplane = MemoryBackplane()
    try:
        await backplane.definitions.put(DEFS)
        inbox = Inbox()
        d = Delivery(subject, body, delivery=delivery)
        outcome = await handler_on(backplane, inbox).handle(d)
        assert len(d.settled) == 1
        if isinstance(outcome, TriggerAccepted):
            assert d.settled == ["ack"] and inbox.records == [outcome]
            assert await backplane.events.history(outcome.run_id)
        else:
            assert isinstance(outcome, TriggerRejected), (outcome, d.settled)
            assert d.settled == ["term"] and inbox.records == [outcome]
            assert outcome.reason and "\n" not in outcome.reason
    finally:
        await backplane.close()


async def test_the_handler_outlives_a_failed_fetch(ports: MemoryBackplane) -> None:
    stop = asyncio.Event()
    good = Delivery("cx.trigger.task.load", b"{}")
    answers: list[Any] = [RuntimeError("socket went away"), Unavailable("NATS away"), [good]]

    class Flaky(Inbox):
        async def fetch(self, count: int, timeout: float) -> list[Any]:
            if not answers:
                stop.set()
                return []
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return list(answer)

    inbox = Flaky()
    handler = TriggerHandler(ports.events, ports.definitions, inbox, max_bytes=1024, pause=0.01)
    await asyncio.wait_for(handler.run(stop), 5)
    assert good.settled == ["ack"] and len(inbox.records) == 1

"""Subject triggers against a real nats-server: messages on cx.trigger.task|dag.<id> become runs
(by publish and by request), idempotently by key (one run also for copies handled at once by two
handlers), bad ones answered and recorded once and never redelivered, and a trigger published
while no handler runs is handled when one starts. The handler runs in-process on its own
connection, as inside an orchestrator process (`services/cli/triggers.py`'s `start_triggers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.definitions import ContextDef, DagDef, DagTask, Definitions, TaskDef
from core.events import RunScheduled
from core.triggers import TriggerAccepted, TriggerRejected, head
from services.cli.main import main as cli
from services.nats import NatsBackplane, connect
from services.nats.names import (
    EVENTS_STREAM,
    TRIGGER_CONSUMER,
    TRIGGER_KEYS_BUCKET,
    TRIGGERS_STREAM,
    trigger_subject,
)
from services.nats.triggers import open_trigger_inbox, read_outcomes
from services.triggers import TriggerHandler
from tests.rolekit import until_stopped
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

DEFS = Definitions(
    tasks={
        "extract": TaskDef(id="extract", command="true", parameters={"REGION": "eu"}),
        "load": TaskDef(id="load", command="true", dependencies=("extract",)),
        "other": TaskDef(id="other", command="true"),
    },
    dags={"etl": DagDef(id="etl", tasks=(DagTask(id="extract"), DagTask(id="load")))},
    contexts={"prod": ContextDef(id="prod", variables={"ENV": "prod"})},
)


@contextlib.asynccontextmanager
async def running_handler(url: str, *, max_bytes: int = 65536) -> AsyncIterator[TriggerHandler]:
    """A trigger handler on its own connection, as in an orchestrator process."""
    own = await connect(url, name="orchestrator")
    inbox = await open_trigger_inbox(own, window=3600)
    handler = TriggerHandler(own.events, own.definitions, inbox, max_bytes=max_bytes)
    async with until_stopped(handler.run, inbox, own):
        yield handler


@pytest.fixture
async def published(backplane: NatsBackplane) -> NatsBackplane:
    await backplane.definitions.put(DEFS)
    return backplane


async def request(
    bp: NatsBackplane, subject: str, body: Any, timeout: float = 10
) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await bp.connection.nc.request(subject, data, timeout=timeout)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def first_event(bp: NatsBackplane, run_id: str) -> RunScheduled:
    history = await bp.events.history(run_id)
    assert history, f"no run {run_id}"
    event = history[0][1]
    assert isinstance(event, RunScheduled)
    return event


async def run_count(bp: NatsBackplane) -> int:
    info = await bp.connection.js.stream_info(
        EVENTS_STREAM, subjects_filter="cx.ev.*.*.RunScheduled"
    )
    return len(info.state.subjects or {})


async def test_a_request_is_answered_with_the_run_it_started(published: NatsBackplane) -> None:
    bp = published
    async with running_handler(bp.url):
        answer = await request(
            bp,
            trigger_subject("dag", "etl"),
            {"context": "prod", "params": {"extract.REGION": "us", "N": 3}, "requested_by": "ci"},
        )
    assert answer["status"] == "scheduled"
    event = await first_event(bp, answer["run_id"])
    assert (event.kind, event.target, event.trigger) == ("dag", "etl", "subject")
    assert event.context["ENV"] == "prod"
    assert event.params == {"extract.REGION": "us", "N": "3"}
    [outcome] = await read_outcomes(bp, limit=10)
    assert isinstance(outcome, TriggerAccepted)
    assert (outcome.run_id, outcome.requested_by) == (answer["run_id"], "ci")


async def test_a_published_trigger_starts_a_run(published: NatsBackplane) -> None:
    bp = published
    async with running_handler(bp.url):
        await bp.connection.nc.publish(trigger_subject("outcome", "load"), b'{"run_id": "r-pub"}')
        event = await eventually(lambda: first_event(bp, "r-pub"), what="the run")
    assert (event.kind, event.target, event.trigger) == ("outcome", "load", "subject")
    assert [n.task_id for n in event.graph] == ["extract", "load"]


async def test_a_trigger_published_while_no_handler_runs_is_handled_when_one_starts(
    published: NatsBackplane,
) -> None:
    bp = published
    await bp.connection.nc.publish(trigger_subject("outcome", "other"), b'{"run_id": "r-late"}')
    await bp.connection.nc.flush()
    info = await eventually(lambda: _waiting(bp), what="the trigger stored while nobody handles it")
    assert info == 1
    async with running_handler(bp.url):
        event = await eventually(lambda: first_event(bp, "r-late"), what="the run")
    assert event.target == "other"


async def _settled(bp: NatsBackplane) -> Any:
    info = await bp.connection.js.consumer_info(TRIGGERS_STREAM, TRIGGER_CONSUMER)
    return info if info.num_ack_pending == 0 else None


async def _waiting(bp: NatsBackplane) -> int | None:
    messages = (await bp.connection.js.stream_info(TRIGGERS_STREAM)).state.messages
    return messages or None


async def test_the_same_idempotency_key_returns_the_first_run(published: NatsBackplane) -> None:
    bp = published
    subject = trigger_subject("dag", "etl")
    async with running_handler(bp.url):
        first = await request(bp, subject, {"idempotency_key": "landing-2026-12-01"})
        again = await request(bp, subject, {"idempotency_key": "landing-2026-12-01"})
        # Another target with the same key is another run.
        other = await request(
            bp, trigger_subject("outcome", "other"), {"idempotency_key": "landing-2026-12-01"}
        )
    assert first["status"] == "scheduled"
    assert again == {"run_id": first["run_id"], "status": "existing"}
    assert other["status"] == "scheduled" and other["run_id"] != first["run_id"]
    assert await run_count(bp) == 2


async def test_copies_of_a_keyed_trigger_at_once_on_two_handlers_make_one_run(
    published: NatsBackplane,
) -> None:
    bp = published
    subject = trigger_subject("outcome", "load")
    keys = [f"k{i}" for i in range(10)]
    async with running_handler(bp.url), running_handler(bp.url):
        answers = await asyncio.gather(
            *(
                request(bp, subject, {"idempotency_key": key, "params": {"COPY": copy}})
                for key in keys
                for copy in range(3)
            )
        )
    by_key: dict[str, set[str]] = {}
    for i, answer in enumerate(answers):
        assert answer["status"] in ("scheduled", "existing"), answer
        by_key.setdefault(keys[i // 3], set()).add(answer["run_id"])
    assert all(len(runs) == 1 for runs in by_key.values()), by_key
    assert sum(a["status"] == "scheduled" for a in answers) >= len(keys)
    assert await run_count(bp) == len(keys)


async def test_a_key_bound_to_a_run_that_was_never_appended_schedules_that_run(
    published: NatsBackplane,
) -> None:
    """A handler that crashed between binding the key and appending: the next one finishes."""
    bp = published
    own = await connect(bp.url, name="crashed")
    inbox = await open_trigger_inbox(own, window=3600, answer_requests=False)
    assert await inbox.claim("outcome", "other", "k-crash", "r-crashed") == "r-crashed"
    await inbox.close()
    await own.close()
    async with running_handler(bp.url):
        answer = await request(
            bp, trigger_subject("outcome", "other"), {"idempotency_key": "k-crash"}
        )
    assert answer == {"run_id": "r-crashed", "status": "scheduled"}
    assert (await first_event(bp, "r-crashed")).idempotency_key == "k-crash"


BAD: list[tuple[str, str, bytes, str]] = [
    ("not_json", trigger_subject("outcome", "other"), b"{nope", "not JSON"),
    ("not_an_object", trigger_subject("outcome", "other"), b"[1, 2]", "not a JSON object"),
    (
        "unknown_field",
        trigger_subject("outcome", "other"),
        b'{"parms": {}}',
        "unknown field 'parms'",
    ),
    ("unknown_task", trigger_subject("outcome", "nope"), b"{}", "nope"),
    ("unknown_dag", trigger_subject("dag", "nope"), b"{}", "unknown dag 'nope'"),
    (
        "unknown_context",
        trigger_subject("dag", "etl"),
        b'{"context": "qa"}',
        "unknown context 'qa'",
    ),
    (
        "not_a_scalar",
        trigger_subject("dag", "etl"),
        b'{"params": {"N": {"a": 1}}}',
        "params.N: expected a string, number or boolean, got an object",
    ),
    (
        "task_outside_the_run",
        trigger_subject("outcome", "extract"),
        b'{"params": {"load.N": 1}}',
        "task 'load' is not part of this run",
    ),
    (
        "oversized",
        trigger_subject("outcome", "other"),
        b'{"requested_by": "' + b"x" * 300 + b'"}',
        "more than the limit of 256",
    ),
    ("not_a_trigger_subject", "cx.trigger.job.other", b"{}", "not a trigger subject"),
]


@pytest.mark.parametrize(
    ("subject", "body", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
async def test_a_bad_trigger_is_answered_recorded_once_and_not_redelivered(
    published: NatsBackplane, subject: str, body: bytes, reason: str
) -> None:
    bp = published
    async with running_handler(bp.url, max_bytes=256):
        answer = await request(bp, subject, body)
        assert set(answer) == {"error"} and reason in answer["error"], answer
        # Something after it, handled after it: had it come back, it would be seen by now.
        after = await request(bp, trigger_subject("outcome", "other"), {})
        assert after["status"] == "scheduled"
        consumer = await eventually(lambda: _settled(bp), what="every delivery settled")
    rejected = await read_outcomes(bp, limit=100, rejected_only=True)
    assert len(rejected) == 1 and isinstance(rejected[0], TriggerRejected)
    assert rejected[0].subject == subject and reason in rejected[0].reason
    assert rejected[0].head == head(body)
    assert consumer.num_redelivered == 0
    assert (await bp.connection.js.stream_info(TRIGGERS_STREAM)).state.messages == 0
    assert await run_count(bp) == 1


async def test_cyclonetix_triggers_lists_recent_outcomes(
    published: NatsBackplane, capsys: pytest.CaptureFixture[str]
) -> None:
    bp = published
    async with running_handler(bp.url):
        ok = await request(bp, trigger_subject("outcome", "other"), {"requested_by": "lab"})
        await request(bp, trigger_subject("outcome", "nope"), {"requested_by": "ci"})
    assert await asyncio.to_thread(cli, ["triggers", "--nats-url", bp.url]) == 0
    lines = _printed(capsys)
    assert lines[0].split() == ["TIME", "SUBJECT", "REQUESTED", "BY", "OUTCOME"]
    assert "cx.trigger.task.other" in lines[1] and f"scheduled {ok['run_id']}" in lines[1]
    assert "lab" in lines[1]
    assert "rejected: unknown task 'nope'" in lines[2] and "ci" in lines[2]
    args = ["triggers", "--rejected", "--json", "--limit", "5", "--nats-url", bp.url]
    assert await asyncio.to_thread(cli, args) == 0
    [record] = [json.loads(line) for line in _printed(capsys)]
    assert record["type"] == "TriggerRejected" and record["requested_by"] == "ci"


def _printed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the command printed (not the log lines of this test's own connections)."""
    return [line for line in capsys.readouterr().out.splitlines() if " [" not in line[:40]]


async def test_an_idempotency_key_is_bound_for_the_window_only(backplane: NatsBackplane) -> None:
    """The window is the bucket's TTL; a changed window setting updates the bucket in place."""
    first = await open_trigger_inbox(backplane, window=3600, answer_requests=False)
    await first.close()
    inbox = await open_trigger_inbox(backplane, window=1.0, answer_requests=False)
    try:
        info = await backplane.connection.js.stream_info(f"KV_{TRIGGER_KEYS_BUCKET}")
        assert info.config.max_age == 1.0
        assert await inbox.claim("dag", "etl", "k", "r1") == "r1"
        assert await inbox.claim("dag", "etl", "k", "r2") == "r1"
        assert await inbox.claim("outcome", "etl", "k", "r3") == "r3"  # another target
        await inbox.release("dag", "etl", "k", "r2")  # not bound to r2: nothing happens
        assert await inbox.claim("dag", "etl", "k", "r4") == "r1"

        async def expired() -> str | None:
            got = await inbox.claim("dag", "etl", "k", "r5")
            return got if got == "r5" else None

        assert await eventually(expired, timeout=10, what="the key to expire") == "r5"
        await inbox.release("dag", "etl", "k", "r5")
        assert await inbox.claim("dag", "etl", "k", "r6") == "r6"
    finally:
        await inbox.close()

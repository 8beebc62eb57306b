"""Completion webhooks, the pure part (core/notify.py) and what their records mean to the rest.

- Records of delivery attempts come after a run's terminal event: folding them anywhere after
  the end changes no run state, and the projection only lists them in the run's history (no run,
  task or attempt row changes) — a property over random runs.
- `due`: what a run's end still owes, resumed from the records (a delivered webhook is never
  owed again; a failing one continues with its next attempt, not before its `retry_at`).
- The body, the signature, the backoff, what is worth retrying.
- `plan_run` snapshots the DAG's webhooks (or the target task's) into RunScheduled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core.definitions import Definitions
from core.definitions.model import DagDef, DagTask, NotifyDef, TaskDef
from core.events import (
    TERMINAL,
    AnyEvent,
    Notification,
    NotificationDelivered,
    NotificationFailed,
    RunCancelled,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskFailed,
    TaskStarted,
    decode,
    encode,
    msg_id,
)
from core.notify import (
    Pending,
    due,
    headers,
    payload,
    retry_delay,
    retryable,
    signature,
)
from core.run import advance, fold, replay
from core.scheduling import plan_run
from projections import rows
from tests.unit.core.runkit import DIAMOND, T0, scheduled, start, succeeded
from tests.unit.core.test_run_properties import simulate

URL = "https://hooks.example.com/cx"
ALL = ("succeeded", "failed", "cancelled")


def hook(url: str = URL, on: tuple[str, ...] = ALL, secret_env: str | None = None) -> Notification:
    return Notification(url=url, on=on, secret_env=secret_env)


def attempt_record(
    run_id: str,
    index: int,
    attempt: int,
    *,
    delivered: bool,
    retrying: bool = False,
    at: dt.datetime = T0,
) -> NotificationDelivered | NotificationFailed:
    common: dict[str, Any] = {
        "run_id": run_id,
        "notification": index,
        "url": URL,
        "outcome": "failed",
    }
    if delivered:
        return NotificationDelivered(ts=at, attempt=attempt, status=200, **common)
    return NotificationFailed(
        ts=at,
        attempt=attempt,
        status=500,
        error="HTTP 500",
        retrying=retrying,
        retry_at=at + dt.timedelta(seconds=10) if retrying else None,
        **common,
    )


# --- records change nothing about the run ------------------------------------------------------


def project(log: list[AnyEvent]) -> tuple[list[object], list[str]]:
    """The run, task and attempt rows every entry changes, and the event types listed."""
    found: dict[str, rows.OpenRun | rows.Finished] = {}
    changed: list[object] = []
    listed: list[str] = []
    for seq, event in enumerate(log, start=1):
        changes = rows.apply(found.get, seq, event)
        if changes.opened is not None:
            found[event.run_id] = changes.opened
        if changes.closed:
            found[event.run_id] = rows.FINISHED
        made = rows.run_rows([changes])  # (now: before the run's next change)
        changed.append((made, changes.tasks, changes.attempts, changes.graph))
        assert changes.event is not None
        listed.append(changes.event.type)
    return changed, listed


@settings(max_examples=max(10, settings().max_examples // 4))
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1, 12),
    fail_rate=st.sampled_from([0.0, 0.3]),
    records=st.integers(1, 8),
)
def test_attempt_records_after_the_end_change_no_run_state_and_no_row(
    seed: int, size: int, fail_rate: float, records: int
) -> None:
    world = simulate(seed, size, fail_rate, steps=80)
    log = world.log
    end = next(i for i, e in enumerate(log) if isinstance(e, TERMINAL))
    rnd = random.Random(seed)
    with_records = list(log)
    inserted = []
    for _ in range(records):
        record = attempt_record(
            world.run_id,
            rnd.randrange(3),
            rnd.randrange(1, 5),
            delivered=rnd.random() < 0.5,
            retrying=rnd.random() < 0.5,
        )
        inserted.append(record)
        # Anywhere after the end: among late events, duplicated, in any order.
        with_records.insert(rnd.randrange(end + 1, len(with_records) + 1), record)
    with_records.append(rnd.choice(inserted))  # a redelivered record
    assert replay(with_records)[world.run_id].snapshot() == replay(log)[world.run_id].snapshot()
    stored = [decode(encode(e)) for e in with_records]
    assert replay(stored)[world.run_id].snapshot() == replay(log)[world.run_id].snapshot()
    rows_without, _ = project(log)
    rows_with, listed = project(with_records)
    inert: list[object] = [([], (), (), ())] * (records + 1)
    assert [r for r, e in zip(rows_with, with_records, strict=True) if e not in inserted] == (
        rows_without
    )
    assert [r for r, e in zip(rows_with, with_records, strict=True) if e in inserted] == inert
    assert listed.count("NotificationDelivered") + listed.count("NotificationFailed") == (
        records + 1
    )


def test_each_attempt_has_its_own_message_id() -> None:
    first = attempt_record("r", 0, 1, delivered=False, retrying=True)
    second = attempt_record("r", 0, 2, delivered=True)
    other = attempt_record("r", 1, 1, delivered=False)
    ids = {msg_id(first), msg_id(second), msg_id(other)}
    assert len(ids) == 3
    assert msg_id(first) == "r/notify/0/1/NotificationFailed"


# --- what a run's end owes ------------------------------------------------------------------------


def run_with(*hooks: Notification) -> RunScheduled:
    event = scheduled(*DIAMOND, run_id="run-1")
    return RunScheduled(
        **{**{f: getattr(event, f) for f in event.__struct_fields__}, "notify": hooks}
    )


FAILED = RunFailed(run_id="run-1", ts=T0, reason="1 task(s) failed", failed_tasks=("b",))


def test_a_fresh_end_owes_the_first_attempt_of_each_matching_webhook() -> None:
    run = run_with(hook("http://a/"), hook("http://b/", on=("succeeded",)), hook("http://c/"))
    assert due(run, FAILED, []) == [
        Pending(index=0, notification=run.notify[0], attempt=1),
        Pending(index=2, notification=run.notify[2], attempt=1),
    ]
    assert due(run, RunSucceeded(run_id="run-1", ts=T0), []) == [
        Pending(index=i, notification=run.notify[i], attempt=1) for i in range(3)
    ]
    assert [p.index for p in due(run, RunCancelled(run_id="run-1", ts=T0), [])] == [0, 2]
    assert due(run_with(), FAILED, []) == []


def test_records_resume_a_delivery_where_it_stood() -> None:
    run = run_with(hook("http://a/"), hook("http://b/"), hook("http://c/"), hook("http://d/"))
    t1 = T0 + dt.timedelta(minutes=1)
    records: list[AnyEvent] = [
        attempt_record("run-1", 0, 1, delivered=True),  # done
        attempt_record("run-1", 1, 1, delivered=False, retrying=True),
        attempt_record("run-1", 1, 2, delivered=False, retrying=True, at=t1),  # next: 3
        attempt_record("run-1", 2, 1, delivered=False, retrying=False),  # given up
        attempt_record("run-1", 3, 1, delivered=False, retrying=True),
        attempt_record("run-1", 3, 2, delivered=True),  # done after a failure
    ]
    expected = [
        Pending(
            index=1, notification=run.notify[1], attempt=3, not_before=t1 + dt.timedelta(seconds=10)
        )
    ]
    assert due(run, FAILED, records) == expected
    # In any order, duplicated, among other events: the same.
    shuffled = (
        list(reversed(records))
        + records[:2]
        + [TaskStarted(run_id="run-1", ts=T0, task_id="a", attempt=1, agent_id="x")]
    )
    assert due(run, FAILED, shuffled) == expected


# --- the request -------------------------------------------------------------------------------


def test_the_body_summarises_the_run_and_is_the_same_every_time() -> None:
    state, _ = start(*DIAMOND)
    t = T0 + dt.timedelta(seconds=5)
    for event in (
        TaskStarted(run_id="run-1", ts=t, task_id="a", attempt=1, agent_id="x"),
        succeeded("run-1", "a", 1, ts=t),
        TaskFailed(run_id="run-1", ts=t, task_id="b", attempt=1, exit_code=2),
    ):
        fold(state, event)
        advance(state, t)
    end = RunFailed(
        run_id="run-1",
        ts=T0 + dt.timedelta(seconds=90),
        reason="1 task(s) failed: b",
        failed_tasks=("b",),
    )
    body = payload(state, end)
    assert body == payload(state, end)
    document = json.loads(body)
    assert document["event"] == "run.ended"
    assert document["run_id"] == "run-1" and document["status"] == "failed"
    assert document["reason"] == "1 task(s) failed: b"
    assert document["started_at"] == "2026-01-01T00:00:05Z"
    assert document["ended_at"] == "2026-01-01T00:01:30Z"
    assert document["duration_seconds"] == 90.0
    assert document["failed_tasks"] == ["b"]
    counts = document["tasks"]
    assert counts["succeeded"] == 1 and counts["failed"] == 1 and sum(counts.values()) == 4
    assert "http" not in body.decode()  # link-free


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"run_id":"r"}'
    expected = hmac.new(b"key", b"1767225600." + body, hashlib.sha256).hexdigest()
    assert signature(b"key", 1767225600, body) == f"sha256={expected}"
    signed = headers("r", 2, 3, body, timestamp=1767225600, secret=b"key")
    assert signed["X-Cyclonetix-Signature"] == f"sha256={expected}"
    assert signed["X-Cyclonetix-Timestamp"] == "1767225600"
    assert signed["X-Cyclonetix-Delivery"] == "r/2"
    assert signed["X-Cyclonetix-Attempt"] == "3"
    assert "X-Cyclonetix-Signature" not in headers("r", 0, 1, body, timestamp=1, secret=None)


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    assert [retry_delay(a, 10.0, cap=60.0) for a in (2, 3, 4, 5, 6)] == [10, 20, 40, 60, 60]


def test_only_failures_that_may_pass_next_time_are_retried() -> None:
    assert retryable(None) and retryable(500) and retryable(503) and retryable(429)
    assert retryable(408)
    assert not retryable(400) and not retryable(404) and not retryable(410)


# --- runs snapshot their webhooks -------------------------------------------------------------


def test_a_dag_run_snapshots_the_dags_webhooks_and_an_outcome_run_its_targets() -> None:
    dag_hook = NotifyDef(url="https://h/dag", on=("failed",), secret_env="DAG_SECRET")
    task_hook = NotifyDef(url="http://h/task")
    defs = Definitions(
        tasks={
            "a": TaskDef(id="a", command="true", notify=(task_hook,)),
            "b": TaskDef(id="b", command="true", dependencies=("a",)),
        },
        dags={"d": DagDef(id="d", tasks=(DagTask(id="a"), DagTask(id="b")), notify=(dag_hook,))},
    )
    common: dict[str, Any] = {"now": T0, "entropy": b"x" * 16}
    dag_run = plan_run(defs, kind="dag", target="d", **common)
    assert dag_run.notify == (
        Notification(url="https://h/dag", on=("failed",), secret_env="DAG_SECRET"),
    )
    assert plan_run(defs, kind="outcome", target="a", **common).notify == (
        Notification(url="http://h/task", on=ALL, secret_env=None),
    )
    # A prerequisite's webhooks are its own runs' business, not this run's.
    assert plan_run(defs, kind="outcome", target="b", **common).notify == ()
    # The snapshot is what the run uses, whatever the definitions say later (invariant 5).
    assert decode(encode(dag_run)) == dag_run

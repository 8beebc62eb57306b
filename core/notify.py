"""Completion webhooks, the pure part: which deliveries a run's end owes, what is POSTed, how it
is signed, and when a failed attempt is tried again. The notifier (`services/notifier.py`) does
the I/O.

A run snapshots its webhooks in its RunScheduled (`notify`), so it notifies as defined when it
was scheduled. Each attempt is recorded on the run's own subject after its terminal event
(`NotificationDelivered` / `NotificationFailed`); those records are the delivery's whole state,
so a notifier that restarts resumes from them: a delivery recorded as delivered, or failed with
no retry to follow, is done; otherwise the next attempt is the one after the last recorded, not
before the recorded `retry_at`.

Signature: `X-Cyclonetix-Signature: sha256=<hex>`, the HMAC-SHA256 with the secret as key of
`<timestamp>.<body>` (the timestamp is the `X-Cyclonetix-Timestamp` header, Unix seconds; the body
the exact bytes received), so a receiver can check the body is ours and refuse old timestamps
(replays).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable
from typing import Final

import msgspec

from core.events import (
    AnyEvent,
    Notification,
    NotificationDelivered,
    NotificationFailed,
    Outcome,
    RunCancelled,
    RunFailed,
    RunScheduled,
    RunSucceeded,
)
from core.run import RunState, TaskStatus

__all__ = [
    "DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Pending",
    "RunEnded",
    "due",
    "headers",
    "outcome_of",
    "payload",
    "retry_delay",
    "retryable",
    "signature",
]

SIGNATURE_HEADER: Final = "X-Cyclonetix-Signature"
TIMESTAMP_HEADER: Final = "X-Cyclonetix-Timestamp"
DELIVERY_HEADER: Final = "X-Cyclonetix-Delivery"  # `<run_id>/<index>`: the same on every attempt
ATTEMPT_HEADER: Final = "X-Cyclonetix-Attempt"
EVENT_HEADER: Final = "X-Cyclonetix-Event"
EVENT_NAME: Final = "run.ended"

RunEnd = RunSucceeded | RunFailed | RunCancelled


def outcome_of(end: RunEnd) -> Outcome:
    if isinstance(end, RunSucceeded):
        return "succeeded"
    if isinstance(end, RunFailed):
        return "failed"
    return "cancelled"


# ------------------------------------------------------------------------------ what is owed


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery not finished yet: its next attempt, and when that may start (None: now)."""

    index: int  # in RunScheduled.notify
    notification: Notification
    attempt: int
    not_before: dt.datetime | None = None


def due(scheduled: RunScheduled, end: RunEnd, recorded: Iterable[AnyEvent]) -> list[Pending]:
    """The deliveries `end` owes that the records (`recorded`: the run's events, any order,
    others ignored) do not show as finished, each with its next attempt."""
    outcome = outcome_of(end)
    last: dict[int, NotificationDelivered | NotificationFailed] = {}
    for event in recorded:
        if isinstance(event, NotificationDelivered | NotificationFailed):
            seen = last.get(event.notification)
            # Delivered wins over any failure; else the highest attempt tells where it stands.
            if (
                seen is None
                or isinstance(event, NotificationDelivered)
                or (isinstance(seen, NotificationFailed) and event.attempt > seen.attempt)
            ):
                last[event.notification] = event
    out: list[Pending] = []
    for index, notification in enumerate(scheduled.notify):
        if outcome not in notification.on:
            continue
        record = last.get(index)
        if record is None:
            out.append(Pending(index=index, notification=notification, attempt=1))
        elif isinstance(record, NotificationFailed) and record.retrying:
            out.append(
                Pending(
                    index=index,
                    notification=notification,
                    attempt=record.attempt + 1,
                    not_before=record.retry_at,
                )
            )
    return out


# -------------------------------------------------------------------------------- the request


class RunEnded(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON body of a completion webhook (an output type: new fields may be added)."""

    event: str  # always "run.ended"
    run_id: str
    kind: str  # "dag" or "outcome"
    target: str  # the DAG id, or the task asked for
    name: str
    status: str  # succeeded, failed or cancelled
    reason: str  # why it failed or was cancelled ("" when it succeeded)
    trigger: str  # how it was started: cli, api, subject, cron, rerun
    scheduled_at: dt.datetime
    started_at: dt.datetime | None  # when its first task started (None: none did)
    ended_at: dt.datetime
    duration_seconds: float  # scheduled_at to ended_at
    tasks: dict[str, int]  # count per task status
    failed_tasks: tuple[str, ...]


_encoder = msgspec.json.Encoder()


def payload(state: RunState, end: RunEnd) -> bytes:
    """The body POSTed for a run that ended with `end` (`state`: the run folded to its end)."""
    counts = Counter(task.status for task in state.tasks.values())
    starts = [t.started_at for t in state.tasks.values() if t.started_at is not None]
    return _encoder.encode(
        RunEnded(
            event=EVENT_NAME,
            run_id=state.run_id,
            kind=state.kind,
            target=state.target,
            name=state.name,
            status=outcome_of(end),
            reason="" if isinstance(end, RunSucceeded) else end.reason,
            trigger=state.trigger,
            scheduled_at=state.scheduled_at,
            started_at=min(starts, default=None),
            ended_at=end.ts,
            duration_seconds=round((end.ts - state.scheduled_at).total_seconds(), 3),
            tasks={status.value: counts.get(status, 0) for status in TaskStatus},
            failed_tasks=tuple(state.failed_tasks),
        )
    )


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `<timestamp>.<body>` keyed with `secret`."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def headers(
    run_id: str, index: int, attempt: int, body: bytes, *, timestamp: int, secret: bytes | None
) -> dict[str, str]:
    """The request headers of one attempt; signed when there is a secret."""
    out = {
        "Content-Type": "application/json",
        "User-Agent": "cyclonetix-notifier",
        EVENT_HEADER: EVENT_NAME,
        DELIVERY_HEADER: f"{run_id}/{index}",
        ATTEMPT_HEADER: str(attempt),
        TIMESTAMP_HEADER: str(timestamp),
    }
    if secret is not None:
        out[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return out


# ------------------------------------------------------------------------------------ retries


def retryable(status: int | None) -> bool:
    """Whether a failed attempt is worth repeating: no answer (connection refused, timeout),
    a server error, 408 or 429. Any other 4xx is the receiver refusing this request: the same
    request would be refused again."""
    return status is None or status >= 500 or status in (408, 429)


def retry_delay(attempt: int, first_delay: float, *, factor: float = 2.0, cap: float) -> float:
    """Seconds to wait before `attempt` (>= 2): `first_delay * factor ** (attempt - 2)`, capped."""
    return float(min(cap, first_delay * factor ** max(0, attempt - 2)))

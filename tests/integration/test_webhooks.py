"""Completion webhooks against a real nats-server and a real local HTTP server (a threaded stdlib
server in this process): signatures verified as the README tells receivers to, retries with
backoff recorded attempt by attempt, a slow endpoint holding up nobody else, `on:` filtering,
a missing secret, and notifiers restarted (gracefully, or dying) in the middle of a retry.

Runs end by appending their events directly: the notifier reads nothing but the log, whoever
wrote it (tests/e2e/test_webhooks_e2e.py runs it inside a real orchestrator process). Backoff
waits run on a clock that jumps (`JumpingClock`), never through real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest

from core.definitions.model import NotifyDef, TaskDef
from core.events import (
    AnyEvent,
    NotificationDelivered,
    NotificationEvent,
    NotificationFailed,
    QueuedTask,
    RunFailed,
    RunSucceeded,
    TaskFailed,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
)
from core.scheduling import plan_run
from services.cli.events import line
from services.nats import NatsBackplane, connect
from services.nats.names import EVENTS_STREAM, NOTIFY_CONSUMER
from services.nats.notifications import NatsEndedRuns
from services.notifier import Notifier
from services.settings import NotifySettings
from tests.rolekit import (
    DIAMOND,
    defs,
    running_orchestrator,
    schedule,
    stand_in_agent,
    succeed,
    until_end,
    until_stopped,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

SECRET = "s3cret-for-tests"


# --- what the README tells receivers to do -----------------------------------------------------


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, tolerance: int = 300) -> bool:
    """The README's verification snippet, verbatim."""
    timestamp = headers["X-Cyclonetix-Timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replay
    signed = timestamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Cyclonetix-Signature"])


# --- a local HTTP receiver -----------------------------------------------------------------------


class Received(msgspec.Struct, frozen=True):
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A threaded HTTP server: each path answers with its scripted statuses in turn (the last
    one repeated; 200 when unscripted); a path in `hang` answers only at teardown."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[int]] = {}
        self.hang: set[str] = set()
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    script = receiver.scripts.get(self.path, [200])
                    status = script.pop(0) if len(script) > 1 else script[0]
                if self.path in receiver.hang:
                    receiver.released.wait(60)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Any:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.released.set()
        r.server.shutdown()
        r.server.server_close()


# --- clocks, notifiers and runs -----------------------------------------------------------------


class JumpingClock:
    """Time that jumps to whatever a backoff waits for, for the first `jumps` waits; later
    waits never end (a notifier stopped in the middle of a backoff)."""

    def __init__(self, jumps: int = 1_000) -> None:
        self.time = dt.datetime.now(dt.UTC)
        self.jumps = jumps
        self.waits: list[dt.datetime] = []

    def now(self) -> dt.datetime:
        return self.time

    async def sleep_until(self, when: dt.datetime) -> None:
        self.waits.append(when)
        if len(self.waits) > self.jumps:
            await asyncio.Event().wait()
        self.time = max(self.time, when)


@contextlib.asynccontextmanager
async def running_notifier(
    nats_url: str,
    settings: NotifySettings | None = None,
    *,
    clock: JumpingClock | None = None,
    environ: Mapping[str, str] | None = None,
    ack_wait: float = 30.0,
) -> AsyncIterator[NatsBackplane]:
    """A notifier on its own connection, as in its own orchestrator process; its shared
    consumer exists once this returns. Stopped on exit (what it holds is handed back)."""
    own = await connect(nats_url, name="pytest-notifier")
    ended = NatsEndedRuns(own.connection, own.provisioner, ack_wait=ack_wait)
    await ended.open()
    clock = clock or JumpingClock()
    notifier = Notifier(
        own.events,
        ended,
        settings or NotifySettings(attempts=3, first_delay=60.0, timeout=5.0),
        environ={"CX_HOOK_SECRET": SECRET} if environ is None else environ,
        now=clock.now,
        sleep_until=clock.sleep_until,
        progress_every=0.3,
    )
    async with until_stopped(notifier.run, own):
        yield own


async def end_run(
    backplane: NatsBackplane, hooks: list[NotifyDef], *, fail: bool = False, name: str = "job"
) -> str:
    """Schedule a one-task run whose task names `hooks`, run it and end it (failed if `fail`)."""
    definitions = defs(TaskDef(id=name, command="true", notify=tuple(hooks) or None))
    scheduled = plan_run(
        definitions, kind="outcome", target=name, now=_now(), entropy=os.urandom(16)
    )
    run_id = scheduled.run_id
    await backplane.events.schedule_run(scheduled)
    common: dict[str, Any] = {"run_id": run_id, "task_id": name, "attempt": 1}
    events: list[AnyEvent] = [
        TasksQueued(
            ts=_now(), run_id=run_id, tasks=(QueuedTask(task_id=name, attempt=1, queue="default"),)
        ),
        TaskStarted(ts=_now(), agent_id="agent-1", **common),
    ]
    if fail:
        events += [
            TaskFailed(ts=_now(), exit_code=3, **common),
            RunFailed(ts=_now(), run_id=run_id, reason="1 task(s) failed", failed_tasks=(name,)),
        ]
    else:
        events += [TaskSucceeded(ts=_now(), **common), RunSucceeded(ts=_now(), run_id=run_id)]
    for event in events:
        await backplane.events.append(event)
    return run_id


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def notifications(backplane: NatsBackplane, run_id: str) -> list[NotificationEvent]:
    return [
        e for _, e in await backplane.events.history(run_id) if isinstance(e, NotificationEvent)
    ]


async def settled(backplane: NatsBackplane) -> bool | None:
    """True once the shared consumer holds no unacknowledged run end (None: not yet)."""
    info = await backplane.connection.js.consumer_info(EVENTS_STREAM, NOTIFY_CONSUMER)
    return True if info.num_ack_pending == 0 and info.num_pending == 0 else None


def summary(n: NotificationEvent) -> tuple[str, int, int, int | None]:
    return (type(n).__name__, n.notification, n.attempt, n.status)


# --- tests ---------------------------------------------------------------------------------------


async def test_a_signed_summary_is_delivered_and_verifies_as_the_readme_says(
    nats_url: str, backplane: NatsBackplane, receiver: Receiver
) -> None:
    hook = NotifyDef(url=receiver.url("/hook"), secret_env="CX_HOOK_SECRET")
    async with running_notifier(nats_url):
        run_id = await end_run(backplane, [hook])
        delivered = await eventually(lambda: _first_delivered(backplane, run_id))
    [request] = receiver.at("/hook")
    assert verify(SECRET.encode(), request.headers, request.body)
    assert not verify(b"another secret", request.headers, request.body)
    assert not verify(SECRET.encode(), request.headers, request.body.replace(b"job", b"jab"))
    assert request.headers["X-Cyclonetix-Delivery"] == f"{run_id}/0"
    assert request.headers["X-Cyclonetix-Attempt"] == "1"
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.body)
    assert body["event"] == "run.ended"
    assert (body["run_id"], body["status"], body["kind"], body["target"]) == (
        run_id,
        "succeeded",
        "outcome",
        "job",
    )
    assert body["tasks"]["succeeded"] == 1 and body["failed_tasks"] == []
    assert body["started_at"] is not None and body["duration_seconds"] >= 0
    assert (delivered.attempt, delivered.status, delivered.url) == (1, 200, hook.url)
    assert delivered.outcome == "succeeded"
    # `cyclonetix events RUN` shows it on one readable line.
    seq = max(s for s, e in await backplane.events.history(run_id) if e == delivered)
    shown = line(seq, delivered, as_json=False)
    assert "NotificationDelivered" in shown and f"url={hook.url}" in shown
    assert "attempt=1" in shown and "status=200" in shown


async def _first_delivered(backplane: NatsBackplane, run_id: str) -> NotificationDelivered | None:
    found = [n for n in await notifications(backplane, run_id)]
    return next((n for n in found if isinstance(n, NotificationDelivered)), None)


async def test_a_failed_delivery_is_retried_with_backoff_and_every_attempt_recorded(
    nats_url: str, backplane: NatsBackplane, receiver: Receiver
) -> None:
    receiver.scripts["/flaky"] = [500, 500, 200]
    clock = JumpingClock()
    settings = NotifySettings(attempts=5, first_delay=30.0, timeout=5.0)
    async with running_notifier(nats_url, settings, clock=clock):
        run_id = await end_run(backplane, [NotifyDef(url=receiver.url("/flaky"))])
        await eventually(lambda: _first_delivered(backplane, run_id))
        await eventually(lambda: settled(backplane), what="the run end acknowledged")
    found = await notifications(backplane, run_id)
    assert [summary(n) for n in found] == [
        ("NotificationFailed", 0, 1, 500),
        ("NotificationFailed", 0, 2, 500),
        ("NotificationDelivered", 0, 3, 200),
    ]
    first, second, delivered = found
    assert isinstance(first, NotificationFailed) and isinstance(second, NotificationFailed)
    assert first.retrying and first.error == "HTTP 500"
    # Exponential: 30 s before attempt 2, 60 s before attempt 3 (on the jumping clock).
    assert first.retry_at == first.ts + dt.timedelta(seconds=30)
    assert second.retry_at == second.ts + dt.timedelta(seconds=60)
    assert clock.waits == [first.retry_at, second.retry_at]
    assert delivered.ts >= second.retry_at
    assert [r.headers["X-Cyclonetix-Attempt"] for r in receiver.at("/flaky")] == ["1", "2", "3"]
    assert len({r.body for r in receiver.at("/flaky")}) == 1  # the same summary every time


async def test_attempts_run_out_and_a_refusal_is_not_retried(
    nats_url: str, backplane: NatsBackplane, receiver: Receiver
) -> None:
    receiver.scripts["/down"] = [503]
    receiver.scripts["/gone"] = [410]
    settings = NotifySettings(attempts=2, first_delay=1.0, timeout=5.0)
    hooks = [NotifyDef(url=receiver.url("/down")), NotifyDef(url=receiver.url("/gone"))]
    async with running_notifier(nats_url, settings):
        run_id = await end_run(backplane, hooks)
        await eventually(lambda: settled(backplane), what="the run end acknowledged")
    found = sorted(await notifications(backplane, run_id), key=summary)
    assert [summary(n) for n in found] == [
        ("NotificationFailed", 0, 1, 503),
        ("NotificationFailed", 0, 2, 503),
        ("NotificationFailed", 1, 1, 410),
    ]
    assert [n.retrying for n in found if isinstance(n, NotificationFailed)] == [
        True,
        False,
        False,
    ]


async def test_a_slow_endpoint_does_not_delay_another_runs_delivery(
    nats_url: str, backplane: NatsBackplane, receiver: Receiver
) -> None:
    receiver.hang.add("/slow")
    settings = NotifySettings(attempts=1, first_delay=1.0, timeout=4.0)
    async with running_notifier(nats_url, settings):
        slow_run = await end_run(backplane, [NotifyDef(url=receiver.url("/slow"))], name="slow")
        await eventually(lambda: _received(receiver, "/slow"), what="the slow request")
        fast_run = await end_run(backplane, [NotifyDef(url=receiver.url("/fast"))], name="fast")
        await eventually(lambda: _first_delivered(backplane, fast_run))
        # Delivered while the slow endpoint still holds its request (no answer, no record).
        assert await notifications(backplane, slow_run) == []
        failed = await eventually(lambda: _first_failed(backplane, slow_run))
    assert failed.error == "no answer within 4 s" and failed.status is None
    assert not failed.retrying and failed.duration_ms >= 3_900


async def _received(receiver: Receiver, path: str) -> bool | None:
    return True if receiver.at(path) else None


async def _first_failed(backplane: NatsBackplane, run_id: str) -> NotificationFailed | None:
    found = await notifications(backplane, run_id)
    return next((n for n in found if isinstance(n, NotificationFailed)), None)


async def test_only_subscriptions_for_how_the_run_ended_are_notified(
    nats_url: str, backplane: NatsBackplane, receiver: Receiver
) -> None:
    hooks = [
        NotifyDef(url=receiver.url("/on-success"), on=("succeeded",)),
        NotifyDef(url=receiver.url("/on-failure"), on=("failed", "cancelled")),
    ]
    async with running_notifier(nats_url):
        run_id = await end_run(backplane, hooks, fail=True)
        await eventually(lambda: _first_delivered(backplane, run_id))
        await eventually(lambda: settled(backplane), what="the run end acknowledged")
    assert [summary(n) for n in await notifications(backplane, run_id)] == [
        ("NotificationDelivered", 1, 1, 200)
    ]
    assert receiver.at("/on-success") == []
    [request] = receiver.at("/on-failure")
    body = json.loads(request.body)
    assert (body["status"], body["failed_tasks"], body["tasks"]["failed"]) == ("failed", ["job"], 1)
    assert "X-Cyclonetix-Signature" not in request.headers  # no secret_env: unsigned


async def test_a_missing_secret_is_recorded_as_a_failure_and_nothing_is_sent(
    nats_url: str, backplane: NatsBackplane, receiver: Receiver
) -> None:
    hook = NotifyDef(url=receiver.url("/hook"), secret_env="CX_NOT_SET")
    async with running_notifier(nats_url, environ={}):
        run_id = await end_run(backplane, [hook])
        failed = await eventually(lambda: _first_failed(backplane, run_id))
        await eventually(lambda: settled(backplane), what="the run end acknowledged")
    assert "CX_NOT_SET" in failed.error and "not set" in failed.error
    assert not failed.retrying and failed.attempt == 1
    assert receiver.at("/hook") == []


@pytest.mark.parametrize("how", ["stopped", "died"])
async def test_a_notifier_restarted_mid_retry_neither_loses_nor_repeats_a_delivery(
    nats_url: str, backplane: NatsBackplane, receiver: Receiver, how: str
) -> None:
    """The first notifier delivers one webhook and fails the other twice, then stops (its run
    end handed back) or dies (it comes back after ack_wait) while waiting to retry; the next
    one resumes at attempt 3, not before the recorded retry time, and leaves the delivered
    webhook alone."""
    receiver.scripts["/flaky"] = [500, 500, 200]
    hooks = [NotifyDef(url=receiver.url("/ok")), NotifyDef(url=receiver.url("/flaky"))]
    settings = NotifySettings(attempts=5, first_delay=1000.0, timeout=5.0)
    first = running_notifier(nats_url, settings, clock=JumpingClock(jumps=1), ack_wait=1.0)
    own = await first.__aenter__()
    try:
        run_id = await end_run(backplane, hooks)

        async def two_failures() -> bool | None:
            found = [summary(n) for n in await notifications(backplane, run_id)]
            return True if ("NotificationFailed", 1, 2, 500) in found else None

        await eventually(two_failures)
        if how == "died":
            await own.close()  # gone without handing anything back
    finally:
        await first.__aexit__(None, None, None)
    clock = JumpingClock()
    async with running_notifier(nats_url, settings, clock=clock, ack_wait=1.0):
        await eventually(lambda: _delivered_count(backplane, run_id, 2))
        await eventually(lambda: settled(backplane), what="the run end acknowledged")
    found = await notifications(backplane, run_id)
    assert sorted(summary(n) for n in found) == [
        ("NotificationDelivered", 0, 1, 200),
        ("NotificationDelivered", 1, 3, 200),
        ("NotificationFailed", 1, 1, 500),
        ("NotificationFailed", 1, 2, 500),
    ]
    second_failure = next(n for n in found if summary(n) == ("NotificationFailed", 1, 2, 500))
    assert isinstance(second_failure, NotificationFailed)
    assert clock.waits == [second_failure.retry_at]  # resumed the recorded backoff
    assert len(receiver.at("/ok")) == 1
    assert [r.headers["X-Cyclonetix-Attempt"] for r in receiver.at("/flaky")] == ["1", "2", "3"]


async def _delivered_count(backplane: NatsBackplane, run_id: str, n: int) -> bool | None:
    found = await notifications(backplane, run_id)
    return True if sum(isinstance(e, NotificationDelivered) for e in found) >= n else None


async def test_runs_without_webhooks_are_acknowledged_and_left_alone(
    nats_url: str, backplane: NatsBackplane
) -> None:
    async with running_notifier(nats_url):
        run_ids = [await end_run(backplane, [], name=f"quiet{i}") for i in range(3)]
        await eventually(lambda: settled(backplane), what="every run end acknowledged")
    for run_id in run_ids:
        assert await notifications(backplane, run_id) == []


async def test_the_orchestrator_ends_runs_as_before_and_a_new_one_replays_past_the_records(
    nats_url: str, backplane: NatsBackplane, receiver: Receiver
) -> None:
    """A real orchestrator (with a stand-in agent) ends the run; the records follow its end;
    a new orchestrator replaying the whole log (records included) decides nothing more for it
    and goes on running other runs."""

    async def new_connection() -> NatsBackplane:
        return await connect(nats_url, name="orchestrator")

    task = TaskDef(id="job", command="true", notify=(NotifyDef(url=receiver.url("/hook")),))
    async with (
        running_notifier(nats_url),
        running_orchestrator(new_connection),
        stand_in_agent(backplane, succeed),
    ):
        run_id = await schedule(backplane, defs(task), "job")
        await until_end(backplane, run_id)
        await eventually(lambda: _first_delivered(backplane, run_id))
    before = await backplane.events.history(run_id)
    assert [type(e).__name__ for _, e in before][-2:] == ["RunSucceeded", "NotificationDelivered"]
    async with running_orchestrator(new_connection), stand_in_agent(backplane, succeed):
        other = await schedule(backplane, DIAMOND, "d")
        assert isinstance((await until_end(backplane, other))[-1], RunSucceeded)
    assert await backplane.events.history(run_id) == before

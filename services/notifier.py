"""The notifier: completion webhooks, run inside every orchestrator process (next to the
orchestrator, stopped with it; see services/cli/orchestrator.py).

What it does:
1. reads every run's terminal event from one durable consumer shared by all orchestrators
   (`EndedRuns`: each end goes to one of them; everything else is skipped by its type alone);
2. for a run whose RunScheduled names webhooks (`notify`) for how it ended, reads the run's
   history, builds the JSON summary once (`core.notify.payload`) and delivers each webhook in
   its own task: a POST signed with HMAC-SHA256 (`core.notify.headers`), at most
   `concurrency` requests at once, each bounded by `timeout`, so a slow endpoint holds up
   nothing but its own delivery;
3. records every attempt on the run's subject (`NotificationDelivered` / `NotificationFailed`,
   deterministic message ids) and retries a failed one with exponential backoff (`first_delay`,
   doubling, `attempts` in all) while the failure is worth retrying (`core.notify.retryable`);
4. acknowledges the terminal event only once every delivery it owes has ended. Stopping (or
   dying) leaves it unacknowledged: the next notifier to get it resumes from the recorded
   attempts (`core.notify.due`): a delivered webhook is not sent again, a failing one continues
   with its next attempt, not before the recorded `retry_at`.

It never writes anything the orchestrator reads (the records follow the run's end, which every
fold ignores) and shares nothing with it but the event loop: its decisions are never waited on.
Deliveries are at least once: a notifier that dies between a receiver's answer and the record
of it sends that attempt again (same `X-Cyclonetix-Delivery` header).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import httpx
import structlog

from core.events import NotificationDelivered, NotificationFailed
from core.notify import Pending, RunEnd, due, headers, outcome_of, payload, retry_delay, retryable
from core.run import replay
from services.ports import EndedRun, EndedRuns, EventLog
from services.settings import NotifySettings

__all__ = ["MAX_DELAY", "Notifier"]

log = structlog.get_logger("cyclonetix.notifier")

MAX_DELAY: Final = 600.0  # seconds: the longest wait between two attempts
MAX_HELD: Final = 1_000  # run ends one process works on at once (the rest wait in the consumer)
PROGRESS_EVERY: Final = 10.0  # seconds between "still working" reports on a held run end
RETRY_HANDLING: Final = 5.0  # seconds before a run end whose handling failed comes back


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Notifier:
    """Delivers completion webhooks until `run`'s stop event is set.

    `now` and `sleep_until` are the clock (tests inject one that jumps); `environ` is where
    secrets are read (`secret_env`); `transport` replaces httpx's network transport (tests).
    """

    def __init__(
        self,
        events: EventLog,
        ended: EndedRuns,
        settings: NotifySettings | None = None,
        *,
        environ: Mapping[str, str] = os.environ,
        now: Callable[[], dt.datetime] = utcnow,
        sleep_until: Callable[[dt.datetime], Awaitable[None]] | None = None,
        progress_every: float = PROGRESS_EVERY,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.events = events
        self.ended = ended
        self.settings = settings or NotifySettings()
        self.environ = environ
        self.now = now
        self.sleep_until = sleep_until or self._sleep_until
        self.progress_every = progress_every
        self.transport = transport
        self.requests = asyncio.Semaphore(self.settings.concurrency)
        self.held: dict[asyncio.Task[None], EndedRun] = {}
        self.runs: set[str] = set()  # run ids being handled here (a redelivery is dropped)

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Handle run ends until `stop`; then hand back those not finished (never raises)."""
        stopped = asyncio.ensure_future(stop.wait())
        items = self.ended.ended(stop)
        async with httpx.AsyncClient(transport=self.transport) as client:
            self.client = client
            try:
                async for item in items:
                    if item.event.run_id in self.runs:
                        continue  # redelivered while handled here: settled by the first one
                    while len(self.held) >= MAX_HELD and not stop.is_set():
                        await asyncio.wait(
                            [*self.held, stopped], return_when=asyncio.FIRST_COMPLETED
                        )
                    if stop.is_set():
                        await self._hand_back(item)
                        break
                    self._spawn(item)
            except Exception as exc:  # noqa: BLE001 - webhooks must never take the process down
                log.error("notifier.failed", error=repr(exc))
            finally:
                stopped.cancel()
                aclose = getattr(items, "aclose", None)  # (its subscription ends now, not at GC)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
                await self._stop_handling()

    def _spawn(self, item: EndedRun) -> None:
        run_id = item.event.run_id
        self.runs.add(run_id)
        task = asyncio.get_running_loop().create_task(self.handle(item))
        self.held[task] = item

        def done(t: asyncio.Task[None]) -> None:
            self.held.pop(t, None)
            self.runs.discard(run_id)

        task.add_done_callback(done)

    async def _stop_handling(self) -> None:
        """Cancel the deliveries under way and hand their run ends back, so another notifier
        (or this one's next start) resumes them from what was recorded."""
        unfinished = dict(self.held)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for item in unfinished.values():
            await self._hand_back(item)

    async def _hand_back(self, item: EndedRun) -> None:
        with contextlib.suppress(Exception):  # unsettled, it comes back after ack_wait anyway
            await asyncio.wait_for(item.nak(), 2.0)

    # ------------------------------------------------------------------ one run's end

    async def handle(self, item: EndedRun) -> None:
        """Deliver everything `item` owes, then acknowledge it; on failure hand it back."""
        end = item.event
        keep = asyncio.get_running_loop().create_task(self._keep(item))
        try:
            owed = await self.owed(end)
            if owed:
                pending, body = owed
                results = await asyncio.gather(
                    *(self.deliver(end, p, body) for p in pending), return_exceptions=True
                )
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures:
                    raise failures[0]
            await item.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - NATS away, say: the run end comes back
            log.warning("notifier.handling_failed", run_id=end.run_id, error=str(exc))
            with contextlib.suppress(Exception):
                await item.nak(RETRY_HANDLING)
        finally:
            keep.cancel()

    async def owed(self, end: RunEnd) -> tuple[list[Pending], bytes] | None:
        """The deliveries still owed for `end` and the body they send; None when there are
        none (the run's webhooks do not ask for this outcome, or all are done)."""
        scheduled = await self.ended.scheduled(end.run_id)
        outcome = outcome_of(end)
        if scheduled is None or not any(outcome in n.on for n in scheduled.notify):
            return None  # (most runs: one direct read, no history)
        history = [event for _, event in await self.events.history(end.run_id)]
        pending = due(scheduled, end, history)
        if not pending:
            return None
        state = replay(history).get(end.run_id)
        if state is None:  # pragma: no cover - its first event is the RunScheduled just read
            return None
        return pending, payload(state, end)

    async def _keep(self, item: EndedRun) -> None:
        """Tell the consumer, now and then, that this run end is still being worked on."""
        while True:
            await asyncio.sleep(self.progress_every)
            with contextlib.suppress(Exception):  # a missed report: at worst a redelivery
                await item.in_progress()

    # ------------------------------------------------------------------ one webhook

    async def deliver(self, end: RunEnd, pending: Pending, body: bytes) -> None:
        """Attempt one webhook until it is delivered or no more attempts are to follow,
        recording every attempt."""
        hook = pending.notification
        attempt, not_before = pending.attempt, pending.not_before
        common: dict[str, Any] = {
            "run_id": end.run_id,
            "notification": pending.index,
            "url": hook.url,
            "outcome": outcome_of(end),
        }
        secret: bytes | None = None
        if hook.secret_env is not None:
            value = self.environ.get(hook.secret_env)
            if not value:
                missing = (
                    f"secret_env {hook.secret_env}: the variable is not set in the "
                    "orchestrator's environment"
                )
                await self.events.append(
                    NotificationFailed(ts=self.now(), attempt=attempt, error=missing, **common)
                )
                log.warning("notifier.no_secret", run_id=end.run_id, url=hook.url, error=missing)
                return
            secret = value.encode()
        while True:
            if not_before is not None:
                await self.sleep_until(not_before)
            status, error, duration_ms = await self.post(
                hook.url, end.run_id, pending.index, attempt, body, secret
            )
            now = self.now()
            answer: dict[str, Any] = {
                "attempt": attempt,
                "status": status,
                "duration_ms": duration_ms,
            }
            if error is None:
                await self.events.append(NotificationDelivered(ts=now, **answer, **common))
                log.info("notifier.delivered", run_id=end.run_id, url=hook.url, attempt=attempt)
                return
            retrying = attempt < self.settings.attempts and retryable(status)
            retry_at = None
            if retrying:
                delay = retry_delay(attempt + 1, self.settings.first_delay, cap=MAX_DELAY)
                retry_at = now + dt.timedelta(seconds=delay)
            await self.events.append(
                NotificationFailed(
                    ts=now, error=error, retrying=retrying, retry_at=retry_at, **answer, **common
                )
            )
            log.warning(
                "notifier.attempt_failed",
                run_id=end.run_id,
                url=hook.url,
                attempt=attempt,
                error=error,
                retrying=retrying,
            )
            if retry_at is None:
                return
            attempt, not_before = attempt + 1, retry_at

    async def post(
        self, url: str, run_id: str, index: int, attempt: int, body: bytes, secret: bytes | None
    ) -> tuple[int | None, str | None, float]:
        """One attempt: (HTTP status or None, what went wrong or None, duration in ms)."""
        timeout = self.settings.timeout
        async with self.requests:
            sent = headers(
                run_id,
                index,
                attempt,
                body,
                timestamp=int(self.now().timestamp()),
                secret=secret,
            )
            started = time.perf_counter()
            status: int | None = None
            error: str | None = None
            try:
                # The whole exchange is bounded, not each phase (a receiver that trickles
                # bytes would pass every per-phase timeout); the answer's body is not read.
                async with asyncio.timeout(timeout):
                    request = self.client.stream(
                        "POST", url, content=body, headers=sent, timeout=timeout
                    )
                    async with request as response:
                        status = response.status_code
            except (TimeoutError, httpx.TimeoutException):
                error = f"no answer within {timeout:g} s"
            except httpx.HTTPError as exc:
                error = _describe(exc)
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if error is None and status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        return status, error, duration_ms

    async def _sleep_until(self, when: dt.datetime) -> None:
        # Waits on the clock `now` reads (the wall clock), which the loop's timer need not
        # follow exactly: check again after each sleep.
        while (left := (when - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(left, 60.0))


def _describe(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or str(cause or "") or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]

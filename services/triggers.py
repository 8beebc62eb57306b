"""The trigger handler: turns messages on `cx.trigger.task|dag.<id>` into runs.

It runs inside every orchestrator process (started by `cyclonetix orchestrator` next to the
orchestrator, stopped by the same signal). The messages wait in CX_TRIGGERS, a work queue whose
one durable consumer every handler shares, so each message goes to one handler, and a message
published while no orchestrator runs is handled when one starts. For each message:

  1. parse it (`core.triggers.parse_trigger`: strict; a bad one is rejected with its reason);
  2. plan the run with the published definitions (`services.commands.plan`, as the CLI does: an
     unknown task, DAG or context, or a parameter for a task outside the run, is rejected);
  3. with an `idempotency_key`: bind the key (of this kind and target) to the run id in a KV
     bucket whose TTL is the window, unless it is bound already — then that run is the answer;
  4. append its RunScheduled (`services.commands.schedule`, trigger="subject");
  5. record the outcome in the trigger log (which also answers a requester: see
     services/nats/triggers.py), then ack — or, for a rejection, terminate: never redelivered.

A run id is fixed before anything is written (the message's own `run_id`, the one its key is
bound to, or one derived from the stored message), so every retry, redelivery or concurrent
duplicate plans the same run and the event log's "first event of a run" check lets exactly one
through; the others find the run and answer "existing". A failure to reach NATS or the
definitions is not the message's fault: it is handed back (nak) and tried again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import structlog

from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from core.errors import Invalid, Unavailable
from core.events import RunScheduled
from core.triggers import (
    AnyOutcome,
    Rejection,
    TriggerAccepted,
    TriggerRejected,
    TriggerRequest,
    derived_run_id,
    digest,
    head,
    parse_trigger,
)
from services.commands import ScheduleRequest, plan, schedule
from services.ports import RunExists

if TYPE_CHECKING:
    from core.definitions import Definitions
    from services.ports import DefinitionsStore, EventLog, TriggerDelivery, TriggerInbox

__all__ = ["TriggerHandler"]

log = structlog.get_logger("cyclonetix.triggers")

BATCH: Final = 256  # messages fetched, and handled concurrently, at a time
FETCH_WAIT_S: Final = 0.25  # how long one fetch waits for a trigger
MAX_RETRY_DELAY: Final = 30.0
# An error nobody foresaw (a bug, not the message's fault or NATS's) is retried a few times,
# then the message is rejected: it must not come back forever.
UNEXPECTED_ATTEMPTS: Final = 5


class _Retry(Exception):
    """Hand the message back: NATS or the definitions could not be reached."""


class TriggerHandler:
    """Handles the stored triggers; `run` until stopped, `handle` one delivery."""

    def __init__(
        self,
        events: EventLog,
        definitions: DefinitionsStore,
        inbox: TriggerInbox,
        *,
        max_bytes: int,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        pause: float = 1.0,
        env_policy: EnvPolicy = DEFAULT_ENV_POLICY,
    ) -> None:
        self.events = events
        self.definitions = definitions
        self.inbox = inbox
        self.max_bytes = max_bytes
        self.clock = clock
        self.pause = pause  # after a failed fetch
        self.env_policy = env_policy  # what no parameter of a trigger may set
        self._defs: Definitions | None = None
        self._defs_version: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle batches until `stop` (what is in hand is finished first)."""
        log.info("triggers.started")
        while not stop.is_set():
            try:
                # (Short waits: a stop is noticed within one, and an idle fetch costs little.)
                batch = await self.inbox.fetch(BATCH, timeout=FETCH_WAIT_S)
            except Exception as exc:  # noqa: BLE001 - the handler must outlive a bad fetch
                log.warning("triggers.fetch_failed", error=str(exc) or repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.pause)
                continue
            if batch:
                await self.refresh_definitions()
                await asyncio.gather(*(self.handle(d) for d in batch))
        log.info("triggers.stopped")

    async def refresh_definitions(self) -> None:
        """Reload the definitions when they changed (one cheap question per batch)."""
        try:
            version = await self.inbox.definitions_version()
            if self._defs is None or version != self._defs_version:
                self._defs = await self.definitions.load()
                self._defs_version = version
        except Exception as exc:  # noqa: BLE001 - each message then asks for itself (and naks)
            log.warning("triggers.definitions_unavailable", error=str(exc))
            self._defs = None

    async def handle(self, delivery: TriggerDelivery) -> AnyOutcome | None:
        """Handle one delivery and settle it; the outcome recorded (None: handed back).
        Never raises."""
        try:
            outcome = await self._decide(delivery)
            await self.inbox.record(outcome)
            if isinstance(outcome, TriggerRejected):
                await delivery.term()
            else:
                await delivery.ack()
        except (_Retry, Unavailable) as exc:
            await self._hand_back(delivery, str(exc))
            return None
        except Exception as exc:
            log.exception("triggers.unexpected_error", subject=delivery.subject, seq=delivery.seq)
            if delivery.delivery < UNEXPECTED_ATTEMPTS:
                await self._hand_back(delivery, repr(exc))
                return None
            return await self._give_up(delivery, exc)
        log.info(
            "triggers.handled",
            subject=delivery.subject,
            outcome=type(outcome).__name__,
            run_id=getattr(outcome, "run_id", None),
            reason=getattr(outcome, "reason", None),
        )
        return outcome

    async def _decide(self, delivery: TriggerDelivery) -> AnyOutcome:
        target = delivery.target
        if target is None:
            return self._rejected(
                delivery,
                None,
                "not a trigger subject: use cx.trigger.task.<task_id> or cx.trigger.dag.<dag_id>",
            )
        kind, target_id = target
        parsed = parse_trigger(kind, target_id, delivery.data, self.max_bytes)
        if isinstance(parsed, Rejection):
            return self._rejected(delivery, None, parsed.reason)
        defs = self._defs
        if defs is None:
            try:
                defs = await self.definitions.load()
            except Exception as exc:
                raise _Retry(f"cannot read the definitions: {exc}") from exc
        run_id = parsed.run_id or derived_run_id(target_id, delivery.seq, delivery.received)
        request = _request(parsed, run_id)
        try:
            plan(
                defs, request, env_policy=self.env_policy
            )  # (pure) every check the CLI makes, before anything is written
        except Invalid as exc:
            return self._rejected(delivery, parsed, str(exc))
        if parsed.idempotency_key is not None:
            run_id = await self.inbox.claim(kind, target_id, parsed.idempotency_key, run_id)
            request = _request(parsed, run_id)
        try:
            await schedule(self.events, defs, request, env_policy=self.env_policy)
            status = "scheduled"
        except RunExists:
            if not await self._is_this_trigger(request):
                if parsed.idempotency_key is not None and parsed.run_id == run_id:
                    # We bound the key to a run id someone else had taken: unbind it.
                    await self.inbox.release(kind, target_id, parsed.idempotency_key, run_id)
                return self._rejected(delivery, parsed, f"run id {run_id!r} is already taken")
            status = "existing"
        except Invalid as exc:  # (planned above with the same inputs, but to be sure)
            return self._rejected(delivery, parsed, str(exc))
        return TriggerAccepted(
            **self._about(delivery, parsed),
            run_id=run_id,
            status=status,
            kind=kind,
            target=target_id,
            idempotency_key=parsed.idempotency_key,
        )

    async def _is_this_trigger(self, request: ScheduleRequest) -> bool:
        """Whether the run that holds the id was started by a trigger like this one (an
        earlier delivery of this message, a duplicate of it, or the same idempotency key)."""
        history = await self.events.history(request.run_id or "")
        first = history[0][1] if history else None
        return (
            isinstance(first, RunScheduled)
            and first.trigger == "subject"
            and (first.kind, first.target) == (request.kind, request.target)
            and first.idempotency_key == request.idempotency_key
        )

    def _rejected(
        self, delivery: TriggerDelivery, parsed: TriggerRequest | None, reason: str
    ) -> TriggerRejected:
        return TriggerRejected(
            **self._about(delivery, parsed), reason=reason, head=head(delivery.data)
        )

    def _about(self, delivery: TriggerDelivery, parsed: TriggerRequest | None) -> dict[str, Any]:
        """What every outcome record says about its message."""
        return {
            "ts": self.clock(),
            "subject": delivery.subject,
            "seq": delivery.seq,
            "received": delivery.received,
            "digest": digest(delivery.subject, delivery.data),
            "requested_by": parsed.requested_by if parsed else None,
        }

    async def _hand_back(self, delivery: TriggerDelivery, why: str) -> None:
        delay = min(MAX_RETRY_DELAY, 0.5 * 2 ** min(delivery.delivery, 10))
        log.warning("triggers.retry_later", subject=delivery.subject, error=why, delay=delay)
        with contextlib.suppress(Exception):  # unsettled, it comes back after ack_wait anyway
            await delivery.nak(delay)

    async def _give_up(self, delivery: TriggerDelivery, exc: Exception) -> AnyOutcome | None:
        outcome = self._rejected(delivery, None, f"cannot handle this trigger: {exc!r}"[:500])
        try:
            await self.inbox.record(outcome)
            await delivery.term()
        except Exception:  # noqa: BLE001 - then it comes back and is tried once more
            return None
        return outcome


def _request(parsed: TriggerRequest, run_id: str) -> ScheduleRequest:
    return ScheduleRequest(
        kind=parsed.kind,
        target=parsed.target,
        context=parsed.context,
        params=parsed.params,
        run_id=run_id,
        trigger="subject",
        idempotency_key=parsed.idempotency_key,
    )

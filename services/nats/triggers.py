"""Subject triggers on NATS (`services.ports.TriggerInbox`): CX_TRIGGERS, the idempotency keys
(KV `cx_trigger_keys`) and the trigger log (CX_TRIGGER_LOG).

Request/reply. JetStream keeps no reply subject with a stored message, and a stream that acks
answers a request with its PubAck (`{"stream":..,"seq":..}`) before anyone else can. So
CX_TRIGGERS is `no_ack`, and the requester is answered by the `_Responder` of the orchestrator
its request reached (a core queue group: one of them). That responder only waits: the stored copy
is handled like any published trigger (by whichever handler fetches it), and its outcome record,
published to CX_TRIGGER_LOG, reaches every responder as a plain core message too. The record
carries a digest of the message's subject and bytes and when the stream stored it; the responder
answers the oldest request with that digest received within `MATCH_WINDOW` of that time. Two
requests with the same subject and bytes within that window may get each other's answer — both
runs of the same request; an `idempotency_key` or `run_id` tells them apart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import time
from typing import TYPE_CHECKING, Final, Literal

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType

from core.errors import Unavailable
from core.triggers import (
    AnyOutcome,
    TriggerRejected,
    decode_outcome,
    digest,
    encode_outcome,
    outcome_msg_id,
    reply_body,
)
from services.nats.connection import describe, unavailable
from services.nats.names import (
    DEFS_BUCKET,
    MSG_ID,
    TRIGGER_CONSUMER,
    TRIGGER_KEYS_BUCKET,
    TRIGGER_LOG_STREAM,
    TRIGGER_LOG_SUBJECTS,
    TRIGGER_SUBJECTS,
    TRIGGERS_STREAM,
    kv_token,
    trigger_log_subject,
    trigger_target,
)
from services.nats.provisioning import ERR_STREAM_CONFIG_DIFFERS
from services.nats.reader import Reader

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

    from services.nats import NatsBackplane
    from services.ports import TriggerDelivery

__all__ = [
    "NatsTriggerDelivery",
    "NatsTriggerInbox",
    "open_trigger_inbox",
    "read_outcomes",
    "subscribed",
]

log = structlog.get_logger("cyclonetix.triggers")

MATCH_WINDOW: Final = 5.0  # seconds between a request's arrival and its stored copy's time
WAIT_LIMIT: Final = 120.0  # a request unanswered this long is forgotten (its caller gave up)
REQUEST_GROUP: Final = "cx_trigger_requests"


class NatsTriggerDelivery:
    """One delivery of a stored trigger (`services.ports.TriggerDelivery`)."""

    __slots__ = ("data", "delivery", "msg", "received", "seq", "subject", "target")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self.subject = msg.subject
        self.data = msg.data or b""
        self.target: tuple[Literal["outcome", "dag"], str] | None = trigger_target(msg.subject)
        metadata = msg.metadata
        self.seq = int(metadata.sequence.stream)
        self.delivery = int(metadata.num_delivered)
        self.received: dt.datetime = metadata.timestamp

    async def ack(self) -> None:
        with unavailable("an ack of a trigger"):
            await self.msg.ack()

    async def term(self) -> None:
        with unavailable("a termination of a trigger"):
            await self.msg.term()

    async def nak(self, delay: float) -> None:
        with unavailable("a nak of a trigger"):
            await self.msg.nak(delay=delay)


class _Waiter:
    __slots__ = ("arrived", "received", "reply")

    def __init__(self, reply: str, received: float, arrived: float) -> None:
        self.reply = reply
        self.received = received  # wall clock (seconds), to compare with the stream's time
        self.arrived = arrived  # monotonic, for forgetting it


class _Responder:
    """Answers the requests that reach this process once their stored copies are handled."""

    def __init__(self, backplane: NatsBackplane) -> None:
        self._nc = backplane.connection.nc
        self._conn = backplane.connection
        self._waiting: dict[str, collections.deque[_Waiter]] = {}
        # Outcomes that came before their request was seen here (or whose request went to
        # another process): kept for MATCH_WINDOW, by digest.
        self._early: dict[str, collections.deque[tuple[AnyOutcome, float]]] = {}
        self._pruned = time.monotonic()
        self._subs: list[object] = []

    async def start(self) -> None:
        self._subs = [
            await self._nc.subscribe(TRIGGER_SUBJECTS, queue=REQUEST_GROUP, cb=self._on_request),
            await self._nc.subscribe(TRIGGER_LOG_SUBJECTS, cb=self._on_outcome),
        ]
        for sub in self._subs:
            self._conn.subs.add(sub)
        await subscribed(self._nc)  # so that a request sent once we are started finds us

    async def stop(self) -> None:
        for sub in self._subs:
            await self._conn.unsubscribe(sub)
        self._subs = []

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return  # a plain publish: nobody waits
        now = time.monotonic()
        self._prune(now)
        key = digest(msg.subject, msg.data or b"")
        waiter = _Waiter(msg.reply, time.time(), now)
        early = self._early.get(key)
        if early:
            for i, (outcome, _) in enumerate(early):
                if abs(outcome.received.timestamp() - waiter.received) <= MATCH_WINDOW:
                    del early[i]
                    await self._answer(waiter.reply, outcome)
                    return
        self._waiting.setdefault(key, collections.deque()).append(waiter)

    async def _on_outcome(self, msg: Msg) -> None:
        try:
            outcome = decode_outcome(msg.data or b"")
        except msgspec.DecodeError:
            return  # a record of a newer writer: its requester cannot be told here
        now = time.monotonic()
        self._prune(now)
        waiting = self._waiting.get(outcome.digest)
        if waiting:
            stored = outcome.received.timestamp()
            for i, waiter in enumerate(waiting):
                if abs(stored - waiter.received) <= MATCH_WINDOW:
                    del waiting[i]
                    await self._answer(waiter.reply, outcome)
                    return
        self._early.setdefault(outcome.digest, collections.deque()).append((outcome, now))

    async def _answer(self, reply: str, outcome: AnyOutcome) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(reply, reply_body(outcome))

    def _prune(self, now: float) -> None:
        if now - self._pruned < 1.0:
            return
        self._pruned = now
        for key in list(self._waiting):
            kept = collections.deque(w for w in self._waiting[key] if now - w.arrived < WAIT_LIMIT)
            if kept:
                self._waiting[key] = kept
            else:
                del self._waiting[key]
        for key in list(self._early):
            fresh = collections.deque(e for e in self._early[key] if now - e[1] < MATCH_WINDOW)
            if fresh:
                self._early[key] = fresh
            else:
                del self._early[key]


async def subscribed(nc: NatsClient) -> None:
    """Return once the server has our new subscriptions.

    nats-py 2.16's `flush()` alone does not promise that: it writes its PING straight to the
    socket while a SUB may still wait in the client's buffer, so the PONG can come back before
    the server saw the SUB (measured: about one subscription in ten missed a message published
    by another connection right after `flush()`). Write the buffer out first, then ping.
    """
    flush_pending = getattr(nc, "_flush_pending", None)
    if flush_pending is not None:
        with contextlib.suppress(Exception):
            await flush_pending(force_flush=True)
    await nc.flush()


class NatsTriggerInbox:
    """The trigger handler's view of NATS (`services.ports.TriggerInbox`)."""

    def __init__(self, backplane: NatsBackplane, *, window: float) -> None:
        self._backplane = backplane
        self._conn = backplane.connection
        self._window = window
        self._kv: KeyValue | None = None
        self._psub: object | None = None
        self._responder: _Responder | None = None

    async def start(self, *, answer_requests: bool = True) -> None:
        """Bind the shared consumer and the idempotency keys; answer requests (unless not)."""
        await self._ensure_keys()
        self._conn.on_reconnect.append(self._after_reconnect)
        with unavailable("the trigger consumer"):
            psub = await self._conn.js.pull_subscribe_bind(
                consumer=TRIGGER_CONSUMER, stream=TRIGGERS_STREAM
            )
        self._conn.subs.add(psub)
        self._psub = psub
        if answer_requests:
            self._responder = _Responder(self._backplane)
            with unavailable("the trigger request subscription"):
                await self._responder.start()

    def _after_reconnect(self) -> None:
        # The server may have lost its store: the bucket comes back with our window.
        self._conn.spawn(self._ensure_keys_quietly())

    async def _ensure_keys_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.sleep(0.5)  # (after the provisioner's streams)
            await self._ensure_keys()

    async def _ensure_keys(self) -> None:
        """The idempotency bucket, its TTL the window (updated in place when it changed)."""
        js = self._conn.js
        cfg = KeyValueConfig(
            bucket=TRIGGER_KEYS_BUCKET,
            history=1,
            ttl=self._window,
            storage=StorageType.FILE,
            replicas=self._backplane.provisioner.replicas,
            direct=True,
        )
        with unavailable("the idempotency keys bucket"):
            try:
                self._kv = await js.create_key_value(cfg)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != ERR_STREAM_CONFIG_DIFFERS:
                    raise
                info = await js.stream_info(f"KV_{TRIGGER_KEYS_BUCKET}")
                info.config.max_age = self._window
                # (JetStream refuses a duplicate window longer than the max age.)
                info.config.duplicate_window = min(self._window, 120.0)
                await js.update_stream(info.config)
                log.info("triggers.window_updated", seconds=self._window)
                self._kv = await js.key_value(TRIGGER_KEYS_BUCKET)

    async def fetch(self, count: int, timeout: float) -> list[TriggerDelivery]:
        psub = self._psub
        assert psub is not None, "start() first"
        try:
            msgs = await psub.fetch(count, timeout=timeout)  # type: ignore[attr-defined]
        except TimeoutError:  # nats.errors.TimeoutError too: nothing came
            return []
        except nats.errors.Error as exc:
            raise Unavailable(f"cannot fetch triggers: {describe(exc)}") from exc
        return [NatsTriggerDelivery(msg) for msg in msgs]

    def _key(self, kind: str, target: str, key: str) -> str:
        return f"{'task' if kind == 'outcome' else 'dag'}.{kv_token(target)}.{kv_token(key)}"

    async def claim(self, kind: str, target: str, key: str, run_id: str) -> str:
        kv = self._kv
        assert kv is not None, "start() first"
        name = self._key(kind, target, key)
        for _ in range(10):  # a key that expires between our create and get: create again
            with unavailable("the idempotency keys"):
                try:
                    await kv.create(name, run_id.encode())
                    return run_id
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass
                try:
                    entry = await kv.get(name)
                except nats.js.errors.KeyNotFoundError:
                    continue
            if entry.value:
                return entry.value.decode()
        raise Unavailable(f"idempotency key {key!r} keeps changing; try again")

    async def release(self, kind: str, target: str, key: str, run_id: str) -> None:
        kv = self._kv
        assert kv is not None, "start() first"
        name = self._key(kind, target, key)
        with unavailable("the idempotency keys"):
            try:
                entry = await kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                return
            if entry.value == run_id.encode():
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    await kv.delete(name, last=entry.revision)

    async def record(self, outcome: AnyOutcome) -> None:
        subject = trigger_log_subject(isinstance(outcome, TriggerRejected))
        # Pipelined (the outbox): at a burst of triggers, one waited publish each costs more
        # than the round trips themselves.
        await self._backplane.publisher.publish_nowait(
            subject, encode_outcome(outcome), {MSG_ID: outcome_msg_id(outcome)}
        )

    async def definitions_version(self) -> int:
        with unavailable("a definitions bucket info request"):
            info = await self._conn.js.stream_info(f"KV_{DEFS_BUCKET}")
        return int(info.state.last_seq)

    async def outcomes(self, *, limit: int, rejected_only: bool = False) -> list[AnyOutcome]:
        return await read_outcomes(self._backplane, limit=limit, rejected_only=rejected_only)

    async def close(self) -> None:
        if self._responder is not None:
            await self._responder.stop()
        if self._psub is not None:
            await self._conn.unsubscribe(self._psub)
            self._psub = None
        with contextlib.suppress(ValueError):
            self._conn.on_reconnect.remove(self._after_reconnect)


async def open_trigger_inbox(
    backplane: NatsBackplane, *, window: float, answer_requests: bool = True
) -> NatsTriggerInbox:
    inbox = NatsTriggerInbox(backplane, window=window)
    await inbox.start(answer_requests=answer_requests)
    return inbox


async def read_outcomes(
    backplane: NatsBackplane, *, limit: int, rejected_only: bool = False
) -> list[AnyOutcome]:
    """The newest `limit` trigger outcomes (only rejections, if asked), oldest first."""
    conn = backplane.connection
    subject = trigger_log_subject(True) if rejected_only else TRIGGER_LOG_SUBJECTS
    with unavailable("a trigger log info request"):
        info = await conn.js.stream_info(TRIGGER_LOG_STREAM)
    last = int(info.state.last_seq)
    if limit <= 0 or not info.state.messages:
        return []
    if rejected_only:  # (rejections are sparse: read them all, keep the newest)
        reader = Reader(
            conn, TRIGGER_LOG_STREAM, subject, deliver_policy=DeliverPolicy.ALL, bounded=True
        )
    else:
        start = max(int(info.state.first_seq), last - limit + 1)
        reader = Reader(
            conn,
            TRIGGER_LOG_STREAM,
            subject,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            start_seq=start,
            bounded=True,
        )
    newest: collections.deque[AnyOutcome] = collections.deque(maxlen=limit)
    async for _seq, _pending, msg in reader:
        try:
            newest.append(decode_outcome(msg.data or b""))
        except msgspec.DecodeError:
            continue  # a newer writer's record
    return list(newest)

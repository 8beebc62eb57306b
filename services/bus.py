"""The NATS adapter: the only module that talks to NATS JetStream.

What lives where (DESIGN.md section 1):
  CX_EVENTS  cx.ev.<shard>.<run_id>             every fact about a run (limits, file, no deletes)
  CX_WORK    cx.work.<queue>                     dispatch messages (work queue, one durable
                                                 pull consumer `work_<queue>` shared by agents)
  CX_LOGS    cx.log.<run_id>.<task>.<attempt>    command output (limits, 7 days)
  KV         cx_defs, cx_agents, cx_leases, cx_checkpoints

Every publish carries a deterministic `Nats-Msg-Id`, so a retry after a timeout, a reconnect or a
crash is a no-op inside the duplicate window. Streams, buckets and consumers are provisioned
idempotently on connect and again after every reconnect: a server that lost its store gets them
back without a restart of ours.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import itertools
import os
import re
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    Header,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext

from core.definitions import ContextDef, DagDef, Definitions, ParameterSetDef, TaskDef
from core.events import (
    TERMINAL,
    AnyEvent,
    Dispatch,
    RunScheduled,
    decode,
    decode_dispatch,
    dispatch_msg_id,
    encode,
    encode_dispatch,
    msg_id,
)
from core.ids import shard_of
from services.logging import Throttle

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable

    from nats.aio.msg import Msg
    from nats.js.api import PubAck
    from nats.js.kv import KeyValue

__all__ = [
    "ADVISORIES_STREAM",
    "AGENTS_BUCKET",
    "ALL_EVENTS",
    "CHECKPOINTS_BUCKET",
    "DEFS_BUCKET",
    "EVENTS_STREAM",
    "LEASES_BUCKET",
    "LOGS_STREAM",
    "WORK_STREAM",
    "AgentInfo",
    "Bus",
    "BusError",
    "BusUnavailable",
    "Conflict",
    "PullSubscription",
    "RunExists",
    "decode_token",
    "event_subject",
    "kv_token",
    "log_subject",
    "subject_token",
    "work_subject",
]

log = structlog.get_logger("cyclonetix.bus")

# -- names --------------------------------------------------------------------------------------

EVENTS_STREAM: Final = "CX_EVENTS"
WORK_STREAM: Final = "CX_WORK"
LOGS_STREAM: Final = "CX_LOGS"
DEFS_BUCKET: Final = "cx_defs"
AGENTS_BUCKET: Final = "cx_agents"
LEASES_BUCKET: Final = "cx_leases"
CHECKPOINTS_BUCKET: Final = "cx_checkpoints"
ADVISORIES_STREAM: Final = "CX_ADVISORIES"
# JetStream announces a work message whose deliveries ran out (max_deliver) on this core
# subject; capturing it in a stream keeps the news while no orchestrator is running.
MAX_DELIVERIES_SUBJECT: Final = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{WORK_STREAM}.*"
LOST_CONSUMER: Final = "lost_dispatches"

ALL_EVENTS: Final = "cx.ev.>"
DUPLICATE_WINDOW: Final = 300.0  # seconds: how long a retried publish is recognised
LOG_MAX_AGE: Final = 7 * 24 * 3600.0
ADVISORY_MAX_AGE: Final = 7 * 24 * 3600.0
AGENT_TTL: Final = 30.0
REPLICAS_ENV: Final = "CYCLONETIX_STREAM_REPLICAS"
LEASE_TTL: Final = 6.0  # a lease its holder stops renewing is free after this long
LOG_CHUNK_MAX: Final = 256 * 1024  # larger log writes are split; well under max_payload

# Server error codes we act on (nats-server `server/errors.json`).
ERR_STREAM_CONFIG_DIFFERS: Final = 10058
ERR_WRONG_LAST_SEQUENCE: Final = 10071

_KV_OPERATION = "KV-Operation"
_MARKER_REASON = "Nats-Marker-Reason"
CX_STREAM_HEADER: Final = "Cx-Stream"  # on log chunks: stdout or stderr
_SOURCE_HEADER = "Cx-Source"  # on definitions: the file they came from
MSG_ID: Final = Header.MSG_ID.value  # "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value

PullSubscription: TypeAlias = JetStreamContext.PullSubscription  # what agents fetch from

# -- subject and key tokens ---------------------------------------------------------------------
# A subject token may not contain '.', '*', '>' or whitespace; KV keys allow only
# [-/_=.a-zA-Z0-9]. Anything outside the safe set is written as '=XX' per UTF-8 byte ('=' itself
# included), which is reversible and leaves ordinary ids untouched.

_SUBJECT_SAFE = re.compile(r"[-_:A-Za-z0-9]+")
_KV_SAFE = re.compile(r"[-_A-Za-z0-9]+")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")


def _escape(value: str, safe: re.Pattern[str]) -> str:
    if safe.fullmatch(value):
        return value
    if not value:
        raise ValueError("an empty string cannot be a subject token or key")
    out = []
    for char in value:
        if safe.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={b:02X}" for b in char.encode())
    return "".join(out)


def subject_token(value: str) -> str:
    """`value` as one NATS subject token (task ids may contain ':', which is legal)."""
    return _escape(value, _SUBJECT_SAFE)


def kv_token(value: str) -> str:
    """`value` as one KV key token."""
    return _escape(value, _KV_SAFE)


def decode_token(token: str) -> str:
    """Inverse of `subject_token` and `kv_token`."""
    if "=" not in token:
        return token
    out = bytearray()
    for i, part in enumerate(_ESCAPE.split(token)):
        # split() with one group alternates: text, hex, text, hex, ...
        out.extend(bytes([int(part, 16)]) if i % 2 else part.encode())
    return out.decode(errors="replace")


CANCEL_PREFIX = "cx.cancel"


def event_subject(run_id: str) -> str:
    return f"cx.ev.{shard_of(run_id)}.{subject_token(run_id)}"


def work_subject(queue: str) -> str:
    return f"cx.work.{subject_token(queue)}"


def log_subject(run_id: str, task_id: str, attempt: int) -> str:
    return f"cx.log.{subject_token(run_id)}.{subject_token(task_id)}.{attempt}"


def _work_consumer(queue: str) -> str:
    return f"work_{kv_token(queue)}"


def _kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


# -- errors -------------------------------------------------------------------------------------


class BusError(Exception):
    """Base of the errors this module raises on purpose; messages are one line."""


class BusUnavailable(BusError):
    """NATS could not be reached, or did not acknowledge a write within the retry budget."""


class Conflict(BusError):
    """A conditional append lost: the run has events newer than the caller has seen."""


class RunExists(BusError):
    """A different run was already scheduled under this run id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} already exists")
        self.run_id = run_id


# Worth retrying with the same Nats-Msg-Id: the server may be restarting, electing a leader,
# or may have stored the message and lost the ack.
_RETRYABLE: tuple[type[BaseException], ...] = (
    TimeoutError,  # includes nats.errors.TimeoutError and asyncio.TimeoutError
    nats.js.errors.NoStreamResponseError,  # no stream yet (e.g. store wiped, not re-provisioned)
    nats.js.errors.ServiceUnavailableError,  # JetStream not ready (503)
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,  # disconnected and the reconnect buffer is full
    nats.errors.ConnectionReconnectingError,
)


class _Outgoing:
    """A pipelined publish waiting for its ack."""

    __slots__ = ("headers", "payload", "result", "subject")

    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        result: asyncio.Future[int],
    ) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.result = result


class _MaxDeliveries(msgspec.Struct):
    """io.nats.jetstream.advisory.v1.max_deliver (only the fields we use)."""

    stream_seq: int
    deliveries: int


_max_deliveries_decoder = msgspec.json.Decoder(_MaxDeliveries)


# -- agents -------------------------------------------------------------------------------------


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's heartbeat in `cx_agents` (`agent.<id>`); expires AGENT_TTL after the last one."""

    id: str
    host: str
    pid: int
    queues: list[str]
    running: list[str] = []  # "run_id/task_id/attempt"
    version: str = ""
    started_at: dt.datetime
    seen_at: dt.datetime


# Definitions in cx_defs: key prefix -> (Definitions attribute, struct type).
_DEF_KINDS: Final[dict[str, tuple[str, type[Any]]]] = {
    "task": ("tasks", TaskDef),
    "dag": ("dags", DagDef),
    "context": ("contexts", ContextDef),
    "parameter_set": ("parameter_sets", ParameterSetDef),
}
_DEF_DECODERS = {kind: msgspec.json.Decoder(t) for kind, (_, t) in _DEF_KINDS.items()}
_json = msgspec.json.Encoder()
_agent_decoder = msgspec.json.Decoder(AgentInfo)


def _describe(exc: BaseException) -> str:
    """An exception as a short phrase for one-line messages."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).removeprefix("nats: ").strip()
    if not text and isinstance(exc, TimeoutError):
        return "timed out"
    return text or type(exc).__name__


class Bus:
    """A connection to NATS JetStream with Cyclonetix's streams, consumers and buckets.

    Create with `await Bus.connect(url, name=...)`, finish with `await bus.close()`.
    """

    def __init__(
        self,
        *,
        name: str,
        replicas: int = 1,
        publish_timeout: float = 5.0,
        publish_deadline: float = 60.0,
    ) -> None:
        self.name = name
        self.replicas = replicas
        self.publish_timeout = publish_timeout  # one attempt
        self.publish_deadline = publish_deadline  # all retries of one publish
        self.nc = NatsClient()
        self.js: JetStreamContext = self.nc.jetstream(timeout=publish_timeout)
        self.url = ""
        self._provision = True
        self._kv: dict[str, KeyValue] = {}
        self._work_consumers: dict[str, ConsumerConfig] = {}
        self._subs: set[Any] = set()  # pull subscriptions to unsubscribe on close
        self._readers: set[_Reader] = set()  # live push readers (tail, history, logs)
        self._inflight: set[asyncio.Future[int]] = set()  # pipelined publishes, until acked
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Future[Any]] = set()  # publish_async acks not yet received
        self._reconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._background: set[asyncio.Task[None]] = set()
        self._provision_lock = asyncio.Lock()
        self._connecting = True
        self._connect_error: BaseException | None = None
        self._closing = False
        self._throttle = Throttle(30.0)
        self._log_ids = itertools.count()
        self._instance = f"{os.getpid()}-{id(self):x}"

    # -- connection -----------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        provision: bool = True,
        connect_timeout: float = 2.0,
        replicas: int | None = None,
        publish_timeout: float = 5.0,
        publish_deadline: float = 60.0,
    ) -> Bus:
        """Connect (a few quick attempts), then provision; after that, reconnect forever.

        Raises BusUnavailable within about `connect_timeout` when NATS cannot be reached.
        `url` may list several servers separated by commas (a cluster). Streams and buckets are
        created with `replicas` copies (default: $CYCLONETIX_STREAM_REPLICAS, else 1; 3 on a
        three-node cluster).
        """
        if replicas is None:
            try:
                replicas = int(os.environ.get(REPLICAS_ENV) or 1)
            except ValueError:
                raise BusUnavailable(f"{REPLICAS_ENV} must be 1, 3 or 5") from None
        bus = cls(
            name=name,
            replicas=replicas,
            publish_timeout=publish_timeout,
            publish_deadline=publish_deadline,
        )
        bus._provision = provision
        servers = [u.strip() for u in url.split(",") if u.strip()]
        bus.url = ",".join(s if "://" in s else f"nats://{s}" for s in servers)
        try:
            await asyncio.wait_for(
                bus.nc.connect(
                    servers=servers,
                    name=name,
                    connect_timeout=connect_timeout,  # type: ignore[arg-type]  # typed int, takes float
                    # First connect: one retry only, so a wrong URL fails fast. Switched to
                    # "forever" below once connected.
                    allow_reconnect=True,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.25,  # type: ignore[arg-type]
                    ping_interval=20,
                    max_outstanding_pings=3,
                    drain_timeout=5,
                    error_cb=bus._on_error,
                    disconnected_cb=bus._on_disconnected,
                    reconnected_cb=bus._on_reconnected,
                    closed_cb=bus._on_closed,
                ),
                timeout=connect_timeout + 0.5,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            reason = bus._connect_error or exc
            if isinstance(reason, TimeoutError):
                reason = TimeoutError(f"no answer within {connect_timeout:g}s")
            with contextlib.suppress(Exception):
                await bus.nc.close()
            raise BusUnavailable(f"cannot reach NATS at {bus.url}: {_describe(reason)}") from None
        bus._connecting = False
        bus.nc.options["max_reconnect_attempts"] = -1
        bus.nc.options["reconnect_time_wait"] = 0.5
        log.debug("nats.connected", url=bus.url)
        if provision:
            try:
                await bus._provision_at_start()
            except BaseException:
                await bus.close()
                raise
        return bus

    async def _provision_at_start(self) -> None:
        """Provision, waiting out a JetStream that is still starting (a cluster electing its
        meta leader answers with timeouts or 503s for a few seconds)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = 0.1
        while True:
            try:
                await self.provision()
                return
            except _RETRYABLE as exc:
                waited = loop.time() - started
                no_jetstream = isinstance(exc, nats.errors.NoRespondersError)
                if no_jetstream and waited > 2.0:
                    raise BusUnavailable(
                        f"NATS at {self.url} has no JetStream: start nats-server with -js"
                    ) from None
                if waited > min(self.publish_deadline, 30.0):
                    raise BusUnavailable(
                        f"JetStream at {self.url} is not ready: {_describe(exc)}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _on_error(self, exc: Exception) -> None:
        if self._connecting:
            self._connect_error = exc  # reported once, by connect()
            return
        if isinstance(exc, nats.errors.SlowConsumerError):
            key = "slow_consumer"
        else:
            key = type(exc).__name__
        dropped = self._throttle.check(key)
        if dropped is not None:
            log.warning("nats.error", error=_describe(exc), kind=key, suppressed=dropped)

    async def _on_disconnected(self) -> None:
        if not self._disconnected.done():
            self._disconnected.set_result(None)
        if not self._closing and not self._connecting:
            log.warning("nats.disconnected", url=self.url)

    async def _on_reconnected(self) -> None:
        # Publishes in flight across the reconnect may have died with the old socket: resend
        # them now rather than after their timeout (same msg ids, so no duplicates).
        self._reconnected.set_result(None)
        self._reconnected = asyncio.get_running_loop().create_future()
        if self._disconnected.done():
            self._disconnected = asyncio.get_running_loop().create_future()
        for ack in list(self._acks):
            ack.cancel()
        self._throttle.reset()
        url = self.nc.connected_url.geturl() if self.nc.connected_url else self.url
        log.info("nats.reconnected", url=url)
        if not self._closing:
            # Not inline: this callback runs inside nats-py's reconnect task.
            self._spawn(self._reprovision())

    async def _on_closed(self) -> None:
        if not self._closing and not self._connecting:
            log.warning("nats.closed", url=self.url)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reprovision(self) -> None:
        delay = 0.1
        while self._provision and not self._closing:
            try:
                await self.provision()
                log.info("nats.reprovisioned")
                break
            except Exception as exc:  # noqa: BLE001 - JetStream may still be starting: keep trying
                if self._throttle.check(f"reprovision:{type(exc).__name__}") is not None:
                    log.warning("nats.reprovision_failed", error=_describe(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for reader in list(self._readers):
            reader.reset()  # their memory consumers may be gone with the old server

    # -- provisioning ---------------------------------------------------------------------------

    def stream_configs(self) -> list[StreamConfig]:
        return [
            StreamConfig(
                name=EVENTS_STREAM,
                description="Cyclonetix event log: every fact about every run",
                subjects=["cx.ev.*.*"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                discard=DiscardPolicy.NEW,  # refuse appends rather than drop history
                duplicate_window=DUPLICATE_WINDOW,
                deny_delete=True,
                allow_direct=True,
            ),
            StreamConfig(
                name=WORK_STREAM,
                description="Cyclonetix dispatch messages, one subject per queue",
                subjects=["cx.work.*"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=DUPLICATE_WINDOW,
            ),
            StreamConfig(
                name=ADVISORIES_STREAM,
                description="Cyclonetix: dispatches whose deliveries ran out",
                subjects=[MAX_DELIVERIES_SUBJECT],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                max_age=ADVISORY_MAX_AGE,
            ),
            StreamConfig(
                name=LOGS_STREAM,
                description="Cyclonetix task output",
                subjects=["cx.log.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                max_age=LOG_MAX_AGE,
                duplicate_window=120.0,
                allow_direct=True,
            ),
        ]

    def kv_configs(self) -> list[KeyValueConfig]:
        common: dict[str, Any] = {
            "storage": StorageType.FILE,
            "replicas": self.replicas,
            "direct": True,
        }
        return [
            KeyValueConfig(bucket=DEFS_BUCKET, history=5, **common),
            KeyValueConfig(bucket=AGENTS_BUCKET, ttl=AGENT_TTL, **common),
            KeyValueConfig(bucket=LEASES_BUCKET, ttl=LEASE_TTL, **common),
            KeyValueConfig(bucket=CHECKPOINTS_BUCKET, **common),
        ]

    async def provision(self) -> None:
        """Create or update every stream, bucket and known work consumer (idempotent)."""
        async with self._provision_lock:
            for cfg in self.stream_configs():
                await self._ensure_stream(cfg)
            for kv_cfg in self.kv_configs():
                self._kv[kv_cfg.bucket] = await self._ensure_kv(kv_cfg)
            await self._ensure_consumer(
                ADVISORIES_STREAM,
                ConsumerConfig(
                    name=LOST_CONSUMER,
                    durable_name=LOST_CONSUMER,
                    filter_subject=MAX_DELIVERIES_SUBJECT,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=60.0,
                ),
            )
            for consumer in list(self._work_consumers.values()):
                await self._ensure_consumer(WORK_STREAM, consumer)

    async def _ensure_stream(self, cfg: StreamConfig) -> None:
        try:
            await self.js.add_stream(cfg)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != ERR_STREAM_CONFIG_DIFFERS:
                raise
            # Our config is the source of truth: converge the server to it.
            try:
                await self.js.update_stream(cfg)
            except nats.js.errors.APIError as update_exc:
                raise BusError(
                    f"stream {cfg.name} exists with a config that cannot be changed to ours: "
                    f"{update_exc.description}"
                ) from None
            log.info("nats.stream_updated", stream=cfg.name)

    async def _ensure_kv(self, cfg: KeyValueConfig) -> KeyValue:
        try:
            return await self.js.create_key_value(cfg)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != ERR_STREAM_CONFIG_DIFFERS:
                raise
            log.warning("nats.bucket_config_differs", bucket=cfg.bucket, detail=exc.description)
            return await self.js.key_value(cfg.bucket)

    async def _ensure_consumer(self, stream: str, cfg: ConsumerConfig) -> None:
        assert cfg.name is not None
        try:
            info = await self.js.consumer_info(stream, cfg.name)
        except nats.js.errors.NotFoundError:
            await self.js.add_consumer(stream, cfg)
            return
        have = info.config
        fields = ("filter_subject", "ack_wait", "max_deliver", "max_ack_pending", "max_waiting")
        wanted = {f: getattr(cfg, f) for f in fields if getattr(cfg, f) is not None}
        if any(getattr(have, f) != value for f, value in wanted.items()):
            # Creating with the same name updates the mutable fields in place.
            await self.js.add_consumer(stream, cfg)
            log.info("nats.consumer_updated", stream=stream, consumer=cfg.name)

    @property
    def closed(self) -> bool:
        return self._closing or self.nc.is_closed

    def kv_bucket(self, bucket: str) -> KeyValue:
        """A provisioned KV bucket (e.g. LEASES_BUCKET, CHECKPOINTS_BUCKET)."""
        try:
            return self._kv[bucket]
        except KeyError:
            raise BusError(f"KV bucket {bucket!r} is not provisioned on this bus") from None

    # -- publishing -----------------------------------------------------------------------------

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> PubAck:
        """Publish and wait for the stream's ack, retrying retryable failures with the same
        headers (hence the same Nats-Msg-Id) until `publish_deadline`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_deadline
        delay = 0.05
        while True:
            remaining = deadline - loop.time()
            try:
                request = asyncio.ensure_future(
                    self.js.publish(
                        subject,
                        payload,
                        timeout=max(0.05, min(self.publish_timeout, remaining)),
                        headers=dict(headers) if headers else None,
                    )
                )
                try:
                    await asyncio.wait(
                        (request, self._reconnected), return_when=asyncio.FIRST_COMPLETED
                    )
                except asyncio.CancelledError:
                    request.cancel()
                    raise
                if request.done():
                    return request.result()
                # A request written just before the connection died is lost with the socket;
                # its timeout would cost seconds. Resend now (same msg id: no duplicate).
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await request
            except _RETRYABLE as exc:
                remaining = deadline - loop.time()
                if remaining <= 0 or self._closing or self.nc.is_closed:
                    raise BusUnavailable(
                        f"NATS did not acknowledge a publish to {subject}: {_describe(exc)}"
                    ) from exc
                if self._throttle.check(f"publish_retry:{type(exc).__name__}") is not None:
                    log.warning("nats.publish_retry", subject=subject, error=_describe(exc))
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 2.0)
            except nats.errors.ConnectionClosedError as exc:
                message = f"NATS connection closed: cannot publish to {subject}"
                raise BusUnavailable(message) from exc

    def _publish_nowait(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[int]:
        """Queue a publish; one sender task writes them in call order without waiting for
        acks (nats-py `publish_async`). A publish whose ack fails or times out is retried in
        the background with the same headers, so it may then land after later ones."""
        if self._closing:
            raise BusUnavailable("bus is closed")
        loop = asyncio.get_running_loop()
        result: asyncio.Future[int] = loop.create_future()
        self._outbox.append(_Outgoing(subject, payload, headers, result))
        self._inflight.add(result)
        result.add_done_callback(self._publish_done)
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_outbox())
        self._outbox_ready.set()
        return result

    async def _send_outbox(self) -> None:
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        while not self._closing:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while outbox:
                item = outbox.popleft()
                if item.result.done():
                    continue  # the caller cancelled it
                try:
                    ack = await self.js.publish_async(
                        item.subject, item.payload, headers=item.headers
                    )
                except _RETRYABLE:
                    self._retry(item)
                    continue
                except nats.errors.ConnectionClosedError:
                    item.result.set_exception(BusUnavailable("NATS connection closed"))
                    continue
                except Exception as exc:  # noqa: BLE001 - reported to this publish's caller
                    item.result.set_exception(exc)
                    continue
                timer = loop.call_later(self.publish_timeout, ack.cancel)
                self._acks.add(ack)
                ack.add_done_callback(functools.partial(self._acked, item, timer))

    def _acked(self, item: _Outgoing, timer: asyncio.TimerHandle, ack: asyncio.Future[Any]) -> None:
        timer.cancel()
        self._acks.discard(ack)
        if item.result.done():
            return
        if ack.cancelled():  # timed out, or in flight across a reconnect
            self._retry(item)
            return
        exc = ack.exception()
        if exc is None:
            item.result.set_result(int(ack.result().seq))
        elif isinstance(exc, _RETRYABLE):
            self._retry(item)
        else:
            item.result.set_exception(exc)

    def _retry(self, item: _Outgoing) -> None:
        async def retry() -> None:
            try:
                ack = await self._publish(item.subject, item.payload, item.headers)
            except Exception as exc:  # noqa: BLE001 - reported to this publish's caller
                if not item.result.done():
                    item.result.set_exception(exc)
            else:
                if not item.result.done():
                    item.result.set_result(int(ack.seq))

        self._spawn(retry())

    def _publish_done(self, result: asyncio.Future[int]) -> None:
        self._inflight.discard(result)
        if not result.cancelled() and (exc := result.exception()) is not None:
            log.error("nats.publish_failed", error=_describe(exc))

    async def flush_appends(self) -> None:
        """Wait for every pipelined publish issued so far; raise the first failure."""
        pending = list(self._inflight)
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):  # (a future its caller cancelled is skipped)
                raise result

    # -- events ---------------------------------------------------------------------------------

    async def append(self, event: AnyEvent) -> int:
        """Append one event to its run's subject; returns its stream sequence (the original
        sequence when this exact event was already appended)."""
        ack = await self._publish(
            event_subject(event.run_id), encode(event), {MSG_ID: msg_id(event)}
        )
        return int(ack.seq)

    def append_nowait(self, event: AnyEvent) -> asyncio.Future[int]:
        """Pipelined `append`: returns at once; the future gives the sequence.

        Use `flush_appends()` before acknowledging the input that caused these events.
        """
        return self._publish_nowait(
            event_subject(event.run_id), encode(event), {MSG_ID: msg_id(event)}
        )

    async def schedule_run(self, event: RunScheduled) -> int:
        """Append the first event of a run: a run id can be used once.

        A retry of our own earlier append (same msg id) returns its sequence; any other event
        already on the run's subject raises RunExists.
        """
        try:
            return await self.append_expected(event, 0)
        except Conflict:
            raise RunExists(event.run_id) from None

    async def append_expected(self, event: AnyEvent, expected: int) -> int:
        """Append only if the run's last event is still at stream sequence `expected` (0: the
        run has no events). Returns the new sequence; raises Conflict if someone else appended.
        """
        subject = event_subject(event.run_id)
        mid = msg_id(event)
        payload = encode(event)
        headers = {MSG_ID: mid, EXPECTED_LAST_SUBJECT_SEQUENCE: str(expected)}
        try:
            ack = await self._publish(subject, payload, headers)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != ERR_WRONG_LAST_SEQUENCE:
                raise
            # The expected-sequence check runs before dedup, so our own stored-but-unacked
            # append lands here too: it is ours if the first event after `expected` is this
            # very event (same msg id *and* bytes: a second RunScheduled for the same run id
            # has the same msg id but is a different request).
            try:
                after = await self.js.get_msg(
                    EVENTS_STREAM, seq=expected + 1, subject=subject, next=True, direct=True
                )
            except nats.js.errors.NotFoundError:
                after = None
            if (
                after is not None
                and after.seq
                and after.data == payload
                and (after.headers or {}).get(MSG_ID) == mid
            ):
                return int(after.seq)
            raise Conflict(f"run {event.run_id!r} has events after sequence {expected}") from None
        return int(ack.seq)

    async def last_event_seq(self) -> int:
        """The stream sequence of the newest event of any run (0 when there are none)."""
        info = await self.js.stream_info(EVENTS_STREAM)
        return int(info.state.last_seq)

    @staticmethod
    def _decode_event(seq: int, msg: Msg) -> AnyEvent | None:
        try:
            return decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("bus.undecodable_event", subject=msg.subject, seq=seq, error=str(exc))
            return None

    async def history(self, run_id: str) -> list[tuple[int, AnyEvent]]:
        """Every event of one run, in order, as (stream sequence, event)."""
        out: list[tuple[int, AnyEvent]] = []
        async for seq, _, msg in self._replay(EVENTS_STREAM, event_subject(run_id)):
            event = self._decode_event(seq, msg)
            if event is not None:
                out.append((seq, event))
        return out

    async def tail(
        self,
        *,
        from_seq: int = 1,
        subject: str = ALL_EVENTS,
        stop: asyncio.Event | None = None,
    ) -> AsyncGenerator[tuple[int, AnyEvent, int], None]:
        """Events from `from_seq` on, then live: (stream seq, event, num_pending).

        `num_pending == 0` means caught up. Runs until `stop` is set or the bus closes.
        Undecodable messages are logged and skipped.
        """
        async for seq, pending, msg in self._follow(EVENTS_STREAM, subject, from_seq, stop):
            event = self._decode_event(seq, msg)
            if event is not None:
                yield seq, event, pending

    async def follow_run(
        self, run_id: str, from_seq: int = 1, *, stop: asyncio.Event | None = None
    ) -> AsyncGenerator[tuple[int, AnyEvent], None]:
        """One run's events as (stream seq, event), stored then live; ends after the run's
        terminal event (or when `stop` is set, or the bus closes)."""
        async for seq, event, _ in self.tail(
            from_seq=from_seq, subject=event_subject(run_id), stop=stop
        ):
            yield seq, event
            if isinstance(event, TERMINAL):
                return

    # -- reading primitives ---------------------------------------------------------------------

    async def _replay(
        self,
        stream: str,
        subject: str,
        *,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    ) -> AsyncIterator[_Delivery]:
        """Everything currently stored on `subject`, then stop (a bounded read)."""
        reader = _Reader(self, stream, subject, deliver_policy=deliver_policy, bounded=True)
        async for item in reader:
            yield item

    async def _follow(
        self, stream: str, subject: str, from_seq: int = 1, stop: asyncio.Event | None = None
    ) -> AsyncIterator[_Delivery]:
        """Stored messages from `from_seq`, then live ones, until `stop` or the bus closes."""
        policy = DeliverPolicy.BY_START_SEQUENCE if from_seq > 1 else DeliverPolicy.ALL
        reader = _Reader(
            self, stream, subject, deliver_policy=policy, start_seq=from_seq, stop=stop
        )
        async for item in reader:
            yield item

    # -- work -----------------------------------------------------------------------------------

    async def dispatch(self, d: Dispatch) -> int:
        ack = await self._publish(
            work_subject(d.queue), encode_dispatch(d), {MSG_ID: dispatch_msg_id(d)}
        )
        return int(ack.seq)

    def dispatch_nowait(self, d: Dispatch) -> asyncio.Future[int]:
        return self._publish_nowait(
            work_subject(d.queue), encode_dispatch(d), {MSG_ID: dispatch_msg_id(d)}
        )

    async def work_subscription(
        self, queue: str, *, ack_wait: float = 30, max_deliver: int = 5
    ) -> PullSubscription:
        """Bind to the durable pull consumer of `queue`, shared by every agent of the queue.

        Each `fetch` hands a message to one agent; an un-acked message comes back after
        `ack_wait` (call `msg.in_progress()` while working), at most `max_deliver` times.
        """
        name = _work_consumer(queue)
        cfg = ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=work_subject(queue),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=float(ack_wait),
            max_deliver=max_deliver,
            max_ack_pending=10_000,  # the cap on running tasks across all agents of a queue
            max_waiting=1024,  # concurrent fetch requests (agents x concurrency)
        )
        await self._ensure_consumer(WORK_STREAM, cfg)
        self._work_consumers[queue] = cfg  # re-created by provision() after a store loss
        psub = await self.js.pull_subscribe_bind(consumer=name, stream=WORK_STREAM)
        self._subs.add(psub)
        return psub

    async def lost_dispatches(self) -> AsyncGenerator[tuple[Dispatch, int], None]:
        """Dispatches whose deliveries ran out (`max_deliver`), as (dispatch, deliveries).

        At least once, shared by all orchestrators: when the caller asks for the next one, the
        stranded work message is deleted and the advisory acknowledged.
        """
        psub = await self.js.pull_subscribe_bind(consumer=LOST_CONSUMER, stream=ADVISORIES_STREAM)
        self._subs.add(psub)
        try:
            while not self._closing:
                try:
                    msgs = await psub.fetch(16, timeout=5)
                except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from deeper in fetch
                    continue
                except nats.errors.Error as exc:
                    if self.closed:
                        return
                    if self._throttle.check("lost_dispatches") is not None:
                        log.warning("bus.lost_dispatches_failed", error=_describe(exc))
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    try:
                        advisory = _max_deliveries_decoder.decode(msg.data)
                        raw = await self.js.get_msg(WORK_STREAM, seq=advisory.stream_seq)
                        dispatch = decode_dispatch(raw.data or b"")
                    except nats.js.errors.NotFoundError:
                        await msg.ack()  # acknowledged late after all, or already handled
                        continue
                    except msgspec.DecodeError as exc:
                        log.warning("bus.undecodable_lost_dispatch", error=str(exc))
                        await msg.term()
                        continue
                    yield dispatch, advisory.deliveries
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await self.js.delete_msg(WORK_STREAM, advisory.stream_seq)
                    await msg.ack()
        finally:
            await self.unsubscribe(psub)

    # ------------------------------------------------------------------ cancellations

    async def announce_cancel(self, run_id: str) -> None:
        """Tell every agent to kill the commands it runs for `run_id` (core NATS, not stored:
        the durable fact is RunCancelRequested; an agent that misses this lets them finish)."""
        await self.nc.publish(f"{CANCEL_PREFIX}.{subject_token(run_id)}", b"")

    async def cancellations(self) -> AsyncGenerator[str, None]:
        """Run ids announced as cancelled, as they arrive."""
        sub = await self.nc.subscribe(f"{CANCEL_PREFIX}.*")
        self._subs.add(sub)
        try:
            async for msg in sub.messages:
                yield decode_token(msg.subject.split(".", 2)[2])
        finally:
            await self.unsubscribe(sub)

    async def unsubscribe(self, sub: Any) -> None:
        """Stop a subscription this bus handed out (e.g. an agent leaving a queue)."""
        self._subs.discard(sub)
        if not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting to be delivered, per queue (in-flight ones not counted)."""
        info = await self.js.stream_info(WORK_STREAM, subjects_filter="cx.work.*")
        depths = {
            decode_token(subject.split(".", 2)[2]): count
            for subject, count in (info.state.subjects or {}).items()
        }
        for ci in await self.js.consumers_info(WORK_STREAM):
            filt = ci.config.filter_subject or ""
            if ci.name.startswith("work_") and filt.startswith("cx.work."):
                depths[decode_token(filt.split(".", 2)[2])] = ci.num_pending or 0
        return depths

    # -- logs -----------------------------------------------------------------------------------

    def publish_log_nowait(
        self, run_id: str, task_id: str, attempt: int, data: bytes, *, stream: str = "stdout"
    ) -> asyncio.Future[int]:
        """Store a chunk of a command's output; large chunks are split. The future gives the
        sequence of the last piece. Each piece has its own msg id, so retries do not duplicate."""
        subject = log_subject(run_id, task_id, attempt)
        pieces = [data[i : i + LOG_CHUNK_MAX] for i in range(0, len(data), LOG_CHUNK_MAX)]
        futures = [
            self._publish_nowait(
                subject,
                piece,
                {
                    CX_STREAM_HEADER: stream,
                    MSG_ID: f"log/{self._instance}/{next(self._log_ids)}",
                },
            )
            for piece in pieces or [b""]
        ]
        if len(futures) == 1:
            return futures[0]
        return asyncio.ensure_future(_last_of(futures))

    async def read_logs(
        self, run_id: str, task_id: str, attempt: int | None = None, *, follow: bool = False
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """Output chunks of a task as (attempt, bytes): one attempt or all, stored or live."""
        token = "*" if attempt is None else str(attempt)
        subject = f"cx.log.{subject_token(run_id)}.{subject_token(task_id)}.{token}"
        source = (
            self._follow(LOGS_STREAM, subject) if follow else self._replay(LOGS_STREAM, subject)
        )
        async for _, _, msg in source:
            yield int(msg.subject.rsplit(".", 1)[1]), msg.data

    # -- key-value: definitions and agents ------------------------------------------------------

    async def _kv_snapshot(self, bucket: str, pattern: str = ">") -> dict[str, Msg]:
        """The latest message of every live key matching `pattern` (one bounded read)."""
        prefix = f"$KV.{bucket}."
        entries: dict[str, Msg] = {}
        async for _, _, msg in self._replay(
            f"KV_{bucket}", prefix + pattern, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
        ):
            headers = msg.headers or {}
            if headers.get(_KV_OPERATION) or headers.get(_MARKER_REASON):
                continue  # a delete, purge or expiry marker
            entries[msg.subject[len(prefix) :]] = msg
        return entries

    async def put_definitions(self, defs: Definitions) -> int:
        """Make cx_defs hold exactly `defs`; returns how many keys changed (put or deleted).

        One key per definition (`task.<id>`, `dag.<id>`, ...), the value its msgspec JSON and
        the file it came from in a `Cx-Source` header. Unchanged keys are not rewritten, so
        the bucket's history shows real changes only. Readers may briefly see a mix of the old
        and new set while this runs.
        """
        desired: dict[str, tuple[bytes, str | None]] = {}
        for kind, (attr, _) in _DEF_KINDS.items():
            for def_id, item in getattr(defs, attr).items():
                source = defs.sources.get(f"{attr}/{def_id}")
                desired[f"{kind}.{kv_token(def_id)}"] = (_json.encode(item), source)
        current = {
            key: (msg.data, (msg.headers or {}).get(_SOURCE_HEADER))
            for key, msg in (await self._kv_snapshot(DEFS_BUCKET)).items()
            if key.split(".", 1)[0] in _DEF_KINDS
        }
        futures = [
            self._publish_nowait(
                _kv_subject(DEFS_BUCKET, key),
                value,
                {_SOURCE_HEADER: source} if source else None,
            )
            for key, (value, source) in desired.items()
            if current.get(key) != (value, source)
        ]
        futures += [
            self._publish_nowait(_kv_subject(DEFS_BUCKET, key), b"", {_KV_OPERATION: "DEL"})
            for key in current.keys() - desired.keys()
        ]
        if futures:
            await asyncio.gather(*futures)
        return len(futures)

    async def load_definitions(self) -> Definitions:
        """The current definitions from cx_defs (values that fail to decode are skipped)."""
        parts: dict[str, dict[str, Any]] = {attr: {} for attr, _ in _DEF_KINDS.values()}
        sources: dict[str, str] = {}
        for key, msg in (await self._kv_snapshot(DEFS_BUCKET)).items():
            kind, _, token = key.partition(".")
            if kind not in _DEF_KINDS:
                continue
            try:
                item = _DEF_DECODERS[kind].decode(msg.data)
            except msgspec.DecodeError as exc:
                log.warning("bus.undecodable_definition", key=key, error=str(exc))
                continue
            attr = _DEF_KINDS[kind][0]
            def_id = decode_token(token)
            parts[attr][def_id] = item
            if source := (msg.headers or {}).get(_SOURCE_HEADER):
                sources[f"{attr}/{def_id}"] = source
        return Definitions(**parts, sources=sources)

    async def put_heartbeat(self, info: AgentInfo) -> None:
        await self._publish(
            _kv_subject(AGENTS_BUCKET, f"agent.{kv_token(info.id)}"), _json.encode(info), None
        )

    async def delete_agent(self, agent_id: str) -> None:
        await self._publish(
            _kv_subject(AGENTS_BUCKET, f"agent.{kv_token(agent_id)}"),
            b"",
            {_KV_OPERATION: "DEL"},
        )

    async def list_agents(self) -> list[AgentInfo]:
        agents = []
        for key, msg in (await self._kv_snapshot(AGENTS_BUCKET, "agent.>")).items():
            try:
                agents.append(_agent_decoder.decode(msg.data))
            except msgspec.DecodeError as exc:
                log.warning("bus.undecodable_agent", key=key, error=str(exc))
        return sorted(agents, key=lambda a: a.id)

    # -- leases and checkpoints -----------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str) -> int | None:
        """Take the lease `name` if nobody holds it: its revision, or None when it is held.

        Leases live in a bucket whose entries expire LEASE_TTL after their last write, so a
        holder that dies frees its lease by itself.
        """
        try:
            return int(await self.kv_bucket(LEASES_BUCKET).create(kv_token(name), holder.encode()))
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def renew_lease(self, name: str, holder: str, revision: int) -> int | None:
        """Keep holding `name`: the new revision, or None when the lease was lost meanwhile."""
        try:
            return int(
                await self.kv_bucket(LEASES_BUCKET).update(
                    kv_token(name), holder.encode(), last=revision
                )
            )
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            return None

    async def lease_holder(self, name: str) -> str | None:
        try:
            entry = await self.kv_bucket(LEASES_BUCKET).get(kv_token(name))
        except nats.js.errors.KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def release_lease(self, name: str, revision: int) -> None:
        # Best effort: a lease that is not released expires after LEASE_TTL anyway. (A stale
        # revision comes back as a plain BadRequestError from delete, unlike from update.)
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.BadRequestError):
            await self.kv_bucket(LEASES_BUCKET).delete(kv_token(name), last=revision)

    async def get_checkpoint(self, name: str) -> int | None:
        try:
            entry = await self.kv_bucket(CHECKPOINTS_BUCKET).get(kv_token(name))
        except nats.js.errors.KeyNotFoundError:
            return None
        try:
            return int(entry.value or b"")
        except ValueError:
            return None

    async def put_checkpoint(self, name: str, value: int) -> None:
        await self.kv_bucket(CHECKPOINTS_BUCKET).put(kv_token(name), str(value).encode())

    # -- shutdown -------------------------------------------------------------------------------

    async def close(self, grace: float = 5.0) -> None:
        """Flush pipelined publishes (briefly), stop every subscription, drain. Never hangs."""
        if self._closing:
            return
        if self._inflight and self.nc.is_connected:
            # Give pipelined publishes a moment to be acknowledged, unless the connection is
            # already gone (then they cannot be).
            acked: asyncio.Future[Any] = asyncio.ensure_future(asyncio.wait(list(self._inflight)))
            watch: set[asyncio.Future[Any]] = {acked, self._disconnected}
            await asyncio.wait(watch, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            acked.cancel()  # (cancels the wait, not the publishes)
        self._closing = True
        for task in [*self._background, *([self._sender] if self._sender else [])]:
            task.cancel()
        for result in list(self._inflight):
            if not result.done():
                result.set_exception(BusUnavailable("bus closed before NATS acknowledged"))
        self._outbox.clear()
        for reader in list(self._readers):
            await reader.close()
        # Pull/ordered subscriptions can hold messages nobody reads, which makes drain()
        # wait for its full timeout: unsubscribe them first.
        for sub in list(self._subs):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self.nc.is_closed:
            return
        try:
            if self.nc.is_connected:
                await asyncio.wait_for(self.nc.drain(), grace)
        except Exception as exc:  # noqa: BLE001 - shutting down: report and close hard
            log.debug("nats.drain_failed", error=_describe(exc))
        finally:
            if not self.nc.is_closed:
                if not self.nc.is_connected:
                    # nats-py would flush its reconnect buffer into the dead socket and abort
                    # close() half-way (ConnectionResetError): nothing in it can be sent now.
                    self.nc._pending = []
                    self.nc._pending_data_size = 0
                await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# -- the reader ---------------------------------------------------------------------------------

_Delivery = tuple[int, int, "Msg"]  # (stream sequence, messages pending after it, message)
_STATUS = "Status"
_LAST_CONSUMER = "Nats-Last-Consumer"
_CONSUMER_STALLED = "Nats-Consumer-Stalled"


class _FlowControl:
    __slots__ = ("reply",)

    def __init__(self, reply: str) -> None:
        self.reply = reply


_CLOSED: Final = object()


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """(stream seq, consumer seq, pending) from a JetStream delivery's reply subject.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>` (9 tokens) or the
    v2 form with domain and account hash after `$JS.ACK` (12 tokens).
    """
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[6]), int(t[8])
    return int(t[7]), int(t[8]), int(t[10])


class _Reader:
    """An ordered, ephemeral, AckNone push consumer read through a callback subscription.

    Why not nats-py's own readers: `PullSubscription.fetch` and ordered-consumer iteration
    create an asyncio task per message (about 90 us each on the dev box); a callback into a
    queue costs a few us, which makes a 3,000-event history ~10x faster. What the ordered
    consumer gave us is kept: flow control (answered only once the caller consumed what came
    before, so memory stays bounded), gap detection by consumer sequence, and re-creation from
    the last seen stream sequence after a gap, two missed heartbeats or a reconnect.

    `bounded=True` stops once caught up (num_pending == 0); otherwise it follows forever.
    """

    def __init__(
        self,
        bus: Bus,
        stream: str,
        subject: str,
        *,
        deliver_policy: DeliverPolicy,
        start_seq: int = 1,
        bounded: bool = False,
        heartbeat: float = 2.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._bus = bus
        self._stop = stop
        self._stream = stream
        self._subject = subject
        self._policy = deliver_policy
        self._start_seq = start_seq
        self._bounded = bounded
        self._heartbeat = heartbeat
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._generation = 0
        self._sub: Any = None
        self._consumer: str | None = None
        self._next_dseq = 1
        self._last_sseq = start_seq - 1
        self._active = True
        self._resetting = False
        self._watchdog: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()  # stop was set or close() called
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[_Delivery]:
        bus = self._bus
        if bus.closed or (self._stop is not None and self._stop.is_set()):
            return
        bus._readers.add(self)
        loop = asyncio.get_running_loop()
        stop_waiter: asyncio.Task[bool] | None = None
        if self._stop is not None:
            stop_waiter = loop.create_task(self._stop.wait())
            stop_waiter.add_done_callback(lambda _: self._end())
        try:
            pending = await self._first_create()
            if pending is None or (self._bounded and pending == 0):
                return
            self._watchdog = loop.create_task(self._watch())
            queue = self._queue
            while True:
                item = await queue.get()
                if type(item) is tuple:
                    yield item
                    if self._bounded and item[1] == 0:
                        return
                elif isinstance(item, _FlowControl):
                    # Everything delivered before this request has been consumed: let the
                    # server send the next window.
                    with contextlib.suppress(Exception):
                        await bus.nc.publish(item.reply)
                elif item is _CLOSED:
                    return
                else:
                    raise item  # from the watchdog: a bounded read stalled
        finally:
            if stop_waiter is not None:
                stop_waiter.cancel()
            bus._readers.discard(self)
            await self.close()

    async def _first_create(self) -> int | None:
        """`_create`, abandoned when the reader is ended meanwhile (a request on a closing
        connection would wait out its timeout). None: ended. A following reader keeps trying
        while NATS is unreachable; a bounded one raises BusUnavailable."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            creating = loop.create_task(self._create())
            if not await self._until_ended(creating):
                return None
            exc = creating.exception()
            if exc is None:
                return creating.result()
            if self._ended.is_set() or self._bus.closed:
                return None
            if not isinstance(exc, _RETRYABLE):
                raise exc
            if self._bounded:
                raise BusUnavailable(
                    f"NATS did not answer a read of {self._subject}: {_describe(exc)}"
                ) from exc
            if not await self._until_ended(loop.create_task(asyncio.sleep(delay))):
                return None
            delay = min(delay * 2, 2.0)

    async def _until_ended(self, task: asyncio.Task[Any]) -> bool:
        """Wait for `task` unless the reader ends first (then cancel it); True if it finished."""
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # lets _create drop its half-made subscription
        return not task.cancelled()

    def _end(self) -> None:
        if not self._ended.is_set():
            self._ended.set()
            self._queue.put_nowait(_CLOSED)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._end()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._drop_consumer(self._sub, self._consumer)

    async def _create(self) -> int:
        """Subscribe a fresh inbox, then create the consumer delivering to it."""
        bus = self._bus
        self._generation += 1
        generation = self._generation
        inbox = bus.nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            if generation == self._generation:
                await self._on_msg(msg)

        sub = await bus.nc.subscribe(inbox, cb=on_msg, pending_bytes_limit=256 * 1024 * 1024)
        name = bus.nc._nuid.next().decode()
        by_seq = self._policy == DeliverPolicy.BY_START_SEQUENCE
        cfg = ConsumerConfig(
            name=name,
            deliver_subject=inbox,
            deliver_policy=self._policy,
            opt_start_seq=self._last_sseq + 1 if by_seq else None,
            ack_policy=AckPolicy.NONE,
            filter_subject=self._subject,
            flow_control=True,
            idle_heartbeat=self._heartbeat,
            inactive_threshold=max(30.0, 5 * self._heartbeat),  # server cleans up after us
            mem_storage=True,
            num_replicas=1,
        )
        old_sub, old_consumer = self._sub, self._consumer
        self._sub, self._consumer = sub, name
        self._next_dseq = 1
        self._active = True
        try:
            info = await bus.js.add_consumer(self._stream, cfg)
        except BaseException:
            await self._drop_consumer(sub, None)
            raise
        await self._drop_consumer(old_sub, old_consumer)
        return info.num_pending or 0

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers is not None and _STATUS in headers and not msg.data:
            self._active = True
            if msg.reply:  # flow-control request: answered in order, by the iterator
                self._queue.put_nowait(_FlowControl(msg.reply))
                return
            if stalled := headers.get(_CONSUMER_STALLED):  # a lost flow-control reply
                await self._bus.nc.publish(stalled)
            last = headers.get(_LAST_CONSUMER)
            if last is not None and int(last) != self._next_dseq - 1:
                self._reset("missed messages (heartbeat)")
            return
        try:
            sseq, dseq, pending = _ack_fields(msg.reply)
        except (ValueError, IndexError):
            log.warning("bus.unexpected_delivery", subject=msg.subject, reply=msg.reply)
            return
        self._active = True
        if dseq != self._next_dseq:
            self._reset(f"gap: consumer sequence {dseq}, expected {self._next_dseq}")
            return
        self._next_dseq = dseq + 1
        self._last_sseq = sseq
        if self._policy != DeliverPolicy.LAST_PER_SUBJECT:
            self._policy = DeliverPolicy.BY_START_SEQUENCE  # a re-creation resumes after sseq
        self._queue.put_nowait((sseq, pending, msg))

    async def _watch(self) -> None:
        """Re-create the consumer when two heartbeats in a row were missed; a bounded read
        that makes no progress for the bus's publish deadline fails instead of hanging."""
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while not self._closed:
            await asyncio.sleep(2 * self._heartbeat)
            if self._active:
                last_progress = loop.time()
            elif self._bounded and loop.time() - last_progress > self._bus.publish_deadline:
                self._queue.put_nowait(
                    BusUnavailable(f"NATS stopped answering while reading {self._subject}")
                )
                return
            elif not self._resetting:
                self._reset("no heartbeat")
            self._active = False

    def reset(self) -> None:
        """Called after a reconnect: the server may have lost the (memory) consumer."""
        self._reset("reconnected")

    def _reset(self, reason: str) -> None:
        if self._closed or self._resetting:
            return
        self._resetting = True
        self._generation += 1  # drop whatever the old consumer still delivers
        log.debug("bus.reader_reset", subject=self._subject, reason=reason, seq=self._last_sseq)
        self._bus._spawn(self._recreate())

    async def _recreate(self) -> None:
        delay = 0.1
        try:
            while not self._closed and not self._bus._closing:
                try:
                    await self._check_stream_not_reset()
                    await self._create()
                    return
                except Exception as exc:  # noqa: BLE001 - server restarting: keep trying
                    if self._bus.nc.is_closed:
                        self._queue.put_nowait(BusUnavailable(f"NATS closed: {_describe(exc)}"))
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._resetting = False

    async def _check_stream_not_reset(self) -> None:
        """A stream that lost its store restarts at sequence 1: follow it from the start
        rather than waiting for sequences we have already seen (loudly: data was lost)."""
        if self._policy != DeliverPolicy.BY_START_SEQUENCE:
            return
        info = await self._bus.js.stream_info(self._stream)
        if info.state.last_seq < self._last_sseq:
            log.error(
                "bus.stream_reset",
                stream=self._stream,
                last_seen=self._last_sseq,
                stream_last=info.state.last_seq,
            )
            self._policy = DeliverPolicy.ALL
            self._last_sseq = 0

    async def _drop_consumer(self, sub: Any, consumer: str | None) -> None:
        nc = self._bus.nc
        if nc.is_closed:
            return
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if consumer is not None and nc.is_connected:
            with contextlib.suppress(Exception):  # best effort: inactive_threshold cleans up
                await self._bus.js.delete_consumer(self._stream, consumer)


async def _last_of(futures: list[asyncio.Future[int]]) -> int:
    results = await asyncio.gather(*futures)
    return results[-1]

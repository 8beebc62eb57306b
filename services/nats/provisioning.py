"""Streams, buckets and durable consumers: created idempotently on connect, and again after
every reconnect, so a server that lost its store gets them back without a restart of ours.
Our configuration is the source of truth: a stream whose config drifted is updated to it, so a
changed `nats.events_max_age` setting takes effect on the existing `CX_EVENTS` the next time a
role connects (JetStream allows changing a stream's max_age in place; shortening it removes the
events already older than the new age).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

import nats.errors
import nats.js.errors
import structlog
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from core.errors import Conflict, Unavailable
from services.auth import SESSION_TTL
from services.nats.connection import RETRYABLE, describe, unavailable
from services.nats.names import (
    ADVISORIES_STREAM,
    AGENTS_BUCKET,
    AUTH_BUCKET,
    CHECKPOINTS_BUCKET,
    DEFS_BUCKET,
    EVENTS_STREAM,
    LEASES_BUCKET,
    LOGS_STREAM,
    LOST_CONSUMER,
    MAX_DELIVERIES_SUBJECT,
    SCHEDULES_BUCKET,
    SESSIONS_BUCKET,
    SNAPSHOTS_BUCKET,
    TRIGGER_CONSUMER,
    TRIGGER_LOG_STREAM,
    TRIGGER_LOG_SUBJECTS,
    TRIGGER_SUBJECTS,
    TRIGGERS_STREAM,
    WORK_STREAM,
)
from services.retrying import backoff

if TYPE_CHECKING:
    from nats.js.kv import KeyValue
    from nats.js.object_store import ObjectStore

    from services.nats.connection import Connection

__all__ = ["AGENT_TTL", "DUPLICATE_WINDOW", "LEASE_TTL", "Provisioner"]

log = structlog.get_logger("cyclonetix.nats")

DUPLICATE_WINDOW: Final = 300.0  # seconds: how long a retried publish is recognised
LOG_MAX_AGE: Final = 7 * 24 * 3600.0
ADVISORY_MAX_AGE: Final = 7 * 24 * 3600.0
AGENT_TTL: Final = 30.0
TRIGGER_LOG_MAX_AGE: Final = 30 * 24 * 3600.0
TRIGGER_LOG_MAX_MSGS: Final = 1_000_000
# Longer than the trigger consumer's ack_wait: a message redelivered after a crash between its
# record and its ack is recorded once.
TRIGGER_LOG_DUPLICATE_WINDOW: Final = 600.0
LEASE_TTL: Final = 6.0  # a lease its holder stops renewing is free after this long

# Server error code we act on (nats-server `server/errors.json`).
ERR_STREAM_CONFIG_DIFFERS: Final = 10058


def stream_configs(replicas: int, *, events_max_age: float = 0.0) -> list[StreamConfig]:
    """Every stream's config; `events_max_age` is how long CX_EVENTS keeps an event, in seconds
    (0: forever; the settings refuse less than an hour, see services.settings)."""
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            description="Cyclonetix event log: every fact about every run",
            subjects=["cx.ev.*.*"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            discard=DiscardPolicy.NEW,  # refuse appends rather than drop history
            duplicate_window=DUPLICATE_WINDOW,
            deny_delete=True,
            allow_direct=True,
            max_age=events_max_age,
        ),
        StreamConfig(
            name=WORK_STREAM,
            description="Cyclonetix dispatch messages, one subject per queue",
            subjects=["cx.work.*"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW,
        ),
        StreamConfig(
            name=ADVISORIES_STREAM,
            description="Cyclonetix: dispatches whose deliveries ran out",
            subjects=[MAX_DELIVERIES_SUBJECT],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=ADVISORY_MAX_AGE,
        ),
        StreamConfig(
            name=LOGS_STREAM,
            description="Cyclonetix task output",
            subjects=["cx.log.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=LOG_MAX_AGE,
            duplicate_window=120.0,
            allow_direct=True,
        ),
        # Made by every role, so a trigger published before any orchestrator ran waits here.
        # no_ack: JetStream's own ack would be the first (and only) answer a `nats req` gets;
        # the handler answers instead (services/nats/triggers.py).
        StreamConfig(
            name=TRIGGERS_STREAM,
            description="Cyclonetix subject triggers: requests to start runs",
            subjects=[TRIGGER_SUBJECTS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            no_ack=True,
        ),
        StreamConfig(
            name=TRIGGER_LOG_STREAM,
            description="Cyclonetix: what became of each trigger (accepted or rejected)",
            subjects=[TRIGGER_LOG_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=TRIGGER_LOG_MAX_AGE,
            max_msgs=TRIGGER_LOG_MAX_MSGS,
            duplicate_window=TRIGGER_LOG_DUPLICATE_WINDOW,
            allow_direct=True,
        ),
    ]


def kv_configs(replicas: int) -> list[KeyValueConfig]:
    common: dict[str, Any] = {"storage": StorageType.FILE, "replicas": replicas, "direct": True}
    return [
        KeyValueConfig(bucket=DEFS_BUCKET, history=5, **common),
        KeyValueConfig(bucket=AGENTS_BUCKET, ttl=AGENT_TTL, **common),
        KeyValueConfig(bucket=LEASES_BUCKET, ttl=LEASE_TTL, **common),
        KeyValueConfig(bucket=CHECKPOINTS_BUCKET, **common),
        KeyValueConfig(bucket=SCHEDULES_BUCKET, **common),
        KeyValueConfig(bucket=AUTH_BUCKET, **common),
        KeyValueConfig(bucket=SESSIONS_BUCKET, ttl=SESSION_TTL, **common),
    ]


def object_store_configs(replicas: int) -> list[ObjectStoreConfig]:
    return [
        ObjectStoreConfig(
            bucket=SNAPSHOTS_BUCKET,
            description="Cyclonetix: the orchestrator's snapshot of its open runs",
            storage=StorageType.FILE,
            replicas=replicas,
        )
    ]


# Shared by every orchestrator's trigger handler: each message to one of them. Redelivered
# without limit: the handler itself terminates what it refuses and retries (nak) only what
# failed for want of NATS or definitions.
TRIGGER_CONSUMER_CONFIG: Final = ConsumerConfig(
    name=TRIGGER_CONSUMER,
    durable_name=TRIGGER_CONSUMER,
    filter_subject=TRIGGER_SUBJECTS,
    ack_policy=AckPolicy.EXPLICIT,
    ack_wait=30.0,
    max_deliver=-1,
    max_ack_pending=4096,
)

LOST_CONSUMER_CONFIG: Final = ConsumerConfig(
    name=LOST_CONSUMER,
    durable_name=LOST_CONSUMER,
    filter_subject=MAX_DELIVERIES_SUBJECT,
    ack_policy=AckPolicy.EXPLICIT,
    ack_wait=60.0,
)


class Provisioner:
    """Creates or converges everything Cyclonetix needs on the server (idempotent)."""

    def __init__(
        self, conn: Connection, *, replicas: int, events_max_age: float = 0.0, enabled: bool = True
    ) -> None:
        self.conn = conn
        self.replicas = replicas
        self.events_max_age = events_max_age
        self.enabled = enabled  # False: the caller trusts the server to be provisioned
        self._kv: dict[str, KeyValue] = {}
        self._objects: dict[str, ObjectStore] = {}
        self._work_consumers: dict[str, ConsumerConfig] = {}
        self._lock = asyncio.Lock()

    async def provision(self) -> None:
        """Create or update every stream, bucket and known work consumer."""
        async with self._lock:
            for cfg in stream_configs(self.replicas, events_max_age=self.events_max_age):
                await self._ensure_stream(cfg)
            for kv_cfg in kv_configs(self.replicas):
                self._kv[kv_cfg.bucket] = await self._ensure_kv(kv_cfg)
            for obj_cfg in object_store_configs(self.replicas):
                assert obj_cfg.bucket is not None
                self._objects[obj_cfg.bucket] = await self._ensure_object_store(obj_cfg)
            await self.ensure_consumer(ADVISORIES_STREAM, LOST_CONSUMER_CONFIG)
            await self.ensure_consumer(TRIGGERS_STREAM, TRIGGER_CONSUMER_CONFIG)
            for consumer in list(self._work_consumers.values()):
                await self.ensure_consumer(WORK_STREAM, consumer)

    async def provision_at_start(self) -> None:
        """Provision, waiting out a JetStream that is still starting (a cluster electing its
        meta leader answers with timeouts or 503s for a few seconds)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        delays = backoff(0.1, cap=1.0)
        while True:
            try:
                await self.provision()
                return
            except RETRYABLE as exc:
                waited = loop.time() - started
                no_jetstream = isinstance(exc, nats.errors.NoRespondersError)
                if no_jetstream and waited > 2.0:
                    raise Unavailable(
                        f"NATS at {self.conn.shown_url} has no JetStream: "
                        "start nats-server with -js"
                    ) from None
                if waited > min(self.conn.publish_deadline, 30.0):
                    raise Unavailable(
                        f"JetStream at {self.conn.shown_url} is not ready: {describe(exc)}"
                    ) from None
                await asyncio.sleep(next(delays))

    async def reprovision(self) -> None:
        """After a reconnect: provision until it works (JetStream may still be starting)."""
        delays = backoff(0.1, cap=5.0)
        while self.enabled and not self.conn.closing:
            try:
                await self.provision()
                log.info("nats.reprovisioned")
                return
            except Exception as exc:  # noqa: BLE001 - JetStream may still be starting: keep trying
                if self.conn.throttle.check(f"reprovision:{type(exc).__name__}") is not None:
                    log.warning("nats.reprovision_failed", error=describe(exc))
                await asyncio.sleep(next(delays))

    async def _ensure_stream(self, cfg: StreamConfig) -> None:
        js = self.conn.js
        try:
            await js.add_stream(cfg)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != ERR_STREAM_CONFIG_DIFFERS:
                raise
            # Our config is the source of truth: converge the server to it.
            try:
                await js.update_stream(cfg)
            except nats.js.errors.APIError as update_exc:
                raise Conflict(
                    f"stream {cfg.name} exists with a config that cannot be changed to ours: "
                    f"{update_exc.description}"
                ) from None
            log.info("nats.stream_updated", stream=cfg.name, max_age=cfg.max_age)

    async def _ensure_kv(self, cfg: KeyValueConfig) -> KeyValue:
        js = self.conn.js
        try:
            return await js.create_key_value(cfg)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != ERR_STREAM_CONFIG_DIFFERS:
                raise
            log.warning("nats.bucket_config_differs", bucket=cfg.bucket, detail=exc.description)
            return await js.key_value(cfg.bucket)

    async def _ensure_object_store(self, cfg: ObjectStoreConfig) -> ObjectStore:
        js = self.conn.js
        assert cfg.bucket is not None
        try:
            return await js.create_object_store(cfg.bucket, config=cfg)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != ERR_STREAM_CONFIG_DIFFERS:
                raise
            log.warning("nats.bucket_config_differs", bucket=cfg.bucket, detail=exc.description)
            return await js.object_store(cfg.bucket)

    async def ensure_consumer(self, stream: str, cfg: ConsumerConfig) -> None:
        """Create the durable consumer, or update its mutable fields when they differ."""
        assert cfg.name is not None
        js = self.conn.js
        try:
            info = await js.consumer_info(stream, cfg.name)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(stream, cfg)
            return
        have = info.config
        fields = ("filter_subject", "ack_wait", "max_deliver", "max_ack_pending", "max_waiting")
        wanted = {f: getattr(cfg, f) for f in fields if getattr(cfg, f) is not None}
        if any(getattr(have, f) != value for f, value in wanted.items()):
            # Creating with the same name updates the mutable fields in place.
            await js.add_consumer(stream, cfg)
            log.info("nats.consumer_updated", stream=stream, consumer=cfg.name)

    async def ensure_work_consumer(self, queue: str, cfg: ConsumerConfig) -> None:
        """A queue's consumer, remembered so that `provision` re-creates it after a store loss."""
        await self.ensure_consumer(WORK_STREAM, cfg)
        self._work_consumers[queue] = cfg

    async def bucket(self, name: str) -> KeyValue:
        """A KV bucket: the provisioned one, else bound on first use (provision=False)."""
        kv = self._kv.get(name)
        if kv is None:
            try:
                with unavailable(f"about KV bucket {name}"):
                    kv = await self.conn.js.key_value(name)
            except Unavailable as exc:
                if isinstance(exc.__cause__, nats.js.errors.BucketNotFoundError):
                    raise Unavailable(
                        f"KV bucket {name!r} does not exist on {self.conn.shown_url}: "
                        "connect with provision=True once"
                    ) from None
                raise
            self._kv[name] = kv
        return kv

    async def object_store(self, name: str) -> ObjectStore:
        """An object store: the provisioned one, else bound on first use (provision=False)."""
        store = self._objects.get(name)
        if store is None:
            try:
                with unavailable(f"about object store {name}"):
                    store = await self.conn.js.object_store(name)
            except Unavailable as exc:
                if isinstance(exc.__cause__, nats.js.errors.BucketNotFoundError):
                    raise Unavailable(
                        f"object store {name!r} does not exist on {self.conn.shown_url}: "
                        "connect with provision=True once"
                    ) from None
                raise
            self._objects[name] = store
        return store

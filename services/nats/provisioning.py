"""Streams, buckets and durable consumers: looked up on connect, and again after every
reconnect, and created when missing, so a server that lost its store gets them back without a
restart of ours. Only what is missing is created: a role connecting to a provisioned server
asks for information only, never `$JS.API.STREAM.CREATE`, so the server's permissions may keep
creating (and updating) streams to the orchestrator and the operator (infra/nats/roles.conf).
A role whose account may not create a missing stream or bucket fails in one line naming it.

Our configuration is the source of truth: a stream whose config drifted is updated to it, so a
changed `nats.events_max_age` setting takes effect on the existing `CX_EVENTS` the next time a
role that may update it connects (JetStream allows changing a stream's max_age in place;
shortening it removes the events already older than the new age); one that may not leaves it
(a warning), unless the stream lacks subjects we write to (then it fails, in one line). A
CX_EVENTS from before event subjects named their type gets the new subjects added, and keeps
its old ones (the events stored there are still read).
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from services.nats.connection import RETRYABLE, PermissionDenied, describe, unavailable
from services.nats.names import (
    ADVISORIES_STREAM,
    AGENTS_BUCKET,
    AUDIT_STREAM,
    AUDIT_SUBJECTS,
    AUTH_BUCKET,
    CHECKPOINTS_BUCKET,
    DEFS_BUCKET,
    EVENT_SUBJECTS,
    EVENT_SUBJECTS_LEGACY,
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
AUDIT_MAX_AGE: Final = 365 * 24 * 3600.0

# Server error code we act on (nats-server `server/errors.json`).
ERR_STREAM_CONFIG_DIFFERS: Final = 10058


def stream_configs(replicas: int, *, events_max_age: float = 0.0) -> list[StreamConfig]:
    """Every stream's config; `events_max_age` is how long CX_EVENTS keeps an event, in seconds
    (0: forever; the settings refuse less than an hour, see services.settings)."""
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            description="Cyclonetix event log: every fact about every run",
            # cx.ev.<shard>.<run>.<type>; and cx.ev.<shard>.<run>, where events were stored
            # before (kept: a stream may hold them, and they are read as a run's events).
            subjects=[EVENT_SUBJECTS_LEGACY, EVENT_SUBJECTS],
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
        # Made by the first connection that may (an orchestrator, an operator's command), so
        # a trigger published before any orchestrator runs waits here.
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
        # Who did what (services/nats/audit.py): kept a year, never deleted by a role.
        StreamConfig(
            name=AUDIT_STREAM,
            description="Cyclonetix audit log: user, token and login actions",
            subjects=[AUDIT_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=AUDIT_MAX_AGE,
            duplicate_window=DUPLICATE_WINDOW,
            deny_delete=True,
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


_DEFAULTS: Final = {f.name: f.default for f in dataclasses.fields(StreamConfig)}


def stream_differences(have: StreamConfig, want: StreamConfig) -> list[str]:
    """The fields that `want` sets (to other than nats-py's default) and `have` has otherwise
    (subjects: as a set). Fields left at their default are the server's business: it fills
    some in (a duplicate window of 0 becomes 2 minutes)."""
    out = []
    for field in dataclasses.fields(want):
        value = getattr(want, field.name)
        if field.name == "name" or value is None or value == _DEFAULTS[field.name]:
            continue
        current = getattr(have, field.name)
        if field.name == "subjects":
            if set(value) != set(current or ()):
                out.append(field.name)
        elif current != value:
            out.append(field.name)
    return out


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
                try:
                    self._kv[kv_cfg.bucket] = await self._ensure_kv(kv_cfg)
                except PermissionDenied:
                    # Not this role's business (an agent and the UI's users and sessions).
                    log.debug("nats.bucket_not_visible", bucket=kv_cfg.bucket)
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
        """Create the stream when it is missing; update it when it differs from `cfg`."""
        assert cfg.name is not None
        js = self.conn.js
        try:
            info = await js.stream_info(cfg.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.conn.unless_denied(
                    f"$JS.API.STREAM.CREATE.{cfg.name}", js.add_stream(cfg)
                )
                return
            except PermissionDenied:
                raise Unavailable(self._may_not_create(f"stream {cfg.name}")) from None
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != ERR_STREAM_CONFIG_DIFFERS:
                    raise
                # Created meanwhile by someone else, differently: converge it below.
                info = await js.stream_info(cfg.name)
        differs = stream_differences(info.config, cfg)
        if not differs:
            return
        try:
            await self.conn.unless_denied(
                f"$JS.API.STREAM.UPDATE.{cfg.name}", js.update_stream(cfg)
            )
        except PermissionDenied:
            missing = sorted(set(cfg.subjects or ()) - set(info.config.subjects or ()))
            if missing:
                raise Unavailable(
                    f"stream {cfg.name} on {self.conn.shown_url} lacks the subjects "
                    f"{', '.join(missing)} and this account may not add them: start the "
                    "orchestrator (of this version) first"
                ) from None
            log.warning("nats.stream_differs", stream=cfg.name, fields=differs)
            return
        except nats.js.errors.APIError as update_exc:
            raise Conflict(
                f"stream {cfg.name} exists with a config that cannot be changed to ours: "
                f"{update_exc.description}"
            ) from None
        log.info("nats.stream_updated", stream=cfg.name, fields=differs, max_age=cfg.max_age)

    def _may_not_create(self, what: str) -> str:
        return (
            f"{what} does not exist on {self.conn.shown_url} and this account may not "
            "create it: start the orchestrator first"
        )

    async def _ensure_kv(self, cfg: KeyValueConfig) -> KeyValue:
        """The bucket, created when missing; PermissionDenied when this account may not even
        look it up (infra/nats/roles.conf keeps the UI's logins from agents)."""
        js = self.conn.js
        try:
            return await self.conn.unless_denied(
                f"$JS.API.STREAM.INFO.KV_{cfg.bucket}", js.key_value(cfg.bucket)
            )
        except nats.js.errors.BucketNotFoundError:
            pass
        try:
            return await self.conn.unless_denied(
                f"$JS.API.STREAM.CREATE.KV_{cfg.bucket}", js.create_key_value(cfg)
            )
        except PermissionDenied:
            raise Unavailable(self._may_not_create(f"KV bucket {cfg.bucket}")) from None
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != ERR_STREAM_CONFIG_DIFFERS:
                raise
            log.warning("nats.bucket_config_differs", bucket=cfg.bucket, detail=exc.description)
            return await js.key_value(cfg.bucket)

    async def _ensure_object_store(self, cfg: ObjectStoreConfig) -> ObjectStore:
        js = self.conn.js
        assert cfg.bucket is not None
        try:
            return await js.object_store(cfg.bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        try:
            return await self.conn.unless_denied(
                f"$JS.API.STREAM.CREATE.OBJ_{cfg.bucket}",
                js.create_object_store(cfg.bucket, config=cfg),
            )
        except PermissionDenied:
            raise Unavailable(self._may_not_create(f"object store {cfg.bucket}")) from None
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

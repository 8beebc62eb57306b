"""The NATS JetStream adapter: every port of `services.ports` over one connection.

The only package that imports `nats` (a ruff rule enforces it). What lives where is in
`names`; the modules, by what they hold:

  connection    connecting, callbacks, retryable errors, background tasks, closing
  provisioning  streams, buckets and durable consumers (on connect and after reconnects)
  publisher     waited publishes retried until a deadline; pipelined publishes (the outbox)
  reader        ordered push consumer for replays and live follows; KV snapshots
  events        EventLog          work         WorkQueue, WorkConsumer, WorkItem
  cancels       CancelSignals     logs         LogStore
  definitions   DefinitionsStore  agents       AgentRegistry
  leases        Leases            checkpoints  Checkpoints
  snapshots     Snapshots (object store)
  schedules     ScheduleMarks (the cron loop's marks)
  notifications EndedRuns (the notifier's shared consumer of run ends)
  auth          AuthStore (UI users, API tokens, login sessions)
  audit         AuditLog (CX_AUDIT: user, token and login actions)

    backplane = await connect("nats://127.0.0.1:4222", name="cyclonetix-agent")
    try:
        await backplane.events.append(event)
    finally:
        await backplane.close()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import Invalid
from services.nats.agents import NatsAgentRegistry
from services.nats.audit import NatsAuditLog
from services.nats.auth import NatsAuthStore
from services.nats.cancels import NatsCancelSignals
from services.nats.checkpoints import NatsCheckpoints
from services.nats.connection import Connection
from services.nats.definitions import NatsDefinitionsStore
from services.nats.events import NatsEventLog
from services.nats.leases import NatsLeases
from services.nats.logs import NatsLogStore
from services.nats.notifications import NatsEndedRuns
from services.nats.provisioning import Provisioner
from services.nats.publisher import Publisher
from services.nats.schedules import NatsScheduleMarks
from services.nats.snapshots import NatsSnapshots
from services.nats.work import NatsWorkQueue, hand_back

if TYPE_CHECKING:
    from types import TracebackType

    from services.settings import NatsSettings

__all__ = ["NatsBackplane", "connect", "hand_back"]


class NatsBackplane:
    """Every port over one NATS connection (`services.ports.Backplane`)."""

    def __init__(
        self, conn: Connection, *, replicas: int, provision: bool, events_max_age: float = 0.0
    ) -> None:
        self.connection = conn
        self.publisher = Publisher(conn)
        self.provisioner = Provisioner(
            conn, replicas=replicas, events_max_age=events_max_age, enabled=provision
        )
        self.events = NatsEventLog(conn, self.publisher)
        self.work = NatsWorkQueue(conn, self.publisher, self.provisioner)
        self.cancels = NatsCancelSignals(conn)
        self.logs = NatsLogStore(conn, self.publisher)
        self.definitions = NatsDefinitionsStore(conn, self.publisher)
        self.agents = NatsAgentRegistry(conn, self.publisher)
        self.leases = NatsLeases(self.provisioner)
        self.checkpoints = NatsCheckpoints(self.provisioner)
        self.snapshots = NatsSnapshots(self.provisioner)
        self.schedules = NatsScheduleMarks(self.provisioner)  # for the cron loop
        self.ended_runs = NatsEndedRuns(conn, self.provisioner)  # for the notifier
        self.auth = NatsAuthStore(conn, self.provisioner)  # users, tokens, sessions (web UI)
        self.audit = NatsAuditLog(conn, self.publisher)  # who did what to them (CX_AUDIT)
        conn.on_reconnect.append(self._after_reconnect)

    @property
    def url(self) -> str:
        """The server URL(s) as given: may hold credentials (`nats://user:pw@host`), so show
        `shown_url` instead; this one is for connecting again (the guardian)."""
        return self.connection.url

    @property
    def shown_url(self) -> str:
        """`url` with any password masked: for pages, messages and logs."""
        return self.connection.shown_url

    @property
    def closed(self) -> bool:
        return self.connection.closed

    def _after_reconnect(self) -> None:
        # Not inline: this runs inside nats-py's reconnect task.
        self.connection.spawn(self._reprovision())

    async def _reprovision(self) -> None:
        await self.provisioner.reprovision()
        for reader in list(self.connection.readers):
            reader.reset()  # their memory consumers may be gone with the old server

    async def close(self, grace: float = 5.0) -> None:
        """Let pipelined publishes be acknowledged (briefly), stop every subscription, drain.
        Never hangs; publishes still unacknowledged then fail with Unavailable."""
        if self.connection.closing:
            return
        await self.publisher.settle(grace)
        self.connection.begin_close()
        self.publisher.abandon()
        await self.connection.close(grace)

    async def __aenter__(self) -> NatsBackplane:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def connect(
    url: str,
    *,
    name: str,
    replicas: int = 1,
    provision: bool = True,
    events_max_age: float = 0.0,
    connect_timeout: float = 2.0,
    publish_timeout: float = 5.0,
    publish_deadline: float = 60.0,
    security: NatsSettings | None = None,
) -> NatsBackplane:
    """Connect (failing fast with Unavailable when NATS cannot be reached), provision streams
    and buckets with `replicas` copies (3 on a three-node cluster) unless `provision=False`,
    and reconnect forever after that.

    `events_max_age` is how long CX_EVENTS keeps an event, in seconds (0: forever); an existing
    stream is updated to it (the setting `nats.events_max_age` checks it is at least an hour).
    `url` may list several servers separated by commas. `publish_timeout` bounds one attempt
    of a publish, `publish_deadline` all its retries. `security`: credentials and TLS (the
    `nats.*` settings); None reads this process's settings, so every role authenticates the
    same way without passing them (services.nats.connection.security_options).
    """
    if replicas < 1:
        raise Invalid(f"stream replicas must be at least 1, not {replicas}")
    if events_max_age < 0:
        raise Invalid(f"events max age must be 0 (forever) or more seconds, not {events_max_age}")
    conn = await Connection.open(
        url,
        name=name,
        connect_timeout=connect_timeout,
        publish_timeout=publish_timeout,
        publish_deadline=publish_deadline,
        security=security,
    )
    backplane = NatsBackplane(
        conn, replicas=replicas, provision=provision, events_max_age=events_max_age
    )
    if provision:
        try:
            await backplane.provisioner.provision_at_start()
        except BaseException:
            await backplane.close()
            raise
    return backplane

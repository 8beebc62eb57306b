"""One connection to NATS: connecting (fail fast at first, then reconnect forever), the
connection callbacks, background tasks, and the errors worth retrying.

Everything else in this package works through a `Connection`: the publisher writes with it, the
reader subscribes on it, the ports call JetStream's API through `conn.js`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.nuid import NUID

from core.errors import Unavailable
from services.logging import Throttle

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from services.nats.reader import Reader

__all__ = ["RETRYABLE", "Connection", "describe", "unavailable"]

log = structlog.get_logger("cyclonetix.nats")

# Worth retrying with the same Nats-Msg-Id: the server may be restarting, electing a leader,
# or may have stored the message and lost the ack.
RETRYABLE: tuple[type[BaseException], ...] = (
    TimeoutError,  # includes nats.errors.TimeoutError and asyncio.TimeoutError
    nats.js.errors.NoStreamResponseError,  # no stream yet (e.g. store wiped, not re-provisioned)
    nats.js.errors.ServiceUnavailableError,  # JetStream not ready (503)
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,  # disconnected and the reconnect buffer is full
    nats.errors.ConnectionReconnectingError,
)


def describe(exc: BaseException) -> str:
    """An exception as a short phrase for one-line messages."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).removeprefix("nats: ").strip()
    if not text and isinstance(exc, TimeoutError):
        return "timed out"
    return text or type(exc).__name__


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Turn a NATS failure (timeout, no responders, closed connection) into `Unavailable`."""
    try:
        yield
    except (TimeoutError, nats.errors.Error) as exc:
        raise Unavailable(f"NATS did not answer {what}: {describe(exc)}") from exc


class Connection:
    """A nats-py client with Cyclonetix's connection policy and bookkeeping.

    Create with `await Connection.open(url, name=...)`. `on_reconnect` callbacks run (plain
    functions, inside nats-py's reconnect task: spawn anything that waits) after every
    reconnect. Pull subscriptions handed out are remembered in `subs` and readers in
    `readers`, so closing stops them before draining (see `close`).
    """

    def __init__(self, *, name: str, publish_timeout: float, publish_deadline: float) -> None:
        self.name = name
        self.publish_timeout = publish_timeout  # one attempt
        self.publish_deadline = publish_deadline  # all retries of one publish
        self.nc = NatsClient()
        self.js: JetStreamContext = self.nc.jetstream(timeout=publish_timeout)
        self.url = ""
        self.closing = False
        self.throttle = Throttle(30.0)
        self.subs: set[Any] = set()  # pull and core subscriptions to unsubscribe on close
        self.readers: set[Reader] = set()  # live push readers (tail, history, logs)
        self.on_reconnect: list[Callable[[], None]] = []
        loop = asyncio.get_running_loop()
        self.reconnected: asyncio.Future[None] = loop.create_future()
        self.disconnected: asyncio.Future[None] = loop.create_future()
        self._background: set[asyncio.Task[Any]] = set()
        self._nuid = NUID()
        self._connecting = True
        self._connect_error: BaseException | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        name: str,
        connect_timeout: float,
        publish_timeout: float,
        publish_deadline: float,
    ) -> Connection:
        """Connect (one quick retry), then switch to reconnecting forever.

        Raises Unavailable within about `connect_timeout` when NATS cannot be reached. `url`
        may list several servers separated by commas (a cluster).
        """
        conn = cls(name=name, publish_timeout=publish_timeout, publish_deadline=publish_deadline)
        servers = [u.strip() for u in url.split(",") if u.strip()]
        conn.url = ",".join(s if "://" in s else f"nats://{s}" for s in servers)
        try:
            await asyncio.wait_for(
                conn.nc.connect(
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
                    error_cb=conn._on_error,
                    disconnected_cb=conn._on_disconnected,
                    reconnected_cb=conn._on_reconnected,
                    closed_cb=conn._on_closed,
                ),
                timeout=connect_timeout + 0.5,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            reason = conn._connect_error or exc
            if isinstance(reason, TimeoutError):
                reason = TimeoutError(f"no answer within {connect_timeout:g}s")
            with contextlib.suppress(Exception):
                await conn.nc.close()
            raise Unavailable(f"cannot reach NATS at {conn.url}: {describe(reason)}") from None
        conn._connecting = False
        # nats-py reads these options on every reconnect; there is no setter for them.
        conn.nc.options["max_reconnect_attempts"] = -1
        conn.nc.options["reconnect_time_wait"] = 0.5
        log.debug("nats.connected", url=conn.url)
        return conn

    @property
    def closed(self) -> bool:
        return self.closing or self.nc.is_closed

    def new_name(self) -> str:
        """A unique name (for ephemeral consumers)."""
        return self._nuid.next().decode()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A background task, cancelled when the connection closes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def unsubscribe(self, sub: Any) -> None:
        """Stop a subscription handed out on this connection (never raises)."""
        self.subs.discard(sub)
        if not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    # -- callbacks ------------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if self._connecting:
            self._connect_error = exc  # reported once, by open()
            return
        if isinstance(exc, nats.errors.SlowConsumerError):
            key = "slow_consumer"
        else:
            key = type(exc).__name__
        dropped = self.throttle.check(key)
        if dropped is not None:
            log.warning("nats.error", error=describe(exc), kind=key, suppressed=dropped)

    async def _on_disconnected(self) -> None:
        if not self.disconnected.done():
            self.disconnected.set_result(None)
        if not self.closing and not self._connecting:
            log.warning("nats.disconnected", url=self.url)

    async def _on_reconnected(self) -> None:
        loop = asyncio.get_running_loop()
        self.reconnected.set_result(None)
        self.reconnected = loop.create_future()
        if self.disconnected.done():
            self.disconnected = loop.create_future()
        self.throttle.reset()
        url = self.nc.connected_url.geturl() if self.nc.connected_url else self.url
        log.info("nats.reconnected", url=url)
        if not self.closing:
            for callback in self.on_reconnect:
                callback()

    async def _on_closed(self) -> None:
        if not self.closing and not self._connecting:
            log.warning("nats.closed", url=self.url)

    # -- shutdown -------------------------------------------------------------------------------

    def begin_close(self) -> None:
        """No more background work: cancel it (the first step of closing)."""
        self.closing = True
        for task in list(self._background):
            task.cancel()

    async def close(self, grace: float) -> None:
        """Stop readers and subscriptions, drain, close. Never hangs."""
        self.begin_close()
        for reader in list(self.readers):
            await reader.close()
        # Pull/ordered subscriptions can hold messages nobody reads, which makes drain()
        # wait for its full timeout: unsubscribe them first.
        for sub in list(self.subs):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.subs.clear()
        nc = self.nc
        if nc.is_closed:
            return
        try:
            if nc.is_connected:
                await asyncio.wait_for(nc.drain(), grace)
        except Exception as exc:  # noqa: BLE001 - shutting down: report and close hard
            log.debug("nats.drain_failed", error=describe(exc))
        finally:
            if not nc.is_closed:
                if not nc.is_connected and nc.pending_data_size:
                    # nats-py's close() writes its reconnect buffer into the dead socket and
                    # stops half-way on the ConnectionResetError (subscriptions and the socket
                    # are left open). nats-py 2.16 has no public way to discard that buffer
                    # (`pending_size=0` only refuses publishes; SUB/PING still queue), and
                    # nothing in it can be sent now: clear it. (Pinned: nats-py < 2.17.)
                    nc._pending = []
                    nc._pending_data_size = 0
                await nc.close()

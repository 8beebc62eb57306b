"""Publishing to JetStream: waited (retried until a deadline) or pipelined (the outbox).

Every publish carries a deterministic `Nats-Msg-Id`, so a retry after a timeout, a reconnect or
a crash is a no-op inside the stream's duplicate window. A publish that timed out may still
have been stored (STACK.md A8): a timeout is retried, never reported as "not stored".
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from typing import TYPE_CHECKING, Any

import nats.errors
import structlog

from core.errors import Unavailable
from services.nats.connection import RETRYABLE, describe
from services.retrying import backoff

if TYPE_CHECKING:
    from nats.js.api import PubAck

    from services.nats.connection import Connection

__all__ = ["Publisher"]

log = structlog.get_logger("cyclonetix.nats")


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


class Publisher:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._inflight: set[asyncio.Future[int]] = set()  # pipelined publishes, until acked
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._acks: set[asyncio.Future[Any]] = set()  # publish_async acks not yet received
        conn.on_reconnect.append(self._resend_unacked)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> PubAck:
        """Publish and wait for the stream's ack, retrying retryable failures with the same
        headers (hence the same Nats-Msg-Id) until the connection's publish deadline.

        Raises Unavailable when it runs out; server rejections (nats.js.errors.APIError) are
        raised as they are, for the caller to interpret.
        """
        conn = self.conn
        loop = asyncio.get_running_loop()
        deadline = loop.time() + conn.publish_deadline
        delays = backoff(0.05, cap=2.0)
        while True:
            remaining = deadline - loop.time()
            try:
                request = asyncio.ensure_future(
                    conn.js.publish(
                        subject,
                        payload,
                        timeout=max(0.05, min(conn.publish_timeout, remaining)),
                        headers=dict(headers) if headers else None,
                    )
                )
                try:
                    await asyncio.wait(
                        (request, conn.reconnected), return_when=asyncio.FIRST_COMPLETED
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
            except RETRYABLE as exc:
                remaining = deadline - loop.time()
                if remaining <= 0 or conn.closed:
                    raise Unavailable(
                        f"NATS did not acknowledge a publish to {subject}: {describe(exc)}"
                    ) from exc
                if conn.throttle.check(f"publish_retry:{type(exc).__name__}") is not None:
                    log.warning("nats.publish_retry", subject=subject, error=describe(exc))
                await asyncio.sleep(min(next(delays), remaining))
            except nats.errors.ConnectionClosedError as exc:
                message = f"NATS connection closed: cannot publish to {subject}"
                raise Unavailable(message) from exc

    def publish_nowait(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[int]:
        """Queue a publish; one sender task writes them in call order without waiting for
        acks (nats-py `publish_async`). A publish whose ack fails or times out is retried in
        the background with the same headers, so it may then land after later ones. The
        future gives the stream sequence."""
        if self.conn.closing:
            raise Unavailable("the NATS connection is closed")
        loop = asyncio.get_running_loop()
        result: asyncio.Future[int] = loop.create_future()
        self._outbox.append(_Outgoing(subject, payload, headers, result))
        self._inflight.add(result)
        result.add_done_callback(self._publish_done)
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_outbox())
        self._outbox_ready.set()
        return result

    async def flush(self) -> None:
        """Wait for every pipelined publish issued so far; raise the first failure."""
        pending = list(self._inflight)
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):  # (a future its caller cancelled is skipped)
                raise result

    async def _send_outbox(self) -> None:
        conn = self.conn
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        while not conn.closing:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while outbox:
                item = outbox.popleft()
                if item.result.done():
                    continue  # the caller cancelled it
                try:
                    ack = await conn.js.publish_async(
                        item.subject, item.payload, headers=item.headers
                    )
                except RETRYABLE:
                    self._retry(item)
                    continue
                except nats.errors.ConnectionClosedError:
                    item.result.set_exception(Unavailable("NATS connection closed"))
                    continue
                except Exception as exc:  # noqa: BLE001 - reported to this publish's caller
                    item.result.set_exception(exc)
                    continue
                timer = loop.call_later(conn.publish_timeout, ack.cancel)
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
        elif isinstance(exc, RETRYABLE):
            self._retry(item)
        else:
            item.result.set_exception(exc)

    def _retry(self, item: _Outgoing) -> None:
        async def retry() -> None:
            try:
                ack = await self.publish(item.subject, item.payload, item.headers)
            except Exception as exc:  # noqa: BLE001 - reported to this publish's caller
                if not item.result.done():
                    item.result.set_exception(exc)
            else:
                if not item.result.done():
                    item.result.set_result(int(ack.seq))

        task = self.conn.spawn(retry())
        # A caller that cancels its future wants the publish no more: stop retrying it.
        item.result.add_done_callback(lambda result: task.cancel() if result.cancelled() else None)

    def _resend_unacked(self) -> None:
        # Publishes in flight across the reconnect may have died with the old socket: resend
        # them now rather than after their timeout (same msg ids, so no duplicates).
        for ack in list(self._acks):
            ack.cancel()

    def _publish_done(self, result: asyncio.Future[int]) -> None:
        self._inflight.discard(result)
        if not result.cancelled() and (exc := result.exception()) is not None:
            log.error("nats.publish_failed", error=describe(exc))

    # -- shutdown -------------------------------------------------------------------------------

    async def settle(self, grace: float) -> None:
        """Give pipelined publishes up to `grace` to be acknowledged, unless the connection is
        gone (then they cannot be)."""
        if not self._inflight or not self.conn.nc.is_connected:
            return
        acked: asyncio.Future[Any] = asyncio.ensure_future(asyncio.wait(list(self._inflight)))
        watch: set[asyncio.Future[Any]] = {acked, self.conn.disconnected}
        await asyncio.wait(watch, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        acked.cancel()  # (cancels the wait, not the publishes)

    def abandon(self) -> None:
        """Closing: every publish not acknowledged yet fails with Unavailable."""
        if self._sender is not None:
            self._sender.cancel()
        for result in list(self._inflight):
            if not result.done():
                result.set_exception(Unavailable("closed before NATS acknowledged a publish"))
        self._outbox.clear()

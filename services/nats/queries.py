"""Read-model queries over NATS request-reply: how `runs list` reaches the in-memory read model
that `cyclonetix dev`'s projector holds.

Why this exists, and why it is this small: a `memory://` store lives in one process and nothing
else can open it, but every process of a Cyclonetix already shares a NATS connection. So the
process holding the store answers queries on core NATS subjects (no stream, nothing stored) and
any other process asks there: no extra port, server or protocol to run. Redis and Postgres
stores need none of this: every process opens them directly.

    cx.rm.query.list_runs    ListRuns  -> Page[RunRow]
    cx.rm.query.count_runs   CountRuns -> {status: count}
    cx.rm.query.get_run      GetRun    -> RunDetail | None
    cx.rm.query.checkpoint   (empty)   -> int

Requests and replies are msgpack (msgspec); a reply is a `Reply` whose `value` is the result
encoded again or whose `error` names a `core.errors` kind and its message, which the client
raises as that error. Servers subscribe in one queue group, so several copies may serve; none
serving is `Unavailable` on the client ("no responders").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import msgspec
import nats.errors
import structlog

from core.errors import CyclonetixError, Invalid, NotFound, Unavailable
from core.run import RunStatus
from projections.views import ALL_RUNS, Page, RunDetail, RunFilter, RunRow
from services.nats.connection import describe

if TYPE_CHECKING:
    from projections.protocol import ReadModel
    from services.nats.connection import Connection

__all__ = ["QUERY_PREFIX", "NatsReadModelQueries", "serve_read_model"]

log = structlog.get_logger("cyclonetix.queries")

QUERY_PREFIX: Final = "cx.rm.query"
QUEUE_GROUP: Final = "cx_rm_query"
TIMEOUT_S: Final = 5.0


class ListRuns(msgspec.Struct, kw_only=True):
    filter: RunFilter = ALL_RUNS
    limit: int = 50
    cursor: str | None = None


class CountRuns(msgspec.Struct, kw_only=True):
    filter: RunFilter = ALL_RUNS


class GetRun(msgspec.Struct, kw_only=True):
    run_id: str


class Reply(msgspec.Struct, kw_only=True):
    value: bytes = b""  # the result, msgpack-encoded
    error: str | None = None  # "invalid", "not_found", "unavailable", "error"
    message: str = ""


_ERRORS: tuple[tuple[type[CyclonetixError], str], ...] = (
    (Invalid, "invalid"),
    (NotFound, "not_found"),
    (Unavailable, "unavailable"),
)
_RAISE: dict[str, type[CyclonetixError]] = {name: kind for kind, name in _ERRORS}

_encode = msgspec.msgpack.Encoder().encode
_reply = msgspec.msgpack.Decoder(Reply)
_page = msgspec.msgpack.Decoder(Page[RunRow])
_counts = msgspec.msgpack.Decoder(dict[RunStatus, int])
_detail = msgspec.msgpack.Decoder(RunDetail | None)
_checkpoint = msgspec.msgpack.Decoder(int)


def _handlers(store: ReadModel) -> dict[str, Callable[[bytes], Awaitable[Any]]]:
    async def list_runs(data: bytes) -> Page[RunRow]:
        q = msgspec.msgpack.decode(data, type=ListRuns)
        return await store.list_runs(q.filter, q.limit, q.cursor)

    async def count_runs(data: bytes) -> dict[RunStatus, int]:
        return await store.count_runs(msgspec.msgpack.decode(data, type=CountRuns).filter)

    async def get_run(data: bytes) -> RunDetail | None:
        return await store.get_run(msgspec.msgpack.decode(data, type=GetRun).run_id)

    async def checkpoint(_data: bytes) -> int:
        return await store.checkpoint()

    return {
        "list_runs": list_runs,
        "count_runs": count_runs,
        "get_run": get_run,
        "checkpoint": checkpoint,
    }


async def _answer(handler: Callable[[bytes], Awaitable[Any]], data: bytes) -> bytes:
    """The encoded Reply to one request: its result, or the error it raised."""
    try:
        value = await handler(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        return _encode(Reply(error="invalid", message=str(exc)))
    except CyclonetixError as exc:
        kind = next((name for k, name in _ERRORS if isinstance(exc, k)), "error")
        return _encode(Reply(error=kind, message=str(exc)))
    except Exception as exc:  # a bug of the store: the asker gets one line
        log.exception("queries.failed")
        return _encode(Reply(error="error", message=f"the read model failed: {exc}"))
    return _encode(Reply(value=_encode(value)))


async def serve_read_model(conn: Connection, store: ReadModel, stop: asyncio.Event) -> None:
    """Answer read-model queries on `cx.rm.query.*` from `store` until `stop`."""
    handlers = _handlers(store)
    try:
        sub = await conn.nc.subscribe(f"{QUERY_PREFIX}.*", queue=QUEUE_GROUP)
    except nats.errors.Error as exc:
        raise Unavailable(f"cannot serve read-model queries: {describe(exc)}") from exc
    conn.subs.add(sub)
    log.info("queries.serving", subject=f"{QUERY_PREFIX}.*")

    async def serve() -> None:
        async for msg in sub.messages:
            handler = handlers.get(msg.subject.rsplit(".", 1)[-1])
            if handler is None:
                answer = _encode(Reply(error="invalid", message=f"no query {msg.subject!r}"))
            else:
                answer = await _answer(handler, msg.data)
            if msg.reply:
                with contextlib.suppress(nats.errors.Error):
                    await msg.respond(answer)

    serving = asyncio.ensure_future(serve())
    try:
        await asyncio.wait(
            {serving, asyncio.ensure_future(stop.wait())}, return_when="FIRST_COMPLETED"
        )
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await conn.unsubscribe(sub)


class NatsReadModelQueries:
    """The reading half of `ReadModel`, asked over NATS of whichever process serves it."""

    def __init__(self, conn: Connection, timeout: float = TIMEOUT_S) -> None:
        self._conn = conn
        self._timeout = timeout

    async def _ask(self, query: str, payload: bytes = b"") -> bytes:
        try:
            msg = await self._conn.nc.request(
                f"{QUERY_PREFIX}.{query}", payload, timeout=self._timeout
            )
        except nats.errors.NoRespondersError:
            raise Unavailable(
                "nothing serves the in-memory read model (is 'cyclonetix dev' running, "
                "with its projector?)"
            ) from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise Unavailable(f"the read model did not answer: {describe(exc)}") from None
        reply = _reply.decode(msg.data)
        if reply.error is not None:
            raise _RAISE.get(reply.error, CyclonetixError)(reply.message)
        return reply.value

    async def list_runs(
        self, filter: RunFilter = ALL_RUNS, limit: int = 50, cursor: str | None = None
    ) -> Page[RunRow]:
        data = await self._ask(
            "list_runs", _encode(ListRuns(filter=filter, limit=limit, cursor=cursor))
        )
        return _page.decode(data)

    async def count_runs(self, filter: RunFilter = ALL_RUNS) -> dict[RunStatus, int]:
        return _counts.decode(await self._ask("count_runs", _encode(CountRuns(filter=filter))))

    async def get_run(self, run_id: str) -> RunDetail | None:
        return _detail.decode(await self._ask("get_run", _encode(GetRun(run_id=run_id))))

    async def checkpoint(self) -> int:
        return _checkpoint.decode(await self._ask("checkpoint"))

    async def close(self) -> None:
        """Nothing of its own to release (the connection belongs to its backplane)."""

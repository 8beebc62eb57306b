"""The live feed of one web process: one tail of the event log, fanned out to SSE clients.

Every browser tab subscribes here, never to NATS (DESIGN §4: one hub per web process). The feed
tails `CX_EVENTS` from its live end through the EventLog port; for each event it waits until
the read model has applied it (however long: a warning each second), so that what a client is
sent agrees with what a GET would answer, then hands a `RunChange` to the clients of that run
and the `RunRow` to the clients of every run. When the log has more waiting (a burst), the
events read so far are sent together after one read of each run they touch: its rows as of the
burst's last event (a 2,000-task run does not cost a read per event). Each SSE id is the stream
sequence: a client that reconnects with `Last-Event-ID` (or `?after_seq=`) is sent what it
missed of its run from the read model first.

A client that cannot keep up (its queue of changes full) is dropped; its browser reconnects and
resumes from its last id. A client that disconnects is removed when its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import ServerSentEvent, ServerSentEventMessage

from core.errors import NotFound, Unavailable
from core.events import AnyEvent, decode, task_ids
from projections.protocol import ReadModel
from projections.views import EventRow, RunDetail, RunRow, TaskRunRow
from services.ports import EventLog
from services.retrying import backoff
from web.context import UiContext

__all__ = ["LiveFeed", "RunChange", "run_stream", "runs_stream"]

log = structlog.get_logger("cyclonetix.web.live")

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
CATCH_UP_S = 10.0  # how long a new client waits for the read model before reading its backlog
APPLY_WAIT_S = 1.0  # how long an event waits for the read model before a warning (then again)
QUEUE_SIZE = 1000  # changes a client may lag behind before it is dropped
BACKLOG_PAGE = 500
BURST = 200  # events read from the log at most before their changes are sent


class RunChange(msgspec.Struct, kw_only=True):
    """`event: change` of a run's stream: the event and the rows it changed, as applied."""

    seq: int
    type: str
    run: RunRow
    tasks: tuple[TaskRunRow, ...] = ()


Item = RunChange | RunRow


@dataclass(eq=False)
class Subscription:
    """One SSE client: the changes not yet sent to it."""

    run_id: str | None  # None: every run
    queue: asyncio.Queue[tuple[int, Item]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE)
    )
    dropped: bool = False


class LiveFeed:
    """The hub (see the module). `run(stop)` tails the log; `subscribe` adds a client."""

    def __init__(
        self, events: EventLog, read_model: ReadModel, *, apply_wait: float = APPLY_WAIT_S
    ) -> None:
        self.events = events
        self.read_model = read_model
        self.apply_wait = apply_wait
        self.ready = asyncio.Event()  # set once the tail starts (changes after it are sent)
        self.behind = 0  # times a burst waited `apply_wait` for the read model in vain
        self.passed = 0  # the last sequence handled: applied and sent, or heard by nobody
        self.listeners: list[Callable[[int, AnyEvent], None]] = []  # e.g. metrics
        self._by_run: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()

    @property
    def clients(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_run.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Tail the log until `stop`; a lost connection is retried with backoff."""
        delays = backoff(0.2, 5.0)
        start: int | None = None
        while not stop.is_set():
            try:
                if start is None:
                    start = await self.events.last_seq() + 1  # the live end: no history
                self.ready.set()
                burst: list[tuple[int, AnyEvent]] = []
                async for seq, event, pending in self.events.tail(from_seq=start, stop=stop):
                    burst.append((seq, event))
                    # A burst (the log had more waiting) reads each run once, not per event.
                    if pending == 0 or len(burst) >= BURST:
                        if not await self._publish(burst, stop):
                            return  # stopped while the read model was behind
                        start = seq + 1  # (sent: a reconnection tails on from here)
                        burst = []
                delays = backoff(0.2, 5.0)
            except Unavailable as exc:
                log.warning("live.tail_unavailable", error=str(exc))
            except Exception:  # a bug must not end live updates for good: logged, tried again
                log.exception("live.feed_failed")
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), next(delays))

    def subscribe(self, run_id: str | None = None) -> Subscription:
        sub = Subscription(run_id)
        (self._all if run_id is None else self._by_run.setdefault(run_id, set())).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.run_id is None:
            self._all.discard(sub)
            return
        subs = self._by_run.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_run[sub.run_id]

    async def _publish(self, burst: list[tuple[int, AnyEvent]], stop: asyncio.Event) -> bool:
        """Once the read model applied the burst: each run's row to every-run clients (once
        per run), and a change per event to the clients of its run. False if `stop` came
        while the read model was behind.

        A change is never sent before its rows are applied: a client takes its id as what it
        has seen, so rows older than the id would stay on its page (a run's last change sent
        early showed the run running for good)."""
        for seq, event in burst:
            for listener in self.listeners:
                listener(seq, event)
        if not self._listened(burst):  # nobody listens: no query (see `caught_up`)
            self.passed = burst[-1][0]
            return True
        waited = 0.0
        while not await self.read_model.wait_for(burst[-1][0], self.apply_wait):
            waited += self.apply_wait
            self.behind += 1
            log.warning("live.read_model_behind", seq=burst[-1][0], waited_s=waited)
            if stop.is_set():
                return False
        # Who listens is read now, after the wait: a client that came meanwhile is sent these.
        runs: dict[str, list[tuple[int, AnyEvent]]] = {}
        for seq, event in burst:
            if self._all or event.run_id in self._by_run:
                runs.setdefault(event.run_id, []).append((seq, event))
        for run_id, changes in runs.items():
            detail = await self.read_model.get_run(run_id)
            if detail is None:
                continue
            for sub in list(self._all):
                self._offer(sub, changes[-1][0], detail.run)
            for seq, event in changes:
                change = change_of(seq, event, detail)
                for sub in list(self._by_run.get(run_id, ())):
                    self._offer(sub, seq, change)
        self.passed = burst[-1][0]
        return True

    def _listened(self, burst: list[tuple[int, AnyEvent]]) -> bool:
        return bool(self._all) or any(event.run_id in self._by_run for _, event in burst)

    async def caught_up(self, timeout: float = CATCH_UP_S) -> None:
        """For a client that just subscribed, before it reads its backlog: wait until the read
        model holds what the feed has passed over (bursts nobody listened to are not waited
        for by the feed), so that nothing falls between the backlog and the feed."""
        if not await self.read_model.wait_for(self.passed, timeout):
            log.warning("live.backlog_read_behind", passed=self.passed, waited_s=timeout)

    def _offer(self, sub: Subscription, seq: int, item: Item) -> None:
        try:
            sub.queue.put_nowait((seq, item))
        except asyncio.QueueFull:
            sub.dropped = True  # its stream ends; the browser resumes from its last id
            self.unsubscribe(sub)


def change_of(seq: int, event: AnyEvent | EventRow, detail: RunDetail) -> RunChange:
    """The change an event made to a run: its row and the rows of the tasks it touched."""
    if isinstance(event, EventRow):
        kind, touched = event.type, _row_task_ids(event)
    else:
        kind, touched = type(event).__name__, frozenset(task_ids(event))
    tasks = tuple(t for t in detail.tasks if t.task_id in touched) if touched else ()
    return RunChange(seq=seq, type=kind, run=detail.run, tasks=tasks)


def _row_task_ids(row: EventRow) -> frozenset[str]:
    if row.task_id is not None:
        return frozenset((row.task_id,))
    if row.type != "TasksQueued":
        return frozenset()
    try:
        return frozenset(task_ids(decode(row.body.encode())))
    except msgspec.DecodeError:  # (a ValidationError too) a newer writer's form: no task rows
        return frozenset()


def _message(seq: int, item: Item) -> ServerSentEventMessage:
    kind = "change" if isinstance(item, RunChange) else "run"
    return ServerSentEventMessage(data=msgspec.json.encode(item).decode(), event=kind, id=str(seq))


async def _stream(
    feed: LiveFeed, sub: Subscription, backlog: list[tuple[int, Item]], keepalive: float
) -> AsyncIterator[ServerSentEventMessage]:
    try:
        last = 0
        for seq, item in backlog:
            last = seq
            yield _message(seq, item)
        while not sub.dropped:
            try:
                seq, item = await asyncio.wait_for(sub.queue.get(), keepalive)
            except TimeoutError:
                yield ServerSentEventMessage(comment="keep-alive")
                continue
            if seq > last:  # (the backlog may have sent it already)
                yield _message(seq, item)
    finally:
        feed.unsubscribe(sub)


def _feed(ui: UiContext) -> LiveFeed:
    feed = ui.extras.get("live")
    if not isinstance(feed, LiveFeed):
        raise Unavailable("the live feed is not running in this process")
    return feed


def _resume_from(request: Request[Any, Any, Any], after_seq: int | None) -> int | None:
    if after_seq is not None:
        return after_seq
    header = request.headers.get("last-event-id", "")
    return int(header) if header.isdigit() else None


async def _backlog(read_model: ReadModel, run_id: str, after: int) -> list[tuple[int, Item]]:
    """What a reconnecting client missed of a run, from the read model (rows as they are now)."""
    detail = await read_model.get_run(run_id)
    if detail is None:
        return []
    out: list[tuple[int, Item]] = []
    while True:
        rows = await read_model.recent_events(run_id, after_seq=after, limit=BACKLOG_PAGE)
        out.extend((r.seq, change_of(r.seq, r, detail)) for r in rows)
        if len(rows) < BACKLOG_PAGE:
            return out
        after = rows[-1].seq


@get("/runs/{run_id:str}/stream", summary="Live changes of one run (SSE: event change)")
async def run_stream(
    run_id: FromPath[str],
    ui: NamedDependency[UiContext],
    request: Request[Any, Any, Any],
    after_seq: FromQuery[int | None] = None,
) -> ServerSentEvent:
    """`event: change` for each new event of the run once the read model applied it; the id
    is the stream sequence. With `Last-Event-ID` or `after_seq`, what came after it first."""
    feed = _feed(ui)
    sub = feed.subscribe(run_id)  # before the backlog is read: nothing falls in between
    try:
        resume = _resume_from(request, after_seq)
        if resume is not None:
            await feed.caught_up()
        backlog = [] if resume is None else await _backlog(ui.read_model, run_id, resume)
        # A run the read model has not applied yet (just scheduled) is streamed all the same.
        if (
            resume is None
            and await ui.read_model.get_run(run_id) is None
            and await ui.backplane.events.first_seq(run_id) is None
        ):
            raise NotFound(f"no run {run_id!r}")
    except BaseException:
        feed.unsubscribe(sub)
        raise
    return ServerSentEvent(_stream(feed, sub, backlog, KEEPALIVE_S))


@get("/stream", summary="Live changes of every run (SSE: event run)")
async def runs_stream(ui: NamedDependency[UiContext]) -> ServerSentEvent:
    """`event: run` with the RunRow of each run that changed (runs list, dashboard)."""
    feed = _feed(ui)
    return ServerSentEvent(_stream(feed, feed.subscribe(None), [], KEEPALIVE_S))

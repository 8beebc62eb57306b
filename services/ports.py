"""The ports: what the roles (orchestrator, agent, CLI, commands) need from the outside world.

Each port is a Protocol; `services.nats` implements every one on NATS JetStream and
`tests.fakes` implements them in memory. One contract suite (`tests/contract/`) runs against
both, so a test that uses the fake tells the truth about the real thing. Roles receive a
`Backplane` (all ports of one connection) and never import a transport library.

Errors: every port raises only `core.errors` types for conditions a caller acts on —
`Unavailable` when the backend cannot be reached or does not acknowledge within its deadline,
`Conflict` when a conditional write lost (`RunExists` when a run id is taken).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Literal, Protocol, overload

import msgspec

from core.agents import AgentInfo
from core.audit import AuditRecord
from core.definitions import Definitions
from core.errors import Conflict, Invalid
from core.events import AnyEvent, Dispatch, RunCancelled, RunFailed, RunScheduled, RunSucceeded
from core.schedules import ScheduleMark
from core.triggers import AnyOutcome
from services.auth import ApiToken, Session, User

__all__ = [
    "AgentInfo",
    "AgentRegistry",
    "AuthStore",
    "Backplane",
    "CancelSignals",
    "Checkpoints",
    "DefinitionTooLarge",
    "DefinitionsStore",
    "EndedRun",
    "EndedRuns",
    "EventLog",
    "Leases",
    "LogStore",
    "LostWork",
    "RunExists",
    "ScheduleMarks",
    "Snapshots",
    "TriggerDelivery",
    "TriggerInbox",
    "WorkConsumer",
    "WorkItem",
    "WorkQueue",
]


class RunExists(Conflict):
    """A different run was already scheduled under this run id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run id {run_id!r} is already taken; choose another")
        self.run_id = run_id


class DefinitionTooLarge(Invalid):
    """A definition is larger than the backend stores in one message (nothing was written).
    `where` is its file, else its kind and id; `others`: how many more are too large."""

    def __init__(self, where: str, size: int, limit: int, others: int = 0) -> None:
        more = f" (and {others} more)" if others else ""
        super().__init__(
            f"{where}: definition is {_size(size)}, more than the server's limit of "
            f"{_size(limit)}{more}"
        )
        self.where = where

    @classmethod
    def check(cls, sizes: Mapping[str, int], limit: int) -> None:
        """Raise for the definitions (`where` -> size in bytes) larger than `limit`: the
        first by name, counting the others."""
        over = sorted((where, size) for where, size in sizes.items() if size > limit)
        if over:
            where, size = over[0]
            raise cls(where, size, limit, len(over) - 1)


def _size(n: int) -> str:
    """`1 MiB` for exact binary sizes (limits), else `2.1 MB` (what was measured)."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    for unit, name in ((10**9, "GB"), (10**6, "MB"), (10**3, "kB")):
        if n >= unit:
            return f"{n / unit:.1f} {name}"
    return f"{n} bytes"


# -- event log ----------------------------------------------------------------------------------


class EventLog(Protocol):
    """The append-only log of every run's events, one ordered subject per run.

    Positions are stream sequences: increasing across the whole log, so a reader can resume
    from any one. Appends are idempotent by the event's deterministic message id within the
    duplicate window: appending the same fact twice stores it once and returns its sequence.
    """

    async def append(self, event: AnyEvent) -> int:
        """Append and wait until it is stored; the event's sequence (the original one when
        this exact event was already stored). Retries until its deadline, then Unavailable."""
        ...

    def append_nowait(self, event: AnyEvent) -> asyncio.Future[int]:
        """Pipelined append: returns at once, stores in call order, retries in the background;
        the future gives the sequence (or the error)."""
        ...

    async def flush(self) -> None:
        """Wait for every pipelined append issued so far; raise the first failure."""
        ...

    async def append_expected(self, event: AnyEvent, expected: int) -> int:
        """Append only if the run's last event is still at sequence `expected` (0: the run has
        no events). Raises Conflict when someone appended since; our own earlier append of
        this very event (same id and bytes) counts as success."""
        ...

    async def schedule_run(self, event: RunScheduled) -> int:
        """Append the first event of a run (expected 0): RunExists when the id is taken."""
        ...

    async def last_seq(self) -> int:
        """The sequence of the newest event of any run (0 when there are none)."""
        ...

    async def history(self, run_id: str) -> list[tuple[int, AnyEvent]]:
        """Every stored event of one run, in order, as (sequence, event)."""
        ...

    async def first_seq(self, run_id: str) -> int | None:
        """The sequence of the first message stored for the run (decodable or not); None when
        it has none. One direct read, whatever the run's length."""
        ...

    async def last_event(self, run_id: str) -> tuple[int, AnyEvent] | None:
        """The run's newest stored message as (sequence, event); None when the run has none or
        the newest does not decode. One direct read, cheap enough to make per task."""
        ...

    @overload
    def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: Literal[False] = False,
    ) -> AsyncIterator[tuple[int, AnyEvent, int]]: ...

    @overload
    def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: Literal[True],
    ) -> AsyncIterator[tuple[int, AnyEvent | None, int]]: ...

    def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: bool = False,
    ) -> AsyncIterator[tuple[int, AnyEvent | None, int]]:
        """Events from `from_seq` on (of one run, or all), then live, as
        (sequence, event, pending): `pending == 0` means caught up. Runs until `stop` is set
        or the backplane closes. A message that does not decode (an event type of a newer
        writer, bytes that are no event) is logged with its sequence and skipped; with
        `skipped=True` it is also yielded, as `(sequence, None, pending)`, so that a reader
        which keeps a checkpoint (the projector) can move it past the message."""
        ...

    def follow_run(
        self, run_id: str, from_seq: int = 1, *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[tuple[int, AnyEvent]]:
        """One run's events, stored then live; ends after its terminal event."""
        ...


# -- work queue ---------------------------------------------------------------------------------


class WorkItem(Protocol):
    """One delivery of a dispatch to one agent. Settle it exactly once with `ack` (the result
    is stored), `nak` (hand it back now) or `term` (never deliver again)."""

    @property
    def dispatch(self) -> Dispatch: ...

    @property
    def delivery(self) -> int:
        """1 for the first delivery, 2 after one redelivery, ..."""
        ...

    @property
    def pending(self) -> int:
        """How many dispatches of the queue were still waiting after this one."""
        ...

    @property
    def token(self) -> str:
        """Names this delivery so that another process can hand it back (the guardian of an
        agent that died: services.guardian); "" when no other process can."""
        ...

    async def ack(self) -> None: ...

    async def nak(self) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None:
        """Still working: do not redeliver yet (call well within ack_wait)."""
        ...


class WorkConsumer(Protocol):
    """A binding to the shared consumer of one queue (every agent of the queue shares it:
    that is the queue group). A dispatch that does not decode is terminated and logged by the
    consumer itself, never handed to the caller."""

    async def fetch(self, count: int, timeout: float) -> list[WorkItem]:
        """Up to `count` items; waits up to `timeout` for the first; [] when none came."""
        ...

    async def close(self) -> None: ...


class LostWork(msgspec.Struct, frozen=True):
    """A dispatch whose deliveries ran out (every agent that took it vanished)."""

    dispatch: Dispatch
    deliveries: int


class WorkQueue(Protocol):
    """Dispatch messages, one queue per name, deduplicated by the dispatch's message id."""

    async def dispatch(self, d: Dispatch) -> int: ...

    def dispatch_nowait(self, d: Dispatch) -> asyncio.Future[int]: ...

    async def consumer(
        self, queue: str, *, ack_wait: float = 30.0, max_deliver: int = 5
    ) -> WorkConsumer: ...

    def lost(self) -> AsyncIterator[LostWork]:
        """Dispatches whose deliveries ran out, at least once, shared by all readers: the next
        one is asked for only after the previous one was handled."""
        ...

    async def depths(self) -> dict[str, int]:
        """Dispatches waiting to be delivered, per queue."""
        ...


# -- cancellation, logs, definitions, agents, leases, checkpoints, snapshots --------------------


class CancelSignals(Protocol):
    """Not stored: the durable fact is RunCancelRequested; this only wakes agents up."""

    async def announce(self, run_id: str) -> None: ...

    def listen(self) -> AsyncIterator[str]:
        """Run ids announced as cancelled, as they arrive."""
        ...


class LogStore(Protocol):
    """Command output per attempt, stored in order of writing."""

    def write_nowait(
        self, run_id: str, task_id: str, attempt: int, data: bytes, *, stream: str = "stdout"
    ) -> asyncio.Future[int]: ...

    def read(
        self, run_id: str, task_id: str, attempt: int | None = None, *, follow: bool = False
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(attempt, chunk) of one attempt or all; stored only, or stored then live."""
        ...


class DefinitionsStore(Protocol):
    async def put(self, defs: Definitions) -> int:
        """Make the store hold exactly `defs`; returns how many entries changed.

        All or nothing from a user's point of view: every definition's size is checked against
        what the server accepts before anything is written (DefinitionTooLarge, naming the
        file), and every new or changed definition is stored before any is deleted, so a
        failure half-way never leaves fewer definitions than before."""
        ...

    async def load(self) -> Definitions: ...


class AgentRegistry(Protocol):
    async def heartbeat(self, info: AgentInfo) -> None: ...

    async def remove(self, agent_id: str) -> None: ...

    async def list(self) -> list[AgentInfo]: ...


class Leases(Protocol):
    """Named leases that expire by themselves a few seconds after their last renewal."""

    async def acquire(self, name: str, holder: str) -> int | None:
        """Take `name` if free: its revision, or None when someone holds it."""
        ...

    async def renew(self, name: str, holder: str, revision: int) -> int | None:
        """Keep holding: the new revision, or None when the lease was lost meanwhile."""
        ...

    async def holder(self, name: str) -> str | None: ...

    async def release(self, name: str, revision: int) -> None: ...


class Checkpoints(Protocol):
    async def get(self, name: str) -> int | None: ...

    async def put(self, name: str, value: int) -> None: ...


class ScheduleMarks(Protocol):
    """One `ScheduleMark` per cron schedule (services.cron), written by compare-and-set so
    that two orchestrators' cron loops never both claim a slot on the same revision."""

    async def get(self, key: str) -> tuple[ScheduleMark | None, int]:
        """The mark and its revision; (None, 0) when the schedule has none yet, (None, n) when
        revision n does not decode (it is replaced)."""
        ...

    async def put(self, key: str, mark: ScheduleMark, revision: int) -> int:
        """Store `mark` if the stored revision is still `revision` (0: only if there is
        none); the new revision. Conflict when another writer came first."""
        ...


class Snapshots(Protocol):
    """Named blobs of any size (an orchestrator's snapshot of its runs is megabytes, more than
    one NATS message may hold), each replaced whole: a reader gets the last complete `put` or
    nothing, never parts of two."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes | None:
        """The last `put` under `name`, None when there is none. Unavailable when it cannot be
        read whole (backend away, a part missing, a checksum that does not match)."""
        ...

    async def delete(self, name: str) -> None:
        """Remove `name` (nothing happens when there is none)."""
        ...


# -- ended runs (completion webhooks) -----------------------------------------------------------


class EndedRun(Protocol):
    """A run's terminal event, handed to one reader of the shared consumer (`EndedRuns`).
    Settle it once: `ack` when everything it owes is done; `nak` hands it back (to any
    reader); unsettled, it comes back by itself a while after its reader vanished."""

    @property
    def seq(self) -> int: ...

    @property
    def event(self) -> RunSucceeded | RunFailed | RunCancelled: ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float = 0.0) -> None: ...

    async def in_progress(self) -> None:
        """Still working on it: do not hand it to another reader yet."""
        ...


class EndedRuns(Protocol):
    """Every run's terminal event, at least once, shared by all readers (each to one)."""

    def ended(self, stop: asyncio.Event) -> AsyncIterator[EndedRun]:
        """Terminal events as they are appended, until `stop` (every other event is skipped)."""
        ...

    async def scheduled(self, run_id: str) -> RunScheduled | None:
        """The run's first event (one direct read); None when it has none or it does not
        decode as a RunScheduled."""
        ...


# -- subject triggers ---------------------------------------------------------------------------


class TriggerDelivery(Protocol):
    """One delivery of a stored trigger message (CX_TRIGGERS) to one handler. Settle it once:
    `ack` (handled), `term` (refused: never again) or `nak` (try again after `delay`)."""

    @property
    def subject(self) -> str: ...

    @property
    def target(self) -> tuple[Literal["outcome", "dag"], str] | None:
        """What the subject names; None when it is not `cx.trigger.task|dag.<id>`."""
        ...

    @property
    def data(self) -> bytes: ...

    @property
    def seq(self) -> int:
        """Its stream sequence."""
        ...

    @property
    def received(self) -> dt.datetime:
        """When the stream stored it."""
        ...

    @property
    def delivery(self) -> int:
        """1 for the first delivery, 2 after one redelivery, ..."""
        ...

    async def ack(self) -> None: ...

    async def term(self) -> None: ...

    async def nak(self, delay: float) -> None: ...


class TriggerInbox(Protocol):
    """Stored trigger messages shared by every handler (each message to one of them), the
    idempotency keys, and the trigger log (each outcome also answers a waiting requester)."""

    async def fetch(self, count: int, timeout: float) -> list[TriggerDelivery]:
        """Up to `count` deliveries; waits up to `timeout` for the first; [] when none came."""
        ...

    async def claim(self, kind: str, target: str, key: str, run_id: str) -> str:
        """Bind the idempotency key (of this kind and target) to `run_id` unless it is bound
        already (within the window): the run id it is bound to, ours or an earlier one."""
        ...

    async def release(self, kind: str, target: str, key: str, run_id: str) -> None:
        """Unbind a key we bound to `run_id` (its run could not be scheduled)."""
        ...

    async def record(self, outcome: AnyOutcome) -> None:
        """Store what became of a message (once per message) and answer its requester."""
        ...

    async def definitions_version(self) -> int:
        """Changes whenever the published definitions change (cheap to ask)."""
        ...

    def outcomes(self, *, limit: int, rejected_only: bool = False) -> Awaitable[list[AnyOutcome]]:
        """The newest `limit` recorded outcomes, oldest first."""
        ...

    async def close(self) -> None: ...


class AuthStore(Protocol):
    """Users, API tokens and login sessions of the web UI and API (services/auth.py)."""

    async def user(self, name: str) -> User | None: ...

    async def put_user(self, user: User) -> None: ...

    async def remove_user(self, name: str) -> bool:
        """Whether there was such a user."""
        ...

    async def users(self) -> list[User]:
        """By name."""
        ...

    async def token(self, token_id: str) -> ApiToken | None: ...

    async def put_token(self, token: ApiToken) -> None: ...

    async def tokens(self) -> list[ApiToken]:
        """Revoked ones included, oldest first."""
        ...

    async def any_credentials(self) -> bool:
        """Whether any user or token (revoked ones included) exists: from then on, the UI
        and API require a login."""
        ...

    async def session(self, key: str) -> Session | None:
        """The session kept under `key` (`services.auth.session_key`), unless it expired."""
        ...

    async def put_session(self, key: str, session: Session) -> None: ...

    async def remove_session(self, key: str) -> None: ...


class AuditLog(Protocol):
    """Who did what to users, tokens and sessions (`core.audit`)."""

    async def write(self, r: AuditRecord) -> None:
        """Store `r` (waiting for it to be stored); Unavailable when it cannot be."""
        ...

    async def read(
        self,
        *,
        since: dt.datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The newest `limit` records that `core.audit.matches`, oldest first; Invalid for an
        action that is not one of `core.audit.ACTIONS` nor a group of them (`users`)."""
        ...


# -- the composition --------------------------------------------------------------------------


class Backplane(Protocol):
    """Every port over one connection: what a role is given."""

    @property
    def events(self) -> EventLog: ...

    @property
    def work(self) -> WorkQueue: ...

    @property
    def cancels(self) -> CancelSignals: ...

    @property
    def logs(self) -> LogStore: ...

    @property
    def definitions(self) -> DefinitionsStore: ...

    @property
    def agents(self) -> AgentRegistry: ...

    @property
    def leases(self) -> Leases: ...

    @property
    def checkpoints(self) -> Checkpoints: ...

    @property
    def snapshots(self) -> Snapshots: ...

    @property
    def auth(self) -> AuthStore: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def closed(self) -> bool: ...

    @property
    def url(self) -> str:
        """Where it is connected (for messages and for child processes)."""
        ...

    def close(self) -> Awaitable[None]: ...

"""The moving parts of a chaos scenario: NATS (one server or a three-node cluster), the role
processes (`python -m services.cli orchestrator|agent|projector`, as the e2e tests start them),
a live observer of the event log, the workload driver and the faults.

Every process started here dies with the test: roles and servers get SIGTERM when the test
process dies (PR_SET_PDEATHSIG), and `Roles.stop` / `Chaos.close` end them in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from core.errors import Conflict, CyclonetixError
from core.events import (
    TERMINAL,
    AnyEvent,
    RunScheduled,
    TaskCancelled,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)
from core.scheduling import plan_run
from projections.stores import open_read_model
from services.commands import cancel
from services.embedded_nats import EmbeddedNats, EmbeddedNatsCluster, die_with_parent
from services.nats import NatsBackplane, connect
from tests.chaos.invariants import AgentRecord, Key
from tests.chaos.workload import AGENT_ENV, LEDGER_ENV, QUEUES, Workload
from tests.e2e.conftest import child_env
from tests.waiting import eventually

if TYPE_CHECKING:
    from projections.protocol import ReadModel

RoleKind = Literal["orchestrator", "agent", "projector"]
REPO = Path(__file__).resolve().parents[2]
LEASE = "orchestrator"  # services.orchestrator.LEASE
ORCHESTRATOR_EVENTS = (
    TasksQueued,
    TaskQueued,  # (older orchestrators)
    TaskRetryScheduled,
    TaskSkipped,
    TaskLost,
    *TERMINAL,
)
ATTEMPT_MOVED_ON = (TaskStarted, TaskSucceeded, TaskFailed, TaskLost, TaskCancelled)


def wall() -> float:
    return time.time()


# -- role processes ---------------------------------------------------------------------------


@dataclass
class Role:
    kind: RoleKind
    label: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    killed_at: float | None = None  # wall clock

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"  {self.label} | {line}" for line in text.splitlines()[-lines:])


class Roles:
    """Orchestrators, agents and projectors as `python -m services.cli ...` processes."""

    def __init__(
        self, workdir: Path, nats_url: str, *, replicas: int, ledger: Path, concurrency: int
    ) -> None:
        self.workdir = workdir
        self.nats_url = nats_url
        self.replicas = replicas
        self.ledger = ledger
        self.concurrency = concurrency
        self.all: list[Role] = []
        self._count: dict[str, int] = defaultdict(int)

    def _spawn(self, kind: RoleKind, args: list[str]) -> Role:
        self._count[kind] += 1
        label = f"{kind[:5] if kind != 'projector' else 'proj'}-{self._count[kind]}"
        log_path = self.workdir / f"{label}.log"
        log = log_path.open("wb")
        argv = [sys.executable, "-m", "services.cli", kind, "--nats-url", self.nats_url]
        argv += ["--log-format", "json", *args]
        env = child_env(
            PYTHONUNBUFFERED="1",
            CYCLONETIX_STREAM_REPLICAS=str(self.replicas),
            **{LEDGER_ENV: str(self.ledger), AGENT_ENV: label},
        )
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our signals are ours to send
            preexec_fn=die_with_parent(),  # a killed test run leaves no role behind
        )
        role = Role(kind, label, proc, log_path, log)
        self.all.append(role)
        return role

    def orchestrator(self) -> Role:
        return self._spawn("orchestrator", [])

    def agent(self) -> Role:
        workdir = self.workdir / "agent-work"
        workdir.mkdir(exist_ok=True)
        args = ["--concurrency", str(self.concurrency), "--workdir", str(workdir)]
        args += ["--shutdown-grace", "10"]
        for queue in QUEUES:
            args += ["--queue", queue]
        return self._spawn("agent", args)

    def projector(self, read_model: str) -> Role:
        return self._spawn("projector", ["--read-model", read_model])

    def living(self, kind: str) -> list[Role]:
        return [r for r in self.all if r.kind == kind and r.alive]

    def by_pid(self, pid: int) -> Role | None:
        return next((r for r in self.all if r.pid == pid), None)

    def kill(self, role: Role) -> float:
        """kill -9; the wall-clock time of the kill."""
        at = wall()
        with contextlib.suppress(ProcessLookupError):
            role.proc.send_signal(signal.SIGKILL)
        role.proc.wait()
        role.killed_at = at
        return at

    def agents(self) -> list[AgentRecord]:
        return [AgentRecord(r.label, r.pid, r.killed_at) for r in self.all if r.kind == "agent"]

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the agents (they finish or hand back their work), then the orchestrators;
        SIGKILL whatever is still there after `timeout`. A projector is left running: it has
        the last events to apply (`tests.chaos.projection` stops it)."""
        for kind in ("agent", "orchestrator"):
            group = [r for r in self.all if r.kind == kind and r.alive]
            for role in group:
                with contextlib.suppress(ProcessLookupError):
                    role.proc.terminate()
            await asyncio.gather(*(self._reap(role, timeout) for role in group))
        for role in self.all:
            role.log.close()

    @staticmethod
    async def _reap(role: Role, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(role.proc.wait), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                role.proc.kill()
            await asyncio.to_thread(role.proc.wait)

    def kill_all(self) -> None:
        for role in self.all:
            if role.alive:
                with contextlib.suppress(ProcessLookupError):
                    role.proc.kill()
                role.proc.wait()
            role.log.close()


# -- the observer -----------------------------------------------------------------------------


@dataclass
class Seen:
    at: float  # monotonic time of arrival
    seq: int
    event: AnyEvent


class Observer:
    """Follows the whole event log live: when each event arrived, which runs are open, which
    attempts run on which agent. Only for steering faults and the recovery figures: the
    invariants are checked on a fresh read of the log."""

    def __init__(self, backplane: NatsBackplane) -> None:
        self.backplane = backplane
        self.seen: list[Seen] = []
        self.ended: set[str] = set()
        self.running: dict[Key, int] = {}  # attempt -> agent pid
        self.changed = asyncio.Event()
        self.errors: list[str] = []  # tails that failed (and were started again)

    async def follow(self, stop: asyncio.Event) -> None:
        """Until `stop`; a tail that fails (NATS away longer than it waits) is started again
        after the last event seen, so the observer never goes quiet while the log moves on."""
        next_seq = 1
        while not stop.is_set():
            try:
                async for seq, event, _ in self.backplane.events.tail(from_seq=next_seq, stop=stop):
                    if seq >= next_seq:
                        next_seq = seq + 1
                        self._saw(seq, event)
            except Exception as exc:  # noqa: BLE001 - reported, then followed again
                self.errors.append(describe_error(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    def _saw(self, seq: int, event: AnyEvent) -> None:
        self.seen.append(Seen(time.monotonic(), seq, event))
        if isinstance(event, TERMINAL):
            self.ended.add(event.run_id)
        elif isinstance(event, TaskStarted):
            self.running[event.run_id, event.task_id, event.attempt] = event.pid
        elif isinstance(event, TaskSucceeded | TaskFailed | TaskLost | TaskCancelled):
            self.running.pop((event.run_id, event.task_id, event.attempt), None)
        self.changed.set()

    def running_on(self, pid: int) -> list[Key]:
        return sorted(k for k, p in self.running.items() if p == pid and k[0] not in self.ended)

    def first_after(self, since: float, match: Callable[[AnyEvent], bool]) -> float | None:
        """Seconds from `since` (monotonic) to the arrival of the first matching event."""
        for seen in self.seen:
            if seen.at >= since and match(seen.event):
                return seen.at - since
        return None


# -- faults -----------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    detail: str
    at: float  # monotonic
    at_wall: float
    recovery: Callable[[Observer], float | None]


def progress_after(at: float, at_wall: float) -> Callable[[Observer], float | None]:
    """Recovered once a dispatch decided after the fault and a start decided after it have
    both arrived: the orchestrator decides and the agents run again."""

    def measure(observer: Observer) -> float | None:
        def decided_after(match: Callable[[AnyEvent], bool]) -> Callable[[AnyEvent], bool]:
            return lambda e: match(e) and e.ts.timestamp() > at_wall

        # (an attempt queued: a TasksQueued's, or a TaskQueued)
        queued = observer.first_after(at, decided_after(lambda e: bool(each_queued(e))))
        started = observer.first_after(at, decided_after(lambda e: isinstance(e, TaskStarted)))
        return None if queued is None or started is None else max(queued, started)

    return measure


def decisions_after(at: float, at_wall: float) -> Callable[[Observer], float | None]:
    """Recovered once an orchestrator decision made after the fault has arrived."""

    def measure(observer: Observer) -> float | None:
        return observer.first_after(
            at, lambda e: isinstance(e, ORCHESTRATOR_EVENTS) and e.ts.timestamp() > at_wall
        )

    return measure


def attempts_moved_on(at: float, keys: list[Key], pid: int) -> Callable[[Observer], float | None]:
    """Recovered once every attempt the killed agent ran was started again elsewhere (or
    ended): the longest of those waits."""

    def measure(observer: Observer) -> float | None:
        waits: list[float] = []
        for key in keys:

            def moved(e: AnyEvent, key: Key = key) -> bool:
                if not isinstance(e, ATTEMPT_MOVED_ON):
                    return False
                if (e.run_id, e.task_id, e.attempt) != key:
                    return False
                return not (isinstance(e, TaskStarted) and e.pid == pid)

            wait = observer.first_after(at, moved)
            if wait is None:
                return None
            waits.append(wait)
        return max(waits, default=0.0)

    return measure


# -- one scenario's system --------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """How much a scenario does: CI's size or `--long`."""

    faults: int  # injections per scenario
    gap: tuple[float, float]  # seconds between injections (uniform)
    open_runs: int  # runs kept open at once
    graphs: int  # generated graphs to choose from
    max_tasks: int  # tasks of a generated graph, at most
    agents: int = 3
    concurrency: int = 4
    drain_timeout: float = 120.0  # after the last fault: every run must end by then
    cancel_fraction: float = 0.08  # runs whose cancellation is asked for at a random moment


@dataclass
class Chaos:
    """A running system: NATS, roles, the observer and the workload, for one scenario."""

    name: str
    rng: random.Random
    size: Size
    workdir: Path
    workload: Workload
    nats: EmbeddedNats | EmbeddedNatsCluster
    backplane: NatsBackplane
    roles: Roles
    observer: Observer
    ledger: Path
    scheduled: set[str] = field(default_factory=set)
    attempted: set[str] = field(default_factory=set)
    unscheduled: list[str] = field(default_factory=list)  # schedules that never got an ack
    cancelled: set[str] = field(default_factory=set)  # runs whose cancellation was requested
    faults: list[Fault] = field(default_factory=list)
    read_model_url: str | None = None  # the projector's store (None: no projector)
    read_model: ReadModel | None = None  # the same store, opened by the test to watch it
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _scheduling: set[asyncio.Task[Any]] = field(default_factory=set)

    # -- workload --------------------------------------------------------------------------

    def open_runs(self) -> int:
        return len(self.attempted - self.observer.ended)

    async def drive(self, until: asyncio.Event) -> None:
        """Keep `size.open_runs` runs open until `until` is set."""
        while not until.is_set():
            if self.open_runs() < self.size.open_runs:
                event = self._plan()
                self.attempted.add(event.run_id)
                self._scheduling.add(self._spawn(self._schedule(event)))
                if self.rng.random() < self.size.cancel_fraction:
                    self._spawn(self._cancel(event.run_id, self.rng.uniform(0.1, 3.0)))
                continue
            self.observer.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.observer.changed.wait(), 0.5)

    def _plan(self) -> RunScheduled:
        kind, target = self.workload.next_target(self.rng)
        return plan_run(
            self.workload.definitions,
            kind=kind,
            target=target,
            now=dt.datetime.now(dt.UTC),
            entropy=self.rng.randbytes(16),
        )

    async def _schedule(self, event: RunScheduled) -> None:
        """Schedule, retrying the same event while NATS is away (a retry of a stored append is
        recognised by its message id)."""

        async def attempt() -> bool | None:
            await self.backplane.events.schedule_run(event)
            return True

        try:
            await eventually(attempt, timeout=90, what=f"scheduling {event.run_id}")
        except AssertionError as exc:
            self.unscheduled.append(str(exc))  # reported; if it was stored, it is checked too
            return
        self.scheduled.add(event.run_id)

    async def _cancel(self, run_id: str, after: float) -> None:
        """Ask for the run's cancellation `after` seconds (a random moment: it may have ended
        by then, or not be stored yet)."""
        await asyncio.sleep(after)

        async def attempt() -> bool | None:
            try:
                await cancel(self.backplane.events, run_id, reason="chaos", by="chaos suite")
            except Conflict:
                return True  # it ended first
            self.cancelled.add(run_id)
            return True

        with contextlib.suppress(AssertionError):  # never stored: nothing to cancel
            await eventually(attempt, timeout=90, what=f"cancelling {run_id}")

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def pause(self, low: float, high: float) -> None:
        """A random moment: the faults' pacing (not a wait for a condition)."""
        await asyncio.sleep(self.rng.uniform(low, high))

    async def wait_for_work(self) -> None:
        """Inject only while runs are open (a fault of an idle system proves little)."""

        async def busy() -> bool | None:
            return True if self.open_runs() > 0 else None

        await eventually(busy, timeout=60, what="open runs")

    async def drain(self) -> None:
        """Wait until every run that was asked for has ended, up to `size.drain_timeout`:
        those still open then are stuck (the checks name them)."""

        async def all_scheduled() -> bool | None:
            return True if all(t.done() for t in self._scheduling) else None

        async def all_ended() -> bool | None:
            return True if self.scheduled <= self.observer.ended else None

        with contextlib.suppress(AssertionError):
            await eventually(all_scheduled, timeout=self.size.drain_timeout, what="schedules")
            await eventually(all_ended, timeout=self.size.drain_timeout, what="every run ended")

    # -- reading back ----------------------------------------------------------------------

    async def read_log(self) -> list[tuple[int, AnyEvent]]:
        """The whole event log, read afresh."""

        async def read() -> list[tuple[int, AnyEvent]] | None:
            last = await self.backplane.events.last_seq()
            events: list[tuple[int, AnyEvent]] = []
            if last == 0:
                return events
            done = asyncio.Event()
            async for seq, event, _ in self.backplane.events.tail(from_seq=1, stop=done):
                events.append((seq, event))
                if seq >= last:
                    break
            return events

        return await eventually(read, timeout=60, what="the whole event log")

    async def commands_gone(self, timeout: float = 30.0) -> list[int]:
        """Wait until no command of the ledger still runs (an orphan may still write its end);
        returns those still running at the deadline."""
        from tests.chaos.invariants import parse_ledger

        def alive() -> list[int]:
            text = self.ledger.read_text() if self.ledger.exists() else ""
            pids = [e.pid for e in parse_ledger(text) if e.ended_at is None]
            return [p for p in pids if _running(p)]

        async def none_left() -> bool | None:
            return True if not alive() else None

        with contextlib.suppress(AssertionError):
            await eventually(none_left, timeout=timeout, what="commands to end")
        return alive()

    # -- teardown --------------------------------------------------------------------------

    async def close(self) -> None:
        self.stop.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.roles.kill_all()
        if self.read_model is not None:
            with contextlib.suppress(Exception):
                await self.read_model.close()
        with contextlib.suppress(Exception):
            await self.backplane.close()
        await asyncio.to_thread(self.nats.stop)


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def start_chaos(
    name: str,
    *,
    rng: random.Random,
    size: Size,
    workdir: Path,
    workload: Workload,
    cluster: bool,
    orchestrators: int,
    read_model: str | None = None,
) -> Chaos:
    """NATS, the definitions, the roles and the observer (and a projector into `read_model`,
    when given); returns once every agent is registered and an orchestrator holds the lease."""
    workdir.mkdir(parents=True, exist_ok=True)
    nats: EmbeddedNats | EmbeddedNatsCluster
    nats = EmbeddedNatsCluster(workdir / "nats") if cluster else EmbeddedNats(workdir / "nats")
    url = await asyncio.to_thread(nats.start)
    replicas = 3 if cluster else 1
    try:
        backplane = await connect(url, name=f"chaos-{name}", replicas=replicas)
    except BaseException:
        await asyncio.to_thread(nats.stop)
        raise
    ledger = workdir / "ledger.txt"
    ledger.touch()
    roles = Roles(workdir, url, replicas=replicas, ledger=ledger, concurrency=size.concurrency)
    chaos = Chaos(
        name=name,
        rng=rng,
        size=size,
        workdir=workdir,
        workload=workload,
        nats=nats,
        backplane=backplane,
        roles=roles,
        observer=Observer(backplane),
        ledger=ledger,
        read_model_url=read_model,
    )
    try:
        await backplane.definitions.put(workload.definitions)
        for _ in range(orchestrators):
            roles.orchestrator()
        for _ in range(size.agents):
            roles.agent()
        if read_model is not None:
            chaos.read_model = open_read_model(read_model)
            roles.projector(read_model)
        chaos._spawn(chaos.observer.follow(chaos.stop))
        await wait_for_agents(chaos, size.agents)
        await leader(chaos)
    except BaseException:
        await chaos.close()
        raise
    return chaos


async def wait_for_agents(chaos: Chaos, count: int) -> None:
    async def registered() -> bool | None:
        pids = {a.pid for a in await chaos.backplane.agents.list()}
        return True if len(pids & {r.pid for r in chaos.roles.living("agent")}) >= count else None

    await eventually(registered, timeout=60, what=f"{count} agents registered")


async def leader(chaos: Chaos, not_pid: int | None = None) -> Role:
    """The orchestrator holding the lease (waiting until a living one other than `not_pid`
    does)."""

    async def holder() -> Role | None:
        held = await chaos.backplane.leases.holder(LEASE)
        if held is None:
            return None
        role = chaos.roles.by_pid(int(held.rsplit("-", 1)[1]))
        if role is None or not role.alive or role.pid == not_pid:
            return None
        return role

    return await eventually(holder, timeout=60, what="an orchestrator holding the lease")


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CyclonetixError) else repr(exc)

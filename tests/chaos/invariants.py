"""What a chaos scenario must leave behind, checked on the event log alone (plus the ledger of
executions the commands wrote themselves, see tests/chaos/workload.py).

Pure: `check` takes the stored events, the ledger and what the suite did (runs it scheduled,
agents it killed) and returns a `Verdict`: the figures of the table and every violation, each
as one line naming the run and task.

- lost: a run whose scheduling was acknowledged but is not in the log; a task of an ended run
  that never reached an end of its own (succeeded, failed or lost for good, cancelled, skipped),
  or an attempt queued and never finished; a `RunSucceeded` over a task that did not succeed.
- stuck: a run without a terminal event.
- duplicated: a run with more than one terminal event; two successes for one attempt; an
  execution with no `TaskStarted` for it (unrecorded); two executions of one attempt running at
  the same time (the earlier one ended after the later one's start was stored).
- other violations: a task started before one of its dependencies succeeded; a command or a task
  event after the run's terminal event; a recorded start that never ran on an agent that was not
  killed.

The orchestrator's queueing fact is a `TasksQueued` (the attempts of one decision); each of its
attempts is checked exactly as a `TaskQueued` of it (`core.events.each_queued`), and a
`TaskQueued` (older logs) is still read as one.

How long a command went on after its agent was SIGKILLed (its `E` line after the kill) is
reported in `orphans`, not asserted (a duration is a figure to print, not an invariant): the
harm it can do — the same attempt running twice at once — is the `duplicated` check above.
The clocks are compared only for order (one machine, one clock): an end after the run's end.

A start recorded by an agent that was then killed before releasing the command (it is held
until its `TaskStarted` is stored) has no execution: that is the design's promise kept ("a
command never runs without its start being stored", not the reverse), so it is counted as a
held start instead of a mismatch. Executions must equal `TaskStarted` events minus those.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from core.events import (
    TERMINAL,
    AnyEvent,
    GraphExtended,
    RunScheduled,
    RunSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)

Key = tuple[str, str, int]  # run, task (node id), attempt
ATTEMPT_ENDS = (TaskSucceeded, TaskFailed, TaskLost, TaskCancelled)
TASK_WORK = (TaskQueued, TaskStarted, TaskSucceeded, TaskFailed)  # and each TasksQueued attempt
TaskWork = TaskQueued | TaskStarted | TaskSucceeded | TaskFailed


@dataclass
class Execution:
    """One command execution, from the ledger."""

    key: Key
    agent: str  # the agent's label ($CX_CHAOS_AGENT)
    pid: int  # the command's shell
    ended_at: float | None = None  # wall-clock time of its `E` line; None: killed by a signal
    exit_code: int | None = None


def parse_ledger(text: str) -> list[Execution]:
    """Pair each `S` line with its `E` line (same key, agent and shell pid)."""
    executions: dict[tuple[Key, str, int], Execution] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[0] not in ("S", "E"):
            continue  # a line cut short by a kill at the wrong moment is not an execution
        key: Key = (fields[1], fields[2], int(fields[3]))
        ident = (key, fields[4], int(fields[5]))
        if fields[0] == "S":
            executions[ident] = Execution(key, fields[4], int(fields[5]))
        elif ident in executions and len(fields) >= 8:
            executions[ident].exit_code = int(fields[6])
            executions[ident].ended_at = float(fields[7])
    return list(executions.values())


@dataclass(frozen=True)
class AgentRecord:
    label: str
    pid: int
    killed_at: float | None = None  # wall-clock time of its SIGKILL


@dataclass
class Verdict:
    runs: int = 0
    tasks: int = 0
    started: int = 0  # TaskStarted events
    executions: int = 0
    held_starts: int = 0
    redeliveries: int = 0
    orphans: list[float] = field(default_factory=list)  # how long commands outlived their agent
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [
            *(f"lost: {p}" for p in self.lost),
            *(f"stuck: {p}" for p in self.stuck),
            *(f"duplicated: {p}" for p in self.duplicated),
            *self.violations,
        ]


def _ts(value: dt.datetime) -> float:
    return value.timestamp()


def check(
    events: Iterable[tuple[int, AnyEvent]],
    executions: Sequence[Execution],
    *,
    scheduled: Iterable[str],
    agents: Sequence[AgentRecord],
) -> Verdict:
    verdict = Verdict()
    by_run: dict[str, list[AnyEvent]] = defaultdict(list)
    for _seq, event in sorted(events, key=lambda pair: pair[0]):
        by_run[event.run_id].append(event)
    wanted = set(scheduled)
    verdict.lost += [f"run {r}: scheduled, not in the log" for r in sorted(wanted - set(by_run))]
    verdict.runs = len(wanted | set(by_run))

    ends: dict[str, tuple[float, str]] = {}  # run -> time and type of its terminal event
    starts: dict[tuple[Key, int], list[TaskStarted]] = defaultdict(list)  # by agent pid
    for run_id, run_events in sorted(by_run.items()):
        end = _check_run(run_id, run_events, verdict)
        if end is not None:
            ends[run_id] = end
        for event in run_events:
            if isinstance(event, TaskStarted):
                starts[(event.run_id, event.task_id, event.attempt), event.pid].append(event)
    _check_executions(executions, starts, ends, agents, verdict)
    return verdict


def _check_run(run_id: str, events: list[AnyEvent], verdict: Verdict) -> tuple[float, str] | None:
    """The per-run invariants; returns the wall-clock time and type of the run's end."""
    first = events[0]
    if not isinstance(first, RunScheduled):
        verdict.violations.append(f"run {run_id}: first event is {type(first).__name__}")
        return None
    dependencies = {node.id: node.dependencies for node in first.graph}
    succeeded: set[str] = set()
    successes: Counter[tuple[str, int]] = Counter()
    terminals = [e for e in events if isinstance(e, TERMINAL)]
    ended: str | None = None  # the terminal event's type, once seen
    for event in events:
        if isinstance(event, GraphExtended):
            dependencies.update({node.id: node.dependencies for node in event.nodes})
        if ended:
            verdict.violations += [
                f"run {run_id}: {type(event).__name__} of {work.task_id} attempt "
                f"{work.attempt} after the run ended ({ended})"
                for work in _task_work(event)
            ]
        if isinstance(event, TaskStarted):
            verdict.started += 1
            if event.delivery > 1:
                verdict.redeliveries += 1
            missing = [d for d in dependencies.get(event.task_id, ()) if d not in succeeded]
            if missing:
                verdict.violations.append(
                    f"run {run_id}: {event.task_id} started before {', '.join(missing)} succeeded"
                )
        elif isinstance(event, TaskSucceeded):
            succeeded.add(event.task_id)
            successes[event.task_id, event.attempt] += 1
        elif isinstance(event, TERMINAL) and ended is None:
            ended = type(event).__name__
    verdict.tasks += len(dependencies)
    verdict.duplicated += [
        f"run {run_id}: {task} attempt {attempt} succeeded {n} times"
        for (task, attempt), n in sorted(successes.items())
        if n > 1
    ]
    if not terminals:
        verdict.stuck.append(f"run {run_id}: no terminal event")
        return None
    if len(terminals) > 1:
        names = ", ".join(type(t).__name__ for t in terminals)
        verdict.duplicated.append(f"run {run_id}: {len(terminals)} terminal events ({names})")
    _check_ended_tasks(run_id, events, dependencies, terminals[0], verdict)
    return _ts(terminals[0].ts), type(terminals[0]).__name__


def _task_work(event: AnyEvent) -> tuple[TaskWork, ...]:
    """The work on tasks `event` states: one TaskQueued per attempt a TasksQueued queues, the
    event itself for a TaskQueued, TaskStarted, TaskSucceeded or TaskFailed, else none."""
    if isinstance(event, TASK_WORK):
        return (event,)
    return each_queued(event)


def _check_ended_tasks(
    run_id: str,
    events: list[AnyEvent],
    dependencies: Mapping[str, tuple[str, ...]],
    terminal: AnyEvent,
    verdict: Verdict,
) -> None:
    """In an ended run every queued attempt finished and every task reached an end."""
    queued: set[tuple[str, int]] = set()
    finished: set[tuple[str, int]] = set()
    settled: set[str] = set()  # tasks with an end: success, skip, or a failed last attempt
    for event in events:
        queued.update((q.task_id, q.attempt) for q in each_queued(event))
        if isinstance(event, ATTEMPT_ENDS):
            finished.add((event.task_id, event.attempt))
        if isinstance(event, TaskSucceeded | TaskSkipped | TaskCancelled):
            settled.add(event.task_id)
    for task, attempt in sorted(queued - finished):
        verdict.lost.append(f"run {run_id}: {task} attempt {attempt} queued, never finished")
    last_attempt: dict[str, int] = {}
    for task, attempt in queued:
        last_attempt[task] = max(attempt, last_attempt.get(task, 0))
    settled |= {t for t, a in last_attempt.items() if (t, a) in finished}
    for task in sorted(set(dependencies) - settled):
        verdict.lost.append(f"run {run_id}: {task} never reached an end")
    if isinstance(terminal, RunSucceeded):
        done = {e.task_id for e in events if isinstance(e, TaskSucceeded)}
        for task in sorted(set(dependencies) - done):
            verdict.lost.append(f"run {run_id}: succeeded without {task} succeeding")


def _check_executions(
    executions: Sequence[Execution],
    starts: Mapping[tuple[Key, int], list[TaskStarted]],
    ends: Mapping[str, tuple[float, str]],
    agents: Sequence[AgentRecord],
    verdict: Verdict,
) -> None:
    pid_of = {a.label: a.pid for a in agents}
    killed = {a.pid: a.killed_at for a in agents if a.killed_at is not None}
    killed_by_label = {a.label: a.killed_at for a in agents if a.killed_at is not None}
    verdict.executions = len(executions)
    ran: dict[tuple[Key, int], list[Execution]] = defaultdict(list)
    for execution in executions:
        ran[execution.key, pid_of.get(execution.agent, -1)].append(execution)
    for ident in sorted(set(ran) | set(starts)):
        key, agent_pid = ident
        where = f"run {key[0]}: {key[1]} attempt {key[2]}"
        n_ran, n_started = len(ran.get(ident, ())), len(starts.get(ident, ()))
        if n_ran > n_started:
            verdict.duplicated.append(
                f"{where}: {n_ran - n_started} execution(s) without a TaskStarted "
                f"(agent pid {agent_pid})"
            )
        elif n_started > n_ran:
            if agent_pid in killed:
                verdict.held_starts += n_started - n_ran
            else:
                verdict.violations.append(
                    f"{where}: TaskStarted by agent pid {agent_pid} but the command never ran"
                )
    # Per attempt, executions in the order their starts were stored.
    by_key: dict[Key, list[tuple[float, Execution]]] = defaultdict(list)
    for (key, agent_pid), found in ran.items():
        recorded = sorted(_ts(s.ts) for s in starts.get((key, agent_pid), ()))
        for started_at, execution in zip(recorded, found, strict=False):
            by_key[key].append((started_at, execution))
    for key, runs in sorted(by_key.items()):
        runs.sort(key=lambda pair: pair[0])
        where = f"run {key[0]}: {key[1]} attempt {key[2]}"
        for (_, earlier), (later_start, later) in itertools.pairwise(runs):
            if earlier.ended_at is not None and earlier.ended_at > later_start:
                verdict.duplicated.append(
                    f"{where}: ran twice at once (on {earlier.agent} until "
                    f"{earlier.ended_at - later_start:.1f}s after it started on {later.agent})"
                )
    for execution in executions:
        where = f"run {execution.key[0]}: {execution.key[1]} attempt {execution.key[2]}"
        end, how = ends.get(execution.key[0], (None, ""))
        if execution.ended_at is not None and end is not None and execution.ended_at > end:
            verdict.violations.append(
                f"{where}: command on {execution.agent} ran "
                f"{execution.ended_at - end:.2f}s after the run ended ({how})"
            )
        killed_at = killed_by_label.get(execution.agent)
        ended_at = execution.ended_at
        if ended_at is not None and killed_at is not None and ended_at > killed_at:
            verdict.orphans.append(ended_at - killed_at)

"""DESIGN.md invariants as properties over random graphs and random interleavings.

A small world is simulated: a deduplicating log (like JetStream with Nats-Msg-Id), an orchestrator
that lags behind the log, folds its own decisions eagerly and sometimes crashes (losing decisions
it had not appended yet), and agents that start, finish, fail, get redelivered, report late results
of stale attempts (of every kind) and deliver duplicates. Then the invariants are checked on what
was written. The orchestrator queues attempts in TasksQueued events (one a decision, in chunks of
`core.run.QUEUED_PER_EVENT`: `simulate`'s `per_event` makes them small, so a crash can fall
between two), deduplicated by their message id; each of their attempts is checked as a TaskQueued
was. Fencing (invariant 2) is checked as the events are folded: every result for an attempt
that is no longer current, in the orchestrator's live state and on replay, must change nothing.

`max_examples` comes from the Hypothesis profile (tests/hypothesis_profiles.py: HYPOTHESIS_PROFILE).
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import (
    TERMINAL,
    AnyEvent,
    EvaluationResult,
    RunCancelRequested,
    RunScheduled,
    TaskCancelled,
    TaskFailed,
    TaskLost,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    decode,
    each_queued,
    encode,
    msg_id,
)
from core.graph import NO_OVERRIDES, Overrides
from core.run import QUEUED, QUEUED_PER_EVENT, SUCCEEDED, RunState, advance, fold, replay
from tests.unit.core.runkit import T0, node

if TYPE_CHECKING:
    from core.graph import TaskNode


RESULTS = (TaskStarted, TaskSucceeded, TaskFailed, TaskLost, TaskCancelled)


def fold_fenced(state: RunState, event: AnyEvent, checked: Counter[str]) -> None:
    """Fold `event`; a result for an attempt that is no longer current must change nothing."""
    if isinstance(event, RESULTS) and not state.finished:
        task = state.tasks.get(event.task_id)
        if task is not None and event.attempt < task.attempt:
            before = state.snapshot()
            fold(state, event)
            assert state.snapshot() == before, f"a stale result changed the run: {event!r}"
            checked[type(event).__name__] += 1
            return
    fold(state, event)


def replay_fenced(log: list[AnyEvent], checked: Counter[str]) -> RunState:
    """Replay one run's log with the fencing oracle on every event."""
    state = fold(None, log[0])
    assert state is not None
    for event in log[1:]:
        fold_fenced(state, event, checked)
    return state


def random_graph(rnd: random.Random, size: int) -> tuple[TaskNode, ...]:
    nodes = []
    for i in range(size):
        fan_in = rnd.choice((0, 1, 1, 2, 3)) if i else 0
        deps = sorted({f"t{rnd.randrange(i)}" for _ in range(fan_in)}) if i else []
        nodes.append(
            node(
                f"t{i}",
                *deps,
                retries=rnd.choice((0, 0, 1, 2)),
                timeout=rnd.choice((None, None, 5.0)),
                evaluation_point=rnd.random() < 0.05,
            )
        )
    return tuple(nodes)


def extend(
    existing: dict[str, TaskNode],
    after: str,
    result: EvaluationResult,
    overrides: Overrides = NO_OVERRIDES,
) -> tuple[TaskNode, ...]:
    return tuple(node(t, after) for t in result.next_tasks if t not in existing)


@dataclass
class World:
    rnd: random.Random
    run_id: str = "run-1"
    log: list[AnyEvent] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    now: dt.datetime = T0
    state: RunState | None = None  # the orchestrator's in-memory state
    cursor: int = 0  # next log position the orchestrator has not received yet
    # agent side: attempts handed out by the work queue (task, attempt) -> deliveries so far
    deliveries: dict[tuple[str, int], int] = field(default_factory=dict)
    running: list[tuple[str, int, int]] = field(default_factory=list)
    acked: set[tuple[str, int]] = field(default_factory=set)
    queued: set[tuple[str, int]] = field(default_factory=set)  # attempts the log queues
    decided_twice: list[str] = field(default_factory=list)
    crashed_between_chunks: int = 0  # crashes that appended only some chunks of one decision
    stale_checked: Counter[str] = field(default_factory=Counter)  # stale results folded, by kind

    def append(self, event: AnyEvent) -> None:
        key = msg_id(event)
        if key not in self.ids:  # JetStream's duplicate window
            self.ids.add(key)
            self.log.append(event)
            self.queued.update((q.task_id, q.attempt) for q in each_queued(event))

    # ---- orchestrator
    def deliver(self, limit: int) -> None:
        assert self.state is not None
        for _ in range(limit):
            if self.cursor >= len(self.log):
                return
            event = self.log[self.cursor]
            self.cursor += 1
            fold_fenced(self.state, event, self.stale_checked)
            if self.rnd.random() < 0.1:
                fold_fenced(self.state, event, self.stale_checked)  # redelivered

    def decide(self, *, crash_midway: bool = False) -> None:
        assert self.state is not None
        # Racing decisions are appended with expected-last-subject-sequence by the service,
        # modelled here by making them only when the orchestrator has seen the whole log.
        decisions = advance(self.state, self.now, extend, racing=self.cursor >= len(self.log))
        for i, event in enumerate(decisions):
            if crash_midway and i == len(decisions) // 2:
                if i and all(isinstance(e, TasksQueued) for e in decisions[i - 1 : i + 1]):
                    self.crashed_between_chunks += 1
                self.restart()
                return
            assert not isinstance(event, TasksQueued) or event.tasks, "an empty TasksQueued"
            # Each attempt is checked on its own: a TasksQueued of another set of attempts is
            # another message (the log keeps it), so one decided again among new ones is caught.
            attempts = [(q.task_id, q.attempt) for q in each_queued(event)]
            again = [a for a in attempts if a in self.queued]
            if again or len(set(attempts)) < len(attempts):
                self.decided_twice.append(f"{msg_id(event)}: {again or attempts}")
            self.append(event)

    def restart(self) -> None:
        """Crash: in-memory state is gone; rebuild from the whole log, like the service."""
        self.state = replay(self.log).get(self.run_id)
        self.cursor = len(self.log)

    # ---- agents
    def dispatched(self) -> list[tuple[str, int]]:
        return [
            (q.task_id, q.attempt)
            for e in self.log
            for q in each_queued(e)
            if (q.task_id, q.attempt) not in self.acked
        ]

    def agent_start(self) -> None:
        work = self.dispatched()
        if not work:
            return
        task_id, attempt = self.rnd.choice(work)
        delivery = self.deliveries.get((task_id, attempt), 0) + 1
        self.deliveries[(task_id, attempt)] = delivery
        self.append(
            TaskStarted(
                run_id=self.run_id,
                ts=self.now,
                task_id=task_id,
                attempt=attempt,
                agent_id=f"agent-{delivery}",
                delivery=delivery,
            )
        )
        self.running.append((task_id, attempt, delivery))

    def agent_finish(self, fail_rate: float) -> None:
        if not self.running:
            return
        task_id, attempt, _ = self.running.pop(self.rnd.randrange(len(self.running)))
        self.acked.add((task_id, attempt))
        if self.rnd.random() < fail_rate:
            self.append(
                TaskFailed(
                    run_id=self.run_id, ts=self.now, task_id=task_id, attempt=attempt, exit_code=1
                )
            )
            return
        evaluation = None
        if self.rnd.random() < 0.5:
            evaluation = EvaluationResult(next_tasks=(f"{task_id}_x",))
        self.append(
            TaskSucceeded(
                run_id=self.run_id,
                ts=self.now,
                task_id=task_id,
                attempt=attempt,
                evaluation=evaluation,
            )
        )

    def stale_result(self) -> None:
        """A late result of some dispatched attempt: a redelivered copy finishing late.

        For an attempt that is no longer current it is of any kind (started, succeeded, failed,
        lost, cancelled); for the current attempt it is a success, like a real late result.
        """
        dispatched = [(q.task_id, q.attempt) for e in self.log for q in each_queued(e)]
        if not dispatched:
            return
        task_id, attempt = self.rnd.choice(dispatched)
        state = replay(self.log)[self.run_id]  # the run as of where this lands in the log
        stale = attempt < state.tasks[task_id].attempt
        kind = self.rnd.choice(RESULTS) if stale else TaskSucceeded
        r, ts, late = self.run_id, self.now, "late"
        event: AnyEvent
        if kind is TaskStarted:
            delivery = 100 + self.deliveries.get((task_id, attempt), 0)
            event = TaskStarted(
                run_id=r, ts=ts, task_id=task_id, attempt=attempt, agent_id=late, delivery=delivery
            )
        elif kind is TaskFailed:
            event = TaskFailed(run_id=r, ts=ts, task_id=task_id, attempt=attempt, agent_id=late)
        elif kind is TaskLost:
            event = TaskLost(run_id=r, ts=ts, task_id=task_id, attempt=attempt, message=late)
        elif kind is TaskCancelled:
            event = TaskCancelled(run_id=r, ts=ts, task_id=task_id, attempt=attempt, agent_id=late)
        else:
            event = TaskSucceeded(run_id=r, ts=ts, task_id=task_id, attempt=attempt, agent_id=late)
        if stale:
            # Late enough to be past JetStream's duplicate window (minutes): stored again even
            # when the attempt already has a result of that kind.
            self.log.append(event)
        else:
            self.append(event)

    def terminal_events(self) -> list[AnyEvent]:
        return [e for e in self.log if isinstance(e, TERMINAL)]


def simulate(
    seed: int, size: int, fail_rate: float, steps: int, per_event: int = QUEUED_PER_EVENT
) -> World:
    """A run in the world; `per_event` (core.run.QUEUED_PER_EVENT) small splits decisions in
    several TasksQueued, as 1000 does for a large run."""
    with mock.patch("core.run.QUEUED_PER_EVENT", per_event):
        return _simulate(seed, size, fail_rate, steps)


def _simulate(seed: int, size: int, fail_rate: float, steps: int) -> World:
    rnd = random.Random(seed)
    world = World(rnd=rnd)
    world.append(
        RunScheduled(
            run_id=world.run_id,
            ts=T0,
            kind="dag",
            target="g",
            name="g",
            graph=random_graph(rnd, size),
        )
    )
    world.restart()
    for _ in range(steps):
        action = rnd.random()
        if action < 0.25:
            world.deliver(rnd.randrange(1, 8))
        elif action < 0.45:
            world.decide(crash_midway=rnd.random() < 0.03)
        elif action < 0.65:
            world.agent_start()
        elif action < 0.85:
            world.agent_finish(fail_rate)
        elif action < 0.88:
            world.stale_result()
        elif action < 0.885:
            world.append(RunCancelRequested(run_id=world.run_id, ts=world.now))
        elif action < 0.9:
            world.restart()
        else:
            world.now += dt.timedelta(seconds=rnd.randrange(0, 30))
    # Drain: everything gets delivered and finished; time moves on until the run ends.
    for _ in range(20 * size + 200):
        if world.terminal_events():
            break
        world.deliver(len(world.log))
        world.decide()
        while world.dispatched() or world.running:
            world.agent_start()
            world.agent_finish(fail_rate)
        world.now += dt.timedelta(seconds=30)
    world.deliver(len(world.log))
    return world


def comparable(state: RunState) -> dict[str, object]:
    """A run's snapshot; a cancel request that raced with the run's own end changes nothing."""
    snap = state.snapshot()
    if state.status in ("succeeded", "failed"):
        snap.pop("cancel_requested")
        snap.pop("cancel_reason")
    return snap


def per_task(log: list[AnyEvent]) -> list[AnyEvent]:
    """`log` with each TasksQueued replaced by one TaskQueued per attempt (older logs)."""
    return [q for e in log for q in (each_queued(e) if isinstance(e, TasksQueued) else (e,))]


def assert_attempts_in_order(log: list[AnyEvent]) -> None:
    """A task's attempts are queued as 1, 2, 3, ... and never more than its retries allow."""
    attempts: dict[str, list[int]] = {}
    for q in (q for event in log for q in each_queued(event)):
        attempts.setdefault(q.task_id, []).append(q.attempt)
    tasks = replay(log)[log[0].run_id].tasks
    for task_id, queued in attempts.items():
        assert queued == list(range(1, len(queued) + 1)), (task_id, queued)
        assert len(queued) <= tasks[task_id].node.retries.count + 1, (task_id, queued)


def assert_dependency_order(log: list[AnyEvent]) -> None:
    """Replaying the log, a task only becomes queued when every dependency has succeeded."""
    state: RunState | None = None
    for event in log:
        attempts = each_queued(event)
        if attempts and state is not None:
            tasks = state.tasks
            before = {
                q.task_id: (t.status, t.attempt) for q in attempts if (t := tasks.get(q.task_id))
            }
            fold(state, event)
            for q in attempts:
                task = tasks.get(q.task_id)
                if task is None:
                    continue
                after = (task.status, task.attempt)
                if after != before[q.task_id] and after == (QUEUED, q.attempt):
                    for dep in task.node.dependencies:
                        assert tasks[dep].status == SUCCEEDED, (q.task_id, dep)
            continue
        state = fold(state, event)


@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1, 40),
    fail_rate=st.sampled_from([0.0, 0.1, 0.3]),
    steps=st.integers(0, 400),
    per_event=st.sampled_from([QUEUED_PER_EVENT, 1, 2, 5]),
)
def test_invariants_hold_over_random_interleavings(
    seed: int, size: int, fail_rate: float, steps: int, per_event: int
) -> None:
    world = simulate(seed, size, fail_rate, steps, per_event)
    # 3. exactly one terminal event, also when tasks fail in the middle
    assert len(world.terminal_events()) == 1
    # 1. dependency order; no attempt is decided twice (the log's deduplication would hide it,
    # so the decisions are checked), and each task's attempts are queued in order, within its
    # retries
    assert_dependency_order(world.log)
    assert world.decided_twice == []
    assert_attempts_in_order(world.log)
    # 2. fencing: every result of an attempt that was no longer current changed nothing, in the
    # orchestrator's live state (checked as it folded) and on replay (checked here)
    replay_fenced(world.log, Counter())
    # 4. replay determinism and idempotence; a reader decoding the stored bytes gets the same
    # state; eager folding agrees with the log's order
    replayed = replay(world.log)[world.run_id].snapshot()
    stored = [decode(encode(event)) for event in world.log]
    assert replay(stored)[world.run_id].snapshot() == replayed
    doubled = [e for event in world.log for e in (event, event)]
    assert replay(doubled)[world.run_id].snapshot() == replayed
    # the log as an orchestrator writing one TaskQueued per attempt would have written it
    assert replay(per_task(world.log))[world.run_id].snapshot() == replayed
    assert world.state is not None
    assert comparable(world.state) == comparable(replay(world.log)[world.run_id])
    # the terminal status matches the tasks
    state = replay(world.log)[world.run_id]
    statuses = {t.status for t in state.tasks.values()}
    if state.status == "succeeded":
        assert statuses == {SUCCEEDED}
    elif state.status == "failed":
        assert "failed" in statuses


@settings(max_examples=max(10, settings().max_examples // 15))
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(150, 300),
    per_event=st.sampled_from([QUEUED_PER_EVENT, 32]),
)
def test_invariants_hold_for_large_graphs(seed: int, size: int, per_event: int) -> None:
    world = simulate(seed, size, 0.05, 600, per_event)
    assert len(world.terminal_events()) == 1
    assert_dependency_order(world.log)
    assert world.decided_twice == []
    assert_attempts_in_order(world.log)
    replay_fenced(world.log, Counter())
    assert world.state is not None
    assert comparable(world.state) == comparable(replay(world.log)[world.run_id])


def test_the_world_folds_stale_results_of_every_kind() -> None:
    """The fencing oracle is not vacuous: stale results of every kind reach it."""
    live: Counter[str] = Counter()
    replayed: Counter[str] = Counter()
    for seed in range(200):
        world = simulate(seed, 12, 0.3, 400)
        live.update(world.stale_checked)
        replay_fenced(world.log, replayed)
    kinds = {cls.__name__ for cls in RESULTS}
    assert set(live) == kinds, live
    assert set(replayed) == kinds, replayed


def test_the_world_crashes_between_the_chunks_of_a_decision() -> None:
    """The decided-twice oracle meets decisions split in several TasksQueued that a crash
    appended only in part: after the restart, the rest is decided (and nothing appended again)."""
    crashes = sum(simulate(seed, 12, 0.3, 400, 1).crashed_between_chunks for seed in range(100))
    assert crashes > 0


def test_the_ci_profile_runs_more_examples_than_dev() -> None:
    dev, ci = settings.get_profile("dev"), settings.get_profile("ci")
    assert ci.max_examples >= 6 * dev.max_examples  # (tests/hypothesis_profiles.py)
    assert dev.deadline is None and ci.deadline is None  # folding time varies with machine load

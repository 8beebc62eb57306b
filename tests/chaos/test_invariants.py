"""The chaos suite's checks catch what they claim to: each invariant broken once, on a made-up
log and ledger (a check that never fails proves nothing). No servers: these take milliseconds."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
from pathlib import Path

from core.definitions.checks import check_definitions
from core.events import (
    AnyEvent,
    QueuedTask,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskFailed,
    TaskQueued,
    TaskSkipped,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
)
from core.scheduling import plan_run
from core.snapshots import TaskNode
from tests.chaos.invariants import AgentRecord, Execution, Verdict, check, parse_ledger
from tests.chaos.workload import EXAMPLE_TARGETS, LEDGER_ENV, examples, recorded, workload

# Pure checks of the checker: they run with every test run, not only with `just chaos`.

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RUN = "r"
AGENT = AgentRecord("agent-1", 100)
KILLED = AgentRecord("agent-2", 200, killed_at=(T0 + dt.timedelta(seconds=5)).timestamp())


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def scheduled() -> RunScheduled:
    """a -> b"""
    graph = (
        TaskNode(id="a", task_id="a", command="true"),
        TaskNode(id="b", task_id="b", command="true", dependencies=("a",)),
    )
    return RunScheduled(run_id=RUN, ts=at(0), kind="outcome", target="b", name="b", graph=graph)


def fan() -> RunScheduled:
    """x, y (independent: queued in one decision)"""
    graph = (
        TaskNode(id="x", task_id="x", command="true"),
        TaskNode(id="y", task_id="y", command="true"),
    )
    return RunScheduled(run_id=RUN, ts=at(0), kind="dag", target="f", name="f", graph=graph)


def queued(t: float, *tasks: str, attempt: int = 1) -> TasksQueued:
    """The orchestrator's one decision queueing `attempt` of each of `tasks`."""
    return TasksQueued(
        run_id=RUN,
        ts=at(t),
        tasks=tuple(QueuedTask(task_id=task, attempt=attempt, queue="default") for task in tasks),
    )


def started_and_succeeded(
    task: str, t: float, *, pid: int = 100, attempt: int = 1
) -> list[AnyEvent]:
    return [
        TaskStarted(
            run_id=RUN, ts=at(t + 0.1), task_id=task, attempt=attempt, agent_id="x", pid=pid
        ),
        TaskSucceeded(run_id=RUN, ts=at(t + 0.5), task_id=task, attempt=attempt),
    ]


def ran(
    task: str, t: float, *, pid: int = 100, attempt: int = 1, old: bool = False
) -> list[AnyEvent]:
    """Queued (in a TasksQueued of its own; `old`: a TaskQueued, as older logs have), started,
    succeeded."""
    decided: AnyEvent = (
        TaskQueued(run_id=RUN, ts=at(t), task_id=task, attempt=attempt, queue="default")
        if old
        else queued(t, task, attempt=attempt)
    )
    return [decided, *started_and_succeeded(task, t, pid=pid, attempt=attempt)]


def clean_run(*, old: bool = False) -> list[AnyEvent]:
    return [
        scheduled(),
        *ran("a", 1, old=old),
        *ran("b", 2, old=old),
        RunSucceeded(run_id=RUN, ts=at(3)),
    ]


def execution(task: str, *, agent: str = "agent-1", ended: float | None = None) -> Execution:
    return Execution(
        (RUN, task, 1), agent, 4242, ended_at=None if ended is None else at(ended).timestamp()
    )


def executions() -> list[Execution]:
    return [execution("a", ended=1.4), execution("b", ended=2.4)]


def verdict(
    events: list[AnyEvent],
    ran: list[Execution] | None = None,
    *,
    runs: tuple[str, ...] = (RUN,),
) -> Verdict:
    return check(
        list(enumerate(events, start=1)),
        executions() if ran is None else ran,
        scheduled=runs,
        agents=[AGENT, KILLED],
    )


def test_a_clean_run_passes_every_check() -> None:
    result = verdict(clean_run())
    assert result.problems == []
    assert (result.runs, result.tasks, result.started, result.executions) == (1, 2, 2, 2)


def test_a_clean_run_of_an_older_log_with_task_queued_passes_every_check() -> None:
    result = verdict(clean_run(old=True))
    assert result.problems == []
    assert (result.runs, result.tasks, result.started, result.executions) == (1, 2, 2, 2)


def test_every_attempt_of_one_tasks_queued_is_queued() -> None:
    both = [
        fan(),
        queued(1, "x", "y"),
        *started_and_succeeded("x", 1),
        *started_and_succeeded("y", 1.2),
    ]
    ran_both = [
        Execution((RUN, "x", 1), "agent-1", 4242, ended_at=at(1.4).timestamp()),
        Execution((RUN, "y", 1), "agent-1", 4243, ended_at=at(1.6).timestamp()),
    ]
    result = verdict([*both, RunSucceeded(run_id=RUN, ts=at(2))], ran_both)
    assert result.problems == []
    assert (result.tasks, result.started) == (2, 2)
    # y's attempt, queued in the same event as x's, never finished: lost like a TaskQueued's
    events = [
        fan(),
        queued(1, "x", "y"),
        *started_and_succeeded("x", 1),
        RunSucceeded(run_id=RUN, ts=at(2)),
    ]
    assert verdict(events, ran_both[:1]).lost == [
        "run r: y attempt 1 queued, never finished",
        "run r: y never reached an end",
        "run r: succeeded without y succeeding",
    ]


def test_a_task_s_last_attempt_is_the_last_one_queued_in_any_form() -> None:
    """A failed attempt 1 (TaskQueued), then attempt 2 queued in a TasksQueued and never run: the
    task has not reached its end."""
    events: list[AnyEvent] = [
        scheduled(),
        TaskQueued(run_id=RUN, ts=at(1), task_id="a", attempt=1, queue="default"),
        started_and_succeeded("a", 1)[0],
        TaskFailed(run_id=RUN, ts=at(1.5), task_id="a", attempt=1),
        queued(2, "a", attempt=2),
        TaskSkipped(run_id=RUN, ts=at(2.5), task_id="b", attempt=1),
        RunFailed(run_id=RUN, ts=at(3), failed_tasks=("a",)),
    ]
    assert verdict(events, [execution("a", ended=1.4)]).lost == [
        "run r: a attempt 2 queued, never finished",
        "run r: a never reached an end",
    ]


def test_two_terminal_events_are_a_duplicate() -> None:
    result = verdict([*clean_run(), RunFailed(run_id=RUN, ts=at(4))])
    assert result.duplicated == ["run r: 2 terminal events (RunSucceeded, RunFailed)"]


def test_two_successes_for_one_attempt_are_a_duplicate() -> None:
    events = clean_run()
    events.insert(4, TaskSucceeded(run_id=RUN, ts=at(1.7), task_id="a", attempt=1))
    assert verdict(events).duplicated == ["run r: a attempt 1 succeeded 2 times"]


def test_a_start_before_a_dependency_succeeded_is_a_violation() -> None:
    events = [scheduled(), *ran("b", 0.5), *ran("a", 1), RunSucceeded(run_id=RUN, ts=at(3))]
    assert verdict(events).violations == ["run r: b started before a succeeded"]


def test_a_start_after_the_run_ended_is_a_violation() -> None:
    events = [*clean_run(), *ran("b", 4, attempt=2)[1:2]]
    result = verdict(events, [*executions(), Execution((RUN, "b", 2), "agent-1", 4343)])
    assert result.violations == [
        "run r: TaskStarted of b attempt 2 after the run ended (RunSucceeded)"
    ]


def test_attempts_queued_after_the_run_ended_are_violations_old_and_new() -> None:
    late: list[AnyEvent] = [
        queued(4, "a", "b", attempt=2),
        TaskQueued(run_id=RUN, ts=at(4), task_id="a", attempt=3, queue="default"),
    ]
    result = verdict([*clean_run(), *late])
    assert result.violations == [
        "run r: TasksQueued of a attempt 2 after the run ended (RunSucceeded)",
        "run r: TasksQueued of b attempt 2 after the run ended (RunSucceeded)",
        "run r: TaskQueued of a attempt 3 after the run ended (RunSucceeded)",
    ]
    assert result.lost == [
        "run r: a attempt 2 queued, never finished",
        "run r: a attempt 3 queued, never finished",
        "run r: b attempt 2 queued, never finished",
    ]


def test_a_run_without_an_end_is_stuck_and_a_missing_run_is_lost() -> None:
    result = verdict(clean_run()[:-1], runs=(RUN, "never-stored"))
    assert result.stuck == ["run r: no terminal event"]
    assert result.lost == ["run never-stored: scheduled, not in the log"]


def test_an_attempt_queued_and_never_finished_in_an_ended_run_is_lost() -> None:
    events = [scheduled(), *ran("a", 1), *ran("b", 2)[:2], RunSucceeded(run_id=RUN, ts=at(3))]
    assert verdict(events).lost == [
        "run r: b attempt 1 queued, never finished",
        "run r: b never reached an end",
        "run r: succeeded without b succeeding",
    ]


def test_a_failed_run_with_every_task_settled_is_fine() -> None:
    events: list[AnyEvent] = [
        scheduled(),
        *ran("a", 1)[:2],
        TaskFailed(run_id=RUN, ts=at(1.5), task_id="a", attempt=1),
        TaskSkipped(run_id=RUN, ts=at(1.5), task_id="b", attempt=1),
        RunFailed(run_id=RUN, ts=at(1.5), failed_tasks=("a",)),
    ]
    assert verdict(events, [execution("a")]).problems == []


def test_an_execution_without_a_recorded_start_is_a_duplicate() -> None:
    result = verdict(clean_run(), [*executions(), execution("a", agent="agent-2")])
    assert result.duplicated == [
        "run r: a attempt 1: 1 execution(s) without a TaskStarted (agent pid 200)"
    ]


def test_a_recorded_start_that_never_ran_is_a_violation_unless_its_agent_was_killed() -> None:
    assert verdict(clean_run(), executions()[1:]).violations == [
        "run r: a attempt 1: TaskStarted by agent pid 100 but the command never ran"
    ]
    events = clean_run()
    held = TaskStarted(run_id=RUN, ts=at(1.05), task_id="a", attempt=1, agent_id="y", pid=200)
    events.insert(3, held)
    result = verdict(events)
    assert result.problems == []
    assert (result.held_starts, result.started, result.executions) == (1, 3, 2)


def test_two_executions_of_one_attempt_at_once_are_a_duplicate() -> None:
    events = clean_run()
    redelivered = TaskStarted(
        run_id=RUN, ts=at(1.2), task_id="a", attempt=1, agent_id="y", pid=200, delivery=2
    )
    events.insert(3, redelivered)
    ran = [*executions(), execution("a", agent="agent-2", ended=1.45)]
    result = verdict(events, ran)
    assert result.redeliveries == 1
    assert [d.split(" (")[0] for d in result.duplicated] == [
        "run r: a attempt 1: ran twice at once"
    ]


def test_a_command_that_ends_after_its_run_is_a_violation_and_an_orphan_is_measured() -> None:
    events = clean_run()
    assert isinstance(events[2], TaskStarted)
    events[2] = TaskStarted(run_id=RUN, ts=at(1.1), task_id="a", attempt=1, pid=200, agent_id="y")
    late = [execution("a", agent="agent-2", ended=9.0), execution("b", ended=2.4)]
    result = verdict(events, late)
    assert result.violations == [
        "run r: a attempt 1: command on agent-2 ran 6.00s after the run ended (RunSucceeded)"
    ]
    assert result.orphans == [4.0]  # agent-2 was killed at 5 s


def test_the_ledger_pairs_starts_with_ends_and_skips_torn_lines() -> None:
    text = (
        "S r a 1 agent-1 11\n"
        "S r b 1 agent-2 12\n"
        "E r a 1 agent-1 11 0 1767225601.5\n"
        "S r c\n"  # cut short
    )
    parsed = {e.key[1]: e for e in parse_ledger(text)}
    assert set(parsed) == {"a", "b"}
    assert parsed["a"].ended_at == 1767225601.5 and parsed["a"].exit_code == 0
    assert parsed["b"].ended_at is None


def test_a_recorded_command_writes_its_start_and_its_end_and_keeps_its_exit_code(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger"
    env = {
        LEDGER_ENV: str(ledger),
        "CX_CHAOS_AGENT": "agent-9",
        "CYCLONETIX_RUN_ID": "run-1",
        "CYCLONETIX_TASK_ID": "t:set",
        "CYCLONETIX_ATTEMPT": "2",
        "PATH": "/usr/bin:/bin",
    }
    command = recorded('echo "$CYCLONETIX_TASK_ID"\nexit 3')
    done = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, check=False)
    assert done.returncode == 3 and done.stdout == b"t:set\n"
    [run] = parse_ledger(ledger.read_text())
    assert run.key == ("run-1", "t:set", 2) and run.agent == "agent-9" and run.exit_code == 3
    assert run.ended_at is not None


def test_the_workload_is_valid_and_the_same_for_the_same_seed() -> None:
    first = workload(random.Random(7), graphs=5, max_tasks=6)
    second = workload(random.Random(7), graphs=5, max_tasks=6)
    assert first == second
    assert len(first.generated_dags) == 5
    assert {"nightly_etl", "ml_training"} <= set(first.definitions.dags)
    assert all("CX_CHAOS_LEDGER" in t.command for t in examples().tasks.values())
    assert check_definitions(first.definitions) == []
    for kind, target in [*EXAMPLE_TARGETS, *(("dag", g) for g in first.generated_dags)]:
        plan_run(first.definitions, kind=kind, target=target, now=T0, entropy=bytes(16))

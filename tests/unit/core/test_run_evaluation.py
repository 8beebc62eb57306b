"""Evaluation points through the state machine with real graph assembly (`extend_graph`).

The orchestrator extends a run with its *current* definitions; these tests do the same at the
core level, so the policies are checked without a server.
"""

from __future__ import annotations

import textwrap

from core.definitions import Definitions, load_definitions
from core.events import EvaluationResult, GraphExtended, RunScheduled
from core.graph import NO_OVERRIDES, Overrides, TaskNode, extend_graph, outcome_graph
from core.run import EVALUATING, PENDING, SUCCEEDED, Extender, RunState, advance, dispatch_for, fold
from tests.unit.core.runkit import T0, queued, queued_ids, succeeded


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def definitions(version: str) -> Definitions:
    return load_definitions(
        {
            "tasks/prepare.yaml": f"id: prepare\ncommand: echo prepare {version}\n",
            "tasks/check.yaml": y(f"""
                id: check
                command: echo check {version}
                dependencies: [prepare]
                evaluation_point: true
                """),
            "tasks/deploy.yaml": f"id: deploy\ncommand: echo deploy {version}\n"
            "dependencies: [prepare]\n",
            "tasks/build.yaml": "id: build\ncommand: echo build\ndependencies: [prepare]\n",
            "tasks/ship.yaml": "id: ship\ncommand: echo ship\ndependencies: [build]\n",
        }
    )


def extender(defs: Definitions) -> Extender:
    """What the orchestrator passes to `advance`: extend with the definitions it has now."""

    def extend(
        existing: dict[str, TaskNode],
        after: str,
        result: EvaluationResult,
        overrides: Overrides = NO_OVERRIDES,
    ) -> tuple[TaskNode, ...]:
        return extend_graph(
            existing,
            defs,
            after=after,
            next_tasks=result.next_tasks,
            parameters=result.parameters,
            overrides=overrides,
        )

    return extend


def scheduled_check(defs: Definitions, params: dict[str, str] | None = None) -> RunState:
    event = RunScheduled(
        run_id="run-1",
        ts=T0,
        kind="outcome",
        target="check",
        name="check",
        graph=outcome_graph(defs, "check"),
        params=params or {},
    )
    state = fold(None, event)
    assert state is not None
    assert queued_ids(advance(state, T0)) == ["prepare"]
    fold(state, succeeded("run-1", "prepare"))
    assert queued_ids(advance(state, T0)) == ["check"]
    return state


def evaluate(state: RunState, *next_tasks: str) -> None:
    fold(state, succeeded("run-1", "check", evaluation=EvaluationResult(next_tasks=next_tasks)))
    assert state.tasks["check"].status == EVALUATING


def test_a_new_task_whose_dependency_already_succeeded_is_ready_at_once() -> None:
    defs = definitions("v1")
    state = scheduled_check(defs)
    evaluate(state, "deploy")  # deploy depends on prepare, which succeeded long ago
    decisions = advance(state, T0, extender(defs))
    (extended,) = [e for e in decisions if isinstance(e, GraphExtended)]
    assert [n.id for n in extended.nodes] == ["deploy"]
    assert extended.nodes[0].dependencies == ("prepare", "check")
    assert queued_ids(decisions) == ["deploy"]  # in the same round as the extension


def test_a_new_prerequisite_whose_dependency_already_succeeded_is_ready_at_once() -> None:
    defs = definitions("v1")
    state = scheduled_check(defs)
    evaluate(state, "ship")  # ship needs build (not in the run), build needs prepare (done)
    decisions = advance(state, T0, extender(defs))
    assert queued_ids(decisions) == ["build"]
    assert state.tasks["build"].node.dependencies == ("prepare",)
    assert state.tasks["ship"].status == PENDING and state.tasks["ship"].remaining == 1
    fold(state, succeeded("run-1", "build"))
    assert queued_ids(advance(state, T0, extender(defs))) == ["ship"]


def test_extensions_use_the_current_definitions_and_the_run_keeps_its_snapshot() -> None:
    """Policy (core.graph.extend_graph): new tasks come from the definitions current when the
    decision is applied; tasks already in the run keep the spec they were scheduled with."""
    state = scheduled_check(definitions("v1"))
    evaluate(state, "deploy", "prepare")  # prepare is already in the run
    decisions = advance(state, T0, extender(definitions("v2")))  # changed since scheduling
    (extended,) = [e for e in decisions if isinstance(e, GraphExtended)]
    assert [n.id for n in extended.nodes] == ["deploy"]  # prepare is not added again
    assert state.tasks["deploy"].node.command == "echo deploy v2"
    assert state.tasks["prepare"].node.command == "echo prepare v1"
    assert state.tasks["check"].node.command == "echo check v1"
    assert state.tasks["check"].status == SUCCEEDED
    (deploy,) = queued(decisions)
    assert dispatch_for(state, deploy.task_id).command == "echo deploy v2"


def test_tasks_added_by_an_evaluation_point_get_the_runs_schedule_time_parameters() -> None:
    """`--param` is the top of the precedence for every task of the run, also the ones an
    evaluation point adds later; the decision's own parameters are above it."""
    defs = definitions("v1")
    state = scheduled_check(defs, {"REGION": "eu", "deploy.TIER": "gold", "build.TIER": "x"})
    decision = EvaluationResult(next_tasks=("deploy",), parameters={"deploy": {"REGION": "us"}})
    fold(state, succeeded("run-1", "check", evaluation=decision))
    advance(state, T0, extender(defs))
    assert state.tasks["deploy"].node.parameters == {"REGION": "us", "TIER": "gold"}

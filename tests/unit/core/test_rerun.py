"""core.rerun: the graph of a rerun, as properties over random runs at random moments.

The runs come from the simulated world of test_run_properties (random graphs with evaluation
points, failures, retries, redeliveries, cancellations), folded up to a random point of their
log, so the states hold every task status — including tasks that never ran and nodes that
evaluation points added. `max_examples` comes from the Hypothesis profile.
"""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import EvaluationResult, GraphExtended
from core.rerun import UnknownTask, downstream, rerun_graph
from core.run import SUCCEEDED, RunState, fold, replay
from core.snapshots import TaskNode
from tests.unit.core.runkit import (
    DIAMOND,
    T0,
    node,
    queued,
    scheduled,
    start,
    started,
    succeeded,
)
from tests.unit.core.test_run_properties import random_graph, simulate

# Simulating a world costs more than one rerun: a fraction of the profile's examples.
EXAMPLES = max(20, settings().max_examples // 3)


@st.composite
def run_states(draw: st.DrawFn) -> RunState:
    """A run folded from a random prefix (at least its RunScheduled) of a simulated log."""
    world = simulate(
        draw(st.integers(0, 2**32)),
        draw(st.integers(1, 25)),
        draw(st.sampled_from([0.0, 0.2, 0.5])),
        draw(st.integers(0, 200)),
    )
    # Half of them ended (every task done), half caught at a random moment.
    cut = draw(st.one_of(st.just(len(world.log)), st.integers(1, len(world.log))))
    return replay(world.log[:cut])[world.run_id]


def state_of(*nodes: TaskNode) -> RunState:
    state = fold(None, scheduled(*nodes))
    assert state is not None
    return state


def closure_oracle(state: RunState, task_id: str) -> set[str]:
    """Everything downstream of `task_id`, by fixpoint over the nodes' own dependency lists."""
    found = {task_id}
    grew = True
    while grew:
        grew = False
        for t in state.tasks.values():
            if t.node.id not in found and found.intersection(t.node.dependencies):
                found.add(t.node.id)
                grew = True
    return found


def assert_well_formed(state: RunState, graph: tuple[TaskNode, ...]) -> None:
    """Closed under dependencies, each node the earlier run's with only dependencies outside
    the rerun dropped, in topological order, and otherwise in the earlier run's order."""
    ids = [n.id for n in graph]
    assert len(ids) == len(set(ids))
    position = {node_id: i for i, node_id in enumerate(ids)}
    for n in graph:
        earlier = state.tasks[n.id].node
        assert n.dependencies == tuple(d for d in earlier.dependencies if d in position)
        assert msgspec.structs.replace(n, dependencies=earlier.dependencies) == earlier
        for dep in n.dependencies:
            assert position[dep] < position[n.id], f"{dep} after its dependent {n.id}"
    assert ids == [t for t in state.tasks if t in position]


@settings(max_examples=EXAMPLES)
@given(state=run_states())
def test_a_whole_rerun_is_every_node_as_it_was(state: RunState) -> None:
    graph = rerun_graph(state)
    assert_well_formed(state, graph)
    assert graph == tuple(t.node for t in state.tasks.values())


@settings(max_examples=EXAMPLES)
@given(state=run_states(), pick=st.integers(0, 10**6))
def test_a_rerun_from_a_task_is_exactly_its_downstream_closure(state: RunState, pick: int) -> None:
    task_id = list(state.tasks)[pick % len(state.tasks)]
    graph = rerun_graph(state, from_task=task_id)
    assert_well_formed(state, graph)
    assert {n.id for n in graph} == closure_oracle(state, task_id)
    assert graph[0].id == task_id and graph[0].dependencies == ()


@settings(max_examples=EXAMPLES)
@given(state=run_states())
def test_a_rerun_from_failure_is_exactly_what_did_not_succeed(state: RunState) -> None:
    not_succeeded = {t for t, run in state.tasks.items() if run.status != SUCCEEDED}
    if not not_succeeded:
        with pytest.raises(ValueError, match="nothing to rerun from failure"):
            rerun_graph(state, from_failure=True)
        return
    graph = rerun_graph(state, from_failure=True)
    assert_well_formed(state, graph)
    assert {n.id for n in graph} == not_succeeded
    for n in graph:  # what is dropped is exactly the dependencies that succeeded
        dropped = set(state.tasks[n.id].node.dependencies) - set(n.dependencies)
        assert all(state.tasks[d].status == SUCCEEDED for d in dropped)


@given(seed=st.integers(0, 2**32), size=st.integers(1, 40), pick=st.integers(0, 10**6))
def test_a_snapshot_out_of_order_comes_back_in_topological_order(
    seed: int, size: int, pick: int
) -> None:
    """The run's order is topological in practice; rerun_graph does not rely on it."""
    rnd = random.Random(seed)
    nodes = list(random_graph(rnd, size))
    rnd.shuffle(nodes)
    state = state_of(*nodes)
    whole = rerun_graph(state)
    position = {n.id: i for i, n in enumerate(whole)}
    assert set(position) == set(state.tasks)
    for n in whole:
        assert all(position[d] < position[n.id] for d in n.dependencies)
    task_id = nodes[pick % len(nodes)].id
    part = rerun_graph(state, from_task=task_id)
    assert {n.id for n in part} == closure_oracle(state, task_id)
    position = {n.id: i for i, n in enumerate(part)}
    for n in part:
        assert all(position[d] < position[n.id] for d in n.dependencies)


def test_the_diamond_from_one_branch_and_from_failure() -> None:
    state = state_of(*DIAMOND)
    assert [(n.id, n.dependencies) for n in rerun_graph(state, from_task="b")] == [
        ("b", ()),
        ("d", ("b",)),
    ]
    assert downstream(DIAMOND, "a") == {"a", "b", "c", "d"}
    state.tasks["a"].status = SUCCEEDED  # (as if `a` had run)
    assert [(n.id, n.dependencies) for n in rerun_graph(state, from_failure=True)] == [
        ("b", ()),
        ("c", ()),
        ("d", ("b", "c")),
    ]


def test_nodes_an_evaluation_point_added_are_rerun_too() -> None:
    state, decided = start(node("e", evaluation_point=True))
    [attempt] = queued(decided)
    fold(state, started(attempt))
    fold(state, succeeded("run-1", "e", evaluation=EvaluationResult(next_tasks=("x",))))
    fold(
        state, GraphExtended(run_id="run-1", ts=T0, task_id="e", attempt=1, nodes=(node("x", "e"),))
    )
    assert [(n.id, n.dependencies) for n in rerun_graph(state)] == [("e", ()), ("x", ("e",))]
    # e succeeded (its decision is in the run's context and graph); x never ran
    assert [(n.id, n.dependencies) for n in rerun_graph(state, from_failure=True)] == [("x", ())]


def test_a_long_chain_given_backwards_needs_no_recursion() -> None:
    chain = [node("t0"), *(node(f"t{i}", f"t{i - 1}") for i in range(1, 5000))]
    graph = rerun_graph(state_of(*reversed(chain)))
    assert [n.id for n in graph] == [n.id for n in chain]


def test_refusals_are_one_line() -> None:
    state = state_of(*DIAMOND)
    with pytest.raises(ValueError, match="not both") as both:
        rerun_graph(state, from_task="b", from_failure=True)
    with pytest.raises(
        UnknownTask, match=r"run 'run-1' has no task 'zzz' \(its tasks: a, b, c, d\)"
    ):
        rerun_graph(state, from_task="zzz")
    for t in state.tasks.values():
        t.status = SUCCEEDED
    with pytest.raises(ValueError, match="nothing to rerun from failure: all its 4 tasks") as done:
        rerun_graph(state, from_failure=True)
    assert not isinstance(done.value, UnknownTask) and not isinstance(both.value, UnknownTask)
    assert "\n" not in str(done.value) + str(both.value)

"""Graph assembly: outcomes, DAGs, parameter sets, precedence, contexts, evaluation points."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
import textwrap

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.definitions import (
    ContextDef,
    Definitions,
    TaskDef,
    check_definitions,
    load_definitions,
)
from core.graph import (
    GraphError,
    Overrides,
    TaskNode,
    dag_graph,
    extend_graph,
    outcome_graph,
    overrides_from,
    parse_param,
    resolve_context,
    task_environment,
)
from core.snapshots import RetrySpec


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def ids(nodes: tuple[TaskNode, ...]) -> list[str]:
    return [n.id for n in nodes]


def by_id(nodes: tuple[TaskNode, ...]) -> dict[str, TaskNode]:
    return {n.id: n for n in nodes}


DIAMOND = load_definitions(
    {
        "tasks/a.yaml": "id: a\ncommand: echo a\n",
        "tasks/b.yaml": "id: b\ncommand: echo b\ndependencies: [a]\n",
        "tasks/c.yaml": "id: c\ncommand: echo c\ndependencies: [a]\n",
        "tasks/d.yaml": "id: d\ncommand: echo d\ndependencies: [b, c]\n",
        "tasks/e.yaml": "id: e\ncommand: echo e\ndependencies: [d]\n",
        "tasks/lonely.yaml": "id: lonely\ncommand: echo alone\n",
    }
)


# --- outcomes ---------------------------------------------------------------------------------


def test_outcome_is_the_target_and_its_ancestors_only() -> None:
    assert ids(outcome_graph(DIAMOND, "d")) == ["a", "b", "c", "d"]
    assert ids(outcome_graph(DIAMOND, "b")) == ["a", "b"]
    assert ids(outcome_graph(DIAMOND, "a")) == ["a"]
    assert ids(outcome_graph(DIAMOND, "lonely")) == ["lonely"]


def test_outcome_nodes_carry_the_resolved_spec() -> None:
    defs = load_definitions(
        {
            "tasks/t.yaml": y("""
                id: t
                name: Train
                command: echo "$EPOCHS"
                queue: gpu
                retries: 3
                timeout_seconds: 60
                evaluation_point: true
                """),
        }
    )
    (node,) = outcome_graph(defs, "t")
    assert node.id == node.task_id == "t"
    assert node.name == "Train"
    assert node.command == 'echo "$EPOCHS"'
    assert node.queue == "gpu"
    assert node.retries.count == 3
    assert node.timeout_seconds == 60
    assert node.evaluation_point


def test_nodes_record_the_retry_spec_with_every_value_written_out() -> None:
    defs = load_definitions(
        {
            "tasks/a.yaml": "id: a\ncommand: x\nretries: {count: 2, backoff: 3}\n",
            "tasks/b.yaml": "id: b\ncommand: x\nretries: 1\n",
            "tasks/c.yaml": "id: c\ncommand: x\n",
        }
    )
    nodes = {n.id: n for target in "abc" for n in outcome_graph(defs, target)}
    assert nodes["a"].retries == RetrySpec(
        count=2, delay_seconds=5.0, backoff=3.0, max_delay_seconds=300.0
    )
    assert nodes["b"].retries == RetrySpec(count=1)
    assert nodes["c"].retries == RetrySpec(count=0)
    # The stored spec, never the strict input type, and every value in the encoded node.
    assert all(type(n.retries) is RetrySpec for n in nodes.values())
    encoded = msgspec.json.decode(msgspec.json.encode(nodes["c"]))
    assert encoded["retries"] == {
        "count": 0,
        "delay_seconds": 5.0,
        "backoff": 2.0,
        "max_delay_seconds": 300.0,
    }
    assert encoded["queue"] == "default" and encoded["timeout_seconds"] is None


def test_a_dependency_listed_twice_in_a_dag_entry_is_one_edge() -> None:
    defs = load_definitions(
        {
            "tasks/a.yaml": "id: a\ncommand: x\n",
            "dags/d.yaml": y("""
                id: d
                tasks:
                  - id: a
                  - {id: b, command: y, dependencies: [a, a]}
                """),
        }
    )
    assert by_id(dag_graph(defs, "d"))["b"].dependencies == ("a",)


def test_unknown_target_suggests_a_close_match() -> None:
    with pytest.raises(GraphError, match=r"^unknown task 'dd' \(did you mean 'd'\?\)$"):
        outcome_graph(DIAMOND, "dd")
    with pytest.raises(GraphError, match=r"^unknown task 'zzz'$"):
        outcome_graph(DIAMOND, "zzz")


def test_unknown_parameter_set_in_target() -> None:
    with pytest.raises(GraphError, match=r"^unknown parameter set 'big' in 'a:big'$"):
        outcome_graph(DIAMOND, "a:big")


def test_unchecked_definitions_with_a_cycle_raise_a_graph_error() -> None:
    defs = Definitions(
        tasks={
            "a": TaskDef(id="a", command="x", dependencies=("b",)),
            "b": TaskDef(id="b", command="x", dependencies=("a",)),
        }
    )
    with pytest.raises(GraphError, match=r"^dependency cycle: a -> b -> a$"):
        outcome_graph(defs, "a")


def test_unchecked_definitions_with_an_unknown_dependency() -> None:
    defs = Definitions(tasks={"a": TaskDef(id="a", command="x", dependencies=("ghost",))})
    with pytest.raises(GraphError, match=r"^task 'a' depends on 'ghost', which is not a task$"):
        outcome_graph(defs, "a")


ML = load_definitions(
    {
        "tasks/prepare.yaml": "id: prepare\ncommand: x\nparameters: {ROWS: 10}\n",
        "tasks/train.yaml": y("""
            id: train
            name: Train model
            command: x
            dependencies: [prepare]
            parameters: {EPOCHS: 3, BATCH: 32}
            """),
        "tasks/compare.yaml": "id: compare\ncommand: x\ndependencies: [train, 'train:large']\n",
        "parameter_sets/large.yaml": "id: large\nparameters: {EPOCHS: 50}\n",
    }
)


def test_task_with_two_parameter_sets_is_two_nodes() -> None:
    nodes = outcome_graph(ML, "compare")
    assert ids(nodes) == ["prepare", "train", "train:large", "compare"]
    plain, large = by_id(nodes)["train"], by_id(nodes)["train:large"]
    assert (plain.task_id, large.task_id) == ("train", "train")
    assert (plain.name, large.name) == ("Train model", "Train model [large]")
    assert plain.parameters == {"EPOCHS": "3", "BATCH": "32"}
    assert large.parameters == {"EPOCHS": "50", "BATCH": "32"}
    assert large.dependencies == ("prepare",)  # the set does not spread to dependencies
    assert by_id(nodes)["compare"].dependencies == ("train", "train:large")


def test_a_parameter_set_node_can_be_the_target() -> None:
    nodes = outcome_graph(ML, "train:large")
    assert ids(nodes) == ["prepare", "train:large"]


# --- parameters -------------------------------------------------------------------------------

PRECEDENCE = load_definitions(
    {
        "parameter_sets/defaults.yaml": y("""
            id: defaults
            parameters: {P1: set-list, P2: set-list, P3: set-list, P4: set-list, P5: set-list,
                         P6: set-list, P7: set-list}
            """),
        "parameter_sets/q.yaml": y("""
            id: q
            parameters: {P3: qualifier, P4: qualifier, P5: qualifier, P6: qualifier,
                         P7: qualifier}
            """),
        "tasks/t.yaml": y("""
            id: t
            command: x
            parameter_sets: [defaults]
            parameters: {P2: task, P3: task, P4: task, P5: task, P6: task, P7: task}
            """),
        "dags/d.yaml": y("""
            id: d
            tasks:
              - id: t
                parameters: {P4: dag, P5: dag, P6: dag, P7: dag}
              - id: u
                command: x
                dependencies: ['t:q']
            """),
    }
)


def test_parameter_precedence_end_to_end() -> None:
    overrides = overrides_from(
        ["P5=all", "P6=all", "P7=all", "t.P6=task-param", "t.P7=task-param", "t:q.P7=node-param"]
    )
    node = by_id(dag_graph(PRECEDENCE, "d", overrides))["t:q"]
    assert node.parameters == {
        "P1": "set-list",  # the task's parameter_sets, lowest
        "P2": "task",  # the task's own parameters
        "P3": "qualifier",  # the set of a `task:set` node
        "P4": "dag",  # the DAG entry
        "P5": "all",  # --param KEY=V
        "P6": "task-param",  # --param task.KEY=V beats KEY=V
        "P7": "node-param",  # --param task:set.KEY=V beats task.KEY=V
    }


def test_task_overrides_reach_every_node_of_that_task_only() -> None:
    nodes = by_id(outcome_graph(ML, "compare", overrides_from(["train.EPOCHS=7", "ROWS=99"])))
    assert nodes["train"].parameters["EPOCHS"] == "7"
    assert nodes["train:large"].parameters["EPOCHS"] == "7"
    assert nodes["prepare"].parameters == {"ROWS": "99"}
    assert nodes["compare"].parameters == {"ROWS": "99"}


def test_values_become_plain_strings_never_json() -> None:
    defs = load_definitions(
        {
            "tasks/t.yaml": y("""
                id: t
                command: x
                parameters: {S: hello, Q: '"quoted"', I: 3, F: 0.5, T: true, N: false}
                """),
        }
    )
    (node,) = outcome_graph(defs, "t")
    assert node.parameters == {
        "S": "hello",
        "Q": '"quoted"',
        "I": "3",
        "F": "0.5",
        "T": "true",
        "N": "false",
    }


def test_override_for_an_unknown_task_is_an_error_not_ignored() -> None:
    with pytest.raises(GraphError, match=r"^--param for unknown task 'trian' \(did you mean"):
        outcome_graph(ML, "compare", overrides_from(["trian.EPOCHS=1"]))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("KEY=VALUE", (None, "KEY", "VALUE")),
        ("KEY=", (None, "KEY", "")),
        ("URL=a=b&c=d", (None, "URL", "a=b&c=d")),
        ("train.EPOCHS=5", ("train", "EPOCHS", "5")),
        ("train:large.EPOCHS=5", ("train:large", "EPOCHS", "5")),
        ("train.MSG=has.dots=and spaces", ("train", "MSG", "has.dots=and spaces")),
    ],
)
def test_parse_param(text: str, parsed: tuple[str | None, str, str]) -> None:
    assert parse_param(text) == parsed


@pytest.mark.parametrize("text", ["x", "=v", "1A=v", "a b=v", ".K=v", "a.b.K=v", "t:.K=v"])
def test_parse_param_rejects(text: str) -> None:
    with pytest.raises(GraphError) as info:
        parse_param(text)
    assert str(info.value) == f"invalid --param {text!r}: expected KEY=VALUE or TASK.KEY=VALUE"


def test_overrides_from_later_values_win() -> None:
    assert overrides_from(["A=1", "t.B=2", "A=3", "t.B=4", "u.C=5"]) == Overrides(
        all={"A": "3"}, per_task={"t": {"B": "4"}, "u": {"C": "5"}}
    )


# --- DAGs -------------------------------------------------------------------------------------

ETL = load_definitions(
    {
        "tasks/extract.yaml": "id: extract\ncommand: echo e\nparameters: {SOURCE: db}\n",
        "tasks/transform.yaml": y("""
            id: transform
            name: Transform
            command: echo t
            dependencies: [extract]
            parameters: {MODE: incremental, KEEP: yes-please}
            retries: 1
            """),
        "tasks/load.yaml": "id: load\ncommand: echo l\ndependencies: [transform]\n",
        "parameter_sets/wide.yaml": "id: wide\nparameters: {MODE: wide}\n",
        "dags/nightly.yaml": y("""
            id: nightly
            tasks:
              - id: extract
              - id: transform
                queue: big
                retries: 4
                parameters: {MODE: full}
              - id: load
              - id: report
                name: Report
                command: echo report
                dependencies: [load, 'transform:wide']
                queue: reports
            """),
        "dags/partial.yaml": y("""
            id: partial
            tasks:
              - id: load
                dependencies: []
                command: echo only load
            """),
    }
)


def test_dag_references_take_the_task_file_with_overrides() -> None:
    nodes = by_id(dag_graph(ETL, "nightly"))
    transform = nodes["transform"]
    assert transform.name == "Transform"  # from the task file
    assert transform.command == "echo t"
    assert transform.queue == "big"  # overridden for this DAG
    assert transform.retries.count == 4
    assert transform.parameters == {"MODE": "full", "KEEP": "yes-please"}  # layered, not replaced
    assert transform.dependencies == ("extract",)
    assert nodes["load"].dependencies == ("transform",)


def test_dag_inline_task_and_set_dependency_inside_a_dag() -> None:
    nodes = dag_graph(ETL, "nightly")
    assert set(ids(nodes)) == {"extract", "transform", "load", "transform:wide", "report"}
    report = by_id(nodes)["report"]
    assert (report.name, report.command, report.queue) == ("Report", "echo report", "reports")
    assert report.dependencies == ("load", "transform:wide")
    wide = by_id(nodes)["transform:wide"]
    # Built from this DAG's version of transform: its overrides apply, the set beats them not.
    assert wide.queue == "big"
    assert wide.parameters == {"MODE": "full", "KEEP": "yes-please"}
    position = {n.id: i for i, n in enumerate(nodes)}
    assert all(position[d] < position[n.id] for n in nodes for d in n.dependencies)


def test_dag_entry_can_replace_dependencies_and_command() -> None:
    (node,) = dag_graph(ETL, "partial")
    assert (node.id, node.command, node.dependencies) == ("load", "echo only load", ())


def test_unknown_dag() -> None:
    with pytest.raises(GraphError, match=r"^unknown DAG 'nigthly' \(did you mean 'nightly'\?\)$"):
        dag_graph(ETL, "nigthly")


def test_dag_dependency_outside_the_dag_is_refused_for_unchecked_definitions() -> None:
    broken = load_definitions(
        {
            "tasks/a.yaml": "id: a\ncommand: x\n",
            "tasks/b.yaml": "id: b\ncommand: x\ndependencies: [a]\n",
            "dags/d.yaml": "id: d\ntasks: [{id: b, dependencies: []}]\n",
        }
    )
    # Built around the checks to prove the graph code refuses on its own as well.
    entry = broken.dags["d"].tasks[0]
    dag = broken.dags["d"].__class__(id="d", tasks=(entry.__class__(id="b"),))
    defs = Definitions(tasks=broken.tasks, dags={"d": dag})
    with pytest.raises(GraphError, match=r"^task 'b' depends on 'a', which is not a task of DAG"):
        dag_graph(defs, "d")


# --- contexts and environment -----------------------------------------------------------------

CONTEXTS = load_definitions(
    {
        "contexts/base.yaml": "id: base\nvariables: {ENV: dev, REGION: eu, N: 5, ON: true}\n",
        "contexts/prod.yaml": y("""
            id: prod
            extends: base
            variables:
              ENV: prod
              RUN: "${RUN_ID}"
              WHEN: "${DATE} ${TIME}"
              STAMP: "${DATETIME}"
              TOKEN: "${RANDOM:8}-${RANDOM:8}"
              SHELL_VAR: "${HOME}/data"
              NOT_MACROS: "${RANDOM:0} ${RANDOM:x} ${DATE:x} $RUN_ID"
            """),
        "contexts/prod_eu.yaml": "id: prod_eu\nextends: prod\nvariables: {REGION: eu-west-1}\n",
    }
)
NOW = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def test_context_inheritance_child_overrides_parent() -> None:
    variables = resolve_context(CONTEXTS, "prod_eu", run_id="r-1", now=NOW, entropy=b"x")
    assert variables["ENV"] == "prod"  # prod over base
    assert variables["REGION"] == "eu-west-1"  # prod_eu over base
    assert variables["N"] == "5"
    assert variables["ON"] == "true"


def test_context_macros() -> None:
    variables = resolve_context(CONTEXTS, "prod", run_id="nightly-01hx", now=NOW, entropy=b"e")
    assert variables["RUN"] == "nightly-01hx"
    assert variables["WHEN"] == "2024-05-06 05:08:09"  # UTC
    assert variables["STAMP"] == "2024-05-06T05:08:09Z"
    assert variables["SHELL_VAR"] == "${HOME}/data"  # left for the shell
    assert variables["NOT_MACROS"] == "${RANDOM:0} ${RANDOM:x} ${DATE:x} $RUN_ID"
    first, second = variables["TOKEN"].split("-")
    assert re.fullmatch(r"[0-9a-f]{8}", first) and re.fullmatch(r"[0-9a-f]{8}", second)
    assert first != second


def test_random_macro_is_deterministic_for_the_same_entropy() -> None:
    def token(entropy: bytes) -> str:
        return resolve_context(CONTEXTS, "prod", run_id="r", now=NOW, entropy=entropy)["TOKEN"]

    assert token(b"seed") == token(b"seed")
    assert token(b"seed") != token(b"other")


def test_no_context_is_empty() -> None:
    assert resolve_context(CONTEXTS, None, run_id="r", now=NOW) == {}


def test_unknown_context() -> None:
    with pytest.raises(GraphError, match=r"^unknown context 'prd' \(did you mean 'prod'\?\)$"):
        resolve_context(CONTEXTS, "prd", run_id="r", now=NOW)


def test_unknown_parent_and_cycles_in_unchecked_contexts() -> None:
    defs = Definitions(
        contexts={
            "a": ContextDef(id="a", extends="b"),
            "b": ContextDef(id="b", extends="a"),
            "c": ContextDef(id="c", extends="gone"),
        }
    )
    with pytest.raises(GraphError, match=r"^context inheritance cycle: a -> b -> a$"):
        resolve_context(defs, "a", run_id="r", now=NOW)
    with pytest.raises(GraphError, match=r"^unknown context 'gone' \(extended by 'c'\)$"):
        resolve_context(defs, "c", run_id="r", now=NOW)


def test_task_environment_precedence() -> None:
    node = TaskNode(
        id="t:big",
        task_id="t",
        command="x",
        parameters={"SHARED": "param", "ONLY_PARAM": "p", "CYCLONETIX_ATTEMPT": "spoofed"},
    )
    env = task_environment({"SHARED": "context", "ONLY_CONTEXT": "c"}, node, run_id="r1", attempt=2)
    assert env == {
        "SHARED": "param",
        "ONLY_CONTEXT": "c",
        "ONLY_PARAM": "p",
        "CYCLONETIX_RUN_ID": "r1",
        "CYCLONETIX_TASK_ID": "t:big",
        "CYCLONETIX_ATTEMPT": "2",
    }


# --- evaluation points ------------------------------------------------------------------------

DYNAMIC = load_definitions(
    {
        "tasks/prepare.yaml": "id: prepare\ncommand: x\n",
        "tasks/evaluate.yaml": y("""
            id: evaluate
            command: x
            dependencies: [prepare]
            evaluation_point: true
            """),
        "tasks/deploy.yaml": "id: deploy\ncommand: x\ndependencies: [evaluate]\n",
        "tasks/fetch_docs.yaml": "id: fetch_docs\ncommand: x\ndependencies: [prepare]\n",
        "tasks/notify.yaml": y("""
            id: notify
            command: x
            dependencies: [fetch_docs]
            parameters: {CHANNEL: ops, LEVEL: info}
            """),
        "parameter_sets/loud.yaml": "id: loud\nparameters: {LEVEL: loud}\n",
    }
)


def existing_run() -> dict[str, TaskNode]:
    return by_id(outcome_graph(DYNAMIC, "evaluate"))


def test_extend_adds_the_requested_task_after_the_evaluation_point() -> None:
    new = extend_graph(
        existing_run(), DYNAMIC, after="evaluate", next_tasks=["deploy"], parameters={}
    )
    assert ids(new) == ["deploy"]
    assert new[0].dependencies == ("evaluate",)  # already there: not repeated


def test_extend_brings_missing_prerequisites_along() -> None:
    new = extend_graph(
        existing_run(),
        DYNAMIC,
        after="evaluate",
        next_tasks=["notify"],
        parameters={"notify": {"CHANNEL": "alerts"}},
    )
    assert ids(new) == ["fetch_docs", "notify"]
    nodes = by_id(new)
    assert nodes["fetch_docs"].dependencies == ("prepare",)  # prerequisite: not after evaluate
    assert nodes["notify"].dependencies == ("fetch_docs", "evaluate")
    assert nodes["notify"].parameters == {"CHANNEL": "alerts", "LEVEL": "info"}


def test_extend_skips_tasks_already_in_the_run_and_supports_sets() -> None:
    new = extend_graph(
        existing_run(),
        DYNAMIC,
        after="evaluate",
        next_tasks=["prepare", "notify:loud", "notify:loud"],
        parameters={},
        overrides=Overrides(all={"LEVEL": "schedule"}, per_task={"notify": {"CHANNEL": "x"}}),
    )
    assert ids(new) == ["fetch_docs", "notify:loud"]
    loud = by_id(new)["notify:loud"]
    assert loud.dependencies == ("fetch_docs", "evaluate")
    assert loud.parameters == {"CHANNEL": "x", "LEVEL": "schedule"}


def test_extend_parameters_beat_schedule_time_overrides() -> None:
    new = extend_graph(
        existing_run(),
        DYNAMIC,
        after="evaluate",
        next_tasks=["deploy"],
        parameters={"deploy": {"TARGET": "eval"}},
        overrides=Overrides(per_task={"deploy": {"TARGET": "schedule", "OTHER": "kept"}}),
    )
    assert new[0].parameters == {"TARGET": "eval", "OTHER": "kept"}


def test_extend_refuses_unknown_tasks_and_unknown_evaluation_points() -> None:
    run = existing_run()
    with pytest.raises(GraphError, match=r"^unknown task 'deplo' \(did you mean 'deploy'\?\)$"):
        extend_graph(run, DYNAMIC, after="evaluate", next_tasks=["deplo"], parameters={})
    with pytest.raises(GraphError, match=r"^evaluation point 'deploy' is not a task of this run$"):
        extend_graph(run, DYNAMIC, after="deploy", next_tasks=["notify"], parameters={})
    with pytest.raises(GraphError, match=r"^parameters given for unknown task 'ghost'$"):
        extend_graph(
            run, DYNAMIC, after="evaluate", next_tasks=["deploy"], parameters={"ghost": {}}
        )


# --- properties over random DAGs --------------------------------------------------------------


def random_dependencies(n: int, seed: int) -> dict[str, tuple[str, ...]]:
    """Node i depends on up to 4 random earlier nodes: always acyclic."""
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(n)]
    return {names[i]: tuple(rng.sample(names[:i], rng.randint(0, min(i, 4)))) for i in range(n)}


def as_definitions(deps: dict[str, tuple[str, ...]]) -> Definitions:
    return Definitions(
        tasks={t: TaskDef(id=t, command=f"echo {t}", dependencies=d) for t, d in deps.items()}
    )


def ancestors(deps: dict[str, tuple[str, ...]], target: str) -> set[str]:
    seen = {target}
    frontier = [target]
    while frontier:
        for dep in deps[frontier.pop()]:
            if dep not in seen:
                seen.add(dep)
                frontier.append(dep)
    return seen


def assert_real_cycle(text: str, deps: dict[str, tuple[str, ...]]) -> list[str]:
    path = text.removeprefix("dependency cycle: ").split(" -> ")
    assert len(path) >= 2 and path[0] == path[-1], text
    assert len(set(path[:-1])) == len(path) - 1, text  # a simple cycle
    for node, dep in itertools.pairwise(path):
        assert dep in deps[node], f"{node} does not depend on {dep}: {text}"
    return path


graphs = st.tuples(st.integers(1, 300), st.integers(0, 2**32 - 1))
GRAPH_EXAMPLES = settings().max_examples * 2 // 5  # graphs of up to 300 nodes: 60 under `dev`


@settings(max_examples=GRAPH_EXAMPLES)
@given(graph=graphs, pick=st.randoms(use_true_random=False))
def test_outcome_is_exactly_the_ancestor_closure(
    graph: tuple[int, int], pick: random.Random
) -> None:
    deps = random_dependencies(*graph)
    defs = as_definitions(deps)
    assert check_definitions(defs) == []
    target = pick.choice(sorted(deps))
    nodes = outcome_graph(defs, target)
    assert {n.id for n in nodes} == ancestors(deps, target)
    assert len(nodes) == len({n.id for n in nodes})
    assert nodes[-1].id == target


@settings(max_examples=GRAPH_EXAMPLES)
@given(graph=graphs, pick=st.randoms(use_true_random=False))
def test_outcome_graph_lists_dependencies_first(
    graph: tuple[int, int], pick: random.Random
) -> None:
    deps = random_dependencies(*graph)
    target = pick.choice(sorted(deps))
    nodes = outcome_graph(as_definitions(deps), target)
    position = {n.id: i for i, n in enumerate(nodes)}
    for node in nodes:
        assert set(node.dependencies) == set(deps[node.id])
        assert all(position[d] < position[node.id] for d in node.dependencies)


@settings(max_examples=GRAPH_EXAMPLES)
@given(graph=graphs, pick=st.randoms(use_true_random=False))
def test_a_back_edge_is_reported_as_a_real_cycle(
    graph: tuple[int, int], pick: random.Random
) -> None:
    deps = random_dependencies(*graph)
    source = pick.choice(sorted(deps))
    # Make an ancestor of `source` (or source itself) depend on it: that closes a loop.
    back = pick.choice(sorted(ancestors(deps, source)))
    deps[back] = (*deps[back], source)
    defs = as_definitions(deps)
    errors = check_definitions(defs)
    assert errors, "the cycle was not reported"
    for error in errors:
        path = assert_real_cycle(error.message, deps)
        # The error sits on the file and key of an edge of that cycle.
        closing = path[-2]
        assert error.file == f"tasks/{closing}"
        index = int(error.key.removeprefix("dependencies[").removesuffix("]"))
        assert deps[closing][index] == path[0]
    with pytest.raises(GraphError) as info:
        outcome_graph(defs, source)
    assert_real_cycle(str(info.value), deps)

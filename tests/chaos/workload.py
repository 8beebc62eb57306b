"""The chaos workload: generated graphs (retries, timeouts, failures) plus the example graphs,
every command wrapped so that each execution appends to a side file (the ledger).

Pure: everything here is decided by the `random.Random` it is given, so a seed replays the same
definitions and the same sequence of scheduled targets.

The ledger (`$CX_CHAOS_LEDGER`, in the agents' environment, which every command inherits):

    S <run> <task> <attempt> <agent> <shell pid>                 the command's first action
    E <run> <task> <attempt> <agent> <shell pid> <exit> <time>   after its body, with the time

`S` is written by shell builtins only (no fork), so an execution is on the ledger the moment the
agent releases the command; `E` carries the wall-clock time (`date +%s.%N`) at which the body
ended. A command killed by a signal writes no `E`. `<agent>` is `$CX_CHAOS_AGENT`, the label the
suite gives each agent process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import msgspec

from core.definitions import DagDef, DagTask, Definitions, RetryPolicy, TaskDef
from services.definitions_files import examples_dir, load_definitions_folder

LEDGER_ENV = "CX_CHAOS_LEDGER"
AGENT_ENV = "CX_CHAOS_AGENT"
QUEUES = ("default", "gpu")  # the examples' train_model runs on `gpu`

_IDS = '"$CYCLONETIX_RUN_ID" "$CYCLONETIX_TASK_ID" "$CYCLONETIX_ATTEMPT" "$CX_CHAOS_AGENT" "$$"'


def recorded(body: str) -> str:
    """`body` as a command that records its execution on the ledger (see the module doc)."""
    return (
        f'printf "S %s %s %s %s %s\\n" {_IDS} >>"$CX_CHAOS_LEDGER"\n'
        f"(\n{body}\n)\n"
        "rc=$?\n"
        f'printf "E %s %s %s %s %s %s %s\\n" {_IDS} "$rc" "$(date +%s.%N)" >>"$CX_CHAOS_LEDGER"\n'
        "exit $rc"
    )


Kind = Literal["ok", "long", "flaky", "fail", "timeout"]
KINDS: tuple[tuple[Kind, float], ...] = (
    ("ok", 0.55),
    ("long", 0.15),
    ("flaky", 0.15),
    ("fail", 0.08),
    ("timeout", 0.07),
)


def _task(rng: random.Random, task_id: str, dependencies: tuple[str, ...]) -> TaskDef:
    kind = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
    pause = f"{rng.uniform(0.05, 0.6):.2f}"
    retries = RetryPolicy()
    timeout: float | None = None
    if kind == "ok":
        body = f"sleep {pause}"
    elif kind == "long":
        body = f"sleep {rng.uniform(1.5, 3.0):.2f}"
    elif kind == "flaky":  # fails its first `fails` attempts, then succeeds
        fails = rng.randint(1, 2)
        body = f'sleep {pause}; test "$CYCLONETIX_ATTEMPT" -gt {fails}'
        retries = RetryPolicy(count=fails, delay_seconds=0.2, backoff=2, max_delay_seconds=1)
    elif kind == "fail":  # fails for good, retried or not
        body = f"sleep {pause}; exit 3"
        retries = RetryPolicy(count=rng.randint(0, 1), delay_seconds=0.2)
    else:  # killed by its timeout (the command would sleep 8 s)
        body = "sleep 8"
        timeout = 1.0
        retries = RetryPolicy(count=rng.randint(0, 1), delay_seconds=0.2)
    return TaskDef(
        id=task_id,
        command=recorded(body),
        dependencies=dependencies,
        retries=retries,
        timeout_seconds=timeout,
        tags=("chaos", kind),
    )


def generated(rng: random.Random, graphs: int, max_tasks: int) -> Definitions:
    """`graphs` random DAGs `g<k>` of 2..max_tasks tasks `g<k>_t<i>`, each task depending on up
    to three earlier ones."""
    tasks: dict[str, TaskDef] = {}
    dags: dict[str, DagDef] = {}
    for k in range(graphs):
        ids: list[str] = []
        for i in range(rng.randint(2, max_tasks)):
            task_id = f"g{k}_t{i}"
            candidates = [d for d in ids if rng.random() < 0.4]
            dependencies = tuple(rng.sample(candidates, min(3, len(candidates))))
            tasks[task_id] = _task(rng, task_id, dependencies)
            ids.append(task_id)
        dags[f"g{k}"] = DagDef(id=f"g{k}", tasks=tuple(DagTask(id=t) for t in ids))
    return Definitions(tasks=tasks, dags=dags)


def examples() -> Definitions:
    """The bundled example definitions with every command (inline DAG tasks too) recorded."""
    defs = load_definitions_folder(examples_dir())
    tasks = {
        task_id: msgspec.structs.replace(task, command=recorded(task.command))
        for task_id, task in defs.tasks.items()
    }
    dags = {
        dag_id: msgspec.structs.replace(
            dag,
            tasks=tuple(
                entry
                if entry.command is None
                else msgspec.structs.replace(entry, command=recorded(entry.command))
                for entry in dag.tasks
            ),
        )
        for dag_id, dag in defs.dags.items()
    }
    return msgspec.structs.replace(defs, tasks=tasks, dags=dags)


EXAMPLE_TARGETS: tuple[tuple[Literal["outcome", "dag"], str], ...] = (
    ("dag", "nightly_etl"),
    ("dag", "ml_training"),  # an evaluation point adds deploy_model; train_model runs on gpu
    ("outcome", "deploy_model"),
    ("outcome", "compare_models"),  # train_model twice: plain and with a parameter set
    ("outcome", "diamond_d"),
    ("outcome", "flaky_fetch"),  # fails once, retried after a backoff
)


@dataclass(frozen=True)
class Workload:
    definitions: Definitions
    generated_dags: tuple[str, ...]

    def next_target(self, rng: random.Random) -> tuple[Literal["outcome", "dag"], str]:
        """A quarter example graphs, the rest generated ones."""
        if rng.random() < 0.25:
            return rng.choice(EXAMPLE_TARGETS)
        return "dag", rng.choice(self.generated_dags)


def workload(rng: random.Random, *, graphs: int, max_tasks: int) -> Workload:
    ours = generated(rng, graphs, max_tasks)
    theirs = examples()
    defs = msgspec.structs.replace(
        theirs,
        tasks={**theirs.tasks, **ours.tasks},
        dags={**theirs.dags, **ours.dags},
        sources={},
    )
    return Workload(defs, tuple(sorted(ours.dags)))

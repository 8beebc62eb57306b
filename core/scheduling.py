"""Turning a request ("make deploy_model happen", "run nightly_etl") into a RunScheduled event.

Shared by every way a run starts (CLI, UI, triggers, cron), so they all validate the same way and
snapshot the same graph. Pure: the caller passes the clock and the randomness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from core.definitions import Definitions, split_dependency
from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from core.events import Notification, RunScheduled
from core.graph import (
    GraphError,
    check_overrides_env,
    dag_graph,
    outcome_graph,
    overrides_from,
    resolve_context,
)
from core.ids import check_run_id, new_run_id

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Sequence

Kind = Literal["outcome", "dag"]


def plan_run(
    defs: Definitions,
    *,
    kind: Kind,
    target: str,
    now: dt.datetime,
    entropy: bytes,
    context_id: str | None = None,
    params: Sequence[str] = (),
    run_id: str | None = None,
    trigger: str = "cli",
    idempotency_key: str | None = None,
    logical_time: dt.datetime | None = None,
    env_policy: EnvPolicy = DEFAULT_ENV_POLICY,
) -> RunScheduled:
    """Resolve the graph and context of a new run. Raises GraphError/ValueError (one line).

    `logical_time` is the moment the run stands for, when it is not `now`: a cron slot's, so a
    run caught up after downtime gets its slot's `${DATE}`, not the day it started.
    `env_policy`: the environment variables no parameter override may set (and the values none
    may hold)."""
    overrides = overrides_from(list(params))
    check_overrides_env(overrides, env_policy)
    if kind == "outcome":
        nodes = outcome_graph(defs, target, overrides)
        task_id, _ = split_dependency(target)
        name = defs.tasks[task_id].display_name
        notify = defs.tasks[task_id].notify
    else:
        dag = defs.dags.get(target)
        if dag is None:
            known = ", ".join(sorted(defs.dags)[:10]) or "none defined"
            raise GraphError(f"unknown dag {target!r} (known: {known})")
        nodes = dag_graph(defs, target, overrides)
        name = dag.display_name
        context_id = context_id or dag.context
        notify = dag.notify
    in_run = {n.task_id for n in nodes}
    for task_id in overrides.per_task:
        if task_id not in in_run:
            raise GraphError(
                f"--param {task_id}.…: task {task_id!r} is not part of this run "
                f"(its tasks: {', '.join(sorted(in_run)[:10])})"
            )
    ms = int(now.timestamp() * 1000)
    run_id = check_run_id(run_id) if run_id else new_run_id(target, ms, entropy)
    context = resolve_context(
        defs, context_id, run_id=run_id, now=logical_time or now, entropy=entropy
    )
    return RunScheduled(
        run_id=run_id,
        ts=now,
        kind=kind,
        target=target,
        name=name,
        graph=nodes,
        context=context,
        context_id=context_id,
        params=dict(p.split("=", 1) for p in params),  # (each has an "=": checked above)
        trigger=trigger,
        idempotency_key=idempotency_key,
        # Snapshotted like the graph: a run notifies as defined when it was scheduled.
        notify=tuple(
            Notification(url=n.url, on=n.on, secret_env=n.secret_env) for n in notify or ()
        ),
    )

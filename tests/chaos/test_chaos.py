"""The chaos suite: a mixed workload over real processes while faults are injected at random
moments, then the event log (and the commands' own ledger) is checked; with a projector, its
read model too.

Each scenario starts NATS (one embedded server, or the three-node cluster), one or two
orchestrators and three agents as `python -m services.cli` processes, keeps `open_runs` runs of
generated graphs (retries, timeouts, failures) and of the example graphs open, and injects its
faults one after another at random moments while runs are open. Then it waits for every run to
end, stops the roles, and checks the invariants of tests/chaos/invariants.py. The table row it
prints (and `pytest` prints the whole table at the end) reports what it did; lost, stuck and
duplicated must be 0, and every other invariant must hold.

`projector-kill` also runs a projector process into a Redis read model of its own and kills it
with SIGKILL, repeatedly; its recovery is how long the restarted projector took to catch up with
the log, and at the end the store must equal a fresh replay of the whole log.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chaos import faults, projection
from tests.chaos.conftest import is_long
from tests.chaos.harness import Chaos, Fault, Size, start_chaos
from tests.chaos.invariants import check, parse_ledger
from tests.chaos.report import Row, table
from tests.chaos.workload import workload

pytestmark = pytest.mark.chaos

Inject = Callable[[Chaos], Awaitable[Fault]]


def keep_artifacts(workdir: Path, name: str) -> Path:
    """A failed scenario's role logs, ledger and NATS store, copied where pytest's rotation of
    its temporary folders does not reach."""
    target = Path(tempfile.gettempdir()) / "cyclonetix-chaos" / f"{name}-{int(time.time())}"
    shutil.copytree(workdir, target, ignore=shutil.ignore_patterns("agent-work"))
    return target


@dataclass(frozen=True)
class Scenario:
    name: str
    cluster: bool  # the three-node cluster (R3) instead of one server
    orchestrators: int
    injections: tuple[Inject, ...]  # drawn at random for each fault...
    once_each: bool = False  # ...but each of them at least once
    read_model: bool = False  # a projector into a Redis store runs beside the roles

    def plan(self, rng: random.Random, count: int) -> list[Inject]:
        chosen = list(self.injections) if self.once_each else []
        chosen += [rng.choice(self.injections) for _ in range(max(0, count - len(chosen)))]
        rng.shuffle(chosen)
        return chosen


SCENARIOS = (
    Scenario("agent-kill", False, 1, (faults.kill_agent_mid_task,)),
    Scenario("leader-kill-standby", False, 2, (faults.kill_leader_with_standby,)),
    Scenario("orchestrator-kill-restart", False, 1, (faults.kill_lone_orchestrator,)),
    Scenario("nats-restart", False, 1, (faults.restart_nats,)),
    Scenario("projector-kill", False, 1, (faults.kill_projector,), read_model=True),
    Scenario(
        "cluster-node-kill",
        True,
        1,
        (faults.kill_cluster_node, faults.step_down_events_leader),
        once_each=True,
    ),
)
LONG_ONLY = (
    Scenario(
        "all-faults-server",
        False,
        2,
        (faults.kill_agent_mid_task, faults.kill_leader_with_standby, faults.restart_nats),
        once_each=True,
    ),
    Scenario(
        "all-faults-cluster",
        True,
        2,
        (
            faults.kill_agent_mid_task,
            faults.kill_leader_with_standby,
            faults.kill_cluster_node,
            faults.step_down_events_leader,
        ),
        once_each=True,
    ),
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario" in metafunc.fixturenames:
        chosen = SCENARIOS + (LONG_ONLY if is_long(metafunc.config) else ())
        metafunc.parametrize("scenario", chosen, ids=[s.name for s in chosen])


async def test_nothing_is_lost_stuck_or_done_twice(
    scenario: Scenario,
    chaos_size: Size,
    chaos_seed: int,
    chaos_rows: list[Row],
    tmp_path: Path,
) -> None:
    if not scenario.read_model:
        await run_scenario(scenario, chaos_size, chaos_seed, chaos_rows, tmp_path, None)
        return
    async with projection.redis_store(scenario.name) as url:
        await run_scenario(scenario, chaos_size, chaos_seed, chaos_rows, tmp_path, url)


async def run_scenario(
    scenario: Scenario,
    size: Size,
    chaos_seed: int,
    chaos_rows: list[Row],
    tmp_path: Path,
    read_model: str | None,
) -> None:
    rng = random.Random(f"{chaos_seed}:{scenario.name}")
    replay = f"replay: just chaos --chaos-seed {chaos_seed} -k {scenario.name}"
    print(f"chaos scenario {scenario.name!r}, seed {chaos_seed} ({replay})")
    began = time.monotonic()

    def phase(name: str) -> None:
        print(f"  {time.monotonic() - began:6.1f}s {name}")

    chaos = await start_chaos(
        scenario.name,
        rng=rng,
        size=size,
        workdir=tmp_path / "chaos",
        workload=workload(rng, graphs=size.graphs, max_tasks=size.max_tasks),
        cluster=scenario.cluster,
        orchestrators=scenario.orchestrators,
        read_model=read_model,
    )
    phase("started")
    try:
        until = asyncio.Event()
        driving = asyncio.ensure_future(chaos.drive(until))
        try:
            for inject in scenario.plan(rng, size.faults):
                await chaos.pause(*size.gap)
                await chaos.wait_for_work()
                chaos.faults.append(await inject(chaos))
                phase(f"fault: {chaos.faults[-1].kind} {chaos.faults[-1].detail}")
            await chaos.pause(*size.gap)  # the workload goes on after the last fault
        finally:
            until.set()
            await driving
        phase("workload stopped")
        await chaos.drain()
        phase("drained")
        await chaos.roles.stop()
        phase("roles stopped")
        still_running = await chaos.commands_gone()
        phase("commands gone")
        events = await chaos.read_log()
        phase(f"log read ({len(events)} events)")
        projected = None
        if chaos.read_model is not None:
            projected = await projection.check(chaos)
            phase(f"read model checked ({len(projected.problems)} problems)")
        verdict = check(
            events,
            parse_ledger(chaos.ledger.read_text()),
            scheduled=chaos.scheduled,
            agents=chaos.roles.agents(),
        )
        recoveries = [fault.recovery(chaos.observer) for fault in chaos.faults]
        measured = [r for r in recoveries if r is not None]
        notes = [
            f"{fault.kind} {fault.detail}: recovered in "
            + ("-" if recovery is None else f"{recovery:.1f}s")
            for fault, recovery in zip(chaos.faults, recoveries, strict=True)
        ]
        notes.append(
            f"TaskStarted {verdict.started}, executions {verdict.executions}, "
            f"held starts of killed agents {verdict.held_starts}, "
            f"cancels requested {len(chaos.cancelled)}"
        )
        if verdict.orphans:
            notes.append(
                f"commands that ran on after their agent's SIGKILL: {len(verdict.orphans)}, "
                f"longest {max(verdict.orphans):.2f}s"
            )
        if projected is not None:
            notes.append(projected.note())
        row = Row(
            scenario=scenario.name,
            runs=verdict.runs,
            tasks=verdict.tasks,
            faults=len(chaos.faults),
            redeliveries=verdict.redeliveries,
            longest_recovery=max(measured) if measured else None,
            lost=len(verdict.lost),
            stuck=len(verdict.stuck),
            duplicated=len(verdict.duplicated),
            seed=chaos_seed,
            notes=tuple(notes),
        )
        chaos_rows.append(row)
        print(table([row]))
        problems = verdict.problems
        if still_running:
            problems.append(f"commands still running after the roles stopped: {still_running}")
        problems += [f"could not schedule: {failure}" for failure in chaos.unscheduled]
        if projected is not None:
            problems += projected.problems
        if problems:
            (chaos.workdir / "problems.txt").write_text("\n".join(problems) + "\n")
            kept = keep_artifacts(chaos.workdir, f"{scenario.name}-{chaos_seed}")
            pytest.fail(
                f"{scenario.name}: {len(problems)} invariant violation(s) ({replay}; role logs, "
                f"ledger and NATS store kept in {kept}):\n  " + "\n  ".join(problems[:40]),
                pytrace=False,
            )
    finally:
        await chaos.close()

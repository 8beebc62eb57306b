"""Benchmark: an orchestrator killed with SIGKILL while many runs are open, restarted; how long
from its restart to its first dispatch, with and without a snapshot to restore.

The workload: `runs` open runs, each with `steps` tasks already done (queued, started,
succeeded: three events each) and one task running, interleaved in the log the way concurrent
runs are. The history is written by this process as an orchestrator and agents would have
written it (same events, same message ids); then a real orchestrator process replays it, goes
live and writes its snapshot. Each round then:

1. kills the orchestrator with SIGKILL;
2. `off` rounds delete the snapshot, so the restart replays the log from the checkpoint (the
   first event of the oldest open run: all of the runs' history), as before snapshots existed;
   `on` rounds keep it;
3. waits until the dead orchestrator's lease has expired (6 s after its last renewal; the
   standby-takeover budget counts that wait, this one does not), and schedules a probe run with
   one task;
4. starts a new orchestrator process and measures from that moment to the probe's TasksQueued
   (its dispatch is published with it): process start-up, lease, restore, replay, deciding.

`takeover`: standby takeover. Two orchestrator processes, one leading, one a hot standby; each
round kills the leader with SIGKILL (at a random point of its renewal cycle), schedules a probe
run at once and measures the kill to the probe's TasksQueued: the lease's expiry (up to
LEASE_TTL after the leader's last renewal), the standby's next try (every LEASE_RETRY_S), its
replay and its first decision. The killed process is started again as the next standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.definitions import Definitions, TaskDef
from core.events import (
    AnyEvent,
    QueuedTask,
    RunScheduled,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)
from core.scheduling import plan_run
from services.bench import RssSampler
from services.embedded_nats import EmbeddedNats, die_with_parent
from services.nats import NatsBackplane, connect
from services.nats.provisioning import LEASE_TTL
from services.orchestrator import LEASE, LEASE_RENEW_S, LEASE_RETRY_S
from services.recovery import SNAPSHOT

Line = dict[str, Any]


def long_run_definitions(steps: int) -> Definitions:
    """A chain of `steps` tasks, then `held` (the one running when the orchestrator dies)."""
    tasks = {f"s{i:03d}": TaskDef(id=f"s{i:03d}", command="true") for i in range(steps)}
    for i in range(1, steps):
        tasks[f"s{i:03d}"] = TaskDef(
            id=f"s{i:03d}", command="true", dependencies=(f"s{i - 1:03d}",)
        )
    last = (f"s{steps - 1:03d}",) if steps else ()
    tasks["held"] = TaskDef(id="held", command="true", dependencies=last)
    return Definitions(tasks=tasks)


def _queued(run_id: str, now: dt.datetime, task_id: str) -> TasksQueued:
    task = QueuedTask(task_id=task_id, attempt=1, queue="bench")
    return TasksQueued(run_id=run_id, ts=now, tasks=(task,))


def run_history(scheduled: RunScheduled, steps: int, now: dt.datetime) -> list[AnyEvent]:
    """One run's events: every step done, `held` started."""
    run_id = scheduled.run_id
    events: list[AnyEvent] = [scheduled]
    for i in range(steps):
        task_id = f"s{i:03d}"
        events += [
            _queued(run_id, now, task_id),
            TaskStarted(run_id=run_id, ts=now, task_id=task_id, attempt=1, agent_id="bench"),
            TaskSucceeded(run_id=run_id, ts=now, task_id=task_id, attempt=1, agent_id="bench"),
        ]
    events += [
        _queued(run_id, now, "held"),
        TaskStarted(run_id=run_id, ts=now, task_id="held", attempt=1, agent_id="bench"),
    ]
    return events


async def write_history(backplane: NatsBackplane, runs: int, steps: int) -> int:
    """`runs` open runs with `steps` done tasks each, interleaved; the number of events."""
    defs = long_run_definitions(steps)
    now = dt.datetime.now(dt.UTC)
    histories = [
        run_history(
            plan_run(defs, kind="outcome", target="held", now=now, entropy=os.urandom(16)),
            steps,
            now,
        )
        for _ in range(runs)
    ]
    written = 0
    for position in range(len(histories[0])):  # (the runs progress side by side)
        for history in histories:
            backplane.events.append_nowait(history[position])
            written += 1
        if position % 4 == 3:
            await backplane.events.flush()
    await backplane.events.flush()
    return written


class OrchestratorProcess:
    """`cyclonetix orchestrator` as a child process whose JSON log lines are collected."""

    def __init__(self, nats_url: str, log: Path) -> None:
        self.nats_url = nats_url
        self.log_path = log
        self.lines: list[Line] = []
        self.changed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self.pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.lines = []
        argv = [sys.executable, "-m", "services.cli", "orchestrator"]
        argv += ["--nats-url", self.nats_url, "--log-format", "json"]
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.pump = asyncio.ensure_future(self._read(self.process))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        with self.log_path.open("a") as log:
            async for raw in process.stdout:
                text = raw.decode(errors="replace")
                log.write(text)
                with contextlib.suppress(ValueError):
                    line = json.loads(text)
                    if isinstance(line, dict):
                        self.lines.append(line)
                        self.changed.set()

    async def wait_for(
        self, event: str, timeout: float, where: Callable[[Line], bool] = bool
    ) -> Line:
        """The first log line of `event` (matching `where`), waiting up to `timeout`."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if line.get("event") == event and where(line):
                        return line
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"the orchestrator exited ({self.process.returncode})")
                self.changed.clear()
                await self.changed.wait()

    def line(self, event: str) -> Line | None:
        return next((line for line in self.lines if line.get("event") == event), None)

    async def kill(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGKILL)
        await process.wait()
        if self.pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.pump, 5)


async def _lease_free(backplane: NatsBackplane, timeout: float = 30.0) -> float:
    """Wait until nobody holds the orchestrator lease; how long that took."""
    started = time.monotonic()
    while await backplane.leases.holder(LEASE) is not None:
        if time.monotonic() - started > timeout:
            raise RuntimeError("the killed orchestrator's lease did not expire")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _first_dispatch(backplane: NatsBackplane, run_id: str, timeout: float = 120.0) -> None:
    async with asyncio.timeout(timeout):
        async for _seq, event in backplane.events.follow_run(run_id):
            if each_queued(event):
                return


async def _round(
    backplane: NatsBackplane, orch: OrchestratorProcess, probe: Definitions, snapshot: bool
) -> dict[str, Any]:
    if snapshot:  # the orchestrator being killed has a snapshot to leave behind
        await orch.wait_for("orchestrator.snapshot_taken", 120.0)
    await orch.kill()
    if not snapshot:
        await backplane.snapshots.delete(SNAPSHOT)
    await _lease_free(backplane)
    event = plan_run(
        probe, kind="outcome", target="probe", now=dt.datetime.now(dt.UTC), entropy=os.urandom(16)
    )
    await backplane.events.schedule_run(event)
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    await orch.start()
    await _first_dispatch(backplane, event.run_id)
    seconds = time.perf_counter() - started
    live = await orch.wait_for("orchestrator.live", 30.0)
    leading = await orch.wait_for("orchestrator.lease_acquired", 30.0)

    def since_start(line: Line) -> float:
        return (dt.datetime.fromisoformat(line["timestamp"]) - started_at).total_seconds()

    restored = orch.line("orchestrator.snapshot_restored")
    if snapshot and restored is None:
        raise RuntimeError("the restarted orchestrator did not restore the snapshot")
    if not snapshot and restored is not None:
        raise RuntimeError("the snapshot was deleted, yet restored")
    replaying = await orch.wait_for("orchestrator.replaying", 30.0)
    return {
        "restart_to_dispatch_s": seconds,
        "to_lease_s": since_start(leading),  # process start-up, connecting, the lease
        "to_replaying_s": since_start(replaying),  # then the checkpoint, the snapshot restored
        "to_live_s": since_start(live),  # then the log replayed
        "replayed": live["replayed"],
        "replay_ms": live["replay_ms"],
        "open_runs": live["open_runs"],
    }


async def recovery(
    runs: int = 1000,
    *,
    steps: int = 30,
    repeat: int = 3,
    nats_url: str | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """Restart → first dispatch after SIGKILL, `repeat` rounds each without and with a snapshot
    (medians, and every round's figure)."""
    if runs < 1 or steps < 0 or repeat < 1:
        raise ValueError("--runs and --repeat must be at least 1, --steps at least 0")
    probe = Definitions(tasks={"probe": TaskDef(id="probe", command="true", queue="bench")})
    with tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp:
        nats: EmbeddedNats | None = None
        if nats_url is None:
            nats = EmbeddedNats(Path(tmp) / "nats")
            nats_url = await asyncio.to_thread(nats.start)
        orch = OrchestratorProcess(nats_url, Path(tmp) / "orchestrator.log")
        try:
            connecting = connect(nats_url, name="cyclonetix-bench", replicas=replicas)
            async with (
                RssSampler(lambda: _pids(nats, [("orchestrator", orch)])) as rss,
                await connecting as backplane,
            ):
                await backplane.definitions.put(probe)
                events = await write_history(backplane, runs, steps)
                await orch.start()
                first = await orch.wait_for("orchestrator.live", 600.0)
                rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
                for _ in range(repeat):
                    for mode in ("off", "on"):
                        figures = await _round(backplane, orch, probe, snapshot=mode == "on")
                        rounds[mode].append(figures)
                size = len(await backplane.snapshots.get(SNAPSHOT) or b"")
        finally:
            await orch.kill()
            if nats is not None:
                await asyncio.to_thread(nats.stop)
    out: dict[str, Any] = {
        "runs": runs,
        "events": events,
        "first_start_replay_ms": first["replay_ms"],
        "snapshot_bytes": size,
    }
    for mode, results in rounds.items():
        seconds = [r["restart_to_dispatch_s"] for r in results]
        out[f"{mode}_restart_to_dispatch_s"] = round(statistics.median(seconds), 3)
        out[f"{mode}_replayed_events"] = results[-1]["replayed"]
        out[f"{mode}_replay_ms"] = round(statistics.median(r["replay_ms"] for r in results), 1)
        phases = ("to_lease_s", "to_replaying_s", "to_live_s")
        for phase in phases:
            out[f"{mode}_{phase}"] = round(statistics.median(r[phase] for r in results), 3)
        out[f"{mode}_rounds_s"] = [round(s, 3) for s in seconds]
        # every round: [start to lease, to the log's replay starting, to live, to dispatch]
        out[f"{mode}_rounds_phases_s"] = [
            [round(r[p], 3) for p in phases] + [round(r["restart_to_dispatch_s"], 3)]
            for r in results
        ]
    return out | rss.figures()


def _pids(
    nats: EmbeddedNats | None, orchs: list[tuple[str, OrchestratorProcess]]
) -> dict[str, int | None]:
    """The pids to sample (RssSampler): each orchestrator process running, our NATS server."""
    pids: dict[str, int | None] = {"nats": None if nats is None else nats.pid}
    for name, orch in orchs:
        process = orch.process
        if process is not None and process.returncode is None:
            pids[name] = process.pid
    return pids


async def _leader_and_standby(
    backplane: NatsBackplane, orchs: list[OrchestratorProcess], timeout: float = 60.0
) -> tuple[OrchestratorProcess, OrchestratorProcess, str]:
    """Which process holds the lease (its holder id, as it logged it when it took the lease),
    once the other one waits as a standby; and that holder id."""
    async with asyncio.timeout(timeout):
        while True:
            holder = await backplane.leases.holder(LEASE)
            first, second = orchs
            for leader, standby in ((first, second), (second, first)):
                took = [
                    line
                    for line in leader.lines
                    if line.get("event") == "orchestrator.lease_acquired"
                ]
                if holder is not None and took and took[-1].get("holder") == holder:
                    await leader.wait_for("orchestrator.live", timeout)
                    await standby.wait_for("orchestrator.standby", timeout)
                    return leader, standby, holder
            await asyncio.sleep(0.05)


async def _lease_gone(backplane: NatsBackplane, holder: str) -> float:
    """(perf_counter) when `holder` no longer holds the orchestrator lease (polled: expired,
    or already taken by the standby when its try came first)."""
    while await backplane.leases.holder(LEASE) == holder:  # noqa: ASYNC110 - a KV entry expiring
        await asyncio.sleep(0.01)
    return time.perf_counter()


async def _takeover_round(
    backplane: NatsBackplane, orchs: list[OrchestratorProcess], probe: Definitions
) -> dict[str, float]:
    leader, standby, holder = await _leader_and_standby(backplane, orchs)
    # Anywhere in the leader's renewal cycle: how old its lease is at the kill decides the wait.
    await asyncio.sleep(secrets.randbelow(1000) / 1000 * LEASE_RENEW_S)
    killed_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    await leader.kill()
    event = plan_run(
        probe, kind="outcome", target="probe", now=dt.datetime.now(dt.UTC), entropy=os.urandom(16)
    )
    await backplane.events.schedule_run(event)
    gone = asyncio.ensure_future(_lease_gone(backplane, holder))
    try:
        await _first_dispatch(backplane, event.run_id, timeout=60.0)
        seconds = time.perf_counter() - started
        lease_gone = await asyncio.wait_for(gone, 5.0) - started
    finally:
        gone.cancel()
    acquired = await standby.wait_for("orchestrator.lease_acquired", 30.0)
    live = await standby.wait_for("orchestrator.live", 30.0)

    def since_kill(line: Line) -> float:
        return (dt.datetime.fromisoformat(line["timestamp"]) - killed_at).total_seconds()

    await leader.start()  # the next round's standby (waited for there)
    return {
        "kill_to_dispatch_s": seconds,
        "to_lease_gone_s": lease_gone,  # the dead leader's lease expired
        "to_lease_acquired_s": since_kill(acquired),  # the standby's next try took it
        "to_live_s": since_kill(live),  # it replayed the log
        "replayed": live["replayed"],
    }


async def takeover(
    rounds: int = 5, *, nats_url: str | None = None, replicas: int = 1
) -> dict[str, Any]:
    """Kill → the probe's dispatch by the standby that takes over, `rounds` times (median,
    extremes, and every round's figure with its phases)."""
    if rounds < 1:
        raise ValueError("--rounds must be at least 1")
    probe = Definitions(tasks={"probe": TaskDef(id="probe", command="true", queue="bench")})
    with tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp:
        nats: EmbeddedNats | None = None
        if nats_url is None:
            nats = EmbeddedNats(Path(tmp) / "nats")
            nats_url = await asyncio.to_thread(nats.start)
        orchs = [
            OrchestratorProcess(nats_url, Path(tmp) / f"orchestrator-{name}.log")
            for name in ("a", "b")
        ]
        named = list(zip(("orchestrator-a", "orchestrator-b"), orchs, strict=True))
        try:
            connecting = connect(nats_url, name="cyclonetix-bench", replicas=replicas)
            async with (
                RssSampler(lambda: _pids(nats, named)) as rss,
                await connecting as backplane,
            ):
                await backplane.definitions.put(probe)
                await orchs[0].start()
                await orchs[0].wait_for("orchestrator.live", 60.0)
                await orchs[1].start()
                results = [await _takeover_round(backplane, orchs, probe) for _ in range(rounds)]
        finally:
            for orch in orchs:
                await orch.kill()
            if nats is not None:
                await asyncio.to_thread(nats.stop)
    seconds = [r["kill_to_dispatch_s"] for r in results]
    phases = ("to_lease_gone_s", "to_lease_acquired_s", "to_live_s")
    out: dict[str, Any] = {
        "rounds": rounds,
        "p50_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
        "min_s": round(min(seconds), 3),
        "lease_ttl_s": LEASE_TTL,
        "lease_renew_s": LEASE_RENEW_S,
        "lease_retry_s": LEASE_RETRY_S,
    }
    for phase in phases:  # medians: to_lease_gone_p50_s, …
        out[f"{phase.removesuffix('_s')}_p50_s"] = round(
            statistics.median(r[phase] for r in results), 3
        )
    out["rounds_s"] = [round(s, 3) for s in seconds]
    # every round: [kill to the lease gone, to the standby's lease, to it live, to dispatch]
    out["rounds_phases_s"] = [
        [round(r[p], 3) for p in phases] + [round(r["kill_to_dispatch_s"], 3)] for r in results
    ]
    return out | rss.figures()

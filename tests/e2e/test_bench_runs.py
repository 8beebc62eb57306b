"""The system benchmarks still run (on a tiny size; their budgets live in `just bench`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services import bench, bench_projector, bench_recovery
from tests.e2e.conftest import child_env

pytestmark = pytest.mark.e2e


async def test_latency_bench_runs_on_a_short_chain() -> None:
    figures = await bench.latency(5)
    assert figures["hops"] == 4
    assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"]


async def test_throughput_bench_runs_on_a_few_tasks() -> None:
    figures = await bench.throughput(20, agents=2, concurrency=2)
    assert figures["tasks"] == 20 and figures["tasks_per_s"] > 0


async def test_projector_lag_bench_runs_on_a_few_tasks() -> None:
    """`bench projector-lag` into memory, tiny: every event of the run is applied and timed (no
    timing asserted, only that the figures are there)."""
    figures = await bench_projector.projector_lag(20, agents=2, concurrency=2)
    assert figures["tasks"] == 20 and figures["read_model"] == "memory"
    # RunScheduled, one TasksQueued of all 20 (independent: ready at once, queued by one
    # decision), then per task TaskStarted, TaskSucceeded, then RunSucceeded
    assert figures["events"] == 3 + 2 * 20 and figures["timed_events"] == 20
    assert figures["events_per_s"] > 0 and figures["batches"] > 0
    assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert 0 < figures["all_p50_ms"] <= figures["all_p99_ms"] <= figures["all_max_ms"]


async def test_agent_kill_bench_runs_one_round() -> None:
    figures = await bench.agent_kill(1)
    assert figures["rounds"] == 1
    assert 0 < figures["min_ms"] <= figures["p50_ms"] <= figures["max_ms"]


async def test_takeover_bench_runs_one_round() -> None:
    """`bench takeover`, one kill: a standby orchestrator process takes over (no timing
    asserted, only that the figures are there)."""
    figures = await bench_recovery.takeover(1)
    assert figures["rounds"] == 1 and figures["lease_ttl_s"] > 0
    assert 0 < figures["min_s"] <= figures["p50_s"] <= figures["max_s"]
    assert len(figures["rounds_s"]) == 1
    # (moments polled, logged by the standby and seen here: their order is not asserted)
    [phases] = figures["rounds_phases_s"]
    assert len(phases) == 4 and all(seconds > 0 for seconds in phases)


def test_bench_cli_prints_one_json_object() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "latency", "--tasks", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert {"hops", "p50_ms", "p90_ms", "p99_ms"} <= figures.keys()


def test_recovery_bench_runs_on_a_few_runs() -> None:
    """`bench recovery` end to end through the CLI, tiny: it kills and restarts a real
    orchestrator process with and without a snapshot (no timing asserted)."""
    argv = [sys.executable, "-m", "services.cli", "bench", "recovery", "--json"]
    argv += ["--runs", "3", "--steps", "2", "--repeat", "1"]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=180, env=child_env(), check=False
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["runs"] == 3 and figures["events"] == 3 * (1 + 3 * 2 + 2)
    for mode in ("off", "on"):
        assert figures[f"{mode}_restart_to_dispatch_s"] > 0
        assert len(figures[f"{mode}_rounds_s"]) == 1
    # Without the snapshot the whole history is read again; with it, only what came after.
    assert figures["off_replayed_events"] > figures["events"]
    assert figures["on_replayed_events"] < 3
    assert figures["snapshot_bytes"] > 0

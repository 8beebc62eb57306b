"""The memory read model's replay benchmark still runs (its budget lives in `just bench`)."""

from __future__ import annotations

import gc

from bench import read_model_memory_bench


async def test_the_memory_replay_benchmark_runs_on_a_tiny_log() -> None:
    figures = await read_model_memory_bench.run(runs=5, events_per_run=11, batch=7)
    assert figures["replay_events"] == 55
    assert isinstance(rate := figures["replay_events_per_s"], int) and rate > 0
    assert gc.get_freeze_count() == 0  # the collector is given back everything it was spared

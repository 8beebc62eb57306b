"""Benchmarks are not timed tests: only check that their code works on a tiny size."""

from __future__ import annotations

from bench.definitions_bench import run


def test_definitions_bench_runs_small() -> None:
    figures = run(200, repeat=1)
    assert set(figures) >= {
        "tasks",
        "validate_ms",
        "resolve_ms",
        "validate_and_resolve_ms",
        "parse_ms",
    }
    assert figures["tasks"] == 200
    assert 1 < figures["outcome_nodes"] <= 200
    assert all(value >= 0 for value in figures.values())

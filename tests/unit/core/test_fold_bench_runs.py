from bench import fold_bench


def test_fold_bench_runs_on_a_tiny_log() -> None:
    figures = fold_bench.run(runs=20, events_per_run=32)
    assert figures["runs"] == 20
    assert figures["events"] == 20 * 32
    assert figures["fold_events_per_s"] > 0

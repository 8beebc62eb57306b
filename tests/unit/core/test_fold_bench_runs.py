import pytest

from bench import fold_bench
from core.events import TaskQueued, TasksQueued


@pytest.mark.parametrize("per_task", [False, True])
def test_fold_bench_runs_on_a_tiny_log(per_task: bool) -> None:
    figures = fold_bench.run(runs=20, events_per_run=32, per_task=per_task)
    assert figures["runs"] == 20
    assert figures["events"] == 20 * 32
    assert figures["fold_events_per_s"] > 0


def test_the_log_is_what_the_orchestrator_writes_or_wrote() -> None:
    """TasksQueued now; with `per_task`, a TaskQueued per attempt as older orchestrators did."""
    kinds = {type(e) for e in fold_bench.build_log(2, 32)}
    assert TasksQueued in kinds and TaskQueued not in kinds
    kinds = {type(e) for e in fold_bench.build_log(2, 32, per_task=True)}
    assert TaskQueued in kinds and TasksQueued not in kinds

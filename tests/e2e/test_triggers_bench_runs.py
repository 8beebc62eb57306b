"""The trigger benchmark (bench/triggers_bench.py) still runs on a tiny size and prints its JSON
line (no timing asserted; its budget lives in `just bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import child_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_trigger_benchmark_runs_on_a_tiny_size() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.triggers_bench", "--triggers", "20", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [json.loads(text) for text in done.stdout.splitlines()]
    assert line["figure"] == "triggers" and line["triggers"] == 20
    assert {"unit", "budget", "within_budget"} <= set(line)
    assert line["triggers_per_s"] > 0
    assert 0 < line["publish_to_task_started_p50_ms"] <= line["publish_to_task_started_p99_ms"]

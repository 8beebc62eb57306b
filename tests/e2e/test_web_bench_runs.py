"""The web benchmark (bench/web_bench.py) still runs on a tiny size: every group prints its
JSON line (no timing asserted; its budgets live in `just bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_service
from tests.e2e.conftest import child_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--runs", "200", "--tasks", "20", "--rounds", "1", "--requests", "20", "--json"]


def test_web_benchmark_runs_on_a_tiny_size() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.web_bench", *TINY],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["figure"] for line in lines] == [
        "api_runs_list",
        "sse_delivery",
        "run_page_interactive",
    ]
    for line in lines:
        assert {"unit", "budget", "within_budget"} <= set(line)
    listed, sse, page = lines
    if "skipped" in listed:
        requires_service("postgres", listed["skipped"])
    assert listed["runs"] == 200 and listed["requests"] == 20
    for query in ("limit_50", "status_failed_limit_50"):
        assert 0 < listed[query]["p50_ms"] <= listed[query]["p99_ms"]
    # 20 tasks: RunScheduled, three events a task, RunSucceeded; the first few come before
    # the stream opens
    assert sse["changes"] == 2 + 3 * 20 and 0 < sse["timed_changes"] <= sse["changes"]
    assert 0 < sse["p50_ms"] <= sse["p99_ms"] <= sse["max_ms"]
    if "skipped" in page:
        requires_service("chromium", page["skipped"])
    assert page["tasks"] == 2000 and len(page["rounds_s"]) == 1
    assert 0 < page["median_s"] <= page["max_s"]

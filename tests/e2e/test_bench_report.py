"""`python -m bench.report --quick` (the harness of `just bench`) runs benchmarks on a tiny size
and writes the report and its plots: the harness never rots. Three benchmarks here, those the
plots and the per-role memory come from (every benchmark has its own tiny-size test next to its
code, and tests/unit/bench covers the harness's handling of each outcome). No figure is
asserted, only that each is there (the README's figures are measured on a quiet machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import NAMES
from tests.conftest import requires_service
from tests.e2e.conftest import child_env

# ~20 s alone on a busy 2-core machine; the suite's other worker may slow it down
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
CHOSEN = ("resolve", "hop", "throughput")
SAMPLED = ("hop", "throughput")


def test_the_quick_report_runs_benchmarks_and_plots(tmp_path: Path) -> None:
    out, plots = tmp_path / "results.json", tmp_path / "plots"
    argv = [sys.executable, "-m", "bench.report", "--quick", "--only", *CHOSEN]
    argv += ["--out", str(out), "--plots", str(plots)]
    done = subprocess.run(
        argv, capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=540, check=False
    )
    assert out.exists(), done.stderr[-3000:]
    report = json.loads(out.read_text())
    benchmarks = report["benchmarks"]
    assert list(benchmarks) == [name for name in NAMES if name in CHOSEN]
    broken = {name: entry.get("error") for name, entry in benchmarks.items() if entry.get("error")}
    tails = "\n".join(f"{name}: {benchmarks[name]['stderr_tail'][-1500:]}" for name in broken)
    assert broken == {}, tails
    assert done.returncode == 0 and report["failed"] == [], done.stderr[-3000:]

    assert report["quick"] is True and report["command"].startswith("python -m bench.report")
    assert {"cpu_model", "cores", "memory_gib", "os", "python", "nats_server"} <= set(
        report["machine"]
    )
    assert report["machine"]["nats_server"].startswith("nats-server")
    assert {"commit", "changes"} <= set(report["git"]) and report["started_at"]
    skipped = {name: entry["skipped"] for name, entry in benchmarks.items() if "skipped" in entry}
    for name, entry in benchmarks.items():
        if name in skipped:
            continue
        assert entry["exit_code"] == 0 and entry["seconds"] > 0 and entry["peak_rss_mb"] > 0
        assert isinstance(entry["result"], dict) and entry["command"].startswith(".venv")

    # The roles' memory, sampled in the benchmark's process: per role, peak and series.
    for name in SAMPLED:
        result = benchmarks[name]["result"]
        roles = set(result["peak_rss_mb"])
        assert {"bench", "nats"} <= roles and any(r.startswith("orchestrator") for r in roles)
        assert all(mb > 0 for mb in result["peak_rss_mb"].values())
        assert set(result["rss_mb"]) == roles
        assert all(len(series) >= 2 for series in result["rss_mb"].values())
    assert {"agent-1", "agent-2"} <= set(benchmarks["throughput"]["result"]["peak_rss_mb"])
    hop, throughput = benchmarks["hop"]["result"], benchmarks["throughput"]["result"]
    assert len(hop["hop_ms"]) == hop["hops"] == hop["tasks"] - 1
    assert hop["seconds"] > 0 and hop["tasks_per_s"] > 0
    assert throughput["seconds"] > 0 and throughput["tasks_per_s"] > 0
    assert throughput["completed_over_time"][-1][1] == throughput["tasks"]

    written = {Path(p).name for p in report["plots"]}
    assert written == {"hop-latency.png", "throughput.png", "rss.png"}
    for name in written:
        data = (plots / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    if skipped:  # (Redis or Postgres absent: a skip here, a failure in CI)
        requires_service("redis/postgres", "; ".join(f"{k}: {v}" for k, v in skipped.items()))

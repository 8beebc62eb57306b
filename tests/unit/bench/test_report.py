"""bench/report.py's bookkeeping, on stand-in benchmarks (tiny Python one-liners): a failure is
recorded with its exit code and stderr and the report carries on, then exits non-zero; output
that is not one JSON object is a failure; a missing service is a skip. (The real benchmarks
through the report: tests/e2e/test_bench_report.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import plots, report

OK = report.Benchmark("ok", ("-c", 'print("warming up"); print(\'{"tasks_per_s": 5}\')'), ())
FAILS = report.Benchmark(
    "fails", ("-c", 'import sys; print("boom: no server", file=sys.stderr); sys.exit(3)'), ()
)
NO_JSON = report.Benchmark("no_json", ("-c", 'print("figures: 5 tasks/s")'), ())
NEEDS = report.Benchmark("needs_redis", ("-c", "print('{}')"), (), needs="redis")


def test_a_benchmark_s_json_object_is_recorded_with_its_time_and_memory() -> None:
    entry = report.run_benchmark(OK)
    assert entry["exit_code"] == 0 and entry["result"] == {"tasks_per_s": 5}
    assert entry["seconds"] > 0 and entry["peak_rss_mb"] > 0
    assert "error" not in entry and not report.failed(entry, skipped_fails=False)


def test_a_failing_benchmark_is_recorded_with_its_exit_code_and_stderr() -> None:
    entry = report.run_benchmark(FAILS)
    assert entry["exit_code"] == 3 and entry["result"] is None
    assert entry["error"] == "exited with code 3: boom: no server"
    assert "boom: no server" in entry["stderr_tail"]
    assert report.failed(entry, skipped_fails=False)


def test_output_that_is_not_a_json_object_is_a_failure() -> None:
    entry = report.run_benchmark(NO_JSON)
    assert entry["exit_code"] == 0
    assert entry["error"] == "printed no JSON object on its last line"
    assert report.failed(entry, skipped_fails=False)


def test_a_benchmark_is_killed_at_its_timeout() -> None:
    slow = report.Benchmark("slow", ("-c", "import time; time.sleep(60)"), ())
    entry = report.run_benchmark(slow, timeout=0.5)
    assert entry["error"] == "timed out after 0.5 s"
    assert entry["exit_code"] == -9 and entry["seconds"] < 30  # (SIGKILL)


def test_a_benchmark_needing_an_absent_service_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(report, "REDIS", "redis://127.0.0.1:1/0")  # (nothing listens on 1)
    entry = report.run_benchmark(NEEDS)
    assert entry["skipped"].startswith("redis: nothing answers at 127.0.0.1:1")
    assert not report.failed(entry, skipped_fails=False)
    assert report.failed(entry, skipped_fails=True)  # (CYCLONETIX_REQUIRE_SERVICES=1)


def test_the_report_carries_on_after_a_failure_and_exits_non_zero(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(report, "BENCHMARKS", (FAILS, OK))
    monkeypatch.setattr(report, "NAMES", ("fails", "ok"))
    out = tmp_path / "results.json"
    assert report.main(["--no-plots", "--out", str(out)]) == 1
    written = json.loads(out.read_text())
    assert list(written["benchmarks"]) == ["fails", "ok"]
    assert written["benchmarks"]["fails"]["exit_code"] == 3
    assert written["benchmarks"]["ok"]["result"] == {"tasks_per_s": 5}
    assert written["failed"] == ["fails"]
    assert {"machine", "git", "started_at", "finished_at", "command", "quick"} <= set(written)
    assert {"cpu_model", "cores", "memory_gib", "os", "python", "nats_server"} <= set(
        written["machine"]
    )
    err = capsys.readouterr().err
    assert "fails FAILED" in err and "error: 1 failed: fails" in err


def test_an_unknown_benchmark_name_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        report.main(["--only", "nope"])
    assert exited.value.code == 2
    assert "unknown benchmark nope (known: resolve, fold, hop" in capsys.readouterr().err


def test_jobs_only_with_quick(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        report.main(["--jobs", "2"])
    assert "--jobs must be 1, or more only with --quick" in capsys.readouterr().err


def test_no_plot_is_written_for_a_benchmark_that_failed(tmp_path: Path) -> None:
    failed = {"exit_code": 1, "command": "x", "result": {"hop_ms": [1.0]}}
    assert plots.write_plots({"benchmarks": {"hop": failed}}, tmp_path) == []

"""The performance report's plots (bench/report.py), PNG with matplotlib's Agg backend.

- `hop-latency.png`: the hops of `hop` (TaskSucceeded to the next TaskStarted, and to its
  command running), a histogram;
- `throughput.png`: tasks done over time in `throughput`, and the rate per interval;
- `rss.png`: each role's resident set over time, one panel per benchmark that sampled them.

A plot whose benchmark is missing from the report (or failed) is not written.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HOP = "hop-latency.png"
THROUGHPUT = "throughput.png"
RSS = "rss.png"


def missing_matplotlib() -> str | None:
    """None when matplotlib can be imported, else what to do (one line)."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed: pip install -e '.[bench]'"
    return None


def _result(report: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    entry = report.get("benchmarks", {}).get(name)
    if entry is None or entry.get("exit_code") != 0:
        return None
    result = entry.get("result")
    return result if isinstance(result, dict) else None


def _subtitle(report: Mapping[str, Any], name: str) -> str:
    m, commit = report.get("machine", {}), (report.get("git", {}).get("commit") or "")[:10]
    command = report["benchmarks"][name]["command"]
    return f"{command}\n{m.get('cpu_model')}, {m.get('usable_cores')} cores, at {commit}"


def write_plots(report: Mapping[str, Any], directory: Path) -> list[Path]:
    """Write the plots the report has data for into `directory`; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    hop = _result(report, "hop")
    if hop is not None and hop.get("hop_ms"):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.hist(hop["hop_ms"], bins=50, alpha=0.7, label="TaskSucceeded → next TaskStarted")
        if hop.get("to_command_ms"):
            ax.hist(hop["to_command_ms"], bins=50, alpha=0.5, label="→ its command running")
        ax.set_xlabel("ms")
        ax.set_ylabel("hops")
        ax.set_title(
            f"Hop latency, chain of {hop['tasks']}: p50 {hop['p50_ms']} / p90 {hop['p90_ms']} "
            f"/ p99 {hop['p99_ms']} ms"
        )
        ax.legend()
        fig.text(0.01, 0.01, _subtitle(report, "hop"), fontsize=7, alpha=0.7)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        written.append(_save(fig, directory / HOP))

    thr = _result(report, "throughput")
    if thr is not None and thr.get("completed_over_time"):
        series = thr["completed_over_time"]
        seconds = [t for t, _ in series]
        done = [n for _, n in series]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot(seconds, done, label="tasks done")
        ax.set_xlabel("s since the run was scheduled")
        ax.set_ylabel("tasks done")
        rate_ax = ax.twinx()
        rates = [
            (done[i] - done[i - 1]) / (seconds[i] - seconds[i - 1])
            for i in range(1, len(series))
            if seconds[i] > seconds[i - 1]
        ]
        rate_t = [seconds[i] for i in range(1, len(series)) if seconds[i] > seconds[i - 1]]
        rate_ax.plot(rate_t, rates, color="tab:orange", alpha=0.6, label="tasks/s")
        rate_ax.set_ylabel("tasks/s")
        ax.set_title(
            f"Throughput: {thr['tasks']} tasks, {thr['agents']} agents x {thr['concurrency']}: "
            f"{thr['tasks_per_s']} tasks/s"
        )
        fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.9))
        fig.text(0.01, 0.01, _subtitle(report, "throughput"), fontsize=7, alpha=0.7)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        written.append(_save(fig, directory / THROUGHPUT))

    sampled = [
        (name, result)
        for name in report.get("benchmarks", {})
        if (result := _result(report, name)) is not None and result.get("rss_mb")
    ]
    if sampled:
        cols = 2 if len(sampled) > 1 else 1
        rows = (len(sampled) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
        for ax, (name, result) in zip(axes.flat, sampled, strict=False):
            gap = 3 * result.get("rss_interval_s", 0.1)
            for role, points in result["rss_mb"].items():
                seconds, mb = _broken(points, gap)
                ax.plot(seconds, mb, label=role)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("s")
            ax.set_ylabel("RSS (MB)")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(sampled) :]:
            ax.set_visible(False)
        fig.suptitle("Resident set of each process over time (every 0.1 s)")
        fig.tight_layout()
        written.append(_save(fig, directory / RSS))
    return written


def _broken(points: list[list[float]], gap: float) -> tuple[list[float], list[float]]:
    """The series' times and values, with a NaN wherever the samples stop for over `gap`
    seconds (a process killed, then started again): the line breaks there."""
    seconds: list[float] = []
    values: list[float] = []
    for t, value in points:
        if seconds and t - seconds[-1] > gap:
            seconds.append(t)
            values.append(math.nan)
        seconds.append(t)
        values.append(value)
    return seconds, values


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

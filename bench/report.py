"""The performance report: every benchmark, one JSON file and its plots (`just bench`).

    python -m bench.report [--quick [--jobs N]] [--only NAME ...] [--out bench-results.json]
                           [--plots bench-plots/] [--no-plots] [--list]

Runs each benchmark of BENCHMARKS as its own process (one after another: they would disturb
each other's figures), at the sizes the README's figures were measured at (`--quick`: tiny
sizes, to check that each still runs; `--jobs N` then runs N at once), takes the one JSON
object it prints, and writes:

- `--out` (bench-results.json): `machine` (CPU model, cores, memory, OS, Python, nats-server
  version, load average at the start), `git` (commit, whether the tree had changes),
  `started_at`, `finished_at`, `command`, `quick`, and `benchmarks`: per name its `command`,
  `about`, `seconds` (wall time of the process), `exit_code`, `peak_rss_mb` (from wait4: the
  largest of the process and the children it waited for) and `result` (its JSON: for the
  system benchmarks also `peak_rss_mb` per role and `rss_mb`, each role's resident set over
  time). A benchmark that fails is recorded with its exit code, `error` (one line) and
  `stderr_tail`, and the report carries on; one that needs Redis or Postgres where none answers
  is `skipped`. Then `failed`, the names of those that failed, and `plots`.
- `--plots` (bench-plots/): `hop-latency.png` (histogram of the hops of `hop`),
  `throughput.png` (tasks done over time in `throughput`) and `rss.png` (each role's resident
  set over time, one panel per system benchmark). matplotlib: `pip install -e '.[bench]'`.

Exit status: 0 when every benchmark ran, 1 when one failed (or was skipped while
CYCLONETIX_REQUIRE_SERVICES=1), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_SERVICES_ENV = "CYCLONETIX_REQUIRE_SERVICES"
REDIS = os.environ.get("CYCLONETIX_BENCH_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"  # (as `just bench` always used)
STDERR_TAIL = 3000  # characters of a failed benchmark's stderr kept in the report
TIMEOUT_S = 3600.0
QUICK_TIMEOUT_S = 300.0
CLI = ("-m", "services.cli", "bench")
WEB = ("-m", "bench.web_bench", "--json-object")
TINY_SYSTEM = ("--tasks", "20", "--agents", "2", "--concurrency", "2")


@dataclass(frozen=True)
class Benchmark:
    name: str
    argv: tuple[str, ...]  # after the interpreter, at full size
    quick: tuple[str, ...]  # the same at a tiny size
    needs: str | None = None  # "redis" or "postgres": skipped when it does not answer
    about: str = ""
    env: Mapping[str, str] = field(default_factory=dict)


def _lag(store: str, url: str | None) -> Benchmark:
    read_model = () if url is None else ("--read-model", url)
    return Benchmark(
        f"projector_lag_{store}",
        (*CLI, "projector-lag", "--tasks", "5000", "--agents", "2", "--json", *read_model),
        (*CLI, "projector-lag", *TINY_SYSTEM, "--json", *read_model),
        needs=None if url is None else store,
        about=f"the live projector's lag into {store} under the throughput workload",
    )


def _replay(store: str, needs: str | None) -> Benchmark:
    module = f"bench.read_model_{store}_bench"
    lists = () if needs is None else ("--list-runs", "1000")
    return Benchmark(
        f"replay_{store}",
        ("-m", module, "--runs", "10000"),
        ("-m", module, "--runs", "5", "--events-per-run", "11", *lists),
        needs=needs,
        about=f"replay of a generated log into the {store} read model"
        + ("" if needs is None else ", and its list queries"),
    )


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "resolve",
        ("-m", "bench.definitions_bench"),
        ("-m", "bench.definitions_bench", "200"),
        about="validate 10,000 task definitions and resolve an outcome over them",
    ),
    Benchmark(
        "fold",
        ("-m", "bench.fold_bench"),
        ("-m", "bench.fold_bench", "--runs", "20", "--events-per-run", "32"),
        about="fold 1,010,000 events of 10,000 runs into run states",
    ),
    Benchmark(
        "hop",
        (*CLI, "latency", "--tasks", "200", "--json"),
        (*CLI, "latency", "--tasks", "5", "--json"),
        about="per-hop latency along a chain of 200 `true` tasks",
    ),
    Benchmark(
        "throughput",
        (*CLI, "throughput", "--tasks", "5000", "--agents", "2", "--json"),
        (*CLI, "throughput", *TINY_SYSTEM, "--json"),
        about="5,000 independent `true` tasks, 2 agents x 8",
    ),
    _lag("memory", None),
    _lag("redis", REDIS),
    _lag("postgres", POSTGRES),
    Benchmark(
        "agent_kill",
        (*CLI, "agent-kill", "--rounds", "5", "--json"),
        (*CLI, "agent-kill", "--rounds", "1", "--json"),
        about="a task's agent SIGKILLed: the kill to its start on another agent",
    ),
    Benchmark(
        "recovery",
        (*CLI, "recovery", "--runs", "1000", "--json"),
        (*CLI, "recovery", "--runs", "3", "--steps", "2", "--repeat", "1", "--json"),
        about="the orchestrator SIGKILLed with 1,000 open runs: restart to first dispatch",
    ),
    Benchmark(
        "takeover",
        (*CLI, "takeover", "--rounds", "5", "--json"),
        (*CLI, "takeover", "--rounds", "1", "--json"),
        about="the leading orchestrator SIGKILLed: the kill to the standby's first dispatch",
    ),
    _replay("memory", None),
    _replay("redis", "redis"),
    _replay("postgres", "postgres"),
    Benchmark(
        "web",
        (*WEB, "--runs", "100000", "--tasks", "200", "--rounds", "5"),
        (*WEB, "--runs", "200", "--tasks", "20", "--rounds", "1", "--requests", "20"),
        about="API list latency, SSE delivery, the run page of 2,000 tasks in Chromium",
    ),
    Benchmark(
        "triggers",
        ("-m", "bench.triggers_bench", "--triggers", "1000", "--json"),
        ("-m", "bench.triggers_bench", "--triggers", "20", "--json"),
        about="1,000 subject triggers published back to back: triggers/s",
    ),
)
NAMES = tuple(b.name for b in BENCHMARKS)
SLOW = ("recovery", "web", "takeover")  # (with --jobs: started first)


# The machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _output(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    from services.embedded_nats import EmbeddedNatsError, find_nats_server

    memory_kb = _field(_read("/proc/meminfo"), "MemTotal")
    os_release = dict(
        line.split("=", 1) for line in _read("/etc/os-release").splitlines() if "=" in line
    )
    try:
        nats = _output([find_nats_server(), "--version"])
    except EmbeddedNatsError as exc:
        nats = f"unknown ({exc})"
    return {
        "cpu_model": _field(_read("/proc/cpuinfo"), "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(int(memory_kb.split()[0]) / 2**20, 1) if memory_kb else None,
        "os": os_release.get("PRETTY_NAME", "").strip('"') or platform.system(),
        "kernel": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "nats_server": nats,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git() -> dict[str, Any]:
    status = _output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "commit": _output(["git", "rev-parse", "HEAD"]),
        "changes": None if status is None else bool(status),  # the tree differed from it
    }


# Running one benchmark


def _shown(argv: Sequence[str]) -> str:
    """The command as a reader would type it (the interpreter relative to the repository)."""
    exe = Path(argv[0])
    with_root = exe.is_relative_to(ROOT)
    return shlex.join([str(exe.relative_to(ROOT)) if with_root else argv[0], *argv[1:]])


def _reachable(url: str) -> str | None:
    """None when something listens where `url` points, else why not (one line)."""
    parts = urlsplit(url)
    default = 6379 if parts.scheme.startswith(("redis", "rediss")) else 5432
    host, port = parts.hostname or "127.0.0.1", parts.port or default
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"


def _service_url(needs: str) -> str:
    if needs == "redis":
        return REDIS
    return os.environ.get("CYCLONETIX_BENCH_POSTGRES", POSTGRES)


def _wait(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float, bool]:
    """Wait for `process` (its whole process group is killed after `timeout`); its exit code,
    peak RSS in MB (wait4: the largest of it and the children it waited for), and whether it
    was killed at its timeout."""
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                _, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.1)  # (polled: wait4 has no timeout)
    except BaseException:  # Ctrl-C: take the benchmark down with us
        os.killpg(process.pid, signal.SIGKILL)
        os.wait4(process.pid, 0)
        process.returncode = -signal.SIGKILL
        raise
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, round(usage.ru_maxrss / 1024, 1), timed_out


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")[-STDERR_TAIL:]


def _one_object(stdout: str) -> dict[str, Any] | None:
    """The JSON object a benchmark printed: its last non-empty line of stdout."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        result = json.loads(lines[-1])
    except ValueError:
        return None
    return result if isinstance(result, dict) else None


def run_benchmark(
    bench: Benchmark, *, quick: bool = False, timeout: float | None = None
) -> dict[str, Any]:
    """Run `bench` as a process and record it (see the module's docstring)."""
    argv = [sys.executable, *(bench.quick if quick else bench.argv)]
    entry: dict[str, Any] = {"command": _shown(argv), "about": bench.about}
    if bench.needs is not None:
        missing = _reachable(_service_url(bench.needs))
        if missing is not None:
            return entry | {"skipped": f"{bench.needs}: {missing}", "exit_code": None}
    timeout = timeout or (QUICK_TIMEOUT_S if quick else TIMEOUT_S)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=ROOT,
            env={**os.environ, **bench.env},
            start_new_session=True,  # (its group is killed on a timeout)
        )
        code, peak, timed_out = _wait(process, timeout)
        seconds = time.monotonic() - started
        out.seek(0)
        result = _one_object(out.read().decode(errors="replace"))
        entry |= {"seconds": round(seconds, 3), "exit_code": code, "peak_rss_mb": peak}
        if timed_out:
            error = f"timed out after {timeout:g} s"
        elif code != 0:
            error = f"exited with code {code}"
        elif result is None:
            error = "printed no JSON object on its last line"
        else:
            return entry | {"result": result}
        stderr = _tail(err)
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
        return entry | {
            "result": result,
            "error": f"{error}: {last.strip()}" if last.strip() else error,
            "stderr_tail": stderr,
        }


def failed(entry: Mapping[str, Any], *, skipped_fails: bool) -> bool:
    if "skipped" in entry:
        return skipped_fails
    return entry["exit_code"] != 0 or "error" in entry


# The report


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Run every benchmark (one process each, one after another), write their "
        "figures to one JSON file and plot hop latency, throughput and memory.",
        epilog="Benchmarks: "
        + "; ".join(f"{b.name} ({b.about})" for b in BENCHMARKS)
        + ". Redis at $CYCLONETIX_BENCH_REDIS (default redis://127.0.0.1:6379/0), Postgres at "
        "127.0.0.1:5432: a benchmark needing one that does not answer is skipped (a failure "
        "when CYCLONETIX_REQUIRE_SERVICES=1).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that each runs (no figures)"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these (see --list)", default=None
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results.json"), help="(bench-results.json)"
    )
    parser.add_argument(
        "--plots", type=Path, default=Path("bench-plots"), help="PNG folder (bench-plots/)"
    )
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="with --quick: N benchmarks at once (1; they disturb each other's figures)",
    )
    parser.add_argument("--list", action="store_true", help="print the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.jobs > 1 and not args.quick):
        parser.error("--jobs must be 1, or more only with --quick (figures side by side lie)")
    unknown = sorted(set(args.only or ()) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(NAMES)})")
    return args


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    if args.list:
        for bench in BENCHMARKS:
            print(f"{bench.name:<22} {_shown([sys.executable, *bench.argv])}")
        return 0
    chosen = [b for b in BENCHMARKS if args.only is None or b.name in args.only]
    if not args.no_plots:  # before an hour of benchmarks, not after
        from bench.plots import missing_matplotlib

        missing = missing_matplotlib()
        if missing is not None:
            _say(f"error: {missing} (or --no-plots)")
            return 1
    skipped_fails = os.environ.get(REQUIRE_SERVICES_ENV) == "1"
    report: dict[str, Any] = {
        "machine": machine(),
        "git": git(),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(
            ["python", "-m", "bench.report", *(sys.argv[1:] if argv is None else argv)]
        ),
        "quick": args.quick,
        "benchmarks": {},
    }
    entries: dict[str, dict[str, Any]] = {}

    def one(bench: Benchmark) -> None:
        if args.jobs == 1:
            _say(f"[{len(entries) + 1}/{len(chosen)}] {bench.name}: {bench.about}")
        entry = entries[bench.name] = run_benchmark(bench, quick=args.quick)
        if "skipped" in entry:
            _say(f"    {bench.name} skipped: {entry['skipped']}")
        elif failed(entry, skipped_fails=False):
            _say(f"    {bench.name} FAILED in {entry['seconds']} s: {entry['error']}")
        else:
            _say(f"    {bench.name} ok in {entry['seconds']} s, peak RSS {entry['peak_rss_mb']} MB")

    if args.jobs == 1:
        for bench in chosen:
            one(bench)
    else:  # (--quick only) the slowest first, so that they end together
        with ThreadPoolExecutor(args.jobs) as pool:
            slowest_first = sorted(chosen, key=lambda b: b.name not in SLOW)
            for done in [pool.submit(one, bench) for bench in slowest_first]:
                done.result()
    report["benchmarks"] = {b.name: entries[b.name] for b in chosen}  # (in BENCHMARKS order)
    report["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["failed"] = [
        name
        for name, entry in report["benchmarks"].items()
        if failed(entry, skipped_fails=skipped_fails)
    ]
    report["plots"] = []
    plot_error = None
    if not args.no_plots:
        from bench.plots import write_plots

        try:
            written = write_plots(report, args.plots)
        except (OSError, ValueError) as exc:
            plot_error = f"plots not written: {exc}"
        else:
            report["plots"] = [str(path) for path in written]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    plots = f"; plots: {', '.join(report['plots'])}" if report["plots"] else ""
    _say(f"wrote {args.out}{plots}")
    if plot_error is not None:
        _say(f"error: {plot_error}")
    if report["failed"]:
        _say(f"error: {len(report['failed'])} failed: {', '.join(report['failed'])}")
    return 1 if report["failed"] or plot_error is not None else 0


if __name__ == "__main__":
    sys.exit(main())

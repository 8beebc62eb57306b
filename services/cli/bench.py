"""`cyclonetix bench latency|throughput|agent-kill|recovery|takeover|projector-lag`: measure
the running system, print JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from services import bench, bench_projector, bench_recovery
from services.cli.common import run
from services.cli.main import CliError
from services.settings import load_settings


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="measure hop latency, throughput, recovery from a killed agent or orchestrator, "
        "standby takeover, the live projector's lag",
        description="Start a private NATS server, orchestrator and agents (real processes), "
        "run a benchmark workload through them and print the figures.",
    )
    kinds = parser.add_subparsers(
        dest="which",
        metavar="latency|throughput|agent-kill|recovery|takeover|projector-lag",
        required=True,
    )
    lat = kinds.add_parser(
        "latency",
        help="per-hop latency along a chain of `true` tasks",
        description="Run a chain of N `true` tasks; report the time from each task's success "
        "to the next task's start (p50/p90/p99), and to its command running.",
    )
    lat.add_argument("--tasks", type=int, default=200, help="chain length (default 200)")
    lat.add_argument("--agents", type=int, default=1, help="agent processes (default 1)")
    thr = kinds.add_parser(
        "throughput",
        help="tasks per second for many independent `true` tasks",
        description="Run M independent `true` tasks in one DAG run with K agents; report tasks/s.",
    )
    thr.add_argument("--tasks", type=int, default=5000, help="tasks (default 5000)")
    thr.add_argument("--agents", type=int, default=2, help="agent processes (default 2)")
    thr.add_argument("--concurrency", type=int, default=8, help="tasks per agent at once")
    kill = kinds.add_parser(
        "agent-kill",
        help="how soon a task whose agent was killed (SIGKILL) starts on another agent",
        description="Run a task on one of two agents, kill that agent with SIGKILL while the "
        "command runs, and report the time from the kill to the task's TaskStarted on the "
        "other agent; R rounds (the killed agent is started again between rounds).",
    )
    kill.add_argument("--rounds", type=int, default=5, help="kills (default 5)")
    rec = kinds.add_parser(
        "recovery",
        help="restart to first dispatch after the orchestrator's SIGKILL, snapshot off and on",
        description="Write the history of N open runs (S tasks done in each, one running), let "
        "an orchestrator process replay it and snapshot it, then R times each: SIGKILL it, "
        "(off: delete its snapshot), wait for its lease to expire, schedule a probe run, start "
        "a new orchestrator and time its start to the probe's TasksQueued.",
    )
    rec.add_argument("--runs", type=int, default=1000, help="open runs (default 1000)")
    rec.add_argument("--steps", type=int, default=30, help="tasks done per run (default 30)")
    rec.add_argument("--repeat", type=int, default=3, help="rounds of each (default 3)")
    take = kinds.add_parser(
        "takeover",
        help="kill to first dispatch by the standby after the leading orchestrator's SIGKILL",
        description="Start two orchestrator processes (one leads, one waits as a standby), then "
        "R times: SIGKILL the leader, schedule a probe run at once and time the kill to the "
        "probe's TasksQueued from the standby that takes over, lease expiry included (the killed "
        "orchestrator is started again as the next standby).",
    )
    take.add_argument("--rounds", type=int, default=5, help="kills (default 5)")
    lag = kinds.add_parser(
        "projector-lag",
        help="the live projector's lag behind the log, under the throughput workload",
        description="Run the throughput workload (M independent `true` tasks, K agents) with a "
        "projector following the log into a read model (in this process, to time each write) "
        "and report how long after each event's timestamp it was applied (p50/p90/p99/max: the "
        "task results, stamped as they are appended; all_*: every event of the run). A Redis "
        "store gets a fresh key prefix, a Postgres one a fresh schema; both are removed after.",
    )
    lag.add_argument("--tasks", type=int, default=5000, help="tasks (default 5000)")
    lag.add_argument("--agents", type=int, default=2, help="agent processes (default 2)")
    lag.add_argument("--concurrency", type=int, default=8, help="tasks per agent at once")
    lag.add_argument(
        "--read-model",
        metavar="URL",
        default="memory://",
        help="memory:// (default), redis://host:port/db or postgresql://user@host:port/db",
    )
    for p in (lat, thr, kill, rec, take, lag):
        p.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object (with every sample, the series over time and the "
            "processes' peak RSS: peak_rss_mb, rss_mb)",
        )
        p.add_argument("--nats-url", metavar="URL", help="use this NATS server (default: private)")
        p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.which in ("agent-kill", "takeover"):
        if args.rounds < 1:
            raise CliError("--rounds must be at least 1")
    elif args.which == "recovery":
        pass  # (checked by the benchmark itself)
    elif args.tasks < 1 or args.agents < 1:
        raise CliError("--tasks and --agents must be at least 1")
    # A server of our own has one node; a given one may be a cluster set up for 3 copies.
    replicas = load_settings().nats.stream_replicas if args.nats_url else 1
    try:
        if args.which == "latency":
            figures = run(
                bench.latency(
                    args.tasks, agents=args.agents, nats_url=args.nats_url, replicas=replicas
                )
            )
        elif args.which == "agent-kill":
            figures = run(bench.agent_kill(args.rounds, nats_url=args.nats_url, replicas=replicas))
        elif args.which == "takeover":
            figures = run(
                bench_recovery.takeover(args.rounds, nats_url=args.nats_url, replicas=replicas)
            )
        elif args.which == "recovery":
            figures = run(
                bench_recovery.recovery(
                    args.runs,
                    steps=args.steps,
                    repeat=args.repeat,
                    nats_url=args.nats_url,
                    replicas=replicas,
                )
            )
        elif args.which == "projector-lag":
            figures = run(
                bench_projector.projector_lag(
                    args.tasks,
                    agents=args.agents,
                    concurrency=args.concurrency,
                    read_model=args.read_model,
                    nats_url=args.nats_url,
                    replicas=replicas,
                )
            )
        else:
            figures = run(
                bench.throughput(
                    args.tasks,
                    agents=args.agents,
                    concurrency=args.concurrency,
                    nats_url=args.nats_url,
                    replicas=replicas,
                )
            )
    except (ValueError, RuntimeError) as exc:
        raise CliError(str(exc), 1) from None
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            if isinstance(value, dict) and any(isinstance(v, list) for v in value.values()):
                continue  # a series per role (rss_mb): --json has it
            if isinstance(value, dict):
                value = "  ".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, list) and len(value) > 10:  # samples: --json has them
                value = f"({len(value)} samples: --json)"
            print(f"{key:<20} {value}")
    return 0

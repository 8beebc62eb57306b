"""Benchmark: subject triggers (issue 10), one JSON line.

    python -m bench.triggers_bench [--triggers 1000] [--agents 1] [--concurrency 16] [--json]

A real system (services/bench.py's `_cluster`: an embedded nats-server, an orchestrator process,
which runs the trigger handler, and agent processes). Once the handler answers a request, this
process publishes `--triggers` messages to `cx.trigger.task.bench_trigger` back to back with
core NATS (as `nats pub` does), each naming its run id, and follows the event log:

- `triggers_per_s`: triggers / the time from the first publish until the last of their
  RunScheduled events was read back here (so it includes the handler's whole work per message:
  parse, plan, append, record, ack). Budget: >= 500/s.
- `publish_to_task_started_p50_ms` / `_p99_ms`: per run, its first task's TaskStarted `ts` (the
  agent's clock, stamped as it takes the dispatch) minus this process's clock just before that
  trigger was published (one machine: no skew). This includes the queueing behind the other
  runs: 1,000 runs arrive at once and the agents take `agents x concurrency` at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from core.definitions import Definitions, TaskDef
from core.events import RunScheduled, TaskStarted
from services.bench import RssSampler, _cluster, cluster_pids, percentile
from services.logging import configure_logging
from services.nats import connect
from services.nats.names import trigger_subject

TARGET = "bench_trigger"
BUDGET_PER_S = 500.0


async def measure(triggers: int, *, agents: int = 1, concurrency: int = 16) -> dict[str, object]:
    defs = Definitions(tasks={TARGET: TaskDef(id=TARGET, command="true")})
    subject = trigger_subject("outcome", TARGET)
    with (
        tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp,
        (Path(tmp) / "roles.log").open("a") as log,
    ):
        cluster = _cluster(defs, Path(tmp), log, agents, concurrency, None)
        async with RssSampler(lambda: cluster_pids(cluster)) as rss:
            url = await cluster.start()
            try:
                async with await connect(url, name="cyclonetix-bench") as backplane:
                    nc = backplane.connection.nc
                    # The handler is up once it answers (the orchestrator process may still start).
                    await _warm_up(nc, subject)
                    from_seq = await backplane.events.last_seq() + 1
                    ids = [f"tb-{i:06d}" for i in range(triggers)]
                    published: dict[str, float] = {}
                    scheduled_at: dict[str, float] = {}
                    started_ms: dict[str, float] = {}
                    stop = asyncio.Event()

                    async def follow() -> None:
                        async for _seq, event, _ in backplane.events.tail(
                            from_seq=from_seq, stop=stop
                        ):
                            if event.run_id not in published:
                                continue
                            if isinstance(event, RunScheduled):
                                scheduled_at[event.run_id] = time.perf_counter()
                            elif isinstance(event, TaskStarted) and event.run_id not in started_ms:
                                sent = published[event.run_id]
                                started_ms[event.run_id] = (event.ts.timestamp() - sent) * 1000
                            if len(started_ms) == triggers and len(scheduled_at) == triggers:
                                return

                    began = time.perf_counter()
                    for run_id in ids:
                        published[run_id] = dt.datetime.now(dt.UTC).timestamp()
                        await nc.publish(subject, b'{"run_id": "%s"}' % run_id.encode())
                    await nc.flush()
                    follower = asyncio.ensure_future(follow())
                    # (The tail replays from before the first publish: nothing is missed.)
                    await asyncio.wait_for(follower, timeout=max(120.0, triggers / 10))
                    stop.set()
            finally:
                await cluster.stop()
    seconds = max(scheduled_at.values()) - began
    rate = triggers / seconds
    latencies = list(started_ms.values())
    return {
        "figure": "triggers",
        "unit": "triggers/s",
        "budget": f">= {BUDGET_PER_S:g}/s",
        "within_budget": rate >= BUDGET_PER_S,
        "triggers": triggers,
        "agents": agents,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "triggers_per_s": round(rate, 1),
        "publish_to_task_started_p50_ms": round(percentile(latencies, 0.5), 3),
        "publish_to_task_started_p99_ms": round(percentile(latencies, 0.99), 3),
        **rss.figures(),
    }


async def _warm_up(nc: Any, subject: str) -> None:
    """Return once a trigger is answered (the orchestrator process may still be starting)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            reply = await nc.request(subject, b'{"run_id": "tb-warm-up"}', timeout=2)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
            continue
        if json.loads(reply.data).get("status") not in ("scheduled", "existing"):
            raise RuntimeError(f"warm-up trigger refused: {reply.data!r}")
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=1000, help="how many (default 1000)")
    parser.add_argument("--agents", type=int, default=1, help="agent processes (default 1)")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="tasks per agent at once (default 16)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line (the default too)")
    args = parser.parse_args()
    configure_logging(json=False, level="WARNING")  # (to stderr: stdout is the figure)
    if args.triggers < 1:
        parser.error("--triggers must be at least 1")
    result = asyncio.run(measure(args.triggers, agents=args.agents, concurrency=args.concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

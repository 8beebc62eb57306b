"""`/metrics`: Prometheus text exposition of what an operator graphs and alerts on.

    cyclonetix_runs{status}                    runs in the read model, per status
    cyclonetix_open_run_tasks{status}          tasks of the open (scheduled, running) runs
    cyclonetix_queue_depth{queue}              dispatches waiting per work queue (live, NATS)
    cyclonetix_agents                          agents with a live heartbeat
    cyclonetix_agent_running_tasks{agent}      what each of them runs
    cyclonetix_projector_lag_events            events in the log the read model has not applied
    cyclonetix_events_last_seq                 the newest stream sequence
    cyclonetix_dispatch_to_start_seconds       TasksQueued -> TaskStarted, seen by this process
    cyclonetix_source_up{source}               1 when that source answered this scrape

Counts are read when scraped (one call per source, each bounded), so they need no process-wide
state; only the latency histogram accumulates, from the live feed (`LiveFeed.listeners`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from collections.abc import Awaitable, Iterator
from typing import TypeVar

from litestar import Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.events import AnyEvent, TaskStarted, each_queued
from core.run import RunStatus, TaskStatus
from projections.views import RunFilter
from web.context import UiContext

__all__ = ["Metrics", "metrics"]

T = TypeVar("T")

SOURCE_TIMEOUT_S = 2.0
OPEN_RUNS_MAX = 10_000  # open runs whose tasks are counted, at most (a page of 500 at a time)
QUEUED_REMEMBERED = 100_000  # queued attempts waiting for their start, at most
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics(Collector):
    """The registry of one web process; `snapshot` is filled by each scrape just before it is
    rendered (with no await in between, so scrapes never mix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.dispatch_to_start = Histogram(
            "cyclonetix_dispatch_to_start_seconds",
            "Time from a task's queueing to its TaskStarted (events this process saw live)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.snapshot: list[Metric] = []
        self._queued: OrderedDict[tuple[str, str, int], dt.datetime] = OrderedDict()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield from self.snapshot

    def observe(self, _seq: int, event: AnyEvent) -> None:
        """A live event (a `LiveFeed` listener): times dispatch to start."""
        for q in each_queued(event):
            self._queued[(q.run_id, q.task_id, q.attempt)] = q.ts
            if len(self._queued) > QUEUED_REMEMBERED:
                self._queued.popitem(last=False)  # a start never seen: forget the oldest
        if isinstance(event, TaskStarted):
            queued = self._queued.pop((event.run_id, event.task_id, event.attempt), None)
            if queued is not None:
                self.dispatch_to_start.observe(max(0.0, (event.ts - queued).total_seconds()))

    async def render(self, ui: UiContext) -> bytes:
        self.snapshot = await gather_figures(ui)
        return generate_latest(self.registry)


async def _bounded(call: Awaitable[T]) -> T | None:
    try:
        return await asyncio.wait_for(call, SOURCE_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - a source that fails is reported by cyclonetix_source_up
        return None


async def _open_task_counts(ui: UiContext) -> dict[TaskStatus, int]:
    totals = dict.fromkeys(TaskStatus, 0)
    for status in (RunStatus.SCHEDULED, RunStatus.RUNNING):
        cursor: str | None = None
        seen = 0
        while seen < OPEN_RUNS_MAX:
            page = await ui.read_model.list_runs(RunFilter(status=status), 500, cursor)
            for row in page.items:
                for task_status, n in row.counts.items():
                    totals[task_status] += n
            seen += len(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return totals


async def gather_figures(ui: UiContext) -> list[Metric]:
    runs, tasks, depths, agents, last_seq, checkpoint = await asyncio.gather(
        _bounded(ui.read_model.count_runs()),
        _bounded(_open_task_counts(ui)),
        _bounded(ui.backplane.work.depths()),
        _bounded(ui.backplane.agents.list()),
        _bounded(ui.backplane.events.last_seq()),
        _bounded(ui.read_model.checkpoint()),
    )
    out: list[Metric] = []
    up = GaugeMetricFamily(
        "cyclonetix_source_up", "1 when the source answered this scrape", labels=["source"]
    )
    for source, value in (
        ("read_model", runs),
        ("nats", last_seq),
        ("agents", agents),
        ("queues", depths),
    ):
        up.add_metric([source], 0.0 if value is None else 1.0)
    out.append(up)
    if runs is not None:
        g = GaugeMetricFamily("cyclonetix_runs", "Runs per status", labels=["status"])
        for status, n in runs.items():
            g.add_metric([str(status)], n)
        out.append(g)
    if tasks is not None:
        g = GaugeMetricFamily(
            "cyclonetix_open_run_tasks", "Tasks of open runs per status", labels=["status"]
        )
        for task_status, n in tasks.items():
            g.add_metric([str(task_status)], n)
        out.append(g)
    if depths is not None:
        g = GaugeMetricFamily("cyclonetix_queue_depth", "Dispatches waiting", labels=["queue"])
        for queue, n in sorted(depths.items()):
            g.add_metric([queue], n)
        out.append(g)
    if agents is not None:
        out.append(GaugeMetricFamily("cyclonetix_agents", "Live agents", value=len(agents)))
        g = GaugeMetricFamily(
            "cyclonetix_agent_running_tasks", "Tasks each agent runs", labels=["agent"]
        )
        for agent in agents:
            g.add_metric([agent.id], len(agent.running))
        out.append(g)
    if last_seq is not None:
        out.append(
            GaugeMetricFamily("cyclonetix_events_last_seq", "Newest stream sequence", last_seq)
        )
        if checkpoint is not None:
            out.append(
                GaugeMetricFamily(
                    "cyclonetix_projector_lag_events",
                    "Events the read model has not applied yet",
                    value=max(0, last_seq - checkpoint),
                )
            )
    return out


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(ui: NamedDependency[UiContext]) -> Response[bytes]:
    collector = ui.extras.get("metrics")
    if not isinstance(collector, Metrics):
        collector = ui.extras["metrics"] = Metrics()
    return Response(await collector.render(ui), media_type=CONTENT_TYPE_LATEST)

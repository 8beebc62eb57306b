"""Benchmark: the web UI and API's budgets (issue 9), one JSON line per figure group.

    python -m bench.web_bench [--runs 100000] [--tasks 200] [--rounds 5] [--json]

Everything runs against real parts: a private nats-server (services/embedded_nats.py), the app
of web/app.py (`create_app` over a `UiContext`) served by uvicorn on this event loop
(`listening`), hit over HTTP.

1. `api_runs_list`: `GET /api/v1/runs?limit=50`, and with `status=failed`, over `--runs` runs
   (bench/read_model_common.py's `many_runs`: a tenth failed) in a Postgres read model, a fresh
   schema of $CYCLONETIX_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres),
   dropped after. Per request: httpx.AsyncClient's round trip over loopback (the app's query,
   its JSON, uvicorn, the client's parsing), on one keep-alive connection as a browser's;
   `--requests` (default 250) timed requests per query after `WARM_UP` each; p50/p99. Beside
   them, `new_connection_*`: the same requests on a new connection each (no keep-alive), which
   shows what keep-alive adds: as written at the time of this module, web/app.py's
   `listening` binds with `socket.create_server` (proto 0), so asyncio sets no TCP_NODELAY on
   the connections it accepts, and on a reused one a response written in two parts waits for
   the client's delayed ACK (~40 ms).
   Budget: p99 < 50 ms (judged on the keep-alive figures).
2. `sse_delivery`: a live system — an orchestrator and an agent process (services/bench.py's
   `_cluster`), a projector into a memory read model and the app in this process (as `cyclonetix
   ui` runs them). A chain of `--tasks` tasks is scheduled and `/api/v1/runs/{id}/stream` read
   with httpx; for each `event: change` its delay = the wall clock when the blank line ending
   the message was read minus the `ts` of the event it carries, as stored: the `EventRow.ts`
   the read model holds for the message's id (the stream sequence), read after the run. That
   `ts` is the writer's own (the orchestrator's or the agent's, taken just before it appends to
   JetStream; the orchestrator stamps all events of one decision alike; an agent stamps
   TaskStarted when it begins handling a dispatch, before its conditional append). So the
   figure includes the append to JetStream, the projector's delivery and store write, the live
   feed's tail and its wait for the read model (web/live.py), its read of the run, the SSE
   encoding and the loopback HTTP to the client. Changes stamped before the stream's response
   began (the run's first events, sent as a backlog on connect) are not counted; the chain's
   first task sleeps `FIRST_TASK_S` so that nearly all of the run comes after it. One machine:
   no clock skew. Budget: p99 < 250 ms.
3. `run_page_interactive`: headless Chromium (Playwright on /usr/bin/chromium) opens the run
   page of a 2,000-task run (tests/web/browser/test_big_run.py's DAG, scheduled through the API,
   no orchestrator: it stays pending) in a fresh browser context each round; the time from just
   before `page.goto` until the graph says it is drawn (`#graph[data-ready=yes]`) and a click on
   a node (t20_25) has opened its panel — the browser tests' own helpers
   (tests/web/browser/driving.py). Median and max over `--rounds`. Budget: < 2 s. Skipped (a
   `skipped` line) when Playwright or Chromium is missing.

Each line: `figure`, `unit`, `budget`, `within_budget` and the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.read_model_common import apply, many_runs, timed
from core.definitions import Definitions, TaskDef
from core.errors import Unavailable
from core.events import TERMINAL
from projections.memory import MemoryReadModel
from projections.protocol import ReadModel
from projections.stores import open_read_model
from services.bench import _cluster, _new_run, chain_definitions, percentile
from services.bench_projector import _drop_schema, _private
from services.embedded_nats import EmbeddedNats
from services.logging import configure_logging
from services.nats import NatsBackplane, connect
from web.app import create_app, listening, projecting
from web.context import UiContext

SERVER_ENV = "CYCLONETIX_BENCH_POSTGRES"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
CHROMIUM = os.environ.get("CYCLONETIX_CHROMIUM", "/usr/bin/chromium")
LIST_BUDGET_MS = 50.0
SSE_BUDGET_MS = 250.0
PAGE_BUDGET_S = 2.0
REQUESTS = 250  # timed requests per query (after the warm-up)
WARM_UP = 20
FIRST_TASK_S = 0.5
SSE_TIMEOUT_S = 300.0
BATCH = 1_000
FRESH = httpx.Limits(max_keepalive_connections=0)
TERMINAL_TYPES = {cls.__name__ for cls in TERMINAL}


def _line(
    figure: str, unit: str, budget: str, within: bool | None, **figures: Any
) -> dict[str, Any]:
    return {
        "bench": "web",
        "figure": figure,
        "unit": unit,
        "budget": budget,
        "within_budget": within,
    } | figures


@contextlib.asynccontextmanager
async def _app(read_model: ReadModel, backplane: NatsBackplane) -> AsyncIterator[str]:
    ui = UiContext(read_model, backplane, nats_url=backplane.url)
    async with listening(create_app(ui), port=0) as url:
        yield url


# 1. GET /api/v1/runs over a Postgres read model


async def api_runs_list(
    nats_url: str, postgres: str, runs: int, requests: int = REQUESTS
) -> dict[str, Any]:
    figure, unit, budget = "api_runs_list", "ms", f"p99 < {LIST_BUDGET_MS:g} ms"
    url, schema = _private(postgres)
    assert schema is not None, "not a Postgres URL"
    store = open_read_model(url)
    try:
        try:
            await store.checkpoint()
        except Unavailable as exc:
            return _line(figure, unit, budget, None, skipped=f"Postgres unavailable: {exc}")
        entries = many_runs(runs)
        load_s = await apply(store, entries, BATCH)
        # (as bench/read_model_postgres_bench.py does after loading)
        import asyncpg  # type: ignore[import-untyped]  # (only for a Postgres store)

        con = await asyncpg.connect(postgres)
        try:
            await con.execute(f"ANALYZE {schema}.runs")
        finally:
            await con.close()
        every = {"limit": "50"}
        failed = {"limit": "50", "status": "failed"}

        async def get(client: httpx.AsyncClient, params: dict[str, str]) -> None:
            r = await client.get("/api/v1/runs", params=params)
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            # (a tenth of the runs failed: a full page from 1,000 runs on)
            assert 0 < len(items) <= 50 and (runs < 1_000 or len(items) == 50), r.text[:200]
            assert "status" not in params or {i["status"] for i in items} == {"failed"}

        async with (
            await connect(nats_url, name="web-bench") as backplane,
            _app(store, backplane) as base,
        ):
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                for _ in range(WARM_UP):
                    await get(client, every)
                    await get(client, failed)
                all_ms = await timed(lambda: get(client, every), requests)
                failed_ms = await timed(lambda: get(client, failed), requests)
            # The same requests, each on a new connection (no keep-alive), beside the figures.
            async with httpx.AsyncClient(base_url=base, timeout=10, limits=FRESH) as fresh:
                all_fresh = await timed(lambda: get(fresh, every), requests)
                failed_fresh = await timed(lambda: get(fresh, failed), requests)
    finally:
        with contextlib.suppress(Exception):
            await store.close()
        await _drop_schema(url, schema)
    return _line(
        figure,
        unit,
        budget,
        max(all_ms["p99_ms"], failed_ms["p99_ms"]) < LIST_BUDGET_MS,
        runs=runs,
        load_s=round(load_s, 2),
        requests=requests,
        limit_50=all_ms,
        status_failed_limit_50=failed_ms,
        new_connection_limit_50=all_fresh,
        new_connection_status_failed_limit_50=failed_fresh,
    )


# 2. SSE delivery of a live run's changes


def _chain(tasks: int) -> Definitions:
    defs = chain_definitions(tasks)
    first = TaskDef(id="t00000", command=f"sleep {FIRST_TASK_S}")
    return Definitions(tasks=dict(defs.tasks) | {"t00000": first})


async def _read_stream(
    client: httpx.AsyncClient, run_id: str
) -> tuple[dt.datetime, list[tuple[int, str, dt.datetime]]]:
    """The moment the stream's response began, and (id, type, received at) of each change
    until the run's end."""
    received: list[tuple[int, str, dt.datetime]] = []
    path = f"/api/v1/runs/{run_id}/stream"
    async with client.stream("GET", path, params={"after_seq": "0"}) as r:
        assert r.status_code == 200, await r.aread()
        opened = dt.datetime.now(dt.UTC)
        kind, seq, data = "", 0, ""
        async for line in r.aiter_lines():
            if line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    kind = value
                elif name == "id":
                    seq = int(value)
                elif name == "data":
                    data = value
                continue
            at = dt.datetime.now(dt.UTC)
            if kind == "change":
                change_type = json.loads(data)["type"]
                received.append((seq, change_type, at))
                if change_type in TERMINAL_TYPES:
                    return opened, received
            kind, seq, data = "", 0, ""
    raise RuntimeError("the stream ended before the run did")


async def _stored_ts(read_model: ReadModel, run_id: str) -> dict[int, dt.datetime]:
    out: dict[int, dt.datetime] = {}
    after = 0
    while True:
        rows = await read_model.recent_events(run_id, after_seq=after, limit=500)
        out |= {row.seq: row.ts for row in rows}
        if len(rows) < 500:
            return out
        after = rows[-1].seq


async def sse_delivery(nats_url: str, tasks: int, workdir: Path) -> dict[str, Any]:
    if tasks < 2:
        raise ValueError("--tasks must be at least 2")
    defs = _chain(tasks)
    read_model = MemoryReadModel()
    with (workdir / "roles.log").open("a") as log:
        cluster = _cluster(defs, workdir / "cluster", log, 1, 1, nats_url)
        await cluster.start()
        try:
            async with (
                await connect(nats_url, name="web-bench-projector") as own,
                projecting(own.events, read_model),
                await connect(nats_url, name="web-bench") as backplane,
                _app(read_model, backplane) as base,
                httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=60)) as client,
            ):
                run = _new_run(defs, "outcome", f"t{tasks - 1:05d}")
                await backplane.events.schedule_run(run)
                async with asyncio.timeout(SSE_TIMEOUT_S):
                    opened, received = await _read_stream(client, run.run_id)
                if received[-1][1] != "RunSucceeded":
                    raise RuntimeError(f"benchmark run ended {received[-1][1]}")
                stored = await _stored_ts(read_model, run.run_id)
        finally:
            await cluster.stop()
    delays = [
        (at - stored[seq]).total_seconds() * 1000
        for seq, _type, at in received
        if seq in stored and stored[seq] >= opened
    ]
    if not delays:
        raise RuntimeError("no change of the run came after the stream opened")
    p99 = percentile(delays, 0.99)
    return _line(
        "sse_delivery",
        "ms",
        f"p99 < {SSE_BUDGET_MS:g} ms",
        p99 < SSE_BUDGET_MS,
        tasks=tasks,
        changes=len(received),
        timed_changes=len(delays),
        p50_ms=round(percentile(delays, 0.5), 3),
        p90_ms=round(percentile(delays, 0.9), 3),
        p99_ms=round(p99, 3),
        max_ms=round(max(delays), 3),
    )


# 3. The run page of a 2,000-task run in Chromium


def _chromium() -> str | None:
    """The Chromium executable: CHROMIUM, else `chromium` on the PATH."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def _browser_missing() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if _chromium() is None:
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return None


async def run_page_interactive(nats_url: str, rounds: int) -> dict[str, Any]:
    figure, unit, budget = "run_page_interactive", "s", f"< {PAGE_BUDGET_S:g} s"
    missing = _browser_missing()
    if missing is not None:
        return _line(figure, unit, budget, None, skipped=missing)
    from playwright.async_api import async_playwright

    from tests.waiting import eventually
    from tests.web.browser.driving import click_node, open_run, run_status, schedule
    from tests.web.browser.test_big_run import LAYERS, WIDTH, big

    executable = _chromium()
    read_model = MemoryReadModel()
    seconds: list[float] = []
    errors: list[str] = []
    async with (
        await connect(nats_url, name="web-bench-projector") as own,
        projecting(own.events, read_model),
        await connect(nats_url, name="web-bench") as backplane,
        _app(read_model, backplane) as base,
    ):
        await backplane.definitions.put(big())
        run_id = await schedule(base, {"dag": "big"})

        async def shown() -> str | None:
            return await run_status(base, run_id) or None

        await eventually(shown, what="the 2,000-task run in the read model", timeout=30)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox"]
            )
            try:
                for _ in range(rounds):
                    context = await browser.new_context(viewport={"width": 1400, "height": 900})
                    try:
                        page = await context.new_page()
                        page.set_default_timeout(30_000)
                        page.on("pageerror", lambda exc: errors.append(str(exc)))
                        started = time.monotonic()
                        await open_run(page, base, run_id)
                        await click_node(page, "t20_25")
                        seconds.append(time.monotonic() - started)
                    finally:
                        await context.close()  # (its SSE connection with it)
            finally:
                await browser.close()
    if errors:
        raise RuntimeError(f"JavaScript errors on the run page: {errors}")
    worst = max(seconds)
    return _line(
        figure,
        unit,
        budget,
        worst < PAGE_BUDGET_S,
        tasks=LAYERS * WIDTH,
        rounds=rounds,
        median_s=round(statistics.median(seconds), 3),
        max_s=round(worst, 3),
        rounds_s=[round(s, 3) for s in seconds],
    )


async def run(
    runs: int,
    tasks: int,
    rounds: int,
    postgres: str,
    emit: Callable[[dict[str, Any]], None],
    requests: int = REQUESTS,
) -> list[dict[str, Any]]:
    """The three groups in order; each line is given to `emit` as soon as it is measured."""
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cyclonetix-web-bench-") as tmp:
        nats = EmbeddedNats(Path(tmp) / "nats")
        nats_url = await asyncio.to_thread(nats.start)
        try:
            groups: tuple[Callable[[], Awaitable[dict[str, Any]]], ...] = (
                lambda: api_runs_list(nats_url, postgres, runs, requests),
                lambda: sse_delivery(nats_url, tasks, Path(tmp)),
                lambda: run_page_interactive(nats_url, rounds),
            )
            for group in groups:
                out.append(await group())
                emit(out[-1])
        finally:
            await asyncio.to_thread(nats.stop)
    return out


def _human(line: dict[str, Any]) -> str:
    if "skipped" in line:
        return f"{line['figure']}: skipped ({line['skipped']})"
    verdict = "within" if line["within_budget"] else "OVER"
    if line["figure"] == "api_runs_list":
        a, f = line["limit_50"], line["status_failed_limit_50"]
        shown = (
            f"limit=50 p50 {a['p50_ms']} p99 {a['p99_ms']} ms; "
            f"status=failed p50 {f['p50_ms']} p99 {f['p99_ms']} ms ({line['runs']} runs)"
        )
    elif line["figure"] == "sse_delivery":
        shown = f"p50 {line['p50_ms']} p99 {line['p99_ms']} ms ({line['timed_changes']} changes)"
    else:
        shown = f"median {line['median_s']} max {line['max_s']} s ({line['rounds']} rounds)"
    return f"{line['figure']}: {shown} — {verdict} budget {line['budget']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the Postgres model")
    parser.add_argument("--tasks", type=int, default=200, help="tasks of the SSE chain run")
    parser.add_argument("--rounds", type=int, default=5, help="page loads of the 2,000 tasks")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="timed per query")
    parser.add_argument("--json", action="store_true", help="JSON lines (else a summary)")
    parser.add_argument(
        "--json-object",
        action="store_true",
        help="one JSON object at the end, each group's line under its figure (bench.report)",
    )
    args = parser.parse_args()
    configure_logging(json=False, level="WARNING")  # (to stderr: stdout is the figures)
    postgres = os.environ.get(SERVER_ENV, DEFAULT_POSTGRES)

    def emit(line: dict[str, Any]) -> None:
        if not args.json_object:
            print(json.dumps(line) if args.json else _human(line), flush=True)

    lines = asyncio.run(run(args.runs, args.tasks, args.rounds, postgres, emit, args.requests))
    if args.json_object:
        print(json.dumps({"bench": "web"} | {line["figure"]: line for line in lines}))


if __name__ == "__main__":
    main()

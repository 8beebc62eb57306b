"""/healthz (which of NATS and the read model is down), /metrics (Prometheus text) and the
OpenAPI document (every route of the app in it)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx
import pytest
from litestar.routes import HTTPRoute

from projections.stores import open_read_model
from tests.waiting import eventually
from tests.web.api.helpers import ended, start
from web import health
from web.app import create_app, listening
from web.context import UiContext

if TYPE_CHECKING:
    from litestar import Litestar

    from services.embedded_nats import EmbeddedNats
    from services.nats import NatsBackplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_healthz_names_what_is_down(
    client: httpx.AsyncClient,
    backplane: NatsBackplane,
    nats_server: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 0.5)  # NATS down: no answer, sooner
    r = await client.get("/healthz")
    assert (r.status_code, r.json()["status"], r.json()["down"]) == (200, "ok", [])

    # A read model that cannot be reached (nothing listens on port 1).
    store = open_read_model("postgresql://postgres@127.0.0.1:1/none")
    app = create_app(UiContext(store, backplane))
    async with listening(app, port=0) as url, httpx.AsyncClient(base_url=url) as other:
        r = await other.get("/healthz")
    await store.close()
    assert r.status_code == 503
    assert r.json()["down"] == ["read_model"]
    assert r.json()["read_model"]["ok"] is False
    assert r.json()["read_model"]["error"]

    nats_server.stop()
    r = await client.get("/healthz")
    assert r.status_code == 503
    assert r.json()["down"] == ["nats"]
    assert r.json()["nats"]["error"]


async def test_metrics(client: httpx.AsyncClient, system: None) -> None:
    run_id = await start(client, task="d")
    await ended(client, run_id)

    async def scraped() -> str | None:
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        # The diamond's four starts were timed by the live feed.
        return r.text if value(r.text, "cyclonetix_dispatch_to_start_seconds_count") else None

    text = await eventually(scraped, timeout=10, what="four dispatch-to-start observations")
    assert value(text, "cyclonetix_dispatch_to_start_seconds_count") == 4
    assert value(text, 'cyclonetix_runs{status="succeeded"}') == 1
    assert value(text, 'cyclonetix_source_up{source="nats"}') == 1
    assert value(text, "cyclonetix_projector_lag_events") == 0
    # the diamond's 13 events: RunScheduled, a TasksQueued each of a, (b, c) and d, 4 starts,
    # 4 successes, RunSucceeded
    assert value(text, "cyclonetix_events_last_seq") >= 13
    assert value(text, "cyclonetix_agents") == 0  # the stand-in agent sends no heartbeat
    assert value(text, 'cyclonetix_open_run_tasks{status="pending"}') == 0


def value(text: str, sample: str) -> float:
    """The value of one sample line of a Prometheus text exposition (0 when absent)."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_the_openapi_document_lists_every_route(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    document = r.json()
    documented = {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = {
        (route.path.replace(":str", ""), method)
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if handler.resolve_include_in_schema()
        for method in handler.http_methods
        if method not in ("HEAD", "OPTIONS")
    }
    assert served <= documented, served - documented
    api = {p for p, _ in served if p.startswith("/api/v1/")}
    assert len(api) >= 15
    for path in ("/api/v1/runs", "/api/v1/runs/{run_id}/states", "/healthz", "/metrics"):
        assert path in document["paths"], path
    assert document["info"]["title"] == "Cyclonetix"

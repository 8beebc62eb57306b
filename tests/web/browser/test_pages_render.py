"""The pages as HTML, without a browser: each renders over a real NATS and a read model fed by
a real projector (tests/web/conftest.py), autoescaping holds, unknown things are 404 pages, and
the static files (the pages' scripts, the vendored Cytoscape.js) are served."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Litestar, get
from litestar.response import Template
from litestar.testing import TestClient

from core.definitions import Definitions, TaskDef
from services.nats import NatsBackplane
from tests.web.browser.driving import ended
from web.pages import template_config

if TYPE_CHECKING:
    import httpx

EVIL = "<script>alert(1)</script>"


async def test_every_page_renders(client: httpx.AsyncClient, base_url: str, system: None) -> None:
    r = await client.post("/api/v1/runs", json={"dag": "diamond"})
    assert r.status_code == 201, r.text
    run_id = r.json()["run_id"]
    assert await ended(base_url, run_id) == "succeeded"
    for path in (
        "/",
        "/runs",
        "/runs?status=succeeded",
        "/runs?dag=diamond",
        "/runs?task=d",
        f"/runs/{run_id}",
        f"/runs/{run_id}/timeline",
        "/tasks",
        "/tasks?q=diamond",
        "/tasks/greet",
        "/dags",
        "/dags/diamond",
        "/agents",
        "/queues",
    ):
        page = await client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert page.headers["content-type"].startswith("text/html"), path
        assert "</html>" in page.text, path
    dashboard = await client.get("/")
    assert 'id="throughput"' in dashboard.text
    assert "last hour: <b>4</b>" in dashboard.text  # the diamond's four tasks, seeded
    runs = await client.get("/runs")
    assert run_id in runs.text
    timeline = await client.get(f"/runs/{run_id}/timeline")
    assert 'class="gbar' in timeline.text  # every task of the diamond ran: four bars


async def test_bad_filters_and_unknown_things(
    client: httpx.AsyncClient, published: Definitions
) -> None:
    r = await client.get("/runs?status=nonsense&cursor=x")
    assert r.status_code == 200
    assert "no such run status" in r.text
    for path in ("/runs/no-such-run", "/runs/no-such-run/timeline", "/tasks/nope", "/dags/nope"):
        page = await client.get(path)
        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html"), path
        assert 'id="error-message"' in page.text


async def test_markup_in_definitions_is_text(
    client: httpx.AsyncClient, backplane: NatsBackplane, published: Definitions
) -> None:
    evil = TaskDef(
        id="evil", name=EVIL, description=EVIL, command=f"echo '{EVIL}'", parameters={"X": EVIL}
    )
    await backplane.definitions.put(Definitions(tasks={**published.tasks, "evil": evil}))
    for path in ("/tasks", "/tasks/evil"):
        page = await client.get(path)
        assert page.status_code == 200
        assert EVIL not in page.text, path
        assert "&lt;script&gt;" in page.text, path


async def test_static_files_are_served(client: httpx.AsyncClient) -> None:
    for path in (
        "/static/js/run.js",
        "/static/css/app.css",
        "/static/vendor/cytoscape/cytoscape.min.js",
        "/static/vendor/cytoscape-dagre/cytoscape-dagre.min.js",
    ):
        r = await client.get(path)
        assert r.status_code == 200, path


def test_template_config_gives_an_app_the_pages_environment() -> None:
    """`web.pages.template_config()` lets an app answer with Litestar's `Template` too, with
    the pages' templates and autoescaping."""

    @get("/teapot", sync_to_thread=False)
    def teapot() -> Template:
        return Template("error.html", context={"status": 418, "message": EVIL, "nav": ""})

    with TestClient(Litestar([teapot], template_config=template_config())) as c:
        r = c.get("/teapot")
    assert r.status_code == 200
    assert "&lt;script&gt;" in r.text
    assert EVIL not in r.text

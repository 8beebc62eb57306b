"""Fixtures for the web tests (the API's and the pages'): a real nats-server (tests/conftest.py),
a memory read model fed by a real Projector on its own connection, the app over them, and a
client. `system` adds an orchestrator and a stand-in agent (tests/rolekit.py) so runs progress;
`published` holds the definitions every web test may schedule.

    async def test_x(client: httpx.AsyncClient, system: None) -> None:
        r = await client.post("/api/v1/runs", json={"task": "d"})
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import pytest

from core.definitions import ContextDef, DagDef, DagTask, Definitions, TaskDef
from projections.memory import MemoryReadModel
from services.nats import NatsBackplane, connect
from services.projector import Projector
from tests.rolekit import running_orchestrator, stand_in_agent
from web.app import create_app, listening, projecting
from web.context import UiContext

if TYPE_CHECKING:
    from litestar import Litestar

# The diamond a -> (b, c) -> d, a task with parameters, a DAG and a context.
PUBLISHED = Definitions(
    tasks={
        "a": TaskDef(id="a", command="true"),
        "b": TaskDef(id="b", command="true", dependencies=("a",)),
        "c": TaskDef(id="c", command="true", dependencies=("a",)),
        "d": TaskDef(id="d", command="true", dependencies=("b", "c"), name="Diamond end"),
        "greet": TaskDef(id="greet", command='echo "$WHO"', parameters={"WHO": "world"}),
    },
    dags={"diamond": DagDef(id="diamond", tasks=tuple(DagTask(id=t) for t in "abcd"))},
    contexts={"prod": ContextDef(id="prod", variables={"ENV": "prod"})},
)


@pytest.fixture
async def published(backplane: NatsBackplane) -> Definitions:
    await backplane.definitions.put(PUBLISHED)
    return PUBLISHED


@pytest.fixture
async def read_model() -> MemoryReadModel:
    return MemoryReadModel()


@pytest.fixture
async def projector(
    backplane: NatsBackplane, read_model: MemoryReadModel
) -> AsyncIterator[Projector]:
    """A projector into `read_model` on its own connection (as `serve` runs one)."""
    own = await connect(backplane.url, name="projector")
    try:
        async with projecting(own.events, read_model) as running:
            yield running
    finally:
        await own.close()


@pytest.fixture
def ui(backplane: NatsBackplane, read_model: MemoryReadModel, projector: Projector) -> UiContext:
    return UiContext(read_model, backplane, nats_url=backplane.shown_url)


@pytest.fixture
def app(ui: UiContext) -> Litestar:
    return create_app(ui, debug=False)


@pytest.fixture
async def base_url(app: Litestar) -> AsyncIterator[str]:
    """The app served by uvicorn on this test's event loop, on a free port (Litestar's test
    clients run the app on a loop of their own, where this test's NATS connection cannot be
    used; a real server also streams SSE as a browser sees it)."""
    async with listening(app, port=0) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        yield c


@pytest.fixture
async def system(backplane: NatsBackplane, published: Definitions) -> AsyncIterator[None]:
    """An orchestrator (own connection) and a stand-in agent that succeeds every task."""

    async def own() -> NatsBackplane:
        return await connect(backplane.url, name="orchestrator")

    async with running_orchestrator(own), stand_in_agent(backplane):
        yield

"""Fixtures for the browser tests: headless Chromium (Debian's, through Playwright) driving the
UI of a live system. Either on this test's event loop — a real nats-server, the app served by
uvicorn with a projector into a memory read model (tests/web/conftest.py), an orchestrator and a
real agent running real commands — or, for the issue's scenarios, a live `cyclonetix dev`
process serving its own UI (`live_dev`, one per module).

Playwright or Chromium missing: the tests skip, or fail under CYCLONETIX_REQUIRE_SERVICES=1
(tests/conftest.py's `requires_service`). Screenshots go to `ARTIFACTS` (gitignored), or to
$CYCLONETIX_ARTIFACTS when set (CI can keep them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest

from core.definitions import DagDef, DagTask, Definitions, TaskDef
from services.agent import Agent, AgentConfig
from services.nats import NatsBackplane, connect
from tests.conftest import requires_service
from tests.e2e.test_cli import running_dev
from tests.rolekit import running_orchestrator
from tests.waiting import eventually

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = os.environ.get("CYCLONETIX_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CYCLONETIX_ARTIFACTS", Path(__file__).parent / "artifacts"))
EVIL = "<script>window.pwned = 1</script>"
UNICODE = "Grüße, 世界 ✓"


def definitions(flag: Path) -> Definitions:
    """What the scenarios run: a diamond slow enough to watch, a task that talks while it
    runs, one that sleeps until cancelled, and one that fails until `flag` exists."""

    def diamond(id: str, deps: tuple[str, ...], name: str) -> TaskDef:
        return TaskDef(id=id, name=name, command=f'sleep 1; echo "{id} done"', dependencies=deps)

    tasks = [
        diamond("top", (), "Diamond top"),
        diamond("left", ("top",), "Diamond left"),
        diamond("right", ("top",), "Diamond right"),
        diamond("bottom", ("left", "right"), "Diamond bottom"),
        TaskDef(
            id="talker",
            name=f"Talker {EVIL} {UNICODE}",
            # Parameters are exported as environment; the lines echo them back as data.
            command='for i in 1 2 3 4 5 6; do echo "line $i: $SAY"; sleep 1; done',
            parameters={"SAY": f"{EVIL} {UNICODE}"},
        ),
        TaskDef(id="sleeper", command="sleep 60"),
        TaskDef(id="fragile", command=f'test -f "{flag}" && echo fixed'),
        TaskDef(id="after_fragile", command="echo after", dependencies=("fragile",)),
    ]
    dag = DagDef(
        id="diamond",
        name="The diamond",
        tasks=tuple(DagTask(id=i) for i in ("top", "left", "right", "bottom")),
    )
    return Definitions(tasks={t.id: t for t in tasks}, dags={"diamond": dag})


@pytest.fixture
async def published_ui(backplane: NatsBackplane, base_url: str, tmp_path: Path) -> str:
    """The UI with the definitions published but nothing running them (pages and forms)."""
    await backplane.definitions.put(definitions(tmp_path / "fixed"))
    return base_url


@pytest.fixture
async def live_system(
    backplane: NatsBackplane, published_ui: str, tmp_path: Path
) -> AsyncIterator[str]:
    """The definitions published, an orchestrator and a real agent running; the UI's URL."""

    async def own() -> NatsBackplane:
        return await connect(backplane.url, name="orchestrator")

    async with running_orchestrator(own), running_agent(backplane.url, tmp_path):
        yield published_ui


@contextlib.asynccontextmanager
async def running_agent(nats_url: str, workdir: Path) -> AsyncIterator[Agent]:
    """An in-process agent on its own connection, registered before the block runs; stopped
    with a short grace (a cancelled or finished test leaves nothing worth waiting for)."""
    conn = await connect(nats_url, name="browser-test-agent")
    agent = Agent(
        conn,
        AgentConfig(workdir=workdir, guardian=False, shutdown_grace=1.0, kill_grace=0.5),
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(agent.run(stop))

    async def registered() -> bool | None:
        return True if any(a.id == agent.id for a in await conn.agents.list()) else None

    try:
        await eventually(registered, what="the agent's heartbeat", timeout=10)
        yield agent
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            await conn.close()


def write_definitions(defs: Definitions, folder: Path) -> Path:
    """`defs` as a definitions folder (tasks/*.yaml, dags/*.yaml) that `-d` reads."""
    for kind, items in (("tasks", defs.tasks), ("dags", defs.dags)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for id, item in items.items():
            (folder / kind / f"{id}.yaml").write_bytes(msgspec.yaml.encode(item))
    return folder


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this module's `cyclonetix dev` runs: its definitions, data and the flag file
    (`fixed`) that the fragile task tests for."""
    return tmp_path_factory.mktemp("dev")


@pytest.fixture(scope="module")
def live_dev(dev_folder: Path) -> Iterator[str]:
    """`cyclonetix dev --port 0 --agents 1` running the scenarios' definitions in `dev_folder`
    (tests/e2e/test_cli.py's `running_dev`: stopped with Ctrl-C after, which must exit 0); the
    URL of the UI it serves."""
    chromium()  # skip (or fail) before starting anything when no browser can drive it
    defs = write_definitions(definitions(dev_folder / "fixed"), dev_folder / "defs")
    options = ("--agents", "1", "-d", str(defs), "--data-dir", str(dev_folder / ".cyclonetix"))
    # A short grace: a failed test may leave a task running, which must not hold up the stop.
    with running_dev(dev_folder, *options, "--shutdown-grace", "3") as folder:
        runtime = json.loads((folder / ".cyclonetix" / "runtime.json").read_text())
        ui_url: str = runtime["ui_url"]
        yield ui_url


@pytest.fixture
async def page(base_url: str) -> AsyncIterator[Page]:
    """A fresh headless Chromium page (1400x900) on the in-process system. It needs `base_url`
    so that the browser closes (and its SSE connections with it) before the server stops."""
    async with chromium_page() as p:
        yield p


@pytest.fixture
async def dev_page(live_dev: str) -> AsyncIterator[Page]:
    """A fresh headless Chromium page on `live_dev`'s UI, closed before dev stops."""
    async with chromium_page() as p:
        yield p


def chromium() -> str:
    """The Chromium executable; skips (or fails, in CI) without it or without Playwright."""
    try:
        import playwright.async_api  # noqa: F401 - only whether it imports
    except ImportError:
        requires_service("playwright", "pip install playwright (the Python package)")
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        requires_service("chromium", f"no {CHROMIUM}: apt-get install chromium")
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@contextlib.asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    """A headless Chromium page; no JavaScript error may happen on it."""
    executable = chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        browser = await pw.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox"]
        )
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            p = await context.new_page()
            p.set_default_timeout(30_000)
            errors: list[str] = []
            p.on("pageerror", lambda exc: errors.append(str(exc)))
            # Chromium enforces the pages' Content-Security-Policy (web/security.py) and says
            # on the console what it refused: any such line fails the test.
            refused: list[str] = []
            p.on(
                "console", lambda msg: refused.append(msg.text) if csp_violation(msg.text) else None
            )
            yield p
            assert not errors, f"JavaScript errors on the page: {errors}"
            assert not refused, f"Content-Security-Policy violations on the page: {refused}"
        finally:
            await browser.close()


def csp_violation(console_text: str) -> bool:
    """Whether a console line is Chromium refusing something under the page's CSP."""
    return "Content Security Policy" in console_text


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name

"""The web process: the Litestar app factory (`create_app`) and `serve`, which runs it.

    /api/v1/...   the JSON API (web/api), with its SSE streams (web/live)
    /             the pages (web/pages)
    /healthz      NATS and the read model reachable (web/health)
    /metrics      Prometheus text (web/metrics)
    /login        the login form; /logout (web/auth, which also guards every route)
    /login/oidc   logging in through an OpenID Connect provider, when set up (web/oidc)
    /schema       the OpenAPI document (/schema/openapi.json)

The app reads the read model it is given and writes only through the event log (`UiContext`).
Its lifespan runs the live feed: one tail of the event log for every SSE client of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.metadata import PackageNotFoundError, version

import structlog
import uvicorn
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from projections.protocol import ReadModel
from projections.stores import open_read_model
from services.addresses import is_loopback
from services.nats import connect
from services.ports import Backplane, EventLog
from services.projector import Projector
from services.settings import UiSettings
from web import api, pages
from web.auth import Authenticator, LoginRequired, authenticate, login_router, to_login
from web.context import UiContext, provide_ui
from web.errors import exception_handlers
from web.health import healthz
from web.live import LiveFeed
from web.metrics import Metrics, metrics
from web.oidc import OidcLogin, oidc_callback, oidc_start
from web.security import MAX_BODY_BYTES, check_path_params, security_headers

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "create_app", "listening", "projecting", "serve"]

log = structlog.get_logger("cyclonetix.web")

Beside = Callable[[Backplane, ReadModel, asyncio.Event], Awaitable[None]]
"""Work a `serve` runs next to the app (see `serve`)."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8420
FEED_READY_S = 5.0  # how long start-up waits for the live feed's tail to begin


def _version() -> str:
    try:
        return version("cyclonetix")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(ui: UiContext, *, debug: bool = False) -> Litestar:
    """The app over `ui` (also in `app.state.ui`). The live feed and the metrics registry are
    put in `ui.extras` ("live", "metrics") unless the caller put its own there."""
    feed = ui.extras.setdefault("live", LiveFeed(ui.backplane.events, ui.read_model))
    collector = ui.extras.setdefault("metrics", Metrics())
    auth = ui.extras.setdefault("auth", Authenticator(ui.backplane.auth))
    if isinstance(auth, Authenticator) and auth.settings.oidc.issuer is not None:
        ui.extras.setdefault("oidc", OidcLogin(auth.settings.oidc))  # web/oidc.py
    if isinstance(feed, LiveFeed) and isinstance(collector, Metrics):
        feed.listeners.append(collector.observe)

    @contextlib.asynccontextmanager
    async def live(_: Litestar) -> AsyncIterator[None]:
        if not isinstance(feed, LiveFeed):
            yield
            return
        stop = asyncio.Event()
        task = asyncio.ensure_future(feed.run(stop))
        # Changes stored after start-up reach the clients: the tail starts before requests.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.ready.wait(), FEED_READY_S)
        try:
            yield
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # Each router provides `ui` itself (the pages router too): Litestar refuses the same
    # provider at two layers, so the app level has none.
    operations = Router(
        path="/",
        route_handlers=[healthz, metrics],
        dependencies={"ui": Provide(provide_ui, sync_to_thread=False)},
    )
    return Litestar(
        route_handlers=[
            api.router,
            pages.router,
            operations,
            login_router,
            oidc_start,
            oidc_callback,
        ],
        exception_handlers={**exception_handlers, LoginRequired: to_login},
        # The document only (/schema and /schema/openapi.json): Litestar's HTML viewers load
        # their scripts from a CDN and run inline script, which the pages' CSP refuses.
        openapi_config=OpenAPIConfig(
            title="Cyclonetix",
            version=_version(),
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
        # Who asks, and may they (web/auth.py), before anything else. Hostile input
        # (web/security.py): a body limit on every route, every name in a path checked before
        # any handler, security headers on every response.
        request_max_body_size=MAX_BODY_BYTES,
        guards=[authenticate, check_path_params],
        before_send=[security_headers],
        state=State({"ui": ui}),
        lifespan=[live],
        debug=debug,
        logging_config=None,  # the process's structlog setup stays in charge
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the caller stops it (its `stop` event), so a
    signal is handled once, by whoever owns the process (`cyclonetix ui`, `dev`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def listening(
    app: Litestar, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> AsyncIterator[str]:
    """`app` served by uvicorn on this event loop (its lifespan run) while the block runs; the
    URL it listens on (`port=0`: any free port). OSError when it cannot listen."""
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, lifespan="on", access_log=False
    )
    server = _Server(config)
    # The socket is bound here, not by uvicorn, which exits the process when it cannot bind.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted connections only when the
        # listening socket says it is TCP (create_server leaves proto 0), and without it a
        # keep-alive response waits ~40 ms for the client's delayed ack.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(f"cannot listen on {host}:{port}: {why}") from None
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:  # uvicorn offers no event to wait on: a short poll
            if serving.done():
                await serving
                raise OSError(f"the app on {host}:{port} did not start (see the log)")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def serve(
    *,
    nats_url: str,
    read_model_url: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    stop: asyncio.Event,
    started: Callable[[str], None] | None = None,
    replicas: int = 1,
    events_max_age: float = 0.0,
    debug: bool = False,
    beside: Beside | None = None,
    env_policy: EnvPolicy = DEFAULT_ENV_POLICY,
    ui_settings: UiSettings | None = None,
) -> None:
    """Serve the UI and the API until `stop` is set.

    Connects to NATS, opens the read model at `read_model_url`; a `memory://` store (or the
    `nats+memory://` that `dev` records) is held by this process, which then runs a projector
    into it. `started(url)` is called once the socket listens (`port=0`: any free port).
    `beside(backplane, store, stop)` runs alongside while serving (`cyclonetix ui
    --serve-queries`: answering the CLI's read-model queries from this process's store).
    """
    backplane = await connect(
        nats_url, name="cyclonetix-ui", replicas=replicas, events_max_age=events_max_age
    )
    store = open_read_model(_own_store(read_model_url))
    try:
        async with contextlib.AsyncExitStack() as stack:
            if _is_memory(read_model_url):  # this process holds the store: it fills it too
                await stack.enter_async_context(projecting(backplane.events, store))
            ui = UiContext(store, backplane, nats_url=backplane.shown_url, env_policy=env_policy)
            # Beyond loopback (allowed once a login exists: services/cli/ui.py), never open,
            # even if every user and token is removed later.
            # `ui_settings`: failed-login limits and OIDC (settings `ui.*`).
            ui.extras["auth"] = Authenticator(
                backplane.auth, may_open=is_loopback(host), settings=ui_settings
            )
            app = create_app(ui, debug=debug)
            async with listening(app, host, port) as url:
                log.info("ui.listening", url=url)
                alongside = (
                    None
                    if beside is None
                    else asyncio.ensure_future(beside(backplane, store, stop))
                )
                if started is not None:
                    started(url)
                await stop.wait()
                if alongside is not None:
                    await alongside
    finally:
        await store.close()
        await backplane.close()


def _own_store(url: str) -> str:
    # `dev` records its memory store as nats+memory:// (read over NATS by the CLI); a web
    # process needs a whole store, so it keeps one of its own, filled by its own projector.
    return "memory://" if url.lower().startswith("nats+memory://") else url


def _is_memory(url: str) -> bool:
    return _own_store(url).lower().startswith("memory:")


@contextlib.asynccontextmanager
async def projecting(events: EventLog, store: ReadModel) -> AsyncIterator[Projector]:
    """A projector from `events` into `store` while the block runs (stopped on exit)."""
    stop = asyncio.Event()
    projector = Projector(events, store)
    task = asyncio.ensure_future(projector.run(stop))
    try:
        yield projector
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)

"""`cyclonetix ui`: the web UI and the JSON API (web/), served by uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any, cast

from core.errors import Unavailable
from projections.stores import SCHEMES, open_read_model
from services.addresses import is_loopback
from services.cli.common import (
    add_log_options,
    add_nats_option,
    configure_role_logging,
    connect,
    nats_url,
    port_number,
    run,
    until_stopped,
)
from services.cli.main import CliError
from services.cli.validate import env_policy
from services.nats.queries import serve_read_model
from services.read_model_client import READ_MODEL_ENV, NoReadModel, resolve_read_model_url
from services.settings import load_settings

if TYPE_CHECKING:
    from projections.protocol import ReadModel
    from services.nats import NatsBackplane
    from services.ports import Backplane


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "ui",
        help="serve the web UI and the JSON API",
        description="Serve the web UI, the JSON API (/api/v1, OpenAPI at /schema), /healthz "
        "and /metrics. Reads the read model, writes only through the event log. With a "
        "memory:// read model this process keeps the store and projects the log into it.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); a loopback address only until a user "
        "or API token exists (cyclonetix users add, tokens create) or an OIDC provider is "
        "configured (ui.oidc.issuer): then every request needs a login",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=8420,
        help="port to listen on (default 8420; 0: any free)",
    )
    parser.add_argument(
        "--read-model",
        metavar="URL",
        help=f"the store to read: {SCHEMES} (default: ${READ_MODEL_ENV}, else the one "
        "'cyclonetix dev' recorded, else memory://)",
    )
    parser.add_argument(
        "--serve-queries",
        action="store_true",
        help="with a memory:// read model, also answer read-model queries over NATS from this "
        "process's store (what 'cyclonetix dev' does, so 'runs list' reads the UI's store)",
    )
    add_nats_option(parser)
    add_log_options(parser)
    parser.set_defaults(func=main)


def read_model_url(args: argparse.Namespace) -> str:
    try:
        return resolve_read_model_url(args.read_model, load_settings().data_path)
    except NoReadModel:
        return "memory://"  # nothing recorded: this process keeps its own store


def open_only_on_loopback(host: str, has_logins: bool) -> None:
    """Whoever reaches the UI can schedule runs, that is run commands on the agents: until a
    user or an API token exists (web/auth.py: then every request needs a login), it listens on
    a loopback address only (and says so once listening, `listening`)."""
    if not is_loopback(host) and not has_logins:
        raise CliError(
            f"--host {host!r} is not a loopback address, and the UI has no login yet (no user, "
            "token or ui.oidc.issuer: 'cyclonetix users add NAME --role admin' first): anyone "
            "reaching it "
            "could run commands on your agents (serve on 127.0.0.1, or behind a proxy that "
            "authenticates)"
        )


async def _has_logins(args: argparse.Namespace) -> bool:
    """Whether the store holds a user or a token (NATS unreachable: not known, so no)."""
    try:
        backplane = await connect(args, "cyclonetix-ui")
    except Unavailable:
        return False
    try:
        return await backplane.auth.any_credentials()
    except Unavailable:
        return False
    finally:
        await backplane.close()


def listening(where: str) -> None:
    print(f"cyclonetix ui: {where}", flush=True)


def _open_warning(where: str) -> None:
    listening(where)
    print(
        "cyclonetix ui: loopback only; open to every local user until a user or token exists",
        file=sys.stderr,
    )


def main(args: argparse.Namespace) -> int:
    from web.app import serve  # the web stack loads only for this command

    ui_settings = load_settings().ui
    oidc = ui_settings.oidc.issuer is not None  # logins through the provider: never open
    logins = not is_loopback(args.host) and (oidc or run(_has_logins(args)))
    open_only_on_loopback(args.host, logins)
    configure_role_logging(args, "ui")
    url = read_model_url(args)
    open_read_model(url.removeprefix("nats+"))  # a bad URL: one line, before connecting
    settings = load_settings().nats

    async def work(stop: asyncio.Event) -> None:
        try:
            await serve(
                nats_url=nats_url(args),
                read_model_url=url,
                host=args.host,
                port=args.port,
                stop=stop,
                started=listening if logins or oidc else _open_warning,
                replicas=settings.stream_replicas,
                events_max_age=settings.events_max_age,
                beside=_answer_queries if args.serve_queries else None,
                env_policy=env_policy(),  # $CYCLONETIX_DENY_ENV
                ui_settings=ui_settings,  # failed-login limits, OIDC
            )
        except OSError as exc:
            raise CliError(str(exc)) from None  # the port is taken, or not an address here

    run(until_stopped(work))
    return 0


async def _answer_queries(backplane: Backplane, store: ReadModel, stop: asyncio.Event) -> None:
    # (connect() gives the NATS backplane, whose connection answers the queries)
    await serve_read_model(cast("NatsBackplane", backplane).connection, store, stop)

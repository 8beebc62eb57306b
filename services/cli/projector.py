"""`cyclonetix projector`: the role that keeps a read model up to date with the event log."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import structlog

from projections.stores import SCHEMES, open_read_model
from services.cli.common import (
    add_log_options,
    add_nats_option,
    configure_role_logging,
    connect,
    run,
    until_stopped,
)
from services.cli.main import CliError
from services.nats.queries import serve_read_model
from services.projector import BATCH, Projector
from services.read_model_client import READ_MODEL_ENV

log = structlog.get_logger("cyclonetix.projector")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "projector",
        help="run the projector role: keep a read model up to date",
        description="Apply the event log to a read model (runs, task runs, attempts, events) "
        "from the store's own checkpoint, then follow it live. Several projectors, one per "
        "store, may run side by side. SIGTERM/SIGINT: finish the write under way and exit.",
    )
    add_read_model_option(parser)
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=BATCH,
        metavar="N",
        help=f"events per store write, at most (default {BATCH})",
    )
    parser.add_argument(
        "--serve-queries",
        action="store_true",
        help="also answer read-model queries over NATS (what 'cyclonetix dev' does for a "
        "memory:// store, which no other process can open)",
    )
    add_nats_option(parser)
    add_log_options(parser)
    parser.set_defaults(func=main)


def add_read_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--read-model",
        metavar="URL",
        help=f"the store: {SCHEMES} (default: ${READ_MODEL_ENV})",
    )


def read_model_url(args: argparse.Namespace) -> str:
    """--read-model, else $CYCLONETIX_READ_MODEL."""
    url: str | None = args.read_model or os.environ.get(READ_MODEL_ENV)
    if not url:
        raise CliError(f"no read model: give --read-model URL or set ${READ_MODEL_ENV}")
    return url


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(args: argparse.Namespace) -> int:
    configure_role_logging(args, "projector")
    store = open_read_model(read_model_url(args))  # a bad URL: one line, before connecting

    async def serve(stop: asyncio.Event) -> None:
        backplane = await connect(args, "cyclonetix-projector")
        try:
            projector = Projector(backplane.events, store, batch=args.batch).run(stop)
            if args.serve_queries:
                await asyncio.gather(projector, serve_read_model(backplane.connection, store, stop))
            else:
                await projector
        finally:
            await store.close()
            await backplane.close()

    run(until_stopped(serve))
    return 0

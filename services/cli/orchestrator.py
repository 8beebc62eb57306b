"""`cyclonetix orchestrator`: the role that decides what runs next."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import structlog

from services.cli.common import (
    add_log_options,
    add_nats_option,
    add_shutdown_grace_option,
    configure_role_logging,
    connect,
    load_definitions_or_fail,
    run,
    shutdown_grace,
    until_stopped,
)
from services.orchestrator import Orchestrator

log = structlog.get_logger("cyclonetix.orchestrator")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "orchestrator",
        help="run the orchestrator role",
        description="Follow the event log, dispatch tasks the moment they are ready, schedule "
        "retries and end runs. Rebuilds its state by replaying the log when it starts.",
    )
    parser.add_argument(
        "-d",
        "--definitions",
        type=Path,
        metavar="DIR",
        help="validate the definitions in DIR and publish them to the cx_defs bucket first",
    )
    add_shutdown_grace_option(
        parser, "how long it may decide what the log holds and store its decisions"
    )
    add_nats_option(parser)
    add_log_options(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    configure_role_logging(args, "orchestrator")
    definitions = None
    if args.definitions is not None:
        definitions = load_definitions_or_fail(args.definitions)
    grace = shutdown_grace(args)
    kill = asyncio.Event()  # a second signal: no more grace

    async def serve(stop: asyncio.Event) -> None:
        backplane = await connect(args, "cyclonetix-orchestrator")
        orchestrator = Orchestrator(backplane, shutdown_grace=grace)
        try:
            if definitions is not None:
                changed = await backplane.definitions.put(definitions)
                log.info("definitions.published", folder=str(args.definitions), changed=changed)
            # Returns once `stop` is set and what was in flight is decided and stored.
            await orchestrator.run(stop, kill)
        finally:
            # (What is left of the grace: its writes are normally stored by now.)
            await backplane.close(max(0.0, min(orchestrator.stop_left(), 5.0)))
            log.info("orchestrator.stopped")

    run(until_stopped(serve, kill))
    return 0

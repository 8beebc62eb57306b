"""`cyclonetix orchestrator`: the role that decides what runs next."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from services.cli.triggers import start_triggers
from services.cli.validate import env_policy
from services.cron import CronLoop
from services.notifier import Notifier
from services.orchestrator import Orchestrator
from services.settings import load_settings

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
    policy = env_policy()  # $CYCLONETIX_DENY_ENV: what no trigger or cron parameter may set
    kill = asyncio.Event()  # a second signal: no more grace

    async def serve(stop: asyncio.Event) -> None:
        backplane = await connect(args, "cyclonetix-orchestrator")
        orchestrator = Orchestrator(backplane, shutdown_grace=grace)
        try:
            if definitions is not None:
                changed = await backplane.definitions.put(definitions)
                log.info("definitions.published", folder=str(args.definitions), changed=changed)
            # Completion webhooks, beside the orchestrator in every orchestrator process: one
            # shared consumer hands each run's end to one of them (services/notifier.py). It is
            # opened first, so no run this orchestrator ends goes unseen.
            await backplane.ended_runs.open()
            notifier = asyncio.create_task(
                Notifier(backplane.events, backplane.ended_runs, load_settings().notify).run(stop)
            )
            # Cron runs beside the orchestrator in every orchestrator process, needing no lease:
            # each slot's deterministic run id makes a second start of it a no-op.
            cron = asyncio.create_task(
                CronLoop(
                    backplane.events, backplane.definitions, backplane.schedules, env_policy=policy
                ).run(stop)
            )
            # Subject triggers too: every orchestrator shares one work-queue consumer, each
            # message to one of them, idempotent by key (services/triggers.py).
            triggers = await start_triggers(backplane, stop, env_policy=policy)
            try:
                # Returns once `stop` is set and what was in flight is decided and stored.
                await orchestrator.run(stop, kill)
            finally:
                # (It stops with `stop`, after the batch in hand.)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(triggers, 5.0)
                cron.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await cron
                # (It stops with `stop` and hands back the run ends it has not finished.)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(notifier, 5.0)
        finally:
            # (What is left of the grace: its writes are normally stored by now.)
            await backplane.close(max(0.0, min(orchestrator.stop_left(), 5.0)))
            log.info("orchestrator.stopped")

    run(until_stopped(serve, kill))
    return 0

"""`cyclonetix triggers`: what became of recent subject triggers; and the trigger handler that
every orchestrator process runs (`start_triggers`)."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from core.text import printable
from core.triggers import TriggerAccepted, encode_outcome
from services.cli.common import add_nats_option, connect, run
from services.cli.projector import positive_int
from services.nats.triggers import open_trigger_inbox, read_outcomes
from services.settings import load_settings
from services.triggers import TriggerHandler

if TYPE_CHECKING:
    from core.triggers import AnyOutcome
    from services.nats import NatsBackplane


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "triggers",
        help="list recent subject triggers and what became of them",
        description="Recent messages on cx.trigger.task.<id> / cx.trigger.dag.<id>, oldest "
        "first: the subject, the run started (or found again by its idempotency key) or the "
        "reason the trigger was rejected, when, and who asked. Kept for 30 days.",
    )
    parser.add_argument(
        "--rejected", action="store_true", help="only the rejected ones, with their reasons"
    )
    parser.add_argument(
        "--limit", type=positive_int, default=20, metavar="N", help="how many (default 20)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON record per line")
    add_nats_option(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    async def read() -> list[AnyOutcome]:
        async with await connect(args, "cyclonetix-triggers") as backplane:
            return await read_outcomes(backplane, limit=args.limit, rejected_only=args.rejected)

    outcomes = run(read())
    if args.json:
        for outcome in outcomes:
            print(encode_outcome(outcome).decode())
        return 0
    if not outcomes:
        print("no rejected triggers" if args.rejected else "no triggers yet")
        return 0
    for line in table(outcomes):
        print(line)
    return 0


def table(outcomes: list[AnyOutcome]) -> list[str]:
    """Aligned columns; the outcome (a run id or a reason) last, as it is the long one."""
    rows = [("TIME", "SUBJECT", "REQUESTED BY", "OUTCOME")]
    for o in outcomes:
        what = (
            f"{o.status} {o.run_id}" if isinstance(o, TriggerAccepted) else f"rejected: {o.reason}"
        )
        when = o.ts.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        # (Subjects, requesters and reasons are user-supplied: no control character is shown.)
        rows.append((when, printable(o.subject), printable(o.requested_by or "-"), printable(what)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    ]


async def start_triggers(
    backplane: NatsBackplane, stop: asyncio.Event, *, env_policy: EnvPolicy = DEFAULT_ENV_POLICY
) -> asyncio.Task[None]:
    """The trigger handler of an orchestrator process, running until `stop`."""
    settings = load_settings().triggers
    inbox = await open_trigger_inbox(backplane, window=settings.idempotency_window)
    handler = TriggerHandler(
        backplane.events,
        backplane.definitions,
        inbox,
        max_bytes=settings.max_message_bytes,
        env_policy=env_policy,
    )

    async def serve() -> None:
        try:
            await handler.run(stop)
        finally:
            await inbox.close()

    return asyncio.create_task(serve())

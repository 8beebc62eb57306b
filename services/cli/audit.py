"""`cyclonetix audit`: who did what to users, tokens and sessions (the CX_AUDIT stream)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import msgspec

from core.audit import ACTIONS, AuditRecord
from core.text import printable
from services.cli.common import add_nats_option, connect, run
from services.cli.projector import positive_int
from services.cli.runs import parse_time


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="list administrative actions and logins (the audit log)",
        description="The audit log, oldest first: users add/passwd/remove and tokens "
        "create/revoke (by cli:<OS login>, from which host), UI logins that succeeded or were "
        "refused (the name tried, the client's address; never a password) and logouts. Kept "
        "365 days in the CX_AUDIT stream. Runs are not listed here: who scheduled, cancelled "
        "or reran one is on the run itself (requested_by).",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="only records from then on: an ISO time (local when it names no zone) or "
        "N + s/m/h/d/w ago, e.g. 24h",
    )
    parser.add_argument("--actor", metavar="NAME", help="only this actor's (exactly)")
    parser.add_argument(
        "--action",
        metavar="ACTION",
        help=f"only this action: {', '.join(ACTIONS)}, or users / tokens for all of theirs",
    )
    parser.add_argument(
        "--limit", type=positive_int, default=100, metavar="N", help="the newest N (default 100)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON record per line")
    add_nats_option(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    since = parse_time(args.since, dt.datetime.now(dt.UTC)) if args.since else None

    async def read() -> list[AuditRecord]:
        async with await connect(args, "cyclonetix-audit") as backplane:
            return await backplane.audit.read(
                since=since, actor=args.actor, action=args.action, limit=args.limit
            )

    records = run(read())
    if args.json:
        for r in records:
            print(msgspec.json.encode(r).decode())
        return 0
    if not records:
        print("no audit records" + (" match" if since or args.actor or args.action else ""))
        return 0
    for line in table(records):
        print(line)
    return 0


def table(records: list[AuditRecord]) -> list[str]:
    """Aligned columns, the detail last. Every field may hold what someone typed (a name tried
    at the login form): no control character reaches the terminal."""
    rows: list[tuple[str, ...]] = [
        ("TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "ADDRESS", "DETAIL")
    ]
    for r in records:
        when = r.at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        fields = (r.actor, r.action, r.target or "-", r.outcome, r.address or "-", r.detail)
        rows.append((when, *(printable(f) for f in fields)))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:6], widths, strict=True))
        + "  "
        + row[6]
        for row in rows
    ]

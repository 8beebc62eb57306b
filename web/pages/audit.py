"""`/audit` (admins): the audit log (`core.audit`), newest last, filtered as `cyclonetix audit`
filters it (since, actor, action)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery

from core.audit import ACTIONS, AuditRecord
from core.errors import Invalid
from web.api.audit import ADMIN
from web.context import UiContext
from web.pages.templating import render

__all__ = ["handlers", "parse_since"]

LIMIT: Final = 200
_AGO = re.compile(r"(\d{1,6})([smhdw])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
GROUPS: Final = sorted({a.split(".", 1)[0] for a in ACTIONS if "." in a})


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """`N` + s/m/h/d/w ago, or an ISO time (UTC when it names no zone); ValueError (one
    line) for anything else."""
    value = text.strip()
    if ago := _AGO.fullmatch(value):
        return now - dt.timedelta(**{_UNITS[ago[2]]: int(ago[1])})
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"since: not a time: {text!r} (24h, 7d, or 2026-01-31T12:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _blank(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


@get("/audit", name="audit", opt=ADMIN)
async def audit_page(
    ui: NamedDependency[UiContext],
    since: FromQuery[str | None] = None,
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
) -> Response[str]:
    """A bad filter is said on the page (the list is then not filtered by it)."""
    errors: list[str] = []
    when: dt.datetime | None = None
    if (text := _blank(since)) is not None:
        try:
            when = parse_since(text, dt.datetime.now(dt.UTC))
        except ValueError as exc:
            errors.append(str(exc))
    who, what = _blank(actor), _blank(action)
    try:
        records: list[AuditRecord] = await ui.backplane.audit.read(
            since=when, actor=who, action=what, limit=LIMIT
        )
    except Invalid as exc:  # an unknown action
        errors.append(str(exc))
        what = None
        records = await ui.backplane.audit.read(since=when, actor=who, limit=LIMIT)
    return render(
        "audit.html",
        nav="audit",
        records=records[::-1],  # newest first on the page
        actions=(*ACTIONS, *GROUPS),
        filters={"since": since or "", "actor": who or "", "action": what or ""},
        limit=LIMIT,
        error="; ".join(errors),
    )


handlers = [audit_page]

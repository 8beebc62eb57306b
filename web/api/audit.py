"""The audit log (`core.audit`): administrative actions and logins, admins only."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Final

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from core.audit import AuditRecord
from web.context import UiContext

__all__ = ["ADMIN", "MAX_LIMIT", "handlers"]

ADMIN: Final = {"auth": "admin"}
MAX_LIMIT: Final = 1000


def utc(when: dt.datetime | None) -> dt.datetime | None:
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=dt.UTC)  # a time without a zone is taken as UTC


@get("/audit", summary="The audit log: user, token and login actions (admin)", opt=ADMIN)
async def list_audit(
    ui: NamedDependency[UiContext],
    since: FromQuery[dt.datetime | None] = None,
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 100,
) -> list[AuditRecord]:
    """The newest `limit` records, oldest first: from `since` (ISO; UTC when no zone is given),
    by `actor` (exactly), of `action` (one, or `users` / `tokens` for all of theirs; 422 for
    an unknown one)."""
    return await ui.backplane.audit.read(since=utc(since), actor=actor, action=action, limit=limit)


handlers = [list_audit]

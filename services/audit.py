"""Audit first, then act: how every audited action is written (`core.audit`; the log itself is
the `services.ports.AuditLog` port, on NATS services/nats/audit.py).

Why first: an action whose record cannot be stored is not carried out (Unavailable, one line,
nothing changed), so nothing is ever done unrecorded. The price is the reverse case — a
record of an action that then failed — which gets a second record saying so ("error"), best
effort. Recording after the action would lose the record of a done action whenever the audit
write failed, which is the case an audit log exists for.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec
import structlog

from core.audit import AuditRecord, Outcome, record

if TYPE_CHECKING:
    from services.ports import AuditLog

__all__ = ["audited", "new_record"]

log = structlog.get_logger("cyclonetix.audit")
T = TypeVar("T")


def new_record(
    action: str,
    *,
    actor: str,
    target: str = "",
    outcome: Outcome = "ok",
    address: str = "",
    detail: str = "",
) -> AuditRecord:
    """A record of `action` now, with a fresh id."""
    return record(
        id=secrets.token_hex(12),
        at=dt.datetime.now(dt.UTC),
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        address=address,
        detail=detail,
    )


async def audited(audit: AuditLog, r: AuditRecord, act: Callable[[], Awaitable[T]]) -> T:
    """Record `r`, then `act()`. The record comes first: an action whose record cannot be
    stored is not done (Unavailable, nothing changed), so no action is ever carried out
    without its record. If `act` then fails, a second record of it with outcome "error" is
    written (best effort) and the failure raised as it was: the log may say an action was
    asked for that did not happen, never the reverse."""
    await audit.write(r)
    try:
        return await act()
    except Exception as exc:
        failed = msgspec.structs.replace(
            r, id=r.id + "-error", outcome="error", detail=str(exc).split("\n")[0][:200]
        )
        try:
            await audit.write(failed)
        except Exception as again:  # noqa: BLE001 - the action's own error is what matters
            log.warning("audit.error_record_lost", action=r.action, error=str(again))
        raise

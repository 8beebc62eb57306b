"""What the web process writes to the audit log (`core.audit`): logins and logouts.

- A login that succeeds is recorded before its session is stored: a login whose record cannot
  be written is refused (503, one line), so nobody is ever logged in unrecorded.
- A refused login (the name tried and the client's address; never the password) and a logout
  are recorded too, but they never wait on the audit log: refusing someone, or ending a
  session, must not be prevented by an audit log that cannot be written (the loss is logged).

The listing (`/audit`, `GET /api/v1/audit`) is in web/pages/audit.py and web/api/audit.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from services.audit import new_record

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

    from core.audit import Outcome
    from services.ports import AuditLog

__all__ = ["login_recorded", "logout_recorded"]

log = structlog.get_logger("cyclonetix.audit")


def _audit(connection: ASGIConnection[Any, Any, Any, Any]) -> AuditLog:
    audit: AuditLog = connection.app.state.ui.backplane.audit
    return audit


def _address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    client = connection.scope.get("client")
    return str(client[0]) if client else ""


async def login_recorded(
    connection: ASGIConnection[Any, Any, Any, Any],
    name: str,
    outcome: Outcome,
    *,
    detail: str = "",
) -> None:
    """Record a login of `name` (as typed at the form). "ok": raises Unavailable when the
    record cannot be written (refuse the login then); "refused": never raises."""
    r = new_record(
        "login", actor=name, outcome=outcome, address=_address(connection), detail=detail
    )
    if outcome == "ok":
        await _audit(connection).write(r)
        return
    try:
        await _audit(connection).write(r)
    except Exception as exc:  # noqa: BLE001 - a refusal is never held up by the audit log
        log.warning("audit.login_record_lost", error=str(exc))


async def logout_recorded(connection: ASGIConnection[Any, Any, Any, Any], user: str) -> None:
    """Record `user`'s logout; never raises (the session ends whatever happens here)."""
    r = new_record("logout", actor=user, target=user, address=_address(connection))
    try:
        await _audit(connection).write(r)
    except Exception as exc:  # noqa: BLE001 - ending a session never waits on the audit log
        log.warning("audit.logout_record_lost", error=str(exc))

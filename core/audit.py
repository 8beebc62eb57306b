"""The audit log: who did what to the installation's users, tokens and sessions.

One `AuditRecord` per administrative action (`users add|passwd|remove`, `tokens create|revoke`)
and per UI login (succeeded or refused) and logout, kept in the CX_AUDIT stream on
`cx.audit.<action>` (services/nats/audit.py) and listed by `cyclonetix audit`, `/audit` and
`GET /api/v1/audit`. Runs are not audited here: their events carry `requested_by` themselves.

Records are stored, so a stored type as the events are (`core.events`): lenient, every value
written, new fields with defaults only. Never a secret in one: a password is never recorded,
a token only by its id and name. Pure: no I/O, no clock (the caller passes `at`).
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

import msgspec

__all__ = [
    "ACTIONS",
    "MAX_FIELD_CHARS",
    "AuditRecord",
    "Outcome",
    "decode_record",
    "encode_record",
    "matches",
    "record",
]

# What may be recorded; each is also the last tokens of its subject (`cx.audit.<action>`).
ACTIONS: Final = (
    "login",
    "logout",
    "users.add",
    "users.passwd",
    "users.remove",
    "tokens.create",
    "tokens.revoke",
)
# ok: done. refused: a login with a wrong name or password. error: the action was recorded
# and then failed (a second record of the same action, after the first).
Outcome = Literal["ok", "refused", "error"]
MAX_FIELD_CHARS: Final = 200  # a name tried at the login form may be anything: kept short


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One action. `actor`: who acted — a UI user's name, `token:<name>`, `cli:<OS login>`, or
    for a login the account name tried; `target`: what it was done to (a user's name, a
    token's `id (name)`); `address`: the client's address (web) or the host (CLI)."""

    id: str  # unique (the publish's message id: a retried publish is stored once)
    at: dt.datetime
    actor: str
    action: str  # one of ACTIONS (str: a newer writer may add actions)
    target: str = ""
    outcome: str = "ok"  # an Outcome (str, as `action`)
    address: str = ""
    detail: str = ""  # one line: why it was refused or failed


def _short(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


def record(
    *,
    id: str,
    at: dt.datetime,
    actor: str,
    action: str,
    target: str = "",
    outcome: Outcome = "ok",
    address: str = "",
    detail: str = "",
) -> AuditRecord:
    """A record, its free-text fields cut to MAX_FIELD_CHARS; ValueError for an unknown
    action (a typo must not write records nobody filters for)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r} (known: {', '.join(ACTIONS)})")
    return AuditRecord(
        id=id,
        at=at,
        actor=_short(actor),
        action=action,
        target=_short(target),
        outcome=outcome,
        address=_short(address),
        detail=_short(detail.replace("\n", " ")),
    )


def matches(
    r: AuditRecord,
    *,
    since: dt.datetime | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> bool:
    """Whether `r` is in a listing: at or after `since`, by `actor` (exactly), of `action`
    (exactly, or every action under it: `users` is users.add, users.passwd, users.remove)."""
    if since is not None and r.at < since:
        return False
    if actor is not None and r.actor != actor:
        return False
    return action is None or r.action == action or r.action.startswith(action + ".")


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AuditRecord)


def encode_record(r: AuditRecord) -> bytes:
    return _encoder.encode(r)


def decode_record(data: bytes) -> AuditRecord:
    return _decoder.decode(data)

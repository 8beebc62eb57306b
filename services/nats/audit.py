"""The audit log on NATS (`services.ports.AuditLog`): `core.audit` records in CX_AUDIT, one
subject per action (`cx.audit.<action>`), kept a year (services/nats/provisioning.py).

A write waits for the stream's acknowledgement (retried with the same message id, the record's
own, until the publish deadline): the caller acts only once its record is stored — see
`services.audit.audited`, which is how every audited action is written.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
import nats.errors
from nats.js.api import DeliverPolicy

from core.audit import ACTIONS, AuditRecord, decode_record, encode_record, matches
from core.errors import Invalid, Unavailable
from services.nats.connection import describe, unavailable
from services.nats.names import AUDIT_STREAM, AUDIT_SUBJECTS, MSG_ID
from services.nats.reader import Reader

if TYPE_CHECKING:
    from services.nats.connection import Connection
    from services.nats.publisher import Publisher

__all__ = ["NatsAuditLog", "audit_subject"]


# What `--action` may name: an action, or every action under one of these.
_GROUPS = {a.split(".", 1)[0] for a in ACTIONS if "." in a}


def audit_subject(action: str) -> str:
    return f"cx.audit.{action}"


def _filter_subject(action: str | None) -> str:
    if action is None:
        return AUDIT_SUBJECTS
    if action in ACTIONS:
        return audit_subject(action)
    if action in _GROUPS:
        return audit_subject(action) + ".>"
    known = ", ".join([*ACTIONS, *sorted(_GROUPS)])
    raise Invalid(f"action: no audit action {action!r} (known: {known})")


class NatsAuditLog:
    def __init__(self, conn: Connection, publisher: Publisher) -> None:
        self._conn = conn
        self._publisher = publisher

    async def write(self, r: AuditRecord) -> None:
        """Store `r`; Unavailable (one line) when it could not be."""
        subject = audit_subject(r.action)
        try:
            await self._publisher.publish(subject, encode_record(r), {MSG_ID: r.id})
        except Unavailable as exc:
            raise Unavailable(f"cannot write the audit log ({AUDIT_STREAM}): {exc}") from None
        except nats.errors.Error as exc:  # e.g. no stream: never provisioned on this server
            raise Unavailable(
                f"cannot write the audit log ({AUDIT_STREAM}): {describe(exc)}"
            ) from None

    async def read(
        self,
        *,
        since: dt.datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The newest `limit` records that match (`core.audit.matches`), oldest first.
        Invalid for an unknown action."""
        subject = _filter_subject(action)
        if limit <= 0:
            return []
        with unavailable(f"a {AUDIT_STREAM} info request"):
            info = await self._conn.js.stream_info(AUDIT_STREAM)
        if not info.state.messages:
            return []
        newest: collections.deque[AuditRecord] = collections.deque(maxlen=limit)
        reader = Reader(
            self._conn, AUDIT_STREAM, subject, deliver_policy=DeliverPolicy.ALL, bounded=True
        )
        async for _seq, _pending, msg in _closing(reader):
            try:
                r = decode_record(msg.data or b"")
            except msgspec.DecodeError:
                continue  # not a record this version can read
            if matches(r, since=since, actor=actor, action=action):
                newest.append(r)
        return list(newest)


async def _closing(reader: Reader) -> AsyncIterator[Any]:
    try:
        async for item in reader:
            yield item
    finally:
        with contextlib.suppress(Exception):
            await reader.close()

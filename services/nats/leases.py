"""Leases (`services.ports.Leases`) in the `cx_leases` KV bucket, whose entries expire
LEASE_TTL after their last write: a holder that dies frees its lease by itself."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import nats.js.errors

from services.nats.connection import unavailable
from services.nats.names import LEASES_BUCKET, kv_token

if TYPE_CHECKING:
    from services.nats.provisioning import Provisioner

__all__ = ["NatsLeases"]


class NatsLeases:
    def __init__(self, provisioner: Provisioner) -> None:
        self._provisioner = provisioner

    async def acquire(self, name: str, holder: str) -> int | None:
        """Take the lease `name` if nobody holds it: its revision, or None when it is held."""
        kv = await self._provisioner.bucket(LEASES_BUCKET)
        with unavailable(f"about lease {name}"):
            try:
                return int(await kv.create(kv_token(name), holder.encode()))
            except nats.js.errors.KeyWrongLastSequenceError:
                return None

    async def renew(self, name: str, holder: str, revision: int) -> int | None:
        """Keep holding `name`: the new revision, or None when the lease was lost meanwhile."""
        kv = await self._provisioner.bucket(LEASES_BUCKET)
        with unavailable(f"about lease {name}"):
            try:
                return int(await kv.update(kv_token(name), holder.encode(), last=revision))
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                return None

    async def holder(self, name: str) -> str | None:
        kv = await self._provisioner.bucket(LEASES_BUCKET)
        with unavailable(f"about lease {name}"):
            try:
                entry = await kv.get(kv_token(name))
            except nats.js.errors.KeyNotFoundError:
                return None
        return (entry.value or b"").decode() or None

    async def release(self, name: str, revision: int) -> None:
        # Best effort: a lease that is not released expires after LEASE_TTL anyway. (A stale
        # revision comes back as a plain BadRequestError from delete, unlike from update.)
        kv = await self._provisioner.bucket(LEASES_BUCKET)
        with (
            unavailable(f"about lease {name}"),
            contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.BadRequestError),
        ):
            await kv.delete(kv_token(name), last=revision)

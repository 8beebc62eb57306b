"""Checkpoints (`services.ports.Checkpoints`) in the `cx_checkpoints` KV bucket."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.js.errors

from services.nats.connection import unavailable
from services.nats.names import CHECKPOINTS_BUCKET, kv_token

if TYPE_CHECKING:
    from services.nats.provisioning import Provisioner

__all__ = ["NatsCheckpoints"]


class NatsCheckpoints:
    def __init__(self, provisioner: Provisioner) -> None:
        self._provisioner = provisioner

    async def get(self, name: str) -> int | None:
        kv = await self._provisioner.bucket(CHECKPOINTS_BUCKET)
        with unavailable(f"about checkpoint {name}"):
            try:
                entry = await kv.get(kv_token(name))
            except nats.js.errors.KeyNotFoundError:
                return None
        try:
            return int(entry.value or b"")
        except ValueError:
            return None

    async def put(self, name: str, value: int) -> None:
        kv = await self._provisioner.bucket(CHECKPOINTS_BUCKET)
        with unavailable(f"about checkpoint {name}"):
            await kv.put(kv_token(name), str(value).encode())

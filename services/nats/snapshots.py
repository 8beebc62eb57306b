"""Snapshots (`services.ports.Snapshots`) in the `cx_snapshots` object store.

Why the object store rather than a KV value: a snapshot of 1,000 open runs is megabytes, past the
1 MB a NATS message (so a KV value) holds by default. The object store chunks it (128 KiB
messages), replaces it atomically (the object's meta entry, rolled up, points at the new chunks
only once they are all stored; the old ones are purged after), and checks a SHA-256 digest of the
whole on every read. Chunking KV values by hand would have to rebuild each of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import TYPE_CHECKING, Final

import nats.js.errors

from core.errors import Unavailable
from services.nats.connection import unavailable
from services.nats.names import SNAPSHOTS_BUCKET

if TYPE_CHECKING:
    from services.nats.provisioning import Provisioner

__all__ = ["NatsSnapshots"]

# nats-py reads an object's chunks with an ordered consumer and no deadline; chunks purged by a
# concurrent put would leave it waiting forever.
READ_TIMEOUT_S: Final = 30.0


class NatsSnapshots:
    def __init__(self, provisioner: Provisioner) -> None:
        self._provisioner = provisioner

    async def put(self, name: str, data: bytes) -> None:
        store = await self._provisioner.object_store(SNAPSHOTS_BUCKET)
        with unavailable(f"storing snapshot {name}"):
            await store.put(name, data)

    async def get(self, name: str) -> bytes | None:
        store = await self._provisioner.object_store(SNAPSHOTS_BUCKET)
        buffer = io.BytesIO()  # (its writes are appends: no quadratic joining of chunks)
        with unavailable(f"reading snapshot {name}"):
            try:
                result = await asyncio.wait_for(store.get(name, writeinto=buffer), READ_TIMEOUT_S)
            except nats.js.errors.ObjectNotFoundError:
                return None
            except TimeoutError:
                raise Unavailable(
                    f"snapshot {name} was not read whole within {READ_TIMEOUT_S:g} s"
                ) from None
        data = buffer.getvalue()
        if len(data) != result.info.size:
            raise Unavailable(f"snapshot {name}: {len(data)} of {result.info.size} bytes read")
        return data

    async def delete(self, name: str) -> None:
        store = await self._provisioner.object_store(SNAPSHOTS_BUCKET)
        with (
            unavailable(f"deleting snapshot {name}"),
            contextlib.suppress(nats.js.errors.ObjectNotFoundError),
        ):
            await store.delete(name)

"""The snapshots port in memory: whole blobs by name, as the NATS object store keeps them."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.fakes.backplane import MemoryBackplane
    from tests.fakes.faults import Faults

__all__ = ["MemorySnapshots", "ObjectStore"]


class ObjectStore:
    """The server side: name -> the bytes of the last complete put."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0  # (tests: how many were written)


class MemorySnapshots:
    """`services.ports.Snapshots`: a put replaces the whole blob at once."""

    def __init__(self, conn: MemoryBackplane, store: ObjectStore, faults: Faults) -> None:
        self._conn = conn
        self._store = store
        self._faults = faults

    def _check(self, what: str) -> None:
        self._conn.check_open()
        if self._faults.take("failing_snapshot_calls"):
            raise self._faults.unavailable(what)

    async def put(self, name: str, data: bytes) -> None:
        self._check(f"put of snapshot {name!r}")
        await asyncio.sleep(0)  # a real put is chunks and acknowledgements
        self._store.objects[name] = bytes(data)
        self._store.puts += 1

    async def get(self, name: str) -> bytes | None:
        self._check(f"get of snapshot {name!r}")
        await asyncio.sleep(0)
        return self._store.objects.get(name)

    async def delete(self, name: str) -> None:
        self._check(f"delete of snapshot {name!r}")
        await asyncio.sleep(0)
        self._store.objects.pop(name, None)

"""The snapshots' contract: named blobs of any size, each replaced whole by a put."""

from __future__ import annotations

import os

from services.ports import Backplane
from tests.contract.harness import Contract, Harness, OnMemory, OnNats

BIG = 3 * 1024 * 1024 + 17  # over NATS's default max payload (1 MB), and not a chunk multiple


class SnapshotsContract(Contract):
    async def test_put_get_and_the_last_put_wins(self, bp: Backplane, harness: Harness) -> None:
        snapshots = bp.snapshots
        assert await snapshots.get("orchestrator") is None
        await snapshots.put("orchestrator", b'{"version": 1}')
        assert await snapshots.get("orchestrator") == b'{"version": 1}'
        await snapshots.put("orchestrator", b"second")
        other = await harness.connect("standby")  # another process sees it
        assert await other.snapshots.get("orchestrator") == b"second"
        await snapshots.put("shard 3/replay", b"")
        assert await snapshots.get("shard 3/replay") == b""
        assert await snapshots.get("orchestrator") == b"second"

    async def test_a_blob_larger_than_a_message_round_trips(self, bp: Backplane) -> None:
        big = os.urandom(BIG)
        await bp.snapshots.put("orchestrator", big)
        assert await bp.snapshots.get("orchestrator") == big
        # Replaced by a smaller one: nothing of the bigger one is left in it.
        await bp.snapshots.put("orchestrator", big[:1000])
        assert await bp.snapshots.get("orchestrator") == big[:1000]
        await bp.snapshots.put("orchestrator", big[::-1])
        assert await bp.snapshots.get("orchestrator") == big[::-1]

    async def test_delete(self, bp: Backplane) -> None:
        await bp.snapshots.delete("orchestrator")  # none there: nothing happens
        await bp.snapshots.put("orchestrator", b"x")
        await bp.snapshots.put("other", b"y")
        await bp.snapshots.delete("orchestrator")
        assert await bp.snapshots.get("orchestrator") is None
        assert await bp.snapshots.get("other") == b"y"
        await bp.snapshots.put("orchestrator", b"again")
        assert await bp.snapshots.get("orchestrator") == b"again"


class TestSnapshotsOnMemory(OnMemory, SnapshotsContract):
    pass


class TestSnapshotsOnNats(OnNats, SnapshotsContract):
    pass

"""The checkpoints' contract: a named integer, the last one put."""

from __future__ import annotations

from services.ports import Backplane
from tests.contract.harness import Contract, Harness, OnMemory, OnNats


class CheckpointsContract(Contract):
    async def test_get_and_put(self, bp: Backplane, harness: Harness) -> None:
        checkpoints = bp.checkpoints
        assert await checkpoints.get("orchestrator") is None
        await checkpoints.put("orchestrator", 42)
        assert await checkpoints.get("orchestrator") == 42
        await checkpoints.put("orchestrator", 7)  # the last put wins, also going back
        other = await harness.connect("standby")
        assert await other.checkpoints.get("orchestrator") == 7
        await checkpoints.put("replay/shard 3", 0)
        assert await checkpoints.get("replay/shard 3") == 0
        assert await checkpoints.get("orchestrator") == 7


class TestCheckpointsOnMemory(OnMemory, CheckpointsContract):
    pass


class TestCheckpointsOnNats(OnNats, CheckpointsContract):
    pass

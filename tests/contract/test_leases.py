"""The leases' contract: one holder at a time, kept by renewing from the current revision,
freed by release or by expiry."""

from __future__ import annotations

from services.ports import Backplane
from tests.contract.harness import Contract, Harness, OnMemory, OnNats


class LeasesContract(Contract):
    async def test_one_holder_at_a_time(self, bp: Backplane, harness: Harness) -> None:
        other = await harness.connect("standby")
        assert await bp.leases.holder("orchestrator") is None
        revision = await bp.leases.acquire("orchestrator", "o1")
        assert revision is not None
        assert await other.leases.acquire("orchestrator", "o2") is None
        assert await bp.leases.acquire("orchestrator", "o1") is None  # held, even by itself
        assert await other.leases.holder("orchestrator") == "o1"
        assert await other.leases.acquire("another lease", "o2") is not None

    async def test_renew_from_the_current_revision_only(self, bp: Backplane) -> None:
        leases = bp.leases
        first = await leases.acquire("orchestrator", "o1")
        assert first is not None
        second = await leases.renew("orchestrator", "o1", first)
        assert second is not None and second > first
        assert await leases.renew("orchestrator", "o1", first) is None  # stale: lost meanwhile
        assert await leases.holder("orchestrator") == "o1"
        assert await leases.renew("never-acquired", "o1", second) is None

    async def test_release_frees_the_lease(self, bp: Backplane, harness: Harness) -> None:
        other = await harness.connect("standby")
        first = await bp.leases.acquire("orchestrator", "o1")
        assert first is not None
        second = await bp.leases.renew("orchestrator", "o1", first)
        assert second is not None
        await bp.leases.release("orchestrator", first)  # stale: releases nothing
        assert await bp.leases.holder("orchestrator") == "o1"
        await bp.leases.release("orchestrator", second)
        assert await bp.leases.holder("orchestrator") is None
        assert await bp.leases.renew("orchestrator", "o1", second) is None
        taken = await other.leases.acquire("orchestrator", "o2")
        assert taken is not None and taken > second
        assert await bp.leases.holder("orchestrator") == "o2"
        await bp.leases.release("never-acquired", 1)

    async def test_a_lease_not_renewed_expires(self, bp: Backplane, harness: Harness) -> None:
        other = await harness.connect("standby")
        revision = await bp.leases.acquire("orchestrator", "o1")
        assert revision is not None
        await harness.expire_lease(bp, "orchestrator")  # (on NATS: waits out its TTL)
        assert await bp.leases.holder("orchestrator") is None
        assert await bp.leases.renew("orchestrator", "o1", revision) is None
        assert await other.leases.acquire("orchestrator", "o2") is not None
        assert await bp.leases.holder("orchestrator") == "o2"


class TestLeasesOnMemory(OnMemory, LeasesContract):
    pass


class TestLeasesOnNats(OnNats, LeasesContract):
    pass

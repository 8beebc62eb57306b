"""The in-memory store beyond the contract: a batch that fails half-way is not applied at all."""

from __future__ import annotations

import pytest

from projections import rows
from projections.memory import MemoryReadModel
from tests.contract.test_read_model import everything, stream


async def test_a_batch_that_fails_half_way_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries = stream(5, 3)
    fresh = MemoryReadModel()
    await fresh.apply_batch(entries)
    expected = await everything(fresh)

    store = MemoryReadModel()
    half = len(entries) // 2
    await store.apply_batch(entries[: half // 2])
    before = await everything(store)
    calls = 0
    apply = rows.apply

    def failing(lookup: rows.Lookup, seq: int, event: object) -> rows.Changes:
        nonlocal calls
        calls += 1
        if calls == half // 2:
            raise RuntimeError("the store went away")
        return apply(lookup, seq, event)  # type: ignore[arg-type]

    monkeypatch.setattr(rows, "apply", failing)
    with pytest.raises(RuntimeError):
        await store.apply_batch(entries[half // 2 :])
    assert await everything(store) == before
    monkeypatch.setattr(rows, "apply", apply)
    await store.apply_batch(entries[half // 2 :])
    assert await everything(store) == expected

"""Publishing definitions to a real nats-server is all-or-nothing from a user's point of view:
a publish that fails half-way leaves a mix of old and new definitions, never fewer than before
(every put is stored before any delete goes out). Sizes are checked by the contract suite."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from core.definitions import Definitions, TaskDef
from core.errors import Unavailable

if TYPE_CHECKING:
    from services.nats import NatsBackplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def tasks(**commands: str) -> Definitions:
    return Definitions(
        tasks={t: TaskDef(id=t, command=c) for t, c in commands.items()},
        sources={f"tasks/{t}": f"tasks/{t}.yaml" for t in commands},
    )


async def test_a_publish_failing_half_way_deletes_nothing(
    backplane: NatsBackplane, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = tasks(a="echo a", b="echo b", c="echo c")
    await backplane.definitions.put(before)

    publish = backplane.publisher.publish_nowait
    calls = 0

    def second_write_fails(
        subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[int]:
        nonlocal calls
        calls += 1
        if calls == 2:  # one of the puts: NATS did not acknowledge it
            failed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            failed.set_exception(Unavailable("injected: a put was not acknowledged"))
            return failed
        return publish(subject, payload, headers)

    monkeypatch.setattr(backplane.publisher, "publish_nowait", second_write_fails)
    # a changes, d is new, b and c go away: two puts, then two deletes.
    with pytest.raises(Unavailable):
        await backplane.definitions.put(tasks(a="echo changed", d="echo d"))
    monkeypatch.undo()

    loaded = await backplane.definitions.load()
    assert {"a", "b", "c"} <= set(loaded.tasks)  # nothing deleted
    assert calls == 2  # the deletes never went out
    # Published again once NATS answers: exactly the new set.
    assert await backplane.definitions.put(tasks(a="echo changed", d="echo d")) >= 2
    assert set((await backplane.definitions.load()).tasks) == {"a", "d"}

"""Small waiting primitives shared by the fakes."""

from __future__ import annotations

import asyncio

__all__ = ["Changed"]


class Changed:
    """Wakes everyone waiting for the next change (a broadcast without a payload).

    `future()` is resolved by the next `notify()`; waiters re-check the state they care about,
    so a notification is never lost between a check and a wait (both happen without awaiting).
    """

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def future(self) -> asyncio.Future[None]:
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    def notify(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None

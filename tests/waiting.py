"""Waiting on a condition with a deadline: the one way tests wait (never sleep-and-hope)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 20.0, what: str = ""
) -> T:
    """Poll `probe` until it returns something other than None, or fail after `timeout`.

    An exception from the probe counts as "not yet" (reads fail while NATS restarts); the last
    one is reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = await probe()
        except Exception as exc:  # noqa: BLE001 - the condition is not met yet
            last_error = exc
        else:
            if result is not None:
                return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe} ({last_error!r})")

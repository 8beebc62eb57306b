"""A clock tests can move forward: what the fakes' time-to-live rules (leases, agent
heartbeats, the duplicate window) read instead of the wall clock."""

from __future__ import annotations

import time

__all__ = ["Clock"]


class Clock:
    """Monotonic seconds: real time plus whatever a test added with `advance`.

    Real time keeps passing, so code that waits a little still sees time move; `advance` jumps
    ahead at once (a lease expires without waiting six seconds). Time never goes back.
    """

    def __init__(self) -> None:
        self._offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self._offset += seconds

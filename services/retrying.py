"""Exponential backoff, written once: the delays between attempts of anything retried.

    delays = backoff(0.1, cap=2.0)
    while not done():
        await asyncio.sleep(next(delays))

A plain iterator, so synchronous loops (polling a file) use it the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["backoff"]


def backoff(first: float, cap: float, factor: float = 2.0) -> Iterator[float]:
    """`first`, `first * factor`, ... never more than `cap`, forever."""
    if first <= 0 or cap < first or factor < 1:
        raise ValueError("backoff needs 0 < first <= cap and factor >= 1")
    delay = first
    while True:
        yield delay
        delay = min(delay * factor, cap)

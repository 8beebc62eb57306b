"""Background tasks with a structure: loops that live exactly as long as a piece of work.

    async with alongside(heartbeat_loop(), progress_loop()):
        await serve()

`alongside` is an `asyncio.TaskGroup` whose tasks are cancelled (and awaited) when the body
ends, however it ends. The loops must handle their own errors: one that escapes cancels the
body and is raised (in an ExceptionGroup, the TaskGroup way), so a broken loop is never a
silent zombie. The body's own exception is raised as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

__all__ = ["alongside"]


@contextlib.asynccontextmanager
async def alongside(*loops: Coroutine[Any, Any, Any]) -> AsyncIterator[None]:
    failure: Exception | None = None
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(loop) for loop in loops]
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - the body's own: re-raised below, unwrapped
            failure = exc
        finally:
            for task in tasks:
                task.cancel()
    if failure is not None:
        raise failure

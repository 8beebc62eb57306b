"""A task's captured output, read from the log store (`CX_LOGS`) as `cyclonetix logs` reads it,
a page at a time: `offset` is a byte position in the attempt's output, `next_offset` where
the next read starts (a client tails a running task by asking again from there)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from web.api.common import task_or_404
from web.context import UiContext

MAX_BYTES = 1 << 20  # per answer: a larger output is read in several


class LogChunk(msgspec.Struct, kw_only=True):
    """Output bytes [offset, next_offset) of one attempt (or of all, in attempt order), as
    text (invalid UTF-8 replaced); `complete` is false while more is stored past them."""

    run_id: str
    task_id: str
    attempt: int | None
    offset: int
    next_offset: int
    text: str
    complete: bool


@get("/runs/{run_id:str}/tasks/{task_id:str}/log", summary="A task's output from an offset")
async def task_log(
    run_id: FromPath[str],
    task_id: FromPath[str],
    ui: NamedDependency[UiContext],
    attempt: Annotated[int | None, QueryParameter(ge=1)] = None,
    offset: Annotated[int, QueryParameter(ge=0)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_BYTES)] = MAX_BYTES,
) -> LogChunk:
    await task_or_404(ui, run_id, task_id)
    data = bytearray()
    position = 0  # bytes of output before the current chunk
    complete = True
    async for _attempt, chunk in ui.backplane.logs.read(run_id, task_id, attempt):
        end = position + len(chunk)
        if end > offset:
            data += chunk[max(0, offset - position) :]
        position = end
        if len(data) >= limit:
            complete = False
            break
    taken = bytes(data[:limit])
    # Never end inside a UTF-8 sequence: a character cut short comes whole with the next read.
    end = _whole_characters(taken)
    if end == 0 and data:  # a page smaller than one character still moves on: that character
        end = _whole_characters(bytes(data[:4])) or min(4, len(data))
    taken = bytes(data[:end])
    return LogChunk(
        run_id=run_id,
        task_id=task_id,
        attempt=attempt,
        offset=offset,
        next_offset=offset + len(taken),
        text=taken.decode("utf-8", errors="replace"),
        complete=complete and len(taken) == len(data),
    )


def _whole_characters(data: bytes) -> int:
    """The length of `data` without a UTF-8 sequence cut short at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the lead byte (or ASCII) of the last sequence
            need = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


handlers = [task_log]

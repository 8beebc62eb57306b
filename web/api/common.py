"""What the resource modules share: finding a run or fail with 404, read-your-writes."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection

from core.errors import NotFound
from projections.views import RunDetail
from web.context import UiContext

WRITE_VISIBLE_S = 2.0  # how long a write waits for the read model to show it


async def run_or_404(ui: UiContext, run_id: str) -> RunDetail:
    detail = await ui.read_model.get_run(run_id)
    if detail is None:
        raise NotFound(f"no run {run_id!r}")
    return detail


async def task_or_404(ui: UiContext, run_id: str, task_id: str) -> RunDetail:
    detail = await run_or_404(ui, run_id)
    if not any(t.task_id == task_id for t in detail.tasks):
        raise NotFound(f"run {run_id!r} has no task {task_id!r}")
    return detail


def requester(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """Who a write is made for (`requested_by` of its event), from the identity the guard
    found (web/auth.py): a login's user name, `token:<name>` for an API token (names cannot
    hold ':', so neither spelling can pass for the other); None for anonymous (an open UI)."""
    identity = connection.scope.get("state", {}).get("identity")
    if identity is None:
        return None
    name = str(identity.name)
    return f"token:{name}" if identity.via == "token" else name


async def visible(ui: UiContext, seq: int) -> bool:
    """Wait (bounded) until the read model applied `seq`, so a following GET sees the write;
    False when it did not within WRITE_VISIBLE_S (the write itself is stored either way)."""
    return await ui.read_model.wait_for(seq, WRITE_VISIBLE_S)

"""`/healthz`: 200 when NATS and the read model both answer, else 503 naming what is down.

Each check is one cheap call bounded by `CHECK_TIMEOUT_S` (the newest stream sequence; the
read model's checkpoint), run side by side, so a probe answers within that bound whatever is
down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from web.auth import PUBLIC
from web.context import UiContext

__all__ = ["Health", "healthz"]

CHECK_TIMEOUT_S = 2.0


class Check(msgspec.Struct, omit_defaults=True):
    ok: bool
    error: str | None = None


class Health(msgspec.Struct):
    status: str  # "ok" or "unavailable"
    nats: Check
    read_model: Check
    down: tuple[str, ...] = ()  # the names of the failed checks


async def _check(call: Awaitable[object]) -> Check:
    try:
        await asyncio.wait_for(call, CHECK_TIMEOUT_S)
    except TimeoutError:
        return Check(ok=False, error=f"no answer within {CHECK_TIMEOUT_S:g} s")
    except Exception as exc:  # noqa: BLE001 - whatever the failure, the check reports it
        return Check(ok=False, error=str(exc) or type(exc).__name__)
    return Check(ok=True)


@get(
    "/healthz",
    summary="NATS and the read model reachable (200), else 503 naming which",
    opt=PUBLIC,  # for probes: says nothing but up or down
)
async def healthz(ui: NamedDependency[UiContext]) -> Response[Health]:
    nats, read_model = await asyncio.gather(
        _check(ui.backplane.events.last_seq()), _check(ui.read_model.checkpoint())
    )
    down = tuple(name for name, c in (("nats", nats), ("read_model", read_model)) if not c.ok)
    status = "unavailable" if down else "ok"
    return Response(Health(status, nats, read_model, down), status_code=503 if down else 200)

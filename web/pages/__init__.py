"""The server-rendered pages of the web UI (`router`, mounted at `/` by `web.app`)."""

from __future__ import annotations

from litestar import Router

router = Router(path="/", route_handlers=[])

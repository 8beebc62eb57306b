"""Errors of the pages as pages: an unknown run is a 404 page with the layout and a way back,
not the JSON envelope the API answers with (web/errors.py)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from core.errors import CyclonetixError
from web.errors import STATUSES
from web.pages.templating import render


def _page(status: int, message: str) -> Response[str]:
    return render("error.html", status_code=status, status=status, message=message, nav="")


def _domain(_: Request[Any, Any, Any], exc: CyclonetixError) -> Response[str]:
    status = next(code for kind, code in STATUSES if isinstance(exc, kind))
    return _page(status, str(exc))


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[str]:
    return _page(exc.status_code, exc.detail)


exception_handlers: ExceptionHandlersMap = {CyclonetixError: _domain, HTTPException: _http}

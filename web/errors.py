"""One error envelope for every failure the web process reports:
`{"error": {"status": 404, "message": "...", "field": "..."}}` (`field` only when one input is
to blame).

Each kind of error maps to one status in one table (`STATUSES`), as the CLI maps them to exit
codes: NotFound 404, Invalid 422, Conflict 409, Unavailable 503. Litestar's own errors (a bad
query parameter, a body that is not JSON, an unknown route) come out in the same envelope.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY, HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from core.errors import Conflict, CyclonetixError, Invalid, NotFound, Unavailable

__all__ = ["STATUSES", "FieldInvalid", "exception_handlers"]

log = logging.getLogger("cyclonetix.web")

# Most specific first (RunExists is a Conflict, GraphError an Invalid).
STATUSES: tuple[tuple[type[CyclonetixError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (Invalid, 422),
    (Unavailable, 503),
    (CyclonetixError, 422),
)


class FieldInvalid(Invalid):
    """Invalid input with the request field to blame (`parameters`, `target`, `run_id`, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ErrorBody(msgspec.Struct, omit_defaults=True):
    status: int
    message: str
    field: str | None = None


class Envelope(msgspec.Struct):
    error: ErrorBody


def error_response(status: int, message: str, field: str | None = None) -> Response[Envelope]:
    return Response(Envelope(ErrorBody(status, message, field)), status_code=status)


def _domain(_: Request[Any, Any, Any], exc: CyclonetixError) -> Response[Envelope]:
    status = next(code for kind, code in STATUSES if isinstance(exc, kind))
    return error_response(status, str(exc), getattr(exc, "field", None))


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Envelope]:
    """Litestar's failed parsing of a query parameter or a body: 422 naming the field."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = next((p for p in problems if isinstance(p, dict)), None)
    if first is None:  # e.g. a body that is not JSON at all
        return error_response(HTTP_422_UNPROCESSABLE_ENTITY, _body_message(exc.detail))
    key = first.get("key")
    where = first.get("source", "")
    text = str(first.get("message", exc.detail))
    field = str(key) if key else None
    message = f"{field}: {text}" if field else text
    if where and field:
        message = f"{where} {message}"
    return error_response(HTTP_422_UNPROCESSABLE_ENTITY, message, field)


def _body_message(detail: str) -> str:
    if "decode" in detail.lower() or "json" in detail.lower():
        return f"the request body is not valid JSON ({detail})"
    return detail


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Envelope]:
    return error_response(exc.status_code, exc.detail)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Envelope]:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")


exception_handlers: ExceptionHandlersMap = {
    CyclonetixError: _domain,
    ValidationException: _validation,
    HTTPException: _http,
    Exception: _unexpected,
}

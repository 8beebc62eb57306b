"""One error envelope for every failure the web process reports:
`{"error": {"status": 404, "message": "...", "field": "..."}}` (`field` only when one input is
to blame).

Each kind of error maps to one status in one table (`STATUSES`), as the CLI maps them to exit
codes: NotFound 404, Invalid 422, Conflict 409, Unavailable 503. Litestar's own errors (a bad
or missing parameter or body field: 422 naming it; an unknown route) come out in the same
envelope; a body that is not JSON at all is a 400 that says so, a body over the limit a 413, a
name in the path that no id can be a 400 naming it (web/security.py).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
)
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
    """The envelope; message and field on one line whatever the input put in them (an unknown
    field named "\n" is echoed as `\n`)."""
    field = None if field is None else _one_line(field)
    return Response(Envelope(ErrorBody(status, _one_line(message), field)), status_code=status)


def _one_line(text: str) -> str:
    """`text` with every control character (line breaks included) as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _domain(_: Request[Any, Any, Any], exc: CyclonetixError) -> Response[Envelope]:
    status = next(code for kind, code in STATUSES if isinstance(exc, kind))
    return error_response(status, str(exc), getattr(exc, "field", None))


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Envelope]:
    """Litestar's failed parsing of a query parameter or a body: 422 naming the field."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    first = next((p for p in problems if isinstance(p, dict)), None)
    if first is None:  # a missing parameter
        missing = _MISSING.search(exc.detail)
        field = missing.group(1) if missing else None
        return error_response(HTTP_422_UNPROCESSABLE_ENTITY, exc.detail, field)
    key = first.get("key")
    source = first.get("source", "")
    where = str(getattr(source, "value", source))  # Litestar gives an enum (ParamType.QUERY)
    text = str(first.get("message", exc.detail))
    path = str(key) if key and key != "data" else None  # "data": the body as a whole
    unknown = _UNKNOWN.search(text)
    if unknown:
        path = unknown.group(1)
    message = f"{path}: {text}" if path else text
    field = path.split("[", 1)[0] if path else None  # `parameters[...]`: the field itself
    if where and field:
        message = f"{where} {message}"
    return error_response(HTTP_422_UNPROCESSABLE_ENTITY, message, field)


_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_MISSING = re.compile(r"Missing required \w+ parameter '([^']+)'")


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Envelope]:
    if isinstance(exc.__cause__, SerializationException):  # a body that does not parse
        return error_response(exc.status_code, f"the request body is not valid JSON: {exc.detail}")
    return error_response(exc.status_code, exc.detail, getattr(exc, "field", None))


def _recursion(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Envelope]:
    """msgspec gives up on JSON nested deeper than Python's recursion limit (a body of
    `[[[[...` decoded as any value): the client's doing, a 400; any other RecursionError is
    ours (500)."""
    if "while deserializing" in str(exc):
        return error_response(HTTP_400_BAD_REQUEST, "the request body is nested too deeply")
    return _unexpected(request, exc)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Envelope]:
    log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")


exception_handlers: ExceptionHandlersMap = {
    CyclonetixError: _domain,
    ValidationException: _validation,
    HTTPException: _http,
    RecursionError: _recursion,
    Exception: _unexpected,
}

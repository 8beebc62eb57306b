"""What the web process does about hostile input and hostile pages, in one place (installed by
`web.app.create_app`):

- `MAX_BODY_BYTES`: the largest request body any route reads (Litestar answers 413 past it,
  in the API's error envelope, before the rest is read).
- `check_path_params`: a guard on every route: a name in the path (run id, task id, DAG id,
  a static file) that holds `/`, `\\`, `..`, a control character or too many characters is a
  400 naming the parameter, before any handler reads it, so such a name never reaches a
  read model, a NATS subject or a file path.
- `security_headers`: a `before_send` hook that adds `SECURITY_HEADERS` (a Content-Security-
  Policy without inline script among them) to every response: pages, API, errors, static files.
"""

from __future__ import annotations

import unicodedata
from pathlib import PurePath
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import ClientException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Message, Scope

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAX_BODY_BYTES",
    "MAX_NAME_CHARS",
    "SECURITY_HEADERS",
    "PathParameterInvalid",
    "check_path_params",
    "name_problem",
    "security_headers",
]

MAX_BODY_BYTES: Final = 1 << 20  # 1 MiB: a schedule, cancel or rerun body is a few hundred bytes
MAX_NAME_CHARS: Final = 200  # ids are at most 128 (core.ids, core.definitions); 200 is generous

# Scripts come only from /static (no inline <script> code, no event handler attributes: the
# run's JSON is a <script type="application/json"> block, data the browser does not execute).
# Styles: stylesheets only from /static, but `style-src-attr 'unsafe-inline'` lets the server-
# rendered bar geometry through (style="left: 12.5%; width: 3%" on the timeline, progress bars,
# the dashboard's per-minute bars): numbers the server computes, in attributes that cannot run
# script; <style> elements stay blocked (Cytoscape's own is pre-empted by run.html).
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)

SECURITY_HEADERS: Final = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
)


async def security_headers(message: Message, scope: Scope) -> None:
    """`before_send` hook: the security headers on every HTTP response the app sends."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        for name, value in SECURITY_HEADERS:
            headers[name] = value


class PathParameterInvalid(ClientException):
    """A name in the request path that no id can be (400, naming the parameter)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(detail=f"{field}: {message}")
        self.field = field


def name_problem(value: str, *, path: bool = False) -> str | None:
    """Why `value` cannot be a name in a URL (None: it can). `path`: a relative file path
    (a static file), where `/` separates segments but no segment may be `..`."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_NAME_CHARS:
        return f"longer than {MAX_NAME_CHARS} characters"
    for char in value:
        if unicodedata.category(char).startswith("C"):  # control, format, surrogate, unassigned
            return f"contains the control character U+{ord(char):04X}"
    if "\\" in value:
        return "contains '\\'"
    if path:
        if any(part == ".." for part in value.split("/")):
            return "contains a '..' segment"
    elif "/" in value:
        return "contains '/'"
    elif ".." in value:
        return "contains '..'"
    return None


def check_path_params(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard (every route): each path parameter is a plausible name, else 400."""
    for field, value in connection.path_params.items():
        if isinstance(value, PurePath) or _is_path(handler, field):  # the static files'
            problem = name_problem(str(value).lstrip("/"), path=True)
        elif isinstance(value, str):
            problem = name_problem(value)
        else:  # an int or the like: Litestar parsed it already
            continue
        if problem is not None:
            raise PathParameterInvalid(field, problem)


def _is_path(handler: BaseRouteHandler, field: str) -> bool:
    """Whether `field` is a `{field:path}` parameter of `handler` (slashes allowed)."""
    return any(f"{{{field}:path}}" in path for path in getattr(handler, "paths", ()))

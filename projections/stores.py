"""Opening a read-model store from its URL: what `--read-model URL` and `replay --into URL` take.

    memory://                   a store of this process, empty, private to this call
    memory://NAME               the store NAME of this process (opened again: the same rows)
    redis://host:port/db?prefix=P   (also rediss://, unix:///path.sock?db=N&prefix=P)
    postgresql://user@host:port/db?schema=S   (also postgres://; schema defaults to public)

The Redis and Postgres adapters are imported only when their URL is opened, so a process that
uses memory never loads a database client.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from core.errors import Invalid
from projections.memory import MemoryReadModel, MemoryTables
from projections.protocol import ReadModel

__all__ = ["open_read_model"]

SCHEMES = "memory://, redis://host:port/db?prefix=P or postgresql://user@host:port/db"

_named: dict[str, MemoryTables] = {}  # memory://NAME -> its tables, for this process's life


def open_read_model(url: str) -> ReadModel:
    """A store for `url` (nothing connects before its first call). Invalid, with one line,
    for a URL of no known store or a store whose adapter is not available."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        if scheme == "memory":
            return _memory(parts.netloc + parts.path)
        if scheme in ("redis", "rediss", "unix"):
            redis: ReadModel = _adapter("redis", "Redis").RedisReadModel.from_url(url)
            return redis
        if scheme in ("postgresql", "postgres"):
            query = parse_qsl(parts.query, keep_blank_values=True)
            schema = next((v for k, v in query if k == "schema"), "public")
            rest = urlunsplit(
                parts._replace(query=urlencode([q for q in query if q[0] != "schema"]))
            )
            adapter = _adapter("postgres", "Postgres")
            postgres: ReadModel = adapter.PostgresReadModel.from_url(rest, schema=schema)
            return postgres
    except ValueError as exc:
        raise Invalid(f"read model {_safe(url)}: {exc}") from None
    raise Invalid(f"not a read-model URL: {_safe(url)} (use {SCHEMES})")


def _memory(name: str) -> MemoryReadModel:
    name = name.strip("/")
    if not name:
        return MemoryReadModel()
    return MemoryReadModel(_named.setdefault(name, MemoryTables()))


def _adapter(module: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(f"projections.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"projections.{module}":
            raise Invalid(f"the {what} read model is not available in this version") from None
        raise Invalid(
            f"the {what} read model needs the Python package {exc.name!r}, which is not installed"
        ) from None


def _safe(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))

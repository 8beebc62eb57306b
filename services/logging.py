"""Logging for every process: structlog on top of stdlib `logging`.

Everything (our structlog loggers, nats-py, uvicorn, asyncpg) goes through one stdlib handler and
one `ProcessorFormatter`, so services print one JSON object per line and `cyclonetix dev` prints
readable console lines. Bind run/task ids with `structlog.contextvars.bound_contextvars(...)`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

if TYPE_CHECKING:
    from collections.abc import MutableMapping

__all__ = ["Throttle", "ThrottleFilter", "configure_logging", "logs_json"]

_json_logs = False  # what configure_logging was last told (child processes log the same way)


def logs_json() -> bool:
    """Whether this process logs JSON lines (configure_logging(json=True))."""
    return _json_logs


class Throttle:
    """Lets a repeated message through at most once per `interval` per key.

    `check(key)` returns None when the message should be dropped, else the number of copies
    dropped since the last one that went through (to log as `suppressed=`).
    """

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def check(self, key: str) -> int | None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._dropped.pop(key, 0)

    def reset(self, key: str | None = None) -> None:
        """Forget history (e.g. after a reconnect, so the next outage is reported at once)."""
        if key is None:
            self._last.clear()
            self._dropped.clear()
        else:
            self._last.pop(key, None)
            self._dropped.pop(key, None)


class ThrottleFilter(logging.Filter):
    """Rate-limits identical stdlib records from loggers under `prefix` (others pass)."""

    def __init__(self, prefix: str, interval: float = 30.0) -> None:
        super().__init__()
        self.prefix = prefix
        self._throttle = Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == self.prefix or record.name.startswith(self.prefix + ".")):
            return True
        dropped = self._throttle.check(f"{record.name}:{record.msg}")
        if dropped is None:
            return False
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar suppressed)"
        return True


def _static_fields(**fields: Any) -> structlog.types.Processor:
    def add(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
        return event_dict

    return add


def configure_logging(
    *, json: bool, level: str = "INFO", role: str | None = None, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to one handler (JSON lines or console), idempotently.

    Logs go to stderr by default so commands that print results on stdout stay pipeable.
    """
    global _json_logs
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    _json_logs = json

    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if role is not None:
        shared.append(_static_fields(role=role))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Module-level loggers exist before this runs; caching would pin the old config.
        cache_logger_on_first_use=False,
    )

    out = stream if stream is not None else sys.stderr
    renderer: list[structlog.types.Processor]
    if json:
        renderer = [
            # show_locals=False: locals in tracebacks can hold secrets (tokens, env).
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
    else:
        # No colour codes when piped (cyclonetix dev prefixes and relays role output).
        renderer = [structlog.dev.ConsoleRenderer(colors=out.isatty())]

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    # nats-py logs every failed reconnect attempt; keep the first and a reminder every 30 s.
    # (Our own connection callbacks in services/nats throttle with `Throttle` directly.)
    handler.addFilter(ThrottleFilter("nats", 30.0))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)

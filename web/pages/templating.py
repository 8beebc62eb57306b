"""How the pages are rendered: one Jinja environment over `web/templates` (autoescaping on),
the filters the templates use, and the static files router for `web/static`.

The pages render with this environment themselves (`render`), so the router works in any app
that mounts it, whatever template config that app has; `template_config()` hands the same
environment to an app that wants Litestar's `Template` responses too.
"""

from __future__ import annotations

import datetime as dt
import functools
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import jinja2
import msgspec
from litestar import Response, Router
from litestar.enums import MediaType
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from markupsafe import Markup

from core.run import RunStatus, TaskStatus

__all__ = [
    "SIGNED_IN",
    "STATIC",
    "TEMPLATES",
    "environment",
    "render",
    "static_router",
    "template_config",
]

HERE = Path(__file__).resolve().parent.parent  # web/
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# Statuses whose tasks will not change any more: a run's progress counts these.
DONE_TASK_STATUSES = (
    TaskStatus.SUCCEEDED,
    TaskStatus.FAILED,
    TaskStatus.SKIPPED,
    TaskStatus.CANCELLED,
)
RUN_STATUSES = tuple(RunStatus)

# Who is logged in for the request being answered: (name, role) of a login session, set by
# web/auth.py's guard (None: anonymous, an open UI, or an API token). The header of every page
# shows it with a "Log out" button (`signed_in()` in templates).
SIGNED_IN: ContextVar[tuple[str, str] | None] = ContextVar("cx_signed_in", default=None)


@functools.cache
def environment() -> jinja2.Environment:
    """The one environment (built on first use). Autoescaping is on for every template: task
    names, parameters and log lines are data, never markup."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the test, not the page
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=ago, duration=duration, when=when, progress=progress)
    env.globals.update(run_statuses=RUN_STATUSES, signed_in=SIGNED_IN.get)
    return env


# Inside <script type="application/json"> nothing is unescaped by the browser, so the JSON
# itself must not contain what could end the element or start markup: the characters below as
# JSON escapes (what Jinja's `tojson` does too, but msgspec encodes a 2,000-task run ~10x faster).
_SCRIPT_SAFE = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "'": "\\u0027",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def script_json(value: Any) -> Markup:
    """`value` (msgspec structs included) as JSON safe to place inside a <script> element."""
    return Markup(msgspec.json.encode(value).decode().translate(_SCRIPT_SAFE))  # noqa: S704


def render(name: str, status_code: int = 200, **context: Any) -> Response[str]:
    """The page `name` rendered with `context`, as an HTML response."""
    html = environment().get_template(name).render(**context)
    return Response(content=html, media_type=MediaType.HTML, status_code=status_code)


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """A TemplateConfig over the pages' environment, for `Litestar(template_config=...)`."""
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment()))


def static_router() -> Router:
    """`/static/...` from `web/static` (absolute, so the working directory does not matter)."""
    return create_static_files_router(
        path="/static", directories=[STATIC], name="static", opt={"auth": "public"}
    )


# -- filters ------------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """`12 s ago`, `3 min ago`, `2 h ago`, `4 d ago`; `-` for no time."""
    if when is None:
        return "-"
    seconds = max(0.0, ((now or _now()) - when).total_seconds())
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} d ago"


def duration(ms: float | None) -> str:
    """`850 ms`, `12.3 s`, `4 min 05 s`; `-` for none."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def when(moment: dt.datetime | None) -> str:
    """A timestamp in UTC to the second, `-` for none."""
    if moment is None:
        return "-"
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def progress(counts: dict[TaskStatus, int], total: int) -> int:
    """Percent of a run's tasks that are done (whatever their outcome)."""
    if total <= 0:
        return 0
    done = sum(counts.get(status, 0) for status in DONE_TASK_STATUSES)
    return min(100, round(100 * done / total))

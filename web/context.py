"""What every handler of the web process is given: the read model it reads, the backplane it
writes through (the event log, logs, agents, queues), and the live feed of run changes.

Kept apart from the app factory so that the JSON API (`web/api`) and the pages (`web/pages`)
depend on this small contract only, not on each other. The app factory puts one `UiContext` in
`app.state.ui`; handlers reach it through the `ui` dependency (`provide_ui`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Imported at run time, not under TYPE_CHECKING: Litestar hands the `ui` dependency to msgspec,
# which reads these annotations when a request is served.
from litestar.datastructures import State

from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from projections.protocol import ReadModel
from services.ports import Backplane

__all__ = ["UiContext", "provide_ui"]


@dataclass
class UiContext:
    read_model: ReadModel  # queried by pages and the API; written only by a projector
    backplane: Backplane  # every write (schedule, cancel, rerun) goes through the event log
    nats_url: str = ""  # as shown (a password in it masked)
    env_policy: EnvPolicy = DEFAULT_ENV_POLICY  # what no parameter of a run scheduled here may set
    extras: dict[str, Any] = field(default_factory=dict)  # the live feed, metrics (web/app.py)


def provide_ui(state: State) -> UiContext:
    """Litestar dependency: `def handler(ui: UiContext)`."""
    ui: UiContext = state.ui
    return ui

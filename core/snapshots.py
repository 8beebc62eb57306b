"""The stored snapshot types: what the log records about each task of a run.

The log outlives the code that wrote it (DESIGN §2), so a stored type is the opposite of an input
type (`core.definitions`, `core.evaluation`):

- it accepts fields it does not know: an older reader skips whatever a newer writer added, at
  every nesting level (no `forbid_unknown_fields`);
- it records every value explicitly (no `omit_defaults`): a default changed later must not change
  how an old run replays;
- it never contains an input type. Definitions are mapped to these types in one place, when a
  graph is assembled (`core.graph._node`).

The same rules hold for every event (`core.events`), the work message (`Dispatch`) and the agent
record (`core.agents`); `tests/unit/core/test_event_golden.py` checks them on every stored struct.

Rules for evolving them: a new field gets a default (what its absence means in documents written
before it existed); field types never change; defaults never change. The defaults below are also
what documents written before every value was recorded meant by an absent field (the writer then
omitted defaults), so they are frozen: do not change them when an input default changes.
"""

from __future__ import annotations

import msgspec

# gc=False: these hold only strings, numbers and containers of them (no cycles can go through
# them), so the garbage collector need not track the thousands a large log holds.


class RetrySpec(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """How a task's failed attempts are retried, as recorded in the run's snapshot."""

    count: int = 0  # retries after the first attempt
    delay_seconds: float = 5.0  # before the first retry
    backoff: float = 2.0  # each further delay is this many times the previous one
    max_delay_seconds: float = 300.0  # cap on any delay

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (1 = the first attempt, 2 = the first retry).

        `delay_seconds * backoff ** (attempt - 2)`, capped at `max_delay_seconds`.
        """
        if attempt <= 1:
            return 0.0
        return float(
            min(self.max_delay_seconds, self.delay_seconds * self.backoff ** (attempt - 2))
        )


NO_RETRY = RetrySpec()


class TaskNode(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One task of a run, fully resolved: the snapshot a run uses instead of definitions.

    `id` is the node key inside the run: the task id, or `task_id:parameter_set` when the same
    task runs with a parameter set (the same task with two sets is two nodes).
    """

    id: str
    task_id: str
    command: str
    name: str = ""
    queue: str = "default"
    dependencies: tuple[str, ...] = ()  # node ids, each once
    parameters: dict[str, str] = {}  # resolved and stringified; exported as environment
    retries: RetrySpec = NO_RETRY
    timeout_seconds: float | None = None
    evaluation_point: bool = False

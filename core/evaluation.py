"""The decision file an evaluation point writes to `$CYCLONETIX_EVAL_RESULT`: a strict input type.

A command writes JSON such as `{"next_tasks": ["deploy"], "parameters": {"deploy": {"K": "v"}},
"context_updates": {"MODEL": "m1"}}`. Like definitions, the file is checked strictly: a key this
version does not know (`next_task`) is an error naming it, never a silent "no decision". The
parsed decision becomes the stored `core.events.EvaluationResult` recorded in TaskSucceeded.
"""

from __future__ import annotations

import re

import msgspec

from core.definitions import suggest
from core.errors import Invalid
from core.events import EvaluationResult


class EvaluationDecision(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an evaluation point decided; every key is optional, unknown keys are errors."""

    next_tasks: tuple[str, ...] = ()  # task ids (or `task:set`) to add to the run
    parameters: dict[str, dict[str, str]] = {}  # task id or node id -> parameter overrides
    context_updates: dict[str, str] = {}  # run variables set for the tasks that follow
    metadata: dict[str, object] = {}  # free-form, recorded as given

    def result(self) -> EvaluationResult:
        """The stored form, recorded in the evaluation point's TaskSucceeded."""
        return EvaluationResult(
            next_tasks=self.next_tasks,
            parameters=self.parameters,
            context_updates=self.context_updates,
            metadata=self.metadata,
        )


FIELDS = EvaluationDecision.__struct_fields__
_decoder = msgspec.json.Decoder(EvaluationDecision)
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`(?: - at `\$`)?$")


def parse_decision(data: bytes) -> EvaluationResult:
    """Parse a decision file's JSON; Invalid with a one-line message naming the bad key."""
    try:
        return _decoder.decode(data).result()
    except msgspec.ValidationError as exc:
        text = str(exc)
        unknown = _UNKNOWN_RE.match(text)
        if unknown:
            key = unknown["key"]
            hint = suggest(key, FIELDS) or f" (allowed: {', '.join(FIELDS)})"
            raise Invalid(f"unknown key {key!r}{hint}") from None
        raise Invalid(text) from None
    except msgspec.DecodeError as exc:
        raise Invalid(f"not JSON: {exc}") from None

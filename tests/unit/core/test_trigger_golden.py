"""Golden documents of the trigger log's stored types (core/triggers.py), as
tests/unit/core/test_event_golden.py keeps them for events: each decodes to the expected struct,
encodes back to the same document with every field, and still decodes with an unknown field
added at any level. A change that breaks one breaks the stored log: add a document instead."""

from __future__ import annotations

import datetime as dt
import json

import msgspec
import pytest

from core.triggers import (
    AnyOutcome,
    TriggerAccepted,
    TriggerRejected,
    decode_outcome,
    encode_outcome,
)
from tests.unit.core.test_event_golden import UNKNOWN_KEY, UNKNOWN_VALUE, injected, struct_positions

T0 = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 12, 1, 3, 0, 0, 250000, tzinfo=dt.UTC)

GOLDEN: dict[str, str] = {
    "TriggerAccepted": (
        '{"type":"TriggerAccepted","ts":"2026-12-01T03:00:00.250000Z",'
        '"subject":"cx.trigger.dag.etl","seq":7,"received":"2026-12-01T03:00:00Z",'
        '"digest":"0123456789abcdef0123456789abcdef","requested_by":"ci",'
        '"run_id":"etl-01","status":"scheduled","kind":"dag","target":"etl",'
        '"idempotency_key":"landing-2026-12-01"}'
    ),
    "TriggerRejected": (
        '{"type":"TriggerRejected","ts":"2026-12-01T03:00:00.250000Z",'
        '"subject":"cx.trigger.task.nope","seq":8,"received":"2026-12-01T03:00:00Z",'
        '"digest":"fedcba9876543210fedcba9876543210","requested_by":null,'
        '"reason":"unknown task \'nope\'","head":"{}"}'
    ),
}

EXPECTED: dict[str, AnyOutcome] = {
    "TriggerAccepted": TriggerAccepted(
        ts=T1,
        subject="cx.trigger.dag.etl",
        seq=7,
        received=T0,
        digest="0123456789abcdef0123456789abcdef",
        requested_by="ci",
        run_id="etl-01",
        status="scheduled",
        kind="dag",
        target="etl",
        idempotency_key="landing-2026-12-01",
    ),
    "TriggerRejected": TriggerRejected(
        ts=T1,
        subject="cx.trigger.task.nope",
        seq=8,
        received=T0,
        digest="fedcba9876543210fedcba9876543210",
        reason="unknown task 'nope'",
        head="{}",
    ),
}


def test_every_outcome_type_has_a_golden_document() -> None:
    assert set(GOLDEN) == set(EXPECTED) == {"TriggerAccepted", "TriggerRejected"}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_document_decodes_and_encodes_back_with_every_field(name: str) -> None:
    assert decode_outcome(GOLDEN[name].encode()) == EXPECTED[name]
    encoded = json.loads(encode_outcome(EXPECTED[name]))
    assert encoded == json.loads(GOLDEN[name])
    assert list(encoded) == list(json.loads(GOLDEN[name]))


@pytest.mark.parametrize("name", list(GOLDEN))
def test_an_unknown_field_is_skipped_everywhere(name: str) -> None:
    document = json.loads(GOLDEN[name])
    info = msgspec.inspect.type_info(AnyOutcome)
    paths = [path for path, _ in struct_positions(document, info)]
    assert paths == [()]
    for path in paths:
        assert decode_outcome(json.dumps(injected(document, path)).encode()) == EXPECTED[name]
    document[UNKNOWN_KEY] = UNKNOWN_VALUE
    assert decode_outcome(json.dumps(document).encode()) == EXPECTED[name]


@pytest.mark.parametrize("cls", [TriggerAccepted, TriggerRejected])
def test_outcomes_are_lenient_and_record_every_value(cls: type[msgspec.Struct]) -> None:
    config = cls.__struct_config__
    assert not config.forbid_unknown_fields and not config.omit_defaults

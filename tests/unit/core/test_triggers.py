"""The trigger message parser (core/triggers.py): each class of bad message rejected with one
clear line, good ones turned into requests, and — fuzzed — any bytes and any JSON give a request
or a rejection, never an exception."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.triggers import (
    Rejection,
    TriggerRequest,
    derived_run_id,
    digest,
    head,
    parse_trigger,
)

LIMIT = 64 * 1024


def parse(body: Any, *, kind: str = "dag", target: str = "etl", limit: int = LIMIT) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_trigger(kind, target, data, limit)  # type: ignore[arg-type]


def test_a_full_message_becomes_a_request() -> None:
    got = parse(
        {
            "context": "prod",
            "params": {"REGION": "eu", "load.BATCH": 500, "DRY": False, "RATE": 0.5},
            "run_id": "nightly-1",
            "idempotency_key": "landing/2026-12-01",
            "requested_by": "ci",
        }
    )
    assert got == TriggerRequest(
        kind="dag",
        target="etl",
        context="prod",
        params=("REGION=eu", "load.BATCH=500", "DRY=false", "RATE=0.5"),
        run_id="nightly-1",
        idempotency_key="landing/2026-12-01",
        requested_by="ci",
    )


@pytest.mark.parametrize("body", [b"", b"  \n", b"{}", b'{"params": null}'])
def test_an_empty_message_asks_for_the_defaults(body: bytes) -> None:
    assert parse(body) == TriggerRequest(kind="dag", target="etl")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{nope", "not JSON: "),
        (b"\xff\xfe", "not JSON: "),
        (b"[1]", "not a JSON object: got an array"),
        (b'"go"', "not a JSON object: got a string"),
        (b"42", "not a JSON object: got a number"),
        ({"parms": {}}, "unknown field 'parms' (allowed: context, params, run_id, "),
        ({"context": 1}, "context: expected a string, got a number"),
        ({"run_id": ["a"]}, "run_id: expected a string, got an array"),
        ({"idempotency_key": ""}, "idempotency_key: must not be empty"),
        ({"idempotency_key": "k" * 257}, "idempotency_key: longer than 256 characters"),
        ({"params": [1]}, "params: expected an object of KEY or TASK.KEY -> value, got an array"),
        ({"params": {"A": None}}, "params.A: expected a string, number or boolean, got null"),
        (
            {"params": {"A": {"b": 1}}},
            "params.A: expected a string, number or boolean, got an object",
        ),
        ({"params": {"A": [1]}}, "params.A: expected a string, number or boolean, got an array"),
        ({"params": {"a b": 1}}, "params: invalid key 'a b': expected KEY or TASK.KEY"),
        ({"params": {"t..K": 1}}, "params: invalid key 't..K'"),
        ({"run_id": "-x"}, "run_id: invalid run id '-x'"),
    ],
)
def test_each_bad_message_is_rejected_with_its_reason(body: Any, reason: str) -> None:
    got = parse(body)
    assert isinstance(got, Rejection)
    assert got.reason.startswith(reason), got.reason
    assert "\n" not in got.reason


def test_a_message_over_the_limit_is_rejected_before_it_is_read() -> None:
    got = parse(b"{" + b" " * 100 + b"}", limit=100)
    assert got == Rejection("message is 102 bytes, more than the limit of 100")
    assert isinstance(parse(b"{" + b" " * 98 + b"}", limit=100), TriggerRequest)


def test_a_derived_run_id_is_the_same_for_the_same_stored_message_only() -> None:
    t = dt.datetime(2026, 12, 1, 3, 0, 0, 123456, tzinfo=dt.UTC)
    first = derived_run_id("etl", 7, t)
    assert first == derived_run_id("etl", 7, t)
    assert first.startswith("etl-")
    assert first != derived_run_id("etl", 8, t)
    assert first != derived_run_id("etl", 7, t + dt.timedelta(microseconds=1))


def test_the_digest_tells_subject_and_bytes_apart() -> None:
    assert digest("cx.trigger.dag.a", b"{}") == digest("cx.trigger.dag.a", b"{}")
    assert digest("cx.trigger.dag.a", b"{}") != digest("cx.trigger.dag.b", b"{}")
    assert digest("cx.trigger.dag.a", b"{}") != digest("cx.trigger.dag.a", b"{ }")


def test_the_head_of_a_message_is_text_and_bounded() -> None:
    assert head(b"\xff{") == "\ufffd{"
    assert head(b"x" * 500) == "x" * 200 + "…"


# --- fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
fields = st.sampled_from(["context", "params", "run_id", "idempotency_key", "requested_by"])
near_messages = st.dictionaries(
    fields | st.text(max_size=8),
    json_values | st.dictionaries(st.text(max_size=12), json_values, max_size=4),
    max_size=5,
)


def _check(got: object) -> None:
    assert isinstance(got, TriggerRequest | Rejection)
    if isinstance(got, Rejection):
        assert got.reason and "\n" not in got.reason and len(got.reason) < 600


@given(st.binary(max_size=300), st.sampled_from(["dag", "outcome"]))
def test_any_bytes_give_a_request_or_a_clear_rejection(data: bytes, kind: str) -> None:
    _check(parse_trigger(kind, "t", data, 200))  # type: ignore[arg-type]


@given(json_values)
def test_any_json_gives_a_request_or_a_clear_rejection(value: object) -> None:
    _check(parse(json.dumps(value).encode()))


@settings(max_examples=max(10, settings().max_examples // 3))  # (large nested documents)
@given(near_messages)
def test_any_object_of_roughly_the_right_shape_gives_a_request_or_a_rejection(
    doc: dict[str, Any],
) -> None:
    got = parse(json.dumps(doc).encode())
    _check(got)
    if isinstance(got, TriggerRequest):
        assert set(doc) <= {"context", "params", "run_id", "idempotency_key", "requested_by"}
        assert len(got.params) == len(doc.get("params") or {})

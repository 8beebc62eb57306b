"""Subject triggers: the message another system publishes to start a run, and what became of it.

A trigger is JSON published to `cx.trigger.task.<task_id>` (an outcome) or
`cx.trigger.dag.<dag_id>`. Its body is an input type (`TriggerMessage`: strict, every unknown
key an error); `parse_trigger` turns the raw bytes into a `TriggerRequest` (the shape of
`services.commands.ScheduleRequest`) or a `Rejection` with one line saying what was wrong. Only
what the bytes alone can tell is checked here: an unknown task, DAG or context, and a parameter
for a task outside the run, are found when the run is planned (`core.scheduling.plan_run`),
exactly as for the CLI.

What the handler did with each message is stored as a `TriggerOutcome` (`TriggerAccepted` or
`TriggerRejected`) in the trigger log, not in the event log: a trigger is not part of a run
(a rejected one has no run at all). These are stored types, lenient and with every value
written, like the events (`tests/unit/core/test_trigger_golden.py` keeps their documents).

Pure: no I/O, no clock, no randomness (the caller passes the message's stream position and
time, from which a deterministic run id is derived, so a redelivered message plans the same run).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Final, Literal

import msgspec

from core.definitions import ENV_NAME_PATTERN, valid_dependency
from core.env_policy import value_problem
from core.ids import check_run_id, new_run_id

Kind = Literal["outcome", "dag"]
ParamValue = str | int | float | bool

DEFAULT_MAX_BYTES: Final = 64 * 1024
MAX_KEY_CHARS: Final = 256  # idempotency keys and requested_by: ids, not documents
HEAD_BYTES: Final = 200  # how much of a rejected message is kept in its record

_FIELDS: Final = ("context", "params", "run_id", "idempotency_key", "requested_by")
_KEY_RE = re.compile(ENV_NAME_PATTERN)


class TriggerMessage(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of a trigger message (input type: strict). Every field is optional."""

    context: str | None = None  # a context id; a DAG's own context when not given
    params: dict[str, ParamValue] = {}  # `KEY` or `TASK.KEY` -> value
    run_id: str | None = None  # chosen by the caller (else derived from the message)
    idempotency_key: str | None = None  # same key, same target, within the window: one run
    requested_by: str | None = None  # who asked (shown by `cyclonetix triggers`)


class TriggerRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A valid trigger, shaped like `services.commands.ScheduleRequest` (trigger="subject")."""

    kind: Kind
    target: str
    context: str | None = None
    params: tuple[str, ...] = ()  # `KEY=VALUE` / `TASK.KEY=VALUE`, as the CLI's --param
    run_id: str | None = None
    idempotency_key: str | None = None
    requested_by: str | None = None


class Rejection(msgspec.Struct, frozen=True):
    """Why a trigger is refused: one line."""

    reason: str


# --- the outcome records (stored types) ---------------------------------------------------------


class TriggerOutcome(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    """What the handler did with one stored trigger message.

    `seq` and `received` are the message's position and time in CX_TRIGGERS; `digest` pairs
    the record with a waiting request (`digest`) so that its requester gets the answer.
    """

    ts: dt.datetime  # when it was handled
    subject: str
    seq: int
    received: dt.datetime
    digest: str
    requested_by: str | None = None


class TriggerAccepted(TriggerOutcome, frozen=True, kw_only=True):
    run_id: str
    status: str  # "scheduled" (this message started it) or "existing" (an earlier one did)
    kind: str
    target: str
    idempotency_key: str | None = None


class TriggerRejected(TriggerOutcome, frozen=True, kw_only=True):
    reason: str
    head: str = ""  # the message's first bytes, as text (undecodable bytes replaced)


AnyOutcome = TriggerAccepted | TriggerRejected

_encoder = msgspec.json.Encoder()
_outcome_decoder: msgspec.json.Decoder[AnyOutcome] = msgspec.json.Decoder(AnyOutcome)


def encode_outcome(outcome: AnyOutcome) -> bytes:
    return _encoder.encode(outcome)


def decode_outcome(data: bytes) -> AnyOutcome:
    return _outcome_decoder.decode(data)


def outcome_msg_id(outcome: AnyOutcome) -> str:
    """One record per stored message: a retried or redelivered record is a no-op."""
    return f"trigger/{outcome.seq}/{int(outcome.received.timestamp() * 1_000_000)}"


def reply_body(outcome: AnyOutcome) -> bytes:
    """The answer a requester gets: `{"run_id", "status"}` or `{"error"}`."""
    if isinstance(outcome, TriggerAccepted):
        return _encoder.encode({"run_id": outcome.run_id, "status": outcome.status})
    return _encoder.encode({"error": outcome.reason})


# --- parsing -------------------------------------------------------------------------------------


def parse_trigger(
    kind: Kind, target: str, data: bytes, max_bytes: int
) -> TriggerRequest | Rejection:
    """A trigger message's bytes as a request, or the one reason they are not one.

    Never raises: anything the bytes hold is either a request or a rejection.
    """
    if len(data) > max_bytes:
        return Rejection(f"message is {len(data)} bytes, more than the limit of {max_bytes}")
    if not data.strip():
        return TriggerRequest(kind=kind, target=target)  # an empty body: all defaults
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        return Rejection(f"not JSON: {_first_line(str(exc))}")
    if not isinstance(doc, dict):
        return Rejection(f"not a JSON object: got {_json_type(doc)}")
    for key in doc:
        if key not in _FIELDS:
            return Rejection(f"unknown field {key!r} (allowed: {', '.join(_FIELDS)})")
    for name in ("context", "run_id", "idempotency_key", "requested_by"):
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            return Rejection(f"{name}: expected a string, got {_json_type(value)}")
        if isinstance(value, str) and not value:
            return Rejection(f"{name}: must not be empty")
        if name in ("idempotency_key", "requested_by") and value and len(value) > MAX_KEY_CHARS:
            return Rejection(f"{name}: longer than {MAX_KEY_CHARS} characters")
    params = doc.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return Rejection(
            f"params: expected an object of KEY or TASK.KEY -> value, got {_json_type(params)}"
        )
    texts: list[str] = []
    for key, value in params.items():
        problem = _param_problem(key, value)
        if problem:
            return Rejection(problem)
        texts.append(f"{key}={_text(value)}")
    try:
        # (null is "not given", for params too)
        message = msgspec.convert({k: v for k, v in doc.items() if v is not None}, TriggerMessage)
    except msgspec.ValidationError as exc:  # pragma: no cover - every field is checked above
        return Rejection(_first_line(str(exc)))
    if message.run_id is not None:
        try:
            check_run_id(message.run_id)
        except ValueError as exc:
            return Rejection(f"run_id: {exc}")
    return TriggerRequest(
        kind=kind,
        target=target,
        context=message.context,
        params=tuple(texts),
        run_id=message.run_id,
        idempotency_key=message.idempotency_key,
        requested_by=message.requested_by,
    )


def _param_problem(key: str, value: object) -> str | None:
    task, dot, name = key.rpartition(".")
    if not _KEY_RE.fullmatch(name) or (dot and not valid_dependency(task)):
        return f"params: invalid key {key!r}: expected KEY or TASK.KEY (KEY: letters, digits, _)"
    if isinstance(value, str):
        problem = value_problem(value)
        return f"params.{key}: {problem}" if problem else None
    if isinstance(value, bool | int):
        return None
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return None
    return f"params.{key}: expected a string, number or boolean, got {_json_type(value)}"


def _text(value: ParamValue) -> str:
    """A parameter as the command sees it (as `core.definitions.env_value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "cannot decode"
    return line[:200]


# --- identities ----------------------------------------------------------------------------------


def digest(subject: str, data: bytes) -> str:
    """What a request and the stored copy of it have in common (JetStream keeps no reply
    subject), used to hand the stored copy's outcome to the waiting requester."""
    h = hashlib.sha256(subject.encode("utf-8", "replace"))
    h.update(b"\0")
    h.update(data)
    return h.hexdigest()[:32]


def derived_run_id(target: str, seq: int, received: dt.datetime) -> str:
    """The run id of a trigger that names none: derived from the stored message, so a
    redelivery (a crash before the ack, a failover) plans the same run instead of a second
    one. The time keeps ids apart when the stream is recreated and its sequences restart."""
    micros = int(received.timestamp() * 1_000_000)
    entropy = hashlib.sha256(f"{seq}/{micros}/{target}".encode()).digest()
    return new_run_id(target, micros // 1000, entropy)


def head(data: bytes) -> str:
    """The first bytes of a message, as text, for the record of a rejection."""
    text = data[:HEAD_BYTES].decode("utf-8", "replace")
    return text + ("…" if len(data) > HEAD_BYTES else "")

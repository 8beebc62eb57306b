"""Golden documents of every stored type: the log outlives the code that wrote it (DESIGN §2).

Each document below is written out literally, as the code encodes that event today (every field
present). The tests check that the code decodes each to the expected struct, encodes the struct
back to the same document (defaults are recorded, not omitted), still decodes it when a field it
does not know is added at any nesting level (positions found by walking the document along its
type), and decodes documents written before defaults were recorded. A change that breaks one of
these breaks old logs: add a new document instead of editing one.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import typing
from collections.abc import Iterator
from typing import Any

import msgspec
import msgspec.inspect
import pytest

from core.agents import AgentInfo
from core.events import (
    AnyEvent,
    Dispatch,
    EvaluationResult,
    GraphExtended,
    Notification,
    NotificationDelivered,
    NotificationFailed,
    QueuedTask,
    RunCancelled,
    RunCancelRequested,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    decode,
    decode_dispatch,
    each_queued,
    encode,
    encode_dispatch,
)
from core.recovery import StateSnapshot
from core.run import RunState, advance, fold
from core.snapshots import RetrySpec, TaskNode
from tests.unit.core.runkit import started, succeeded

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 1, 1, 0, 0, 5, 250000, tzinfo=dt.UTC)
RUN = "r-0001"

# --- the golden documents ---------------------------------------------------------------------

GOLDEN: dict[str, str] = {
    "RunScheduled": """
        {"type": "RunScheduled", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "kind": "outcome", "target": "train:big", "name": "Train [big]",
         "graph": [
            {"id": "extract", "task_id": "extract", "command": "echo extract", "name": "",
             "queue": "default", "dependencies": [], "parameters": {},
             "retries": {"count": 0, "delay_seconds": 5.0, "backoff": 2.0,
                         "max_delay_seconds": 300.0},
             "timeout_seconds": null, "evaluation_point": false},
            {"id": "train:big", "task_id": "train",
             "command": "python train.py --epochs \\"$EPOCHS\\"", "name": "Train [big]",
             "queue": "gpu", "dependencies": ["extract"],
             "parameters": {"EPOCHS": "3", "SIZE": "big"},
             "retries": {"count": 2, "delay_seconds": 1.5, "backoff": 3.0,
                         "max_delay_seconds": 60.0},
             "timeout_seconds": 30.0, "evaluation_point": true}
         ],
         "context": {"ENV": "prod"}, "context_id": "production",
         "params": {"train.EPOCHS": "3"}, "trigger": "rerun", "idempotency_key": null,
         "rerun_of": "r-0000",
         "notify": [
            {"url": "https://hooks.example.com/cx", "on": ["failed", "cancelled"],
             "secret_env": "CX_HOOK_SECRET"}
         ],
         "requested_by": "token:ci"}
    """,
    "TaskQueued": """
        {"type": "TaskQueued", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "task_id": "extract", "attempt": 1, "queue": "default"}
    """,
    "TasksQueued": """
        {"type": "TasksQueued", "run_id": "r-0001", "ts": "2026-01-01T00:00:05.250000Z",
         "tasks": [
            {"task_id": "extract", "attempt": 1, "queue": "default"},
            {"task_id": "train:big", "attempt": 2, "queue": "gpu"}
         ]}
    """,
    "TaskStarted": """
        {"type": "TaskStarted", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "task_id": "extract", "attempt": 1, "agent_id": "agent-a", "host": "", "pid": 4242,
         "delivery": 1}
    """,
    "TaskSucceeded": """
        {"type": "TaskSucceeded", "run_id": "r-0001", "ts": "2026-01-01T00:00:05.250000Z",
         "task_id": "train:big", "attempt": 1, "agent_id": "agent-a", "exit_code": 0,
         "duration_ms": 5250.5, "spawned_at": "2026-01-01T00:00:00Z",
         "output_tail": "accuracy 0.93\\n",
         "evaluation": {
            "next_tasks": ["deploy"], "parameters": {"deploy": {"TARGET": "canary"}},
            "context_updates": {"MODEL": "m-7"},
            "metadata": {"accuracy": 0.93, "runs": [1, 2], "notes": {"by": "eval"}}}}
    """,
    "TaskFailed": """
        {"type": "TaskFailed", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "task_id": "extract", "attempt": 1, "reason": "exit", "agent_id": "", "exit_code": 2,
         "duration_ms": 0.0, "spawned_at": null, "output_tail": "", "message": ""}
    """,
    "TaskRetryScheduled": """
        {"type": "TaskRetryScheduled", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "task_id": "extract", "attempt": 2, "not_before": "2026-01-01T00:00:05.250000Z",
         "previous_reason": "exit"}
    """,
    "TaskSkipped": """
        {"type": "TaskSkipped", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "task_id": "train:big", "attempt": 0, "reason": "upstream_failed", "upstream": ""}
    """,
    "TaskLost": """
        {"type": "TaskLost", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "task_id": "extract", "attempt": 2, "message": ""}
    """,
    "GraphExtended": """
        {"type": "GraphExtended", "run_id": "r-0001", "ts": "2026-01-01T00:00:05.250000Z",
         "task_id": "train:big", "attempt": 1,
         "nodes": [
            {"id": "deploy", "task_id": "deploy", "command": "deploy.sh", "name": "",
             "queue": "default", "dependencies": ["train:big"],
             "parameters": {"TARGET": "canary"},
             "retries": {"count": 1, "delay_seconds": 5.0, "backoff": 2.0,
                         "max_delay_seconds": 300.0},
             "timeout_seconds": null, "evaluation_point": false}
         ],
         "context_updates": {"MODEL": "m-7"}}
    """,
    "RunCancelRequested": """
        {"type": "RunCancelRequested", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "reason": "user", "by": "cli", "requested_by": "cli:ana"}
    """,
    "TaskCancelled": """
        {"type": "TaskCancelled", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "task_id": "extract", "attempt": 1, "agent_id": ""}
    """,
    "RunSucceeded": """
        {"type": "RunSucceeded", "run_id": "r-0001", "ts": "2026-01-01T00:00:05.250000Z"}
    """,
    "RunFailed": """
        {"type": "RunFailed", "run_id": "r-0001", "ts": "2026-01-01T00:00:05.250000Z",
         "reason": "1 task(s) failed: extract", "failed_tasks": ["extract"]}
    """,
    "RunCancelled": """
        {"type": "RunCancelled", "run_id": "r-0001", "ts": "2026-01-01T00:00:05.250000Z",
         "reason": ""}
    """,
    "NotificationDelivered": """
        {"type": "NotificationDelivered", "run_id": "r-0001", "ts": "2026-01-01T00:00:05.250000Z",
         "notification": 0, "url": "https://hooks.example.com/cx", "outcome": "failed",
         "attempt": 2, "status": 204, "duration_ms": 12.5}
    """,
    "NotificationFailed": """
        {"type": "NotificationFailed", "run_id": "r-0001", "ts": "2026-01-01T00:00:00Z",
         "notification": 0, "url": "https://hooks.example.com/cx", "outcome": "failed",
         "attempt": 1, "status": 500, "duration_ms": 3.0, "error": "HTTP 500",
         "retrying": true, "retry_at": "2026-01-01T00:00:05.250000Z"}
    """,
    "Dispatch": """
        {"run_id": "r-0001", "task_id": "extract", "attempt": 1, "queue": "default",
         "command": "echo extract", "env": {"ENV": "prod", "CYCLONETIX_RUN_ID": "r-0001"},
         "timeout_seconds": null, "evaluation_point": false}
    """,
}

EXPECTED: dict[str, AnyEvent | Dispatch] = {
    "RunScheduled": RunScheduled(
        run_id=RUN,
        ts=T0,
        kind="outcome",
        target="train:big",
        name="Train [big]",
        graph=(
            TaskNode(id="extract", task_id="extract", command="echo extract"),
            TaskNode(
                id="train:big",
                task_id="train",
                command='python train.py --epochs "$EPOCHS"',
                name="Train [big]",
                queue="gpu",
                dependencies=("extract",),
                parameters={"EPOCHS": "3", "SIZE": "big"},
                retries=RetrySpec(count=2, delay_seconds=1.5, backoff=3.0, max_delay_seconds=60.0),
                timeout_seconds=30.0,
                evaluation_point=True,
            ),
        ),
        context={"ENV": "prod"},
        context_id="production",
        params={"train.EPOCHS": "3"},
        trigger="rerun",
        rerun_of="r-0000",
        notify=(
            Notification(
                url="https://hooks.example.com/cx",
                on=("failed", "cancelled"),
                secret_env="CX_HOOK_SECRET",
            ),
        ),
        requested_by="token:ci",
    ),
    "TaskQueued": TaskQueued(run_id=RUN, ts=T0, task_id="extract", attempt=1, queue="default"),
    "TasksQueued": TasksQueued(
        run_id=RUN,
        ts=T1,
        tasks=(
            QueuedTask(task_id="extract", attempt=1, queue="default"),
            QueuedTask(task_id="train:big", attempt=2, queue="gpu"),
        ),
    ),
    "TaskStarted": TaskStarted(
        run_id=RUN, ts=T0, task_id="extract", attempt=1, agent_id="agent-a", pid=4242
    ),
    "TaskSucceeded": TaskSucceeded(
        run_id=RUN,
        ts=T1,
        task_id="train:big",
        attempt=1,
        agent_id="agent-a",
        duration_ms=5250.5,
        spawned_at=T0,
        output_tail="accuracy 0.93\n",
        evaluation=EvaluationResult(
            next_tasks=("deploy",),
            parameters={"deploy": {"TARGET": "canary"}},
            context_updates={"MODEL": "m-7"},
            metadata={"accuracy": 0.93, "runs": [1, 2], "notes": {"by": "eval"}},
        ),
    ),
    "TaskFailed": TaskFailed(run_id=RUN, ts=T0, task_id="extract", attempt=1, exit_code=2),
    "TaskRetryScheduled": TaskRetryScheduled(
        run_id=RUN, ts=T0, task_id="extract", attempt=2, not_before=T1, previous_reason="exit"
    ),
    "TaskSkipped": TaskSkipped(run_id=RUN, ts=T0, task_id="train:big", attempt=0),
    "TaskLost": TaskLost(run_id=RUN, ts=T0, task_id="extract", attempt=2),
    "GraphExtended": GraphExtended(
        run_id=RUN,
        ts=T1,
        task_id="train:big",
        attempt=1,
        nodes=(
            TaskNode(
                id="deploy",
                task_id="deploy",
                command="deploy.sh",
                dependencies=("train:big",),
                parameters={"TARGET": "canary"},
                retries=RetrySpec(count=1),
            ),
        ),
        context_updates={"MODEL": "m-7"},
    ),
    "RunCancelRequested": RunCancelRequested(
        run_id=RUN, ts=T0, reason="user", by="cli", requested_by="cli:ana"
    ),
    "TaskCancelled": TaskCancelled(run_id=RUN, ts=T0, task_id="extract", attempt=1),
    "RunSucceeded": RunSucceeded(run_id=RUN, ts=T1),
    "RunFailed": RunFailed(
        run_id=RUN, ts=T1, reason="1 task(s) failed: extract", failed_tasks=("extract",)
    ),
    "RunCancelled": RunCancelled(run_id=RUN, ts=T1),
    "NotificationDelivered": NotificationDelivered(
        run_id=RUN,
        ts=T1,
        notification=0,
        url="https://hooks.example.com/cx",
        outcome="failed",
        attempt=2,
        status=204,
        duration_ms=12.5,
    ),
    "NotificationFailed": NotificationFailed(
        run_id=RUN,
        ts=T0,
        notification=0,
        url="https://hooks.example.com/cx",
        outcome="failed",
        attempt=1,
        status=500,
        duration_ms=3.0,
        error="HTTP 500",
        retrying=True,
        retry_at=T1,
    ),
    "Dispatch": Dispatch(
        run_id=RUN,
        task_id="extract",
        attempt=1,
        queue="default",
        command="echo extract",
        env={"ENV": "prod", "CYCLONETIX_RUN_ID": RUN},
    ),
}

# Written by the code before stored types recorded every value (TaskNode, its retry policy and
# Dispatch omitted defaults): the log still holds such documents.
LEGACY: dict[str, tuple[str, AnyEvent | Dispatch]] = {
    "RunScheduled": (
        '{"type":"RunScheduled","run_id":"r-0001","ts":"2026-01-01T00:00:00Z","kind":"dag",'
        '"target":"etl","name":"etl","graph":[{"id":"extract","task_id":"extract",'
        '"command":"echo extract"},{"id":"load","task_id":"load","command":"echo load",'
        '"dependencies":["extract"],"retries":{"count":2,"backoff":3.0},"timeout_seconds":10.0}],'
        '"context":{},"context_id":null,"params":{},"trigger":"cli","idempotency_key":null}',
        RunScheduled(
            run_id=RUN,
            ts=T0,
            kind="dag",
            target="etl",
            name="etl",
            graph=(
                TaskNode(
                    id="extract",
                    task_id="extract",
                    command="echo extract",
                    name="",
                    queue="default",
                    dependencies=(),
                    parameters={},
                    retries=RetrySpec(
                        count=0, delay_seconds=5.0, backoff=2.0, max_delay_seconds=300.0
                    ),
                    timeout_seconds=None,
                    evaluation_point=False,
                ),
                TaskNode(
                    id="load",
                    task_id="load",
                    command="echo load",
                    dependencies=("extract",),
                    retries=RetrySpec(
                        count=2, delay_seconds=5.0, backoff=3.0, max_delay_seconds=300.0
                    ),
                    timeout_seconds=10.0,
                ),
            ),
        ),
    ),
    "Dispatch": (
        '{"run_id":"r-0001","task_id":"extract","attempt":1,"queue":"default",'
        '"command":"echo extract"}',
        Dispatch(
            run_id=RUN,
            task_id="extract",
            attempt=1,
            queue="default",
            command="echo extract",
            env={},
            timeout_seconds=None,
            evaluation_point=False,
        ),
    ),
}

UNKNOWN_KEY = "x_added_by_a_newer_writer"
UNKNOWN_VALUE: Any = {"nested": [1, "two", None, {"deeper": True}], "n": 1.5}


def decode_as(name: str, data: str) -> AnyEvent | Dispatch:
    """What a reader of the event stream (or of the work queue, for a Dispatch) does."""
    raw = data.encode()
    return decode_dispatch(raw) if name == "Dispatch" else decode(raw)


def encode_any(value: AnyEvent | Dispatch) -> bytes:
    return encode_dispatch(value) if isinstance(value, Dispatch) else encode(value)


STORED_ROOTS: tuple[Any, ...] = (AnyEvent, Dispatch)


def root_type(name: str) -> Any:
    return Dispatch if name == "Dispatch" else AnyEvent


# --- walking a document along its type -------------------------------------------------------

Path = tuple[str | int, ...]


def _unwrap(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    while isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    return info


def struct_positions(
    value: Any, info: msgspec.inspect.Type, path: Path = ()
) -> Iterator[tuple[Path, type[msgspec.Struct]]]:
    """Every place in a JSON document where an object is a struct (not a mapping of data)."""
    info = _unwrap(info)
    if isinstance(info, msgspec.inspect.UnionType):
        for option in map(_unwrap, info.types):
            if isinstance(option, msgspec.inspect.StructType):
                fits = isinstance(value, dict) and (
                    option.tag is None or value.get(option.tag_field or "") == option.tag
                )
            else:  # a scalar or a container; null never holds a struct
                fits = value is not None and not isinstance(option, msgspec.inspect.NoneType)
            if fits:
                yield from struct_positions(value, option, path)
                return
        return
    if isinstance(info, msgspec.inspect.StructType) and isinstance(value, dict):
        yield path, info.cls
        for f in info.fields:
            if f.encode_name in value:
                yield from struct_positions(value[f.encode_name], f.type, (*path, f.encode_name))
    elif isinstance(info, msgspec.inspect.DictType) and isinstance(value, dict):
        for key, item in value.items():
            yield from struct_positions(item, info.value_type, (*path, key))
    elif isinstance(
        info, msgspec.inspect.ListType | msgspec.inspect.VarTupleType | msgspec.inspect.SetType
    ) and isinstance(value, list):
        for i, item in enumerate(value):
            yield from struct_positions(item, info.item_type, (*path, i))


def stored_struct_types(*roots: Any) -> set[type[msgspec.Struct]]:
    """Every struct type a document of these types can contain, found from the types alone."""
    found: set[type[msgspec.Struct]] = set()
    pending = [msgspec.inspect.type_info(root) for root in roots]
    while pending:
        info = _unwrap(pending.pop())
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in found:
                continue
            found.add(info.cls)
            pending.extend(f.type for f in info.fields)
        elif isinstance(info, msgspec.inspect.UnionType):
            pending.extend(info.types)
        elif isinstance(info, msgspec.inspect.DictType):
            pending.extend((info.key_type, info.value_type))
        elif isinstance(
            info, msgspec.inspect.ListType | msgspec.inspect.VarTupleType | msgspec.inspect.SetType
        ):
            pending.append(info.item_type)
        elif isinstance(info, msgspec.inspect.TupleType):
            pending.extend(info.item_types)
    return found


def injected(document: Any, path: Path) -> Any:
    """A copy of the document with an unknown field added to the object at `path`."""
    out = copy.deepcopy(document)
    target = out
    for step in path:
        target = target[step]
    assert isinstance(target, dict)
    target[UNKNOWN_KEY] = copy.deepcopy(UNKNOWN_VALUE)
    return out


def show(path: Path) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def positions(name: str) -> list[tuple[Path, type[msgspec.Struct]]]:
    return list(
        struct_positions(json.loads(GOLDEN[name]), msgspec.inspect.type_info(root_type(name)))
    )


INJECTIONS = [(name, path) for name in GOLDEN for path, _ in positions(name)]


# --- tests -----------------------------------------------------------------------------------


def test_every_event_type_and_the_dispatch_have_a_golden_document() -> None:
    members: tuple[type, ...] = typing.get_args(AnyEvent)
    event_types = {cls.__name__ for cls in members}
    assert set(GOLDEN) == set(EXPECTED) == {*event_types, "Dispatch"}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_document_decodes_to_the_expected_struct(name: str) -> None:
    assert decode_as(name, GOLDEN[name]) == EXPECTED[name]


@pytest.mark.parametrize("name", list(GOLDEN))
def test_encoding_gives_back_the_golden_document_with_every_field(name: str) -> None:
    encoded = json.loads(encode_any(EXPECTED[name]))
    golden = json.loads(GOLDEN[name])
    assert encoded == golden
    assert list(encoded) == list(golden)  # the same fields, in the same order


@pytest.mark.parametrize(
    ("name", "path"), INJECTIONS, ids=[f"{name}-{show(path)}" for name, path in INJECTIONS]
)
def test_an_unknown_field_is_skipped_at_every_nesting_level(name: str, path: Path) -> None:
    document = injected(json.loads(GOLDEN[name]), path)
    assert decode_as(name, json.dumps(document)) == EXPECTED[name]


@pytest.mark.parametrize("name", list(GOLDEN))
def test_unknown_fields_everywhere_at_once_are_skipped(name: str) -> None:
    document = json.loads(GOLDEN[name])
    for path, _ in positions(name):
        document = injected(document, path)
    assert decode_as(name, json.dumps(document)) == EXPECTED[name]


def test_injection_reaches_every_nesting_level_and_every_stored_struct() -> None:
    reached = {cls for name in GOLDEN for _, cls in positions(name)}
    assert reached == stored_struct_types(*STORED_ROOTS)
    paths = {(name, show(path)) for name, path in INJECTIONS}
    assert {
        ("RunScheduled", "$"),
        ("RunScheduled", "$.graph[1]"),
        ("RunScheduled", "$.graph[1].retries"),
        ("TaskSucceeded", "$.evaluation"),
        ("GraphExtended", "$.nodes[0].retries"),
        ("TasksQueued", "$.tasks[0]"),
        ("TasksQueued", "$.tasks[1]"),
        ("Dispatch", "$"),
    } <= paths
    # Mappings of data are not structs: a key added there would be data, not a field.
    assert not any(p.startswith("$.evaluation.metadata") for _, p in paths)


STORED_STRUCTS = sorted(
    stored_struct_types(*STORED_ROOTS, AgentInfo, StateSnapshot), key=lambda c: c.__name__
)


@pytest.mark.parametrize("cls", STORED_STRUCTS, ids=[c.__name__ for c in STORED_STRUCTS])
def test_every_stored_struct_is_lenient_and_records_every_value(
    cls: type[msgspec.Struct],
) -> None:
    config = cls.__struct_config__
    assert not config.forbid_unknown_fields, f"{cls.__name__} refuses fields it does not know"
    assert not config.omit_defaults, f"{cls.__name__} omits defaults"
    # Input types are strict and may change their defaults: never inside a stored document.
    assert not cls.__module__.startswith(("core.definitions", "core.evaluation")), cls


@pytest.mark.parametrize("name", list(LEGACY))
def test_documents_written_before_defaults_were_recorded_decode_the_same(name: str) -> None:
    text, expected = LEGACY[name]
    assert decode_as(name, text) == expected


def test_a_run_scheduled_written_before_rerun_of_existed_decodes_as_no_rerun() -> None:
    document = json.loads(GOLDEN["RunScheduled"])
    del document["rerun_of"]
    event = decode(json.dumps(document).encode())
    expected = EXPECTED["RunScheduled"]
    assert isinstance(expected, RunScheduled)
    assert event == msgspec.structs.replace(expected, rerun_of=None)


def test_a_run_scheduled_written_before_notify_existed_decodes_as_no_webhooks() -> None:
    document = json.loads(GOLDEN["RunScheduled"])
    del document["notify"]
    event = decode(json.dumps(document).encode())
    expected = EXPECTED["RunScheduled"]
    assert isinstance(expected, RunScheduled)
    assert event == msgspec.structs.replace(expected, notify=())


@pytest.mark.parametrize("name", ["RunScheduled", "RunCancelRequested"])
def test_a_command_written_before_requested_by_existed_decodes_as_nobody(name: str) -> None:
    document = json.loads(GOLDEN[name])
    del document["requested_by"]
    event = decode(json.dumps(document).encode())
    expected = EXPECTED[name]
    assert isinstance(expected, RunScheduled | RunCancelRequested)
    assert event == msgspec.structs.replace(expected, requested_by=None)


def drive_to_the_end(state: RunState, *, fail_first: str = "") -> list[AnyEvent]:
    """Agents run whatever is queued until the run ends; `fail_first` fails its attempt 1."""
    log: list[AnyEvent] = []
    now = T0
    for _ in range(50):
        decisions = advance(state, now)
        log.extend(decisions)
        if state.finished:
            return log
        for queued in (q for decision in decisions for q in each_queued(decision)):
            results: list[AnyEvent] = [started(queued)]
            if queued.task_id == fail_first and queued.attempt == 1:
                results.append(
                    TaskFailed(
                        run_id=queued.run_id, ts=now, task_id=queued.task_id, attempt=1, exit_code=1
                    )
                )
            else:
                results.append(succeeded(queued.run_id, queued.task_id, queued.attempt, ts=now))
            for result in results:
                fold(state, result)
            log.extend(results)
        now += dt.timedelta(seconds=30)
    raise AssertionError("the run did not end")


def test_run_scheduled_with_an_unknown_retry_field_still_runs_to_the_end() -> None:
    """Issue 6 item 1 (a): a newer writer added a field inside a task's retry spec."""
    document = json.loads(GOLDEN["RunScheduled"])
    for node in document["graph"]:
        node["retries"]["jitter_seconds"] = 0.5  # what a newer version might add
        node["evaluation_point"] = False
    document["graph"][0]["retries"]["count"] = 1
    event = decode(json.dumps(document).encode())
    assert isinstance(event, RunScheduled)
    assert event.graph[0].retries == RetrySpec(count=1)
    state = fold(None, event)
    assert state is not None
    log = drive_to_the_end(state, fail_first="extract")
    retry = next(e for e in log if isinstance(e, TaskRetryScheduled))
    assert retry.task_id == "extract" and retry.attempt == 2
    assert retry.not_before - retry.ts == dt.timedelta(seconds=5)  # the recorded delay
    assert isinstance(log[-1], RunSucceeded)
    assert state.tasks["train:big"].status == "succeeded"

"""Snapshots of run states (core.recovery): restoring one and folding the rest of the log gives
exactly what a full replay gives.

Logs come from the simulated world of test_run_properties (retries, evaluation points, cancels,
redeliveries, stale and duplicate results, orchestrator crashes), several runs interleaved at
random and each cut at a random length, so some runs are still open at the end. A snapshot is
taken the way the orchestrator takes one: each open run as of its own position (a run it could
not snapshot cleanly keeps an older copy, or is left out and replayed from its first event), then
encoded, decoded, restored, and the log folded from `replay_from` on, skipping each snapshotted
run's events up to its `last_seq`. States are compared field by field *and in order* (the order
of the work sets is the order of the next decisions).
"""

from __future__ import annotations

import datetime as dt
import random
import zlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import AnyEvent, RunScheduled
from core.recovery import (
    DERIVED_RUN_FIELDS,
    DERIVED_TASK_FIELDS,
    SNAPSHOT_VERSION,
    RunSnapshot,
    StateSnapshot,
    TaskSnapshot,
    UnreadableSnapshot,
    decode_snapshot,
    encode_run,
    encode_snapshot,
    restore,
    restore_run,
    snapshot_run,
)
from core.run import RunState, TaskRun, fold, replay
from tests.unit.core.runkit import T0
from tests.unit.core.test_run_properties import simulate


def ordered(value: Any) -> Any:
    """`value` with every dict turned into its list of items: equality then checks order too."""
    if isinstance(value, dict):
        return [(k, ordered(v)) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [ordered(v) for v in value]
    return value


def one_run(seed: int, size: int, steps: int, run_id: str) -> list[AnyEvent]:
    """A simulated run's history (to its end), under `run_id`."""
    log = simulate(seed, size, 0.2, steps).log
    return [msgspec.structs.replace(e, run_id=run_id) for e in log]


def interleave(rnd: random.Random, logs: list[list[AnyEvent]]) -> list[AnyEvent]:
    """The logs merged at random, each one's own order kept (a stream of concurrent runs)."""
    cursors = [0] * len(logs)
    out: list[AnyEvent] = []
    while True:
        left = [i for i, log in enumerate(logs) if cursors[i] < len(log)]
        if not left:
            return out
        i = rnd.choice(left)
        out.append(logs[i][cursors[i]])
        cursors[i] += 1


def take_snapshot(
    rnd: random.Random, log: list[AnyEvent], cut: int
) -> tuple[bytes, dict[str, int]]:
    """A snapshot after `cut` events of `log`, as the orchestrator writes one (sequences are
    1-based positions in `log`); also each run's first sequence."""
    first: dict[str, int] = {}
    for seq, event in enumerate(log, 1):
        if isinstance(event, RunScheduled):
            first.setdefault(event.run_id, seq)
    at_cut = replay(log[:cut])
    replay_from = cut + 1
    runs: list[bytes] = []
    for run_id, state in at_cut.items():
        if state.finished:
            continue  # the orchestrator forgets a run once its end is folded
        choice = rnd.random()
        if choice < 0.15:  # never snapshotted cleanly: replayed from its first event
            replay_from = min(replay_from, first[run_id])
            continue
        # As of `cut`, or (an older copy kept while the run had own appends in flight) as of
        # an earlier position where the run already existed.
        own_cut = cut if choice < 0.6 else rnd.randint(first[run_id], cut)
        seqs = [s for s, e in enumerate(log[:own_cut], 1) if e.run_id == run_id]
        own = replay(log[:own_cut])[run_id]
        runs.append(encode_run(snapshot_run(own, first_seq=seqs[0], last_seq=seqs[-1])))
        replay_from = min(replay_from, own_cut + 1)
    rnd.shuffle(runs)
    data = encode_snapshot(taken_at=T0, replay_from=replay_from, runs=runs)
    return data, first


def resume(data: bytes, log: list[AnyEvent]) -> dict[str, RunState]:
    """What a restarted orchestrator does: restore, then fold from `replay_from` on, skipping
    each snapshotted run's events up to its `last_seq`."""
    snapshot = decode_snapshot(data)
    runs = restore(snapshot)
    covered = {run.run_id: run.last_seq for run in snapshot.runs}
    for seq in range(snapshot.replay_from, len(log) + 1):
        event = log[seq - 1]
        if seq <= covered.get(event.run_id, 0):
            continue
        state = fold(runs.get(event.run_id), event)
        if state is not None:
            runs[event.run_id] = state
    return runs


@settings(max_examples=max(10, settings().max_examples // 3))
@given(
    seed=st.integers(0, 2**32),
    runs=st.integers(1, 4),
    size=st.integers(1, 12),
    steps=st.integers(0, 150),
)
def test_a_snapshot_plus_the_tail_equals_a_full_replay(
    seed: int, runs: int, size: int, steps: int
) -> None:
    rnd = random.Random(seed)
    logs = []
    for i in range(runs):
        whole = one_run(rnd.randrange(2**32), size, steps, f"run-{i}")
        # Cut most runs short, so they are still open at the end of the log.
        logs.append(whole if rnd.random() < 0.3 else whole[: rnd.randint(1, len(whole))])
    log = interleave(rnd, logs)
    cut = rnd.randint(0, len(log))
    data, first = take_snapshot(rnd, log, cut)

    full = replay(log)
    resumed = resume(data, log)
    for run_id, state in resumed.items():
        assert ordered(state.snapshot()) == ordered(full[run_id].snapshot()), run_id
    # Nothing the orchestrator needs is missing: every run open at the cut or begun after it.
    at_cut = replay(log[:cut])
    needed = {r for r, s in at_cut.items() if not s.finished}
    needed |= {r for r, seq in first.items() if seq > cut}
    assert needed <= resumed.keys()


@given(seed=st.integers(0, 2**32), size=st.integers(1, 15), steps=st.integers(0, 300))
def test_every_state_of_a_run_survives_the_round_trip(seed: int, size: int, steps: int) -> None:
    """At every point of a run's history, restoring its encoded snapshot gives the same state,
    and folding the next event into both gives the same state again."""
    log = simulate(seed, size, 0.2, steps).log
    state = fold(None, log[0])
    assert state is not None
    for seq, event in enumerate(log[1:], 2):
        data = encode_run(snapshot_run(state, first_seq=1, last_seq=seq - 1))
        restored = restore_run(msgspec.json.decode(data, type=RunSnapshot))
        assert ordered(restored.snapshot()) == ordered(state.snapshot())
        fold(restored, event)
        fold(state, event)
        assert ordered(restored.snapshot()) == ordered(state.snapshot())


# -- the format ---------------------------------------------------------------------------------


def test_the_snapshot_records_every_field_of_the_state_or_derives_it() -> None:
    """A field added to RunState or TaskRun must be added to the snapshot (and the version
    changed), or be derived on restore: otherwise restored runs would silently lack it."""
    run_fields = set(RunSnapshot.__struct_fields__) - {"first_seq", "last_seq"}
    assert run_fields | DERIVED_RUN_FIELDS == set(RunState.__slots__)
    assert set(TaskSnapshot.__struct_fields__) | DERIVED_TASK_FIELDS == set(TaskRun.__slots__)


def _small_snapshot_stored() -> bytes:
    log = simulate(7, 6, 0.2, 60).log
    state = replay(log[: len(log) // 2])["run-1"]
    run = encode_run(snapshot_run(state, first_seq=1, last_seq=len(log) // 2))
    return encode_snapshot(taken_at=T0, replay_from=3, runs=[run])


def _small_snapshot() -> bytes:
    """The same, as plain JSON (which `decode_snapshot` takes too)."""
    return zlib.decompress(_small_snapshot_stored())


def test_a_snapshot_decodes_as_written() -> None:
    stored = _small_snapshot_stored()
    assert len(stored) < len(_small_snapshot()) / 4  # compressed
    snapshot = decode_snapshot(stored)
    assert decode_snapshot(_small_snapshot()) == snapshot
    assert (snapshot.version, snapshot.taken_at, snapshot.replay_from) == (SNAPSHOT_VERSION, T0, 3)
    assert [run.run_id for run in snapshot.runs] == ["run-1"]
    # Runs written pre-encoded read as a plain StateSnapshot does: one format, not two.
    plain = StateSnapshot(version=1, taken_at=T0, replay_from=3, runs=snapshot.runs)
    assert msgspec.json.decode(msgspec.json.encode(plain)) == msgspec.json.decode(_small_snapshot())


def test_a_snapshot_records_every_value_and_skips_fields_it_does_not_know() -> None:
    doc = msgspec.json.decode(_small_snapshot())
    run = doc["runs"][0]
    task = run["tasks"][0]
    # every value written, defaults too (no omitted fields)
    assert set(run) == set(RunSnapshot.__struct_fields__)
    assert set(task) == set(TaskSnapshot.__struct_fields__)
    # a newer writer's additions, at every level, are skipped
    doc["compression"] = "none"
    run["priority"] = 3
    task["cpu_seconds"] = 1.5
    task["node"]["retries"]["jitter_seconds"] = 0.1
    newer = decode_snapshot(msgspec.json.encode(doc))
    assert newer.runs == decode_snapshot(_small_snapshot()).runs


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda d: b"", "not a snapshot"),
        (lambda d: d[: len(d) // 2], "not a snapshot"),
        (lambda d: zlib.compress(d)[:-9], "not a snapshot"),
        (lambda d: zlib.compress(d)[:10] + b"x" + zlib.compress(d)[11:], "not a snapshot"),
        (lambda d: zlib.compress(b"[1]"), "not a snapshot"),
        (lambda d: b"[1, 2]", "not a snapshot"),
        (lambda d: d.replace(b'"version":1', b'"version":2', 1), "version 2"),
        (lambda d: d.replace(b'"version":1,', b"", 1), "not a snapshot"),
        (lambda d: d.replace(b'"status":"', b'"status":"paused', 1), "does not decode"),
        (lambda d: d.replace(b'"replay_from":3', b'"replay_from":0', 1), "replay_from 0"),
    ],
)
def test_a_snapshot_that_cannot_be_used_is_refused_with_a_reason(mangle: Any, reason: str) -> None:
    with pytest.raises(UnreadableSnapshot, match=reason):
        decode_snapshot(mangle(_small_snapshot()))


def test_a_run_that_does_not_hold_together_is_refused() -> None:
    snapshot = decode_snapshot(_small_snapshot())
    run = snapshot.runs[0]
    broken = [
        msgspec.structs.replace(run, ready=("nope",)),
        msgspec.structs.replace(run, blocked={run.tasks[0].node.id: "nope"}),
        msgspec.structs.replace(run, tasks=run.tasks + run.tasks[:1]),
        msgspec.structs.replace(run, first_seq=run.last_seq + 1),
        msgspec.structs.replace(run, evaluating=(run.tasks[0].node.id,)),
    ]
    for bad in broken:
        with pytest.raises(UnreadableSnapshot):
            restore(StateSnapshot(version=1, taken_at=T0, replay_from=1, runs=(bad,)))
    with pytest.raises(UnreadableSnapshot, match="twice"):
        restore(StateSnapshot(version=1, taken_at=T0, replay_from=1, runs=(run, run)))


def test_the_golden_snapshot_of_a_small_run() -> None:
    """The stored form, field by field: a change here is a format change (bump the version)."""
    from core.events import TaskQueued
    from tests.unit.core.runkit import node, scheduled

    state = fold(None, scheduled(node("a"), node("b", "a"), run_id="r"))
    assert state is not None
    fold(state, TaskQueued(run_id="r", ts=T0, task_id="a", attempt=1, queue="default"))
    data = encode_snapshot(
        taken_at=T0 + dt.timedelta(seconds=1),
        replay_from=5,
        runs=[encode_run(snapshot_run(state, first_seq=1, last_seq=2))],
    )
    assert msgspec.json.decode(zlib.decompress(data)) == GOLDEN


_RETRIES = {"count": 0, "delay_seconds": 10.0, "backoff": 2.0, "max_delay_seconds": 15.0}


def _golden_task(task_id: str, deps: list[str], status: str, attempt: int) -> dict[str, Any]:
    return {
        "node": {
            "id": task_id,
            "task_id": task_id,
            "command": f"echo {task_id}",
            "name": "",
            "queue": "default",
            "dependencies": deps,
            "parameters": {},
            "retries": _RETRIES,
            "timeout_seconds": None,
            "evaluation_point": False,
        },
        "status": status,
        "attempt": attempt,
        "not_before": None,
        "agent_id": "",
        "delivery": 0,
        "queued_at": "2026-01-01T00:00:00Z" if attempt else None,
        "started_at": None,
        "finished_at": None,
        "exit_code": None,
        "reason": "",
        "message": "",
        "evaluation": None,
    }


GOLDEN: dict[str, Any] = {
    "version": 1,
    "taken_at": "2026-01-01T00:00:01Z",
    "replay_from": 5,
    "runs": [
        {
            "run_id": "r",
            "first_seq": 1,
            "last_seq": 2,
            "kind": "outcome",
            "target": "b",
            "name": "b",
            "trigger": "cli",
            "context": {},
            "params": {},
            "scheduled_at": "2026-01-01T00:00:00Z",
            "ended_at": None,
            "status": "running",
            "cancel_requested": False,
            "cancel_reason": "",
            "tasks": [
                _golden_task("a", [], "queued", 1),
                _golden_task("b", ["a"], "pending", 0),
            ],
            "failed_tasks": [],
            "ready": [],
            "blocked": {},
            "queued": ["a"],
            "failing": {},
            "retry_wait": [],
            "evaluating": [],
            "deadlines": {},
            "late_starts": {},  # (added later: snapshots without it decode to {})
        }
    ],
}

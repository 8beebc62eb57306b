"""Run ids: URL- and subject-safe, sortable by time, unique; shards are stable."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.ids import SHARDS, check_run_id, new_run_id, shard_of, slug, ulid

SAFE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@given(name=st.text(max_size=80), now_ms=st.integers(0, 2**48 - 1))
def test_run_ids_are_url_and_subject_safe(name: str, now_ms: int) -> None:
    run_id = new_run_id(name, now_ms, os.urandom(10))
    assert SAFE.match(run_id)
    assert check_run_id(run_id) == run_id
    assert "." not in run_id and "/" not in run_id


@given(a=st.integers(0, 2**48 - 1), b=st.integers(0, 2**48 - 1))
def test_ids_of_the_same_target_sort_by_time(a: int, b: int) -> None:
    first, second = sorted((a, b))
    ids = (
        new_run_id("Deploy Model", first, b"\xff" * 10),
        new_run_id("Deploy Model", second, b"\0" * 10),
    )
    if first < second:
        assert ids[0] < ids[1]


def test_ids_are_unique_within_one_millisecond() -> None:
    ids = {new_run_id("x", 1_700_000_000_000, os.urandom(10)) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_slug_keeps_the_display_name_apart() -> None:
    assert slug("Deploy Model || v2!") == "deploy-model-v2"
    assert new_run_id("Deploy Model", 0, b"\0" * 10).startswith("deploy-model-")
    assert len(ulid(0, b"\0" * 10)) == 26


@pytest.mark.parametrize("bad", ["", "-x", "a.b", "a b", "a/b", "x" * 129, "ü"])
def test_a_chosen_run_id_is_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid run id"):
        check_run_id(bad)


def test_shards_are_stable_and_in_range() -> None:
    assert shard_of("deploy-model-01abc") == shard_of("deploy-model-01abc")
    assert {shard_of(f"r{i}") for i in range(1000)} == set(range(SHARDS))

"""The benchmark's percentiles: linear interpolation between closest ranks (numpy's default)."""

from __future__ import annotations

import math
import random

import pytest

from services.bench import percentile


def closest_ranks(values: list[float], q: float) -> float:
    """The oracle, written out: rank (n - 1) * q, interpolated between its neighbours."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def test_known_values() -> None:
    hops = [5.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert percentile(hops, 0.5) == 3.0
    assert percentile(hops, 0.9) == pytest.approx(4.6)
    assert percentile(hops, 0.99) == pytest.approx(4.96)
    assert percentile(list(range(1, 101)), 0.9) == pytest.approx(90.1)


@pytest.mark.parametrize("seed", range(20))
def test_matches_interpolation_between_closest_ranks(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.expovariate(1 / 3) for _ in range(rng.randint(2, 300))]
    for q in (0.01, 0.25, 0.5, 0.9, 0.99):
        assert percentile(values, q) == pytest.approx(closest_ranks(values, q))


def test_tiny_inputs() -> None:
    assert math.isnan(percentile([], 0.5))
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 3.0], 0.5) == 2.0


@pytest.mark.parametrize("q", [0.0, 1.0, 0.999, 1.5])
def test_only_whole_percents_strictly_inside(q: float) -> None:
    with pytest.raises(ValueError, match="whole percent"):
        percentile([1.0, 2.0, 3.0], q)

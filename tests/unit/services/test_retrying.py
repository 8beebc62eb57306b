"""services.retrying.backoff: the one exponential backoff of every retry loop in services/."""

from __future__ import annotations

import itertools

import pytest

from services.retrying import backoff


def test_grows_by_the_factor_up_to_the_cap_and_stays_there() -> None:
    assert list(itertools.islice(backoff(0.1, cap=1.0), 6)) == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert list(itertools.islice(backoff(1.0, cap=20.0, factor=3), 5)) == [1, 3, 9, 20, 20]


def test_each_loop_gets_its_own_sequence() -> None:
    first, second = backoff(0.05, cap=2.0), backoff(0.05, cap=2.0)
    next(first)
    next(first)
    assert next(second) == 0.05


@pytest.mark.parametrize(("first", "cap", "factor"), [(0, 1, 2), (2, 1, 2), (0.1, 1, 0.5)])
def test_nonsense_is_refused(first: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        next(backoff(first, cap=cap, factor=factor))

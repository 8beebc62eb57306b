"""Cron parsing and next fire times."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.cron import CronSpec, next_fire, parse_cron

UTC = dt.UTC
LONDON = ZoneInfo("Europe/London")


def at(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    *,
    tz: dt.tzinfo = UTC,
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)


def test_every_minute_matches_everything() -> None:
    spec = parse_cron("* * * * *")
    assert spec.minutes == frozenset(range(60))
    assert spec.hours == frozenset(range(24))
    assert spec.days == frozenset(range(1, 32))
    assert spec.months == frozenset(range(1, 13))
    assert spec.weekdays == frozenset(range(7))
    assert not spec.days_restricted and not spec.weekdays_restricted


def test_lists_ranges_and_steps() -> None:
    spec = parse_cron("0,15,30-32 */6 1-10/3 * *")
    assert spec.minutes == {0, 15, 30, 31, 32}
    assert spec.hours == {0, 6, 12, 18}
    assert spec.days == {1, 4, 7, 10}


def test_a_start_with_a_step_runs_to_the_end_of_the_field() -> None:
    assert parse_cron("50/5 * * * *").minutes == {50, 55}


def test_month_and_weekday_names_case_insensitive() -> None:
    spec = parse_cron("0 9 * JAN-mar,dec Mon-Fri")
    assert spec.months == {1, 2, 3, 12}
    assert spec.weekdays == {1, 2, 3, 4, 5}


def test_seven_is_sunday_too() -> None:
    assert parse_cron("0 0 * * 7").weekdays == {0}
    assert parse_cron("0 0 * * 5-7").weekdays == {5, 6, 0}


@pytest.mark.parametrize(
    ("shorthand", "equivalent"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
    ],
)
def test_shorthands(shorthand: str, equivalent: str) -> None:
    short, long = parse_cron(shorthand), parse_cron(equivalent)
    assert short.text == shorthand
    assert (short.minutes, short.hours, short.days, short.months, short.weekdays) == (
        long.minutes,
        long.hours,
        long.days,
        long.months,
        long.weekdays,
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("* * * * * *", "expected 5 fields"),
        ("", "got 0"),
        ("60 * * * *", "minute field '60': 60 is out of range 0-59"),
        ("* 24 * * *", "hour field '24': 24 is out of range 0-23"),
        ("* * 0 * *", "day of month field '0': 0 is out of range 1-31"),
        ("* * * 13 *", "month field '13': 13 is out of range 1-12"),
        ("* * * * 8", "day of week field '8': 8 is out of range 0-7"),
        ("*/0 * * * *", "minute field '*/0': step '0' is not a positive number"),
        ("*/x * * * *", "minute field '*/x': step 'x' is not a positive number"),
        ("30-10 * * * *", "minute field '30-10': range '30-10' runs backwards"),
        ("1,,2 * * * *", "minute field '1,,2': empty list item"),
        ("* * * foo *", "month field 'foo': 'foo' is not a number 1-12 (or a name: jan"),
        ("* * * * funday", "day of week field 'funday': 'funday' is not a number 0-7"),
        ("0 0 30 2 *", "never fires: day of month 30 does not exist in the chosen months"),
        ("@reboot", "unknown shorthand '@reboot': use one of @annually"),
    ],
)
def test_invalid_expressions_say_which_field_and_value(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cron(text)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_february_29_is_allowed_and_fires_in_leap_years() -> None:
    spec = parse_cron("0 0 29 2 *")
    assert next_fire(spec, at(2025, 1, 1)) == at(2028, 2, 29)


def test_next_fire_is_strictly_after() -> None:
    spec = parse_cron("30 * * * *")
    assert next_fire(spec, at(2024, 5, 1, 10, 30)) == at(2024, 5, 1, 11, 30)
    assert next_fire(spec, at(2024, 5, 1, 10, 29, 59)) == at(2024, 5, 1, 10, 30)


def test_next_fire_rolls_over_day_month_and_year() -> None:
    spec = parse_cron("15 3 1 * *")
    assert next_fire(spec, at(2024, 1, 31, 23, 59)) == at(2024, 2, 1, 3, 15)
    assert next_fire(spec, at(2024, 12, 1, 3, 15)) == at(2025, 1, 1, 3, 15)


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # The 13th of the month OR any Friday: standard cron semantics.
    spec = parse_cron("0 0 13 * fri")
    assert next_fire(spec, at(2025, 1, 1)) == at(2025, 1, 3)  # a Friday
    assert next_fire(spec, at(2025, 1, 11)) == at(2025, 1, 13)  # a Monday, the 13th


def test_only_the_restricted_day_field_counts() -> None:
    mondays = parse_cron("0 0 * * mon")
    assert next_fire(mondays, at(2025, 1, 1)) == at(2025, 1, 6)
    # `*/2` starts with '*': day of week counts as unrestricted, so only the day of month matters.
    spec = parse_cron("0 0 10 * */2")
    assert next_fire(spec, at(2025, 1, 1)) == at(2025, 1, 10)


def test_result_keeps_the_timezone_of_the_input() -> None:
    spec = parse_cron("0 9 * * *")
    fire = next_fire(spec, at(2024, 6, 1, 10, 0, tz=LONDON))
    assert fire == at(2024, 6, 2, 9, 0, tz=LONDON)
    assert fire.tzinfo is LONDON
    assert fire.utcoffset() == dt.timedelta(hours=1)


def test_a_local_time_skipped_by_daylight_saving_does_not_fire() -> None:
    # 2024-03-31: London clocks jump from 01:00 to 02:00.
    spec = parse_cron("30 1 * * *")
    fire = next_fire(spec, at(2024, 3, 30, 12, 0, tz=LONDON))
    assert fire == at(2024, 4, 1, 1, 30, tz=LONDON)


def test_a_local_time_repeated_by_daylight_saving_fires_once() -> None:
    # 2024-10-27: London clocks go back from 02:00 to 01:00, so 01:30 happens twice.
    spec = parse_cron("30 1 * * *")
    first = next_fire(spec, at(2024, 10, 27, 0, 0, tz=LONDON))
    assert first.astimezone(UTC) == at(2024, 10, 27, 0, 30)
    after_first = next_fire(spec, first)
    assert after_first.astimezone(UTC) == at(2024, 10, 28, 1, 30)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(parse_cron("* * * * *"), dt.datetime(2024, 1, 1))  # noqa: DTZ001


def _matches(spec: CronSpec, moment: dt.datetime) -> bool:
    return (
        moment.minute in spec.minutes
        and moment.hour in spec.hours
        and spec.matches_day(moment.date())
    )


@given(
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=4),
    hours=st.sets(st.integers(0, 23), min_size=1, max_size=3),
    # Naive bounds are what st.datetimes wants; the test attaches UTC itself.
    start=st.datetimes(
        min_value=dt.datetime(2000, 1, 1),  # noqa: DTZ001
        max_value=dt.datetime(2099, 1, 1),  # noqa: DTZ001
    ),
)
def test_next_fire_is_the_first_matching_minute(
    minutes: set[int], hours: set[int], start: dt.datetime
) -> None:
    text = f"{','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * *"
    spec = parse_cron(text)
    after = start.replace(tzinfo=UTC)
    fire = next_fire(spec, after)
    assert fire > after
    assert fire.second == 0 and fire.microsecond == 0
    assert _matches(spec, fire)
    # No matching minute is skipped: brute force every minute in between (at most a day).
    moment = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while moment < fire:
        assert not _matches(spec, moment), moment
        moment += dt.timedelta(minutes=1)

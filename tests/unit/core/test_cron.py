"""Cron expressions: validation messages, next fire times, daylight saving, and properties of the
fire-time walks (strictly increasing, each once, forward and backward agree)."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.cron import fire_times, next_fire, next_fires, parse_cron, previous_fires

UTC = dt.UTC
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


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


def test_lists_ranges_steps_and_names() -> None:
    spec = parse_cron("0,15,30-32 */6 * JAN-mar,dec Mon-Fri")
    fires = next_fires(spec, UTC, at(2024, 12, 31, 23, 59), 6)  # 2025-01-01: a Wednesday
    assert fires == [
        at(2025, 1, 1, 0, 0),
        at(2025, 1, 1, 0, 15),
        at(2025, 1, 1, 0, 30),
        at(2025, 1, 1, 0, 31),
        at(2025, 1, 1, 0, 32),
        at(2025, 1, 1, 6, 0),
    ]


def test_a_start_with_a_step_runs_to_the_end_of_the_field() -> None:
    assert next_fires(parse_cron("50/5 * * * *"), UTC, at(2025, 1, 1), 3) == [
        at(2025, 1, 1, 0, 50),
        at(2025, 1, 1, 0, 55),
        at(2025, 1, 1, 1, 50),
    ]


def test_seven_is_sunday_too() -> None:
    assert next_fire(parse_cron("0 0 * * 7"), at(2025, 1, 1)) == at(2025, 1, 5)  # a Sunday


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
    start = at(2024, 2, 27, 13, 7)
    assert next_fires(short, UTC, start, 3) == next_fires(long, UTC, start, 3)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("* * * * * *", "expected 5 fields"),  # no seconds field: slots are whole minutes
        ("", "got 0"),
        ("60 * * * *", "minute field '60': 60 is out of range 0-59"),
        ("* 24 * * *", "hour field '24': 24 is out of range 0-23"),
        ("* * 0 * *", "day of month field '0': 0 is out of range 1-31"),
        ("* * * 13 *", "month field '13': 13 is out of range 1-12"),
        ("* * * * 8", "day of week field '8': 8 is out of range 0-7"),
        ("*/0 * * * *", "minute field '*/0': step '0' is not a positive number"),
        ("*/x * * * *", "minute field '*/x': step 'x' is not a positive number"),
        ("1,,2 * * * *", "minute field '1,,2': empty list item"),
        ("* * * foo *", "month field 'foo': 'foo' is not a number 1-12 (or a name: jan"),
        ("* * * * funday", "day of week field 'funday': 'funday' is not a number 0-7"),
        ("0 0 30 2 *", "never fires: no date matches it"),
        ("@reboot", "unknown shorthand '@reboot': use one of @annually"),
    ],
)
def test_invalid_expressions_say_which_field_and_value(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cron(text)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_february_29_is_allowed_and_fires_in_leap_years() -> None:
    assert next_fire(parse_cron("0 0 29 2 *"), at(2025, 1, 1)) == at(2028, 2, 29)


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


def test_result_keeps_the_timezone_of_the_input() -> None:
    fire = next_fire(parse_cron("0 9 * * *"), at(2024, 6, 1, 10, 0, tz=LONDON))
    assert fire == at(2024, 6, 2, 9, 0, tz=LONDON)
    assert fire.utcoffset() == dt.timedelta(hours=1)


def test_a_local_time_skipped_by_spring_forward_fires_at_the_jump() -> None:
    # 2024-03-31: London clocks jump from 01:00 GMT to 02:00 BST; 01:30 does not exist that day.
    spec = parse_cron("30 1 * * *")
    fires = next_fires(spec, LONDON, at(2024, 3, 30, 12, 0, tz=LONDON), 3)
    assert fires == [at(2024, 3, 31, 1, 0), at(2024, 4, 1, 0, 30), at(2024, 4, 2, 0, 30)]
    assert fires[0].astimezone(LONDON).hour == 2  # 02:00 BST, the first minute after the jump


def test_every_time_in_the_skipped_hour_collapses_into_one_fire() -> None:
    # New York 2024-03-10: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    fires = next_fires(parse_cron("*/20 * * * *"), NEW_YORK, at(2024, 3, 10, 6, 30), 4)
    expected = [at(2024, 3, 10, 6, 40), at(2024, 3, 10, 7, 0), at(2024, 3, 10, 7, 20)]
    assert fires == [*expected, at(2024, 3, 10, 7, 40)]  # 02:00-02:40 EST all at 07:00


def test_a_local_time_repeated_by_fall_back_fires_once_at_its_first_occurrence() -> None:
    # 2024-10-27: London clocks go back from 02:00 BST to 01:00 GMT, so 01:30 happens twice.
    spec = parse_cron("30 1 * * *")
    first = next_fire(spec, at(2024, 10, 27, 0, 0, tz=LONDON))
    assert first.astimezone(UTC) == at(2024, 10, 27, 0, 30)  # 01:30 BST
    assert next_fire(spec, first).astimezone(UTC) == at(2024, 10, 28, 1, 30)  # not 01:30 GMT
    # Asked from inside the repeated hour (01:10 GMT), the 01:30 GMT repeat does not fire either.
    assert next_fire(spec, at(2024, 10, 27, 1, 10), LONDON) == at(2024, 10, 28, 1, 30)


def test_previous_fires_across_fall_back() -> None:
    # From 01:20 GMT (inside the repeated hour), looking back: 01:15 BST (00:15 UTC) is newest.
    fires = previous_fires(
        parse_cron("15 * * * *"),
        LONDON,
        at(2024, 10, 27, 1, 20),
        after=at(2024, 10, 26, 22),
        limit=5,
    )
    assert fires == [at(2024, 10, 27, 0, 15), at(2024, 10, 26, 23, 15), at(2024, 10, 26, 22, 15)]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(parse_cron("* * * * *"), dt.datetime(2024, 1, 1))  # noqa: DTZ001


ZONE_LIST = [UTC, LONDON, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kolkata")]
ZONES = st.sampled_from(ZONE_LIST)
EXPRESSIONS = st.sampled_from(
    [
        "* * * * *",
        "*/7 * * * *",
        "30 1 * * *",
        "0 2 * * *",
        "15,45 0-3 * * *",
        "0 0 * * mon",
        "0 */3 1,15 * *",
        "@hourly",
    ]
)
# Naive bounds are what st.datetimes wants; the tests attach UTC themselves. The range covers
# several years of DST changes in every zone above.
MOMENTS = st.datetimes(
    min_value=dt.datetime(2023, 1, 1),  # noqa: DTZ001
    max_value=dt.datetime(2027, 1, 1),  # noqa: DTZ001
).map(lambda d: d.replace(tzinfo=UTC))


@given(text=EXPRESSIONS, tz=ZONES, start=MOMENTS)
def test_fire_times_strictly_increase_on_whole_minutes(
    text: str, tz: dt.tzinfo, start: dt.datetime
) -> None:
    fires = next_fires(parse_cron(text), tz, start, 30)
    assert fires[0] > start
    assert all(a < b for a, b in itertools.pairwise(fires))
    assert all(f.second == 0 and f.microsecond == 0 for f in fires)


@settings(max_examples=max(10, settings().max_examples // 10))  # walks up to 72 h of minutes
@given(text=EXPRESSIONS, tz=ZONES, start=MOMENTS, hours=st.integers(1, 72))
def test_backward_and_forward_walks_find_the_same_slots(
    text: str, tz: dt.tzinfo, start: dt.datetime, hours: int
) -> None:
    spec = parse_cron(text)
    until = start + dt.timedelta(hours=hours)
    forward = []
    for moment in fire_times(spec, tz, start):
        if moment > until:
            break
        forward.append(moment)
    backward = previous_fires(spec, tz, until, after=start, limit=10_000)
    assert backward == forward[::-1]
    assert all(start < m <= until for m in backward)  # none in the future, none before `after`


def _matches(minutes: set[int], hours: set[int], moment: dt.datetime) -> bool:
    return moment.minute in minutes and moment.hour in hours


@settings(max_examples=max(10, settings().max_examples // 3))  # brute force up to a day
@given(
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=4),
    hours=st.sets(st.integers(0, 23), min_size=1, max_size=3),
    start=MOMENTS,
)
def test_next_fire_is_the_first_matching_minute(
    minutes: set[int], hours: set[int], start: dt.datetime
) -> None:
    text = f"{','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * *"
    fire = next_fire(parse_cron(text), start)
    assert fire > start
    assert _matches(minutes, hours, fire)
    # No matching minute is skipped: brute force every minute in between (at most a day).
    moment = start.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while moment < fire:
        assert not _matches(minutes, hours, moment), moment
        moment += dt.timedelta(minutes=1)


def _reference_fires(
    minutes: set[int], hours: set[int], tz: dt.tzinfo, start: dt.datetime, until: dt.datetime
) -> list[dt.datetime]:
    """The documented semantics by brute force over UTC minutes: a minute fires when its wall
    time matches on its first occurrence, or when clocks jumped over a matching wall time
    right at it."""
    out = []
    moment = start.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while moment <= until:
        local = moment.astimezone(tz)
        fires = _matches(minutes, hours, local) and local.fold == 0
        wall = (moment - dt.timedelta(minutes=1)).astimezone(tz).replace(tzinfo=None)
        wall += dt.timedelta(minutes=1)
        while not fires and wall < local.replace(tzinfo=None):  # a jump: walls skipped
            fires = _matches(minutes, hours, wall)
            wall += dt.timedelta(minutes=1)
        if fires:
            out.append(moment)
        moment += dt.timedelta(minutes=1)
    return out


# Days with a daylight-saving change in the zones below (both directions).
DST_DAYS = [
    at(2024, 3, 10),
    at(2024, 3, 31),
    at(2024, 4, 7),
    at(2024, 10, 6),
    at(2024, 10, 27),
    at(2024, 11, 3),
]


@settings(max_examples=max(10, settings().max_examples // 15))  # 5 zones, 14 h of minutes each
@given(
    minutes=st.sets(st.integers(0, 59), min_size=1, max_size=3),
    hours=st.sets(st.integers(0, 23), max_size=3),
    day=st.sampled_from(DST_DAYS),
    offset=st.integers(-6 * 60, 12 * 60),
)
def test_fire_times_follow_the_documented_dst_rules(
    minutes: set[int], hours: set[int], day: dt.datetime, offset: int
) -> None:
    hours = hours | {1, 2}  # the hours the changes skip or repeat in these zones
    text = f"{','.join(map(str, sorted(minutes)))} {','.join(map(str, sorted(hours)))} * * *"
    start = day + dt.timedelta(minutes=offset)
    until = start + dt.timedelta(hours=14)
    for tz in ZONE_LIST:
        fires = [m for m in next_fires(parse_cron(text), tz, start, 100) if m <= until]
        assert fires == _reference_fires(minutes, hours, tz, start, until), tz

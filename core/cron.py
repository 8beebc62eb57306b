"""Five-field cron expressions: parsing and the next fire time.

Fields are minute, hour, day of month, month, day of week, as in Vixie cron: `*`, lists (`1,15`),
ranges (`1-5`), steps (`*/15`, `0-30/10`, `5/10` = from 5 to the end), month names (`jan`) and
weekday names (`mon`; 0 and 7 are both Sunday), and the shorthands `@hourly @daily @midnight
@weekly @monthly @yearly @annually`.

Day matching follows standard cron: when both day of month and day of week are restricted (neither
starts with `*`), a day matches if EITHER matches; otherwise only the restricted one counts.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

import msgspec

SHORTHANDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
MONTH_NAMES = {
    name: i + 1
    for i, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
WEEKDAY_NAMES = {
    name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])
}
# Longest month length, leap years included: a day that exists in none of the chosen months never
# fires, which is almost certainly a mistake (`0 0 30 2 *`).
_MAX_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
# A schedule must fire within this many years (Feb 29 on a given weekday needs up to 28).
_SEARCH_YEARS = 30


class _Field(NamedTuple):
    name: str
    low: int
    high: int
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, MONTH_NAMES),
    _Field("day of week", 0, 7, WEEKDAY_NAMES),
)


class CronSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed cron expression; weekdays are 0-6 with 0 = Sunday."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool  # day-of-month field did not start with '*'
    weekdays_restricted: bool  # day-of-week field did not start with '*'

    def matches_day(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        if self.days_restricted:
            return in_days
        if self.weekdays_restricted:
            return in_weekdays
        return True


def parse_cron(text: str) -> CronSpec:
    """Parse a 5-field cron expression; ValueError with a one-line reason when it is invalid."""
    source = text.strip()
    expanded = SHORTHANDS.get(source.lower(), source)
    if expanded.startswith("@"):
        raise ValueError(
            f"unknown shorthand {source!r}: use one of {', '.join(sorted(SHORTHANDS))}"
        )
    parts = expanded.split()
    if len(parts) != 5:
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    values = [_parse_field(part, field) for part, field in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in values[4])  # 7 is Sunday too
    spec = CronSpec(
        text=source,
        minutes=frozenset(values[0]),
        hours=frozenset(values[1]),
        days=frozenset(values[2]),
        months=frozenset(values[3]),
        weekdays=weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )
    if spec.days_restricted and not spec.weekdays_restricted:
        longest = max(_MAX_DAYS[m] for m in spec.months)
        if min(spec.days) > longest:
            raise ValueError(
                f"never fires: day of month {min(spec.days)} does not exist in the chosen months"
            )
    return spec


def _parse_field(text: str, field: _Field) -> set[int]:
    result: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"{field.name} field {text!r}: empty list item")
        range_part, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(
                    f"{field.name} field {text!r}: step {step_text!r} is not a positive number"
                )
            step = int(step_text)
        if range_part == "*":
            low, high = field.low, field.high
        elif "-" in range_part:
            first, _, last = range_part.partition("-")
            low, high = _value(first, field, text), _value(last, field, text)
            if low > high:
                raise ValueError(
                    f"{field.name} field {text!r}: range {range_part!r} runs backwards"
                )
        else:
            low = _value(range_part, field, text)
            # `5/10` means "from 5 to the end of the field, every 10".
            high = field.high if slash else low
        result.update(range(low, high + 1, step))
    return result


def _value(token: str, field: _Field, text: str) -> int:
    lowered = token.lower()
    if lowered in field.names:
        return field.names[lowered]
    if not token.isdigit():
        hint = f" (or a name: {', '.join(field.names)})" if field.names else ""
        raise ValueError(
            f"{field.name} field {text!r}: {token!r} is not a number {field.low}-{field.high}{hint}"
        )
    value = int(token)
    if not field.low <= value <= field.high:
        raise ValueError(
            f"{field.name} field {text!r}: {value} is out of range {field.low}-{field.high}"
        )
    return value


def next_fire(spec: CronSpec, after: dt.datetime) -> dt.datetime:
    """The first time strictly after `after` that the schedule fires, in `after`'s timezone.

    Matching is on local wall-clock time. A local time that does not exist (the hour skipped when
    clocks go forward) does not fire; a time that happens twice (clocks going back) fires once,
    at its first occurrence.
    """
    tz = after.tzinfo
    if tz is None or after.utcoffset() is None:
        raise ValueError("next_fire needs a timezone-aware datetime")
    local = after.replace(tzinfo=None, second=0, microsecond=0, fold=0) + dt.timedelta(minutes=1)
    limit_year = local.year + _SEARCH_YEARS
    minutes = sorted(spec.minutes)
    hours = sorted(spec.hours)
    while local.year <= limit_year:
        if not spec.matches_day(local.date()):
            local = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time())
            continue
        hour = next((h for h in hours if h >= local.hour), None)
        if hour is None:
            local = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time())
            continue
        if hour != local.hour:
            local = local.replace(hour=hour, minute=0)
        minute = next((m for m in minutes if m >= local.minute), None)
        if minute is None:
            local = local.replace(minute=0) + dt.timedelta(hours=1)
            continue
        local = local.replace(minute=minute)
        candidate = local.replace(tzinfo=tz)
        # Compare instants: aware datetimes sharing a tzinfo compare by wall time, ignoring fold.
        if _exists(candidate) and candidate.astimezone(dt.UTC) > after.astimezone(dt.UTC):
            return candidate
        local += dt.timedelta(minutes=1)
    raise ValueError(f"cron {spec.text!r} does not fire within {_SEARCH_YEARS} years")


def _exists(moment: dt.datetime) -> bool:
    """False for a local time inside a gap (clocks going forward): it does not round-trip."""
    utc = moment.astimezone(dt.UTC)
    back = utc.astimezone(moment.tzinfo)
    return back.replace(tzinfo=None) == moment.replace(tzinfo=None)

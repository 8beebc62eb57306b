"""Cron expressions: validation with clear messages, and fire times in a time zone.

`croniter` does the parsing and the calendar arithmetic; this module adds what a scheduler needs
on top of it: one-line errors naming the field, minute resolution only, and fire times as UTC
instants that are correct across daylight-saving changes.

Syntax: five fields (minute hour day-of-month month day-of-week), with `*`, lists, ranges, steps,
month and weekday names, 0 and 7 both Sunday, croniter's extensions (`L` for the last day of the
month, `5#2` for the second Friday), and the shorthands `@hourly @daily @midnight @weekly
@monthly @yearly @annually`. When both day fields are restricted a day matches if EITHER does
(croniter's `day_or`, as in Vixie cron).

Daylight saving, matching on the zone's wall clock:
- a wall time that does not exist (clocks jump forward over it) fires once, at the instant of
  the jump: a nightly `30 1 * * *` in Europe/London runs at 02:00 BST on the spring-forward day
  rather than not at all. Several skipped times collapse into that one instant.
- a wall time that happens twice (clocks go back) fires once, at its first occurrence.
So fire instants are strictly increasing and every cron match fires at most once.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator
from typing import Final

import msgspec
from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

__all__ = [
    "SHORTHANDS",
    "CronSpec",
    "fire_times",
    "next_fire",
    "next_fires",
    "parse_cron",
    "previous_fires",
    "zone",
]

SHORTHANDS: Final = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_FIELDS: Final = (
    ("minute", 0, 59, ""),
    ("hour", 0, 23, ""),
    ("day of month", 1, 31, ""),
    ("month", 1, 12, " (or a name: jan, feb, ... dec)"),
    ("day of week", 0, 7, " (or a name: sun, mon, tue, wed, thu, fri, sat)"),
)
# Wall-clock shifts are at most two hours (a few zones in history): walking back from this far
# past a moment in a repeated hour covers the whole hour.
_MAX_SHIFT: Final = dt.timedelta(hours=3)
_SEARCH_YEARS: Final = 30  # a schedule must fire within this long (Feb 29 on a Monday: 28)


class CronSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A validated expression: `text` as written, `expanded` with the shorthand resolved."""

    text: str
    expanded: str

    def walk(self, start: dt.datetime) -> croniter:
        """croniter over naive wall-clock times from `start` (naive: no DST arithmetic)."""
        return croniter(self.expanded, start)


def parse_cron(text: str) -> CronSpec:
    """Validate a 5-field cron expression; ValueError with a one-line reason when invalid."""
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
    expanded = " ".join(parts)
    try:
        croniter(expanded)
    except (CroniterError, ValueError) as exc:
        raise ValueError(_diagnose(parts) or f"not a valid expression: {exc}") from None
    spec = CronSpec(text=source, expanded=expanded)
    start = dt.datetime(2000, 1, 1)  # noqa: DTZ001 - wall-clock arithmetic is naive on purpose
    try:
        first = spec.walk(start).get_next(dt.datetime)
    except CroniterBadDateError:
        first = None
    if first is None or first.year > start.year + _SEARCH_YEARS:
        raise ValueError(
            "never fires: no date matches it (check the day of month against the months)"
        )
    return spec


def _diagnose(parts: list[str]) -> str | None:
    """Which field croniter refused, and why, in one line (None: no single field to blame)."""
    for i, (name, low, high, names) in enumerate(_FIELDS):
        if _accepted(parts, i, parts[i]):
            continue
        text = parts[i]
        for item in text.split(","):
            if not item:
                return f"{name} field {text!r}: empty list item"
            if _accepted(parts, i, item):
                continue
            base, slash, step = item.partition("/")
            if slash and (not step.isdigit() or int(step) == 0):
                return f"{name} field {text!r}: step {step!r} is not a positive number"
            for part in base.split("-"):
                if part.isdigit() and not low <= int(part) <= high:
                    return f"{name} field {text!r}: {part} is out of range {low}-{high}"
                if part and part != "*" and not part.isdigit():
                    if _accepted(parts, i, part):
                        continue
                    return f"{name} field {text!r}: {part!r} is not a number {low}-{high}{names}"
            return f"{name} field {text!r}: {item!r} is not valid"
    return None


def _accepted(parts: list[str], index: int, value: str) -> bool:
    trial = ["*"] * 5
    trial[index] = value
    try:
        croniter(" ".join(trial))
    except (CroniterError, ValueError):
        return False
    return True


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone `name`; ValueError with a one-line reason when there is none."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name such as 'UTC' or 'Europe/London')"
        ) from None


def _instant(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The UTC instant a naive wall time fires at (see the module doc for DST)."""
    first = wall.replace(tzinfo=tz, fold=0)
    utc = first.astimezone(dt.UTC)
    if utc.astimezone(tz).replace(tzinfo=None) == wall:
        return utc  # exists (fold=0: the first of two occurrences)
    # In a gap: fold=0 reads it with the offset before the jump, which lands after the jump;
    # fold=1 lands before it. The jump is the first instant whose wall time passes `wall`.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(dt.UTC)
    high = utc
    while high - low > dt.timedelta(seconds=1):
        mid = low + (high - low) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).replace(tzinfo=None) > wall:
            high = mid
        else:
            low = mid
    return high


def _check_aware(moment: dt.datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("cron fire times need a timezone-aware datetime")


def fire_times(spec: CronSpec, tz: dt.tzinfo, after: dt.datetime) -> Iterator[dt.datetime]:
    """Every fire instant strictly after `after`, in UTC, strictly increasing (endless)."""
    _check_aware(after)
    after_utc = after.astimezone(dt.UTC)
    # Every wall time before `after`'s own maps to an instant no later than `after` (the mapping
    # never goes backwards), so the walk can start there.
    wall = after_utc.astimezone(tz).replace(tzinfo=None, fold=0)
    walk = spec.walk(wall.replace(second=0, microsecond=0))
    last = after_utc
    while True:
        try:
            moment = _instant(walk.get_next(dt.datetime), tz)
        except CroniterBadDateError:
            return
        if moment > last:
            yield moment
            last = moment


def previous_fires(
    spec: CronSpec, tz: dt.tzinfo, until: dt.datetime, *, after: dt.datetime, limit: int
) -> list[dt.datetime]:
    """Up to `limit` fire instants in (`after`, `until`], newest first, in UTC."""
    _check_aware(until)
    _check_aware(after)
    until_utc, after_utc = until.astimezone(dt.UTC), after.astimezone(dt.UTC)
    local = until_utc.astimezone(tz)
    start = local.replace(tzinfo=None, fold=0, second=0, microsecond=0) + dt.timedelta(minutes=1)
    if local.fold:
        # In the second pass of a repeated hour: later wall times of that hour already fired
        # (in the first pass, before `until`), so the walk starts past the hour.
        start += _MAX_SHIFT
    walk = spec.walk(start)
    found: list[dt.datetime] = []
    while len(found) < limit:
        try:
            moment = _instant(walk.get_prev(dt.datetime), tz)
        except CroniterBadDateError:
            break
        if moment <= after_utc:
            break
        if moment <= until_utc and (not found or moment < found[-1]):
            found.append(moment)
    return found


def next_fire(spec: CronSpec, after: dt.datetime, tz: dt.tzinfo | None = None) -> dt.datetime:
    """The first fire instant strictly after `after`, in `tz` (default: `after`'s zone)."""
    _check_aware(after)
    zone_ = tz or after.tzinfo
    assert zone_ is not None
    for moment in fire_times(spec, zone_, after):
        return moment.astimezone(zone_)
    raise ValueError(f"cron {spec.text!r} does not fire within {_SEARCH_YEARS} years")


def next_fires(spec: CronSpec, tz: dt.tzinfo, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next `count` fire instants strictly after `after`, in UTC."""
    out: list[dt.datetime] = []
    if count <= 0:
        return out
    for moment in fire_times(spec, tz, after):
        out.append(moment)
        if len(out) == count:
            break
    return out

"""Time limits (办理时限): deadlines in calendar hours or in working hours.

Pure functions: the command computes a deadline from the time it is given and records
it on the case; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

Clock = Literal["calendar", "working"]

DUE_SOON_FRACTION = 0.8
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MAX_DAYS = 3_700  # ten years of calendar: a malformed calendar cannot loop forever


@dataclass(frozen=True, slots=True)
class WorkCalendar:
    """Working days and hours of the city's administration, in its time zone."""

    timezone: str
    working_days: frozenset[int]  # 0 = Monday
    periods: tuple[tuple[time, time], ...]
    holidays: frozenset[date] = frozenset()
    working_weekends: frozenset[date] = frozenset()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def is_working_day(self, day: date) -> bool:
        if day in self.holidays:
            return False
        return day.weekday() in self.working_days or day in self.working_weekends

    def add_working_hours(self, start: datetime, hours: float) -> datetime:
        """The instant ``hours`` working hours after ``start`` (aware), in UTC."""
        remaining = timedelta(hours=hours)
        zone = self.zone
        local = start.astimezone(zone)
        day = local.date()
        for _ in range(_MAX_DAYS):
            if self.is_working_day(day):
                for begin, end in self.periods:
                    p_start = datetime.combine(day, begin, zone)
                    p_end = datetime.combine(day, end, zone)
                    if local >= p_end:
                        continue
                    frm = max(local, p_start)
                    available = p_end - frm
                    if remaining <= available:
                        return (frm + remaining).astimezone(UTC)
                    remaining -= available
            day += timedelta(days=1)
            local = datetime.combine(day, time(0), zone)
        raise ValueError("the working calendar has no working time within ten years")


def add_hours(calendar: WorkCalendar, start: datetime, hours: float, clock: Clock) -> datetime:
    """``start`` plus ``hours`` on ``clock``, in UTC."""
    if start.tzinfo is None:
        raise ValueError("deadlines need an aware start time")
    if hours < 0:
        raise ValueError("a time limit cannot be negative")
    if clock == "calendar":
        # Elapsed time: add in UTC, not on the wall clock of ``start``'s zone (DST).
        return start.astimezone(UTC) + timedelta(hours=hours)
    return calendar.add_working_hours(start, hours)


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a case is due, and when it counts as due soon (80 % of its time limit)."""

    due_at: datetime
    due_soon_at: datetime


def deadline(calendar: WorkCalendar, start: datetime, hours: float, clock: Clock) -> Deadline:
    return Deadline(
        due_at=add_hours(calendar, start, hours, clock),
        due_soon_at=add_hours(calendar, start, hours * DUE_SOON_FRACTION, clock),
    )


def _weekday(raw: object) -> int:
    key = str(raw).lower()[:3]
    if key not in WEEKDAYS:
        raise ValueError(f"unknown working day {raw!r} (use mon ... sun)")
    return WEEKDAYS.index(key)


def parse_calendar(raw: dict[str, Any]) -> WorkCalendar:
    ZoneInfo(str(raw["timezone"]))  # fails early on an unknown zone
    days = frozenset(_weekday(d) for d in raw["working_days"])
    periods = tuple(
        (time.fromisoformat(str(a)), time.fromisoformat(str(b))) for a, b in raw["hours"]
    )
    if not days or not periods:
        raise ValueError("the working calendar needs working days and hours")
    for begin, end in periods:
        if end <= begin:
            raise ValueError(f"working period {begin}-{end} ends before it starts")
    if list(periods) != sorted(periods):
        raise ValueError("working periods must be in order")
    return WorkCalendar(
        timezone=str(raw["timezone"]),
        working_days=days,
        periods=periods,
        holidays=frozenset(date.fromisoformat(str(d)) for d in raw.get("holidays", [])),
        working_weekends=frozenset(
            date.fromisoformat(str(d)) for d in raw.get("working_weekends", [])
        ),
    )

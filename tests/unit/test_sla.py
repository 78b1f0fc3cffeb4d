"""Time limits on the calendar clock and on the working clock (Asia/Shanghai).

Expected instants are worked out by hand; the properties use a minute-stepping oracle
that knows nothing of how ``core.case.sla`` walks the calendar.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.case.categories import load_categories
from core.case.sla import WorkCalendar, add_hours, deadline, parse_calendar

SHANGHAI = ZoneInfo("Asia/Shanghai")
CAL = load_categories().calendar  # holidays 1, 2, 5-7 Oct 2026; Sat 10 Oct worked


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An instant given in Shanghai wall-clock time."""
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


def work(start: datetime, hours: float) -> datetime:
    return add_hours(CAL, start, hours, "working")


def test_the_packaged_calendar() -> None:
    assert CAL.timezone == "Asia/Shanghai"
    assert CAL.working_days == frozenset(range(5))
    assert CAL.periods == ((time(9), time(12)), (time(13), time(18)))
    assert date(2026, 10, 1) in CAL.holidays
    assert CAL.working_weekends == frozenset({date(2026, 10, 10)})


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 3, 2), True),  # Monday
        (date(2026, 3, 6), True),  # Friday
        (date(2026, 3, 7), False),  # Saturday
        (date(2026, 3, 8), False),  # Sunday
        (date(2026, 10, 1), False),  # National Day, a Thursday
        (date(2026, 10, 8), True),
        (date(2026, 10, 10), True),  # Saturday worked in exchange (调休)
        (date(2026, 10, 11), False),
    ],
)
def test_working_days(day: date, working: bool) -> None:
    assert CAL.is_working_day(day) is working


# -- calendar hours ---------------------------------------------------------------------


def test_calendar_hours_run_round_the_clock() -> None:
    start = local(2026, 3, 6, 23, 0)  # Friday night
    due = add_hours(CAL, start, 2, "calendar")
    assert due == local(2026, 3, 7, 1, 0)
    assert due.tzinfo is UTC
    assert add_hours(CAL, start, 49.5, "calendar") == local(2026, 3, 9, 0, 30)
    assert add_hours(CAL, local(2026, 9, 30, 20), 24, "calendar") == local(2026, 10, 1, 20)


def test_calendar_hours_are_elapsed_time_across_a_dst_change() -> None:
    # 01:30 EST on the night the US clocks jump forward: two hours later is 04:30 EDT.
    new_york = ZoneInfo("America/New_York")
    start = datetime(2026, 3, 8, 1, 30, tzinfo=new_york)
    due = add_hours(CAL, start, 2, "calendar")
    assert due == datetime(2026, 3, 8, 8, 30, tzinfo=UTC)
    assert due - start == timedelta(hours=2)


# -- working hours ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "hours", "due"),
    [
        # inside one period
        (local(2026, 3, 2, 9, 0), 2, local(2026, 3, 2, 11, 0)),
        # up to the end of a period: the deadline is noon, not 13:00
        (local(2026, 3, 2, 9, 0), 3, local(2026, 3, 2, 12, 0)),
        (local(2026, 3, 2, 9, 0), 8, local(2026, 3, 2, 18, 0)),
        # across the lunch break
        (local(2026, 3, 2, 11, 0), 2, local(2026, 3, 2, 14, 0)),
        (local(2026, 3, 2, 11, 30), 0.75, local(2026, 3, 2, 13, 15)),
        # overnight
        (local(2026, 3, 2, 17, 0), 2, local(2026, 3, 3, 10, 0)),
        (local(2026, 3, 2, 17, 0), 10, local(2026, 3, 4, 10, 0)),
        # over the weekend
        (local(2026, 3, 6, 17, 0), 2, local(2026, 3, 9, 10, 0)),
        # starting outside working hours
        (local(2026, 3, 2, 7, 45), 1, local(2026, 3, 2, 10, 0)),
        (local(2026, 3, 2, 12, 30), 1, local(2026, 3, 2, 14, 0)),
        (local(2026, 3, 2, 18, 0), 1, local(2026, 3, 3, 10, 0)),
        (local(2026, 3, 2, 22, 15), 3.5, local(2026, 3, 3, 13, 30)),
        (local(2026, 3, 7, 10, 0), 4, local(2026, 3, 9, 14, 0)),  # Saturday
        (local(2026, 3, 8, 23, 59), 0.5, local(2026, 3, 9, 9, 30)),  # Sunday night
        # National Day: Thu 1 and Fri 2 off, the weekend, Mon 5 to Wed 7 off
        (local(2026, 9, 30, 17, 0), 2, local(2026, 10, 8, 10, 0)),
        (local(2026, 10, 1, 9, 0), 1, local(2026, 10, 8, 10, 0)),
        # the Saturday worked in exchange (调休)
        (local(2026, 10, 9, 17, 0), 2, local(2026, 10, 10, 10, 0)),
        (local(2026, 10, 10, 17, 0), 2, local(2026, 10, 12, 10, 0)),  # Sunday stays off
        # a week's work: 40 h from Monday 09:00 ends Friday 18:00
        (local(2026, 3, 2, 9, 0), 40, local(2026, 3, 6, 18, 0)),
    ],
)
def test_working_hours(start: datetime, hours: float, due: datetime) -> None:
    got = work(start, hours)
    assert got == due
    assert got.tzinfo is UTC


def test_working_hours_from_any_time_zone() -> None:
    start = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai
    assert work(start, 2) == local(2026, 3, 2, 14, 0)
    assert work(start.astimezone(ZoneInfo("Europe/Paris")), 2) == local(2026, 3, 2, 14, 0)


def test_zero_hours_is_the_next_working_instant() -> None:
    assert work(local(2026, 3, 2, 10, 0), 0) == local(2026, 3, 2, 10, 0)
    assert work(local(2026, 3, 7, 10, 0), 0) == local(2026, 3, 9, 9, 0)


def test_due_soon_is_at_80_percent_of_the_time_limit() -> None:
    # 10 working hours from Monday 09:00: due Tuesday 11:00; 8 h -> Monday 18:00.
    d = deadline(CAL, local(2026, 3, 2, 9, 0), 10, "working")
    assert (d.due_at, d.due_soon_at) == (local(2026, 3, 3, 11, 0), local(2026, 3, 2, 18, 0))
    # 2 h from Monday 11:00: due 14:00 (across lunch), due soon at 1.6 h = 13:36.
    d = deadline(CAL, local(2026, 3, 2, 11, 0), 2, "working")
    assert (d.due_at, d.due_soon_at) == (local(2026, 3, 2, 14, 0), local(2026, 3, 2, 13, 36))
    # Calendar: 80 % of 5 h is 4 h, straight through the night.
    d = deadline(CAL, local(2026, 3, 2, 22, 0), 5, "calendar")
    assert (d.due_at, d.due_soon_at) == (local(2026, 3, 3, 3, 0), local(2026, 3, 3, 2, 0))


@pytest.mark.parametrize("clock", ["calendar", "working"])
def test_a_naive_start_is_refused(clock: str) -> None:
    with pytest.raises(ValueError, match="aware start time"):
        add_hours(CAL, datetime(2026, 3, 2, 9, 0), 2, clock)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware start time"):
        deadline(CAL, datetime(2026, 3, 2, 9, 0), 2, clock)  # type: ignore[arg-type]


@pytest.mark.parametrize("clock", ["calendar", "working"])
def test_a_negative_time_limit_is_refused(clock: str) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        add_hours(CAL, local(2026, 3, 2, 9), -1, clock)  # type: ignore[arg-type]


def test_a_calendar_without_working_time_gives_up() -> None:
    never = WorkCalendar(
        timezone="Asia/Shanghai",
        working_days=frozenset(),
        periods=((time(9), time(17)),),
    )
    with pytest.raises(ValueError, match="no working time within ten years"):
        never.add_working_hours(local(2026, 3, 2, 9), 1)


# -- parsing ----------------------------------------------------------------------------


def raw_calendar(**changes: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "timezone": "Asia/Shanghai",
        "working_days": ["mon", "Tuesday", "WED"],
        "hours": [["08:30", "12:00"], ["14:00", "17:30"]],
        "holidays": ["2026-05-01", date(2026, 5, 4)],
        "working_weekends": ["2026-05-09"],
    }
    raw.update(changes)
    return raw


def test_parse_calendar() -> None:
    cal = parse_calendar(raw_calendar())
    assert cal.working_days == frozenset({0, 1, 2})
    assert cal.periods == ((time(8, 30), time(12)), (time(14), time(17, 30)))
    assert cal.holidays == frozenset({date(2026, 5, 1), date(2026, 5, 4)})
    assert cal.working_weekends == frozenset({date(2026, 5, 9)})
    # Wednesday 17:00 + 1 h -> Thursday is off -> Monday 4 May is a holiday -> Tue 09:00.
    assert cal.add_working_hours(local(2026, 4, 29, 17), 1) == local(2026, 5, 5, 9)
    # Holidays and working weekends may be left out.
    raw = raw_calendar()
    del raw["holidays"], raw["working_weekends"]
    bare = parse_calendar(raw)
    assert (bare.holidays, bare.working_weekends) == (frozenset(), frozenset())


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"hours": [["13:00", "18:00"], ["09:00", "12:00"]]}, ValueError, "in order"),
        ({"hours": [["12:00", "09:00"]]}, ValueError, "ends before it starts"),
        ({"hours": [["09:00", "09:00"]]}, ValueError, "ends before it starts"),
        ({"hours": []}, ValueError, "needs working days and hours"),
        ({"working_days": []}, ValueError, "needs working days and hours"),
        ({"working_days": ["someday"]}, ValueError, "unknown working day 'someday'"),
        ({"timezone": "Mars/Olympus_Mons"}, KeyError, "Mars/Olympus_Mons"),
        ({"hours": [["9am", "5pm"]]}, ValueError, "9am"),
    ],
)
def test_malformed_calendars_are_refused(
    changes: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        parse_calendar(raw_calendar(**changes))


# -- properties -------------------------------------------------------------------------

FIVE_MINUTES = timedelta(minutes=5)


def is_working_instant(t: datetime) -> bool:
    """Oracle: is the five minutes starting at ``t`` working time (periods end on the hour)."""
    wall = t.astimezone(SHANGHAI)
    day = wall.date()
    if day in {date(2026, 10, d) for d in (1, 2, 5, 6, 7)}:
        return False
    if wall.weekday() >= 5 and day != date(2026, 10, 10):
        return False
    return time(9) <= wall.time() < time(12) or time(13) <= wall.time() < time(18)


def oracle(start: datetime, minutes: int) -> datetime:
    """Step five minutes at a time, counting working time, until ``minutes`` are worked."""
    t, worked = start, 0
    while worked < minutes:
        if is_working_instant(t):
            worked += 5
        t += FIVE_MINUTES
    return t


starts = st.builds(
    lambda day, slot: local(2026, 9, 20, 0, 0) + timedelta(days=day, minutes=5 * slot),
    st.integers(0, 30),  # 20 Sep to 20 Oct 2026: National Day and the 调休 Saturday
    st.integers(0, 24 * 12 - 1),
)
five_minute_steps = st.integers(1, 12 * 24)  # 5 min to 24 h


@settings(max_examples=60, deadline=None)
@given(start=starts, steps=five_minute_steps)
def test_working_deadline_matches_a_minute_stepping_oracle(start: datetime, steps: int) -> None:
    assert work(start, steps * 5 / 60) == oracle(start, steps * 5)


@settings(max_examples=100, deadline=None)
@given(
    start=starts,
    a=st.floats(0, 60, allow_nan=False),
    b=st.floats(0, 60, allow_nan=False),
)
def test_working_deadline_properties(start: datetime, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    due_lo, due_hi = work(start, lo), work(start, hi)
    # Monotone in the time limit, strictly so once the limits differ by a minute.
    assert due_lo <= due_hi
    if hi - lo >= 1 / 60:
        assert due_lo < due_hi
    # Working time passes no faster than the calendar.
    assert due_hi >= add_hours(CAL, start, hi, "calendar")
    # The deadline falls inside working time (at most at the end of a period).
    if timedelta(hours=hi) > timedelta(0):
        wall = due_hi.astimezone(SHANGHAI)
        assert CAL.is_working_day(wall.date())
        assert any(p_start < wall.time() <= p_end for p_start, p_end in CAL.periods)
    # Due soon never after due.
    d = deadline(CAL, start, hi, "working")
    assert d.due_soon_at <= d.due_at == due_hi


@settings(max_examples=100, deadline=None)
@given(start=starts, a=st.integers(0, 600), b=st.integers(1, 600))
def test_working_hours_add_up(start: datetime, a: int, b: int) -> None:
    """a then b working minutes is a + b working minutes (whole minutes: exact in floats)."""
    assert work(work(start, a / 60), b / 60) == work(start, (a + b) / 60)


@settings(max_examples=50, deadline=None)
@given(start=starts, hours=st.floats(0, 1000, allow_nan=False))
def test_calendar_deadline_is_exact_elapsed_time(start: datetime, hours: float) -> None:
    due = add_hours(CAL, start, hours, "calendar")
    assert due.tzinfo is UTC
    assert abs((due - start) - timedelta(hours=hours)) <= timedelta(microseconds=1)

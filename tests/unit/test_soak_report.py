"""The soak's pure parts: its kill schedule and its verdict on memory growth."""

from __future__ import annotations

import pytest

from bench.soak_report import (
    LEVELS_OFF,
    STEADY,
    STILL_GROWING,
    UNKNOWN,
    RssPoint,
    kill_schedule,
    rss_growth,
    slope,
    verdict,
)

VICTIMS = ("bridge", "writer", "monitor", "projector", "intake", "brain")
MIB = 1024  # KiB


def series(pid: int, start: float, end: float, step: float, kib_per_s: float, born: float = 0.0):
    """Samples of one pid every ``step`` s whose RSS rises by ``kib_per_s``."""
    out = []
    t = start
    while t <= end:
        out.append(RssPoint(t, pid, int(100 * MIB + (t - start) * kib_per_s), born))
        t += step
    return out


def test_kill_schedule_is_seeded_bounded_and_spaced() -> None:
    first = kill_schedule(7, 30.0, 1830.0, 60.0, VICTIMS)
    assert first == kill_schedule(7, 30.0, 1830.0, 60.0, VICTIMS)
    assert first != kill_schedule(8, 30.0, 1830.0, 60.0, VICTIMS)
    times = [t for t, _ in first]
    assert all(30.0 < t < 1830.0 for t in times)
    gaps = [b - a for a, b in zip([30.0, *times], times, strict=False)]
    assert all(30.0 <= g <= 90.0 for g in gaps)
    assert 20 <= len(first) <= 60  # about one a minute over 30 minutes
    assert {v for _, v in first} <= set(VICTIMS)
    assert len({v for _, v in first}) > 1


def test_no_kills_without_an_interval_or_victims() -> None:
    assert kill_schedule(1, 0.0, 600.0, 0.0, VICTIMS) == []
    assert kill_schedule(1, 0.0, 600.0, 60.0, ()) == []


def test_slope_is_mib_per_minute_of_one_pid() -> None:
    points = series(7, 0.0, 600.0, 5.0, kib_per_s=MIB / 60)  # 1 MiB a minute
    assert slope(points, 0.0, 600.0, settle_s=0.0) == pytest.approx(1.0, rel=0.01)


def test_a_restart_is_not_counted_as_a_fall_or_a_rise() -> None:
    # Grows 2 MiB/min, is killed at 300 s, the new pid starts 60 MiB lower and grows alike.
    old = series(7, 0.0, 295.0, 5.0, kib_per_s=2 * MIB / 60)
    new = [
        RssPoint(p.t + 300.0, 8, p.rss_kib - 60 * MIB, born=300.0)
        for p in series(8, 0.0, 300.0, 5.0, kib_per_s=2 * MIB / 60)
    ]
    assert slope(old + new, 0.0, 600.0, settle_s=30.0) == pytest.approx(2.0, rel=0.01)


def test_a_new_process_settling_does_not_count() -> None:
    # Its first 30 s it fills caches at 50 MiB/min, then stays flat.
    warming = series(9, 100.0, 130.0, 5.0, kib_per_s=50 * MIB / 60, born=100.0)
    flat = [RssPoint(t, 9, warming[-1].rss_kib, 100.0) for t in range(135, 400, 5)]
    assert slope(warming + flat, 100.0, 400.0, settle_s=30.0) == pytest.approx(0.0)
    assert slope(warming, 100.0, 130.0, settle_s=30.0) is None  # nothing settled yet


def test_verdicts() -> None:
    assert verdict(first=3.0, last=2.5) == STILL_GROWING  # as fast as at the start
    assert verdict(first=0.1, last=3.0) == STILL_GROWING  # started growing late
    assert verdict(first=None, last=3.0) == STILL_GROWING
    assert verdict(first=8.0, last=2.0) == LEVELS_OFF  # still above the floor, but slowing
    assert verdict(first=8.0, last=0.2) == LEVELS_OFF
    assert verdict(first=0.5, last=0.4) == STEADY  # below the floor throughout
    assert verdict(first=3.0, last=None) == UNKNOWN
    assert verdict(first=3.0, last=2.5, floor=5.0) == STEADY


def test_growth_that_levels_off_and_growth_that_does_not() -> None:
    # 6 MiB/min for the first 200 s, then flat: levels off.
    rising = series(7, 0.0, 200.0, 5.0, kib_per_s=6 * MIB / 60)
    top = rising[-1].rss_kib
    levelled = rising + [RssPoint(float(t), 7, top) for t in range(205, 605, 5)]
    growth = rss_growth(levelled, 0.0, 600.0, settle_s=0.0)
    assert growth.first == pytest.approx(6.0, rel=0.01)
    assert growth.last == pytest.approx(0.0)
    assert growth.verdict == LEVELS_OFF
    # 2 MiB/min throughout: a leak.
    leaking = rss_growth(series(7, 0.0, 600.0, 5.0, 2 * MIB / 60), 0.0, 600.0, settle_s=0.0)
    assert leaking.verdict == STILL_GROWING
    assert leaking.whole == pytest.approx(2.0, rel=0.01)

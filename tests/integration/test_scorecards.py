"""Scorecards and hotspots on real PostgreSQL, over hand-made read-model rows, and over HTTP.

The rows are written straight into ``service_cases`` and ``map_incidents`` (the
projections that write them are tested elsewhere), with outcomes chosen so that every
figure below can be worked out by hand; the working is in the comments.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from infra.pgstore import apply_schema, make_pool
from infra.settings import Settings
from projections.queries import BBox
from projections.scorecards import Scorecards
from tests.helpers.builders import NOTHING_TO_RATE
from tests.helpers.db import fresh_settings
from tests.helpers.web import Api, bearer, served

pytestmark = pytest.mark.integration

D1, D2 = "310101", "310104"
# Grid cells of the generated demo city (seed and layout are fixed), with their centres.
G1, G2 = "310101001001001", "310101001001002"
G3, G4 = "310104001001001", "310104001001002"
H1, H2, H3 = "310101001001003", "310101001001004", "310101001001005"
H4 = "310104001001003"
CELLS: dict[str, tuple[str, float, float]] = {
    G1: (D1, 121.48968, 31.23068),
    G2: (D1, 121.49125, 31.23068),
    H1: (D1, 121.49283, 31.23068),
    H2: (D1, 121.49440, 31.23068),
    H3: (D1, 121.49598, 31.23068),
    G3: (D2, 121.45032, 31.23068),
    G4: (D2, 121.45189, 31.23068),
    H4: (D2, 121.45347, 31.23068),
}
ROADS1, WATER1, ROADS2, WATER2 = "310101-roads", "310101-water", "310104-roads", "310104-water"
ONLY_G1 = BBox(121.4890, 31.2300, 121.4903, 31.2313)

START, END = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC)


def at(day: int, hour: int = 0, month: int = 3) -> datetime:
    return datetime(2025, month, day, hour, tzinfo=UTC)


# -- builders -------------------------------------------------------------------------------


def add_case(
    pool: ConnectionPool,
    grid: str | None,
    status: str,
    submitted: datetime,
    *,
    department: str | None = None,
    resolved: datetime | None = None,
    closed: datetime | None = None,
    due: datetime | None = None,
    extensions: int = 0,
    revisits: int = 0,
    rating: int | None = None,
    respond_by: datetime | None = None,
    first_contact: datetime | None = None,
    solved: bool | None = None,
    responsible_since: datetime | None = None,
) -> None:
    district, lon, lat = CELLS[grid] if grid else (None, None, None)
    case_id = uuid.uuid4()
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO service_cases (case_id, channel, external_id, category, description,"
            " status, lon, lat, grid_code, district_code, department_code, submitted_by,"
            " due_at, extensions, revisits, rating, submitted_at, updated_at, resolved_at,"
            " closed_at, version, respond_by, first_contact_at, solved, responsible_since)"
            " VALUES (%s, 'hotline', %s, 'road_damage', 'test', %s, %s, %s, %s, %s, %s,"
            " 'system:test', %s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s, %s, %s)",
            [
                case_id,
                str(case_id),
                status,
                lon,
                lat,
                grid,
                district,
                department,
                due,
                extensions,
                revisits,
                rating,
                submitted,
                closed or resolved or submitted,
                resolved,
                closed,
                respond_by,
                first_contact,
                solved,
                responsible_since,
            ],
        )


def add_incident(
    pool: ConnectionPool,
    grid: str,
    department: str,
    opened: datetime,
    *,
    resolved: datetime | None = None,
    closed: datetime | None = None,
    due: datetime | None = None,
    reworks: int = 0,
) -> None:
    district, lon, lat = CELLS[grid]
    status, stage = ("closed", "closed") if closed else ("open", "dispatched")
    with pool.connection() as conn:
        conn.execute(
            "INSERT INTO map_incidents (incident_id, kind, title, category, severity, status,"
            " alarm_status, acknowledged, trigger_count, lon, lat, grid_code, district_code,"
            " department_code, opened_at, updated_at, closed_at, version, stage,"
            " resolved_at, due_at, reworks)"
            " VALUES (%s, 'sensor', 'test', 'flooding', 'major', %s, 'cleared', true, 1,"
            " %s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s, %s, %s)",
            [
                uuid.uuid4(),
                status,
                lon,
                lat,
                grid,
                district,
                department,
                opened,
                closed or opened,
                closed,
                stage,
                resolved,
                due,
                reworks,
            ],
        )


# fmt: off
def add_work(pool: ConnectionPool) -> None:
    """March 2025's work, with outcomes chosen per metric (hours to close in brackets)."""
    # G1, roads of D1: 4 cases and 2 incidents in the period.
    # A case closed on time, rated 5 (10 h); one resolved late after an extension (24 h);
    # one without a due time, reopened after a rating of 2 (4 h); one extended, in progress.
    add_case(pool, G1, "closed", at(1), department=ROADS1, resolved=at(1, 10), closed=at(2),
             due=at(1, 12), rating=5)
    add_case(pool, G1, "resolved", at(2), department=ROADS1, resolved=at(3), due=at(2, 12),
             extensions=1)
    add_case(pool, G1, "closed", at(3), department=ROADS1, resolved=at(3, 4), closed=at(4),
             rating=2, revisits=1)
    add_case(pool, G1, "in_progress", at(4), department=ROADS1, due=at(5), extensions=1)
    # An incident resolved on time and verified, closed, after its due time (8 h); one open.
    add_incident(pool, G1, ROADS1, at(1), resolved=at(1, 2), closed=at(1, 8), due=at(1, 3))
    add_incident(pool, G1, ROADS1, at(6), due=at(6, 6))
    # Not in the period's work: rejected, submitted before it, submitted at its end.
    add_case(pool, G1, "rejected", at(4), department=ROADS1)
    add_case(pool, G1, "closed", at(20, month=2), department=ROADS1,
             resolved=at(20, 5, month=2), closed=at(21, month=2), rating=5)
    add_case(pool, G1, "submitted", END, department=ROADS1)
    add_incident(pool, G1, ROADS1, at(28, month=2), resolved=at(2), closed=at(2))
    # G2, water of D1: cancelled at the period's first instant; resolved at its due time to
    # the second, rated 4 (6 h); one not yet assigned to any department.
    add_case(pool, G2, "cancelled", START, department=WATER1)
    add_case(pool, G2, "closed", at(5), department=WATER1, resolved=at(5, 6), closed=at(6),
             due=at(5, 6), rating=4)
    add_case(pool, G2, "submitted", at(20))
    # G3, roads of D2: a case rated 1 after a revisit (2 h); an incident closed late
    # without a resolution time, reworked twice (12 h).
    add_case(pool, G3, "closed", at(10), department=ROADS2, resolved=at(10, 2), closed=at(11),
             due=at(11), rating=1, revisits=1)
    add_incident(pool, G3, ROADS2, at(10), closed=at(10, 12), due=at(10, 10), reworks=2)
    # G4, water of D2: one incident resolved late (6 h), no case at all.
    add_incident(pool, G4, WATER2, at(12), resolved=at(12, 5), closed=at(12, 6), due=at(12, 4))
    # A case without a place or department: on no card.
    add_case(pool, None, "closed", at(15), resolved=at(15, 1), closed=at(16), rating=5)
# fmt: on


def card(
    unit: str,
    *,
    cases: int,
    incidents: int,
    closed: int,
    closure: float,
    with_due: int,
    on_time: int,
    on_time_rate: float | None,
    reworked: int,
    rework: float | None,
    extended: int,
    extension: float | None,
    mean_h: float | None,
    median_h: float | None,
    rated: int,
    mean_rating: float | None,
    bad: int,
    bad_share: float | None,
    score: float,
    satisfied: int,
    satisfaction_rate: float | None,
    district: str | None = None,
) -> dict[str, Any]:
    """An expected scorecard row."""
    row: dict[str, Any] = {"unit_code": unit}
    if district is not None:
        row["district_code"] = district
    return {
        **row,
        "cases": cases,
        "incidents": incidents,
        "volume": cases + incidents,
        "closed": closed,
        "closure_rate": closure,
        "closed_with_due": with_due,
        "closed_on_time": on_time,
        "on_time_rate": on_time_rate,
        "reworked": reworked,
        "rework_rate": rework,
        "extended": extended,
        "extension_rate": extension,
        "mean_hours_to_close": mean_h,
        "median_hours_to_close": median_h,
        "rated": rated,
        "mean_rating": mean_rating,
        "bad_ratings": bad,
        "bad_rating_share": bad_share,
        "score": score,
        # None of this work has a first-contact deadline or a solved answer: only the
        # satisfaction rate is there, and the index is 100 x it.
        **NOTHING_TO_RATE,
        "satisfied": satisfied,
        "satisfaction_rate": satisfaction_rate,
        "three_rates_index": None
        if satisfaction_rate is None
        else round(100 * satisfaction_rate, 2),
    }


# fmt: off
# G1: closed 4 of 6; on time 2 of 3 with a due time (c1, i1; c2 late); reworked 1 of 4;
# extended 2 of 4 cases; hours 10, 24, 4, 8 -> mean 11.5, median 9; ratings 5 and 2.
# score = 100 * (.25 * 2/3 + .3 * 2/3 + .15 * (1 - .25) + .1 * (1 - .5) + .2 * (3.5 - 1) / 4)
#       = 65.4167
CARD_G1: dict[str, Any] = dict(
    cases=4, incidents=2, closed=4, closure=0.6667, with_due=3, on_time=2, on_time_rate=0.6667,
    reworked=1, rework=0.25, extended=2, extension=0.5, mean_h=11.5, median_h=9.0,
    rated=2, mean_rating=3.5, bad=1, bad_share=0.5, score=65.42,
    satisfied=1, satisfaction_rate=0.5,  # 5 of 5 and 2
)
# G2 (three cases): closed 1 of 3, on time to the second; rated 4.
# score = 100 * (.25 / 3 + .3 + .15 + .1 + .2 * .75) = 78.3333
CARD_G2: dict[str, Any] = dict(
    cases=3, incidents=0, closed=1, closure=0.3333, with_due=1, on_time=1, on_time_rate=1.0,
    reworked=0, rework=0.0, extended=0, extension=0.0, mean_h=6.0, median_h=6.0,
    rated=1, mean_rating=4.0, bad=0, bad_share=0.0, score=78.33,
    satisfied=1, satisfaction_rate=1.0,
)
# G2 without the unassigned case, as its department sees it.
# score = 100 * (.25 * .5 + .3 + .15 + .1 + .2 * .75) = 82.5
CARD_WATER1 = {**CARD_G2, "cases": 2, "closure": 0.5, "score": 82.5}
# G3: both closed; on time 1 of 2; both reworked; rated 1; hours 2 and 12.
# score = 100 * (.25 + .3 * .5 + .15 * 0 + .1 * 1 + .2 * 0) = 50
CARD_G3: dict[str, Any] = dict(
    cases=1, incidents=1, closed=2, closure=1.0, with_due=2, on_time=1, on_time_rate=0.5,
    reworked=2, rework=1.0, extended=0, extension=0.0, mean_h=7.0, median_h=7.0,
    rated=1, mean_rating=1.0, bad=1, bad_share=1.0, score=50.0,
    satisfied=0, satisfaction_rate=0.0,
)
# G4: no case, so no extension or satisfaction component: weights renormalised over
# closure, on time and rework: 100 * (.25 * 1 + .3 * 0 + .15 * 1) / .7 = 57.1429
CARD_G4: dict[str, Any] = dict(
    cases=0, incidents=1, closed=1, closure=1.0, with_due=1, on_time=0, on_time_rate=0.0,
    reworked=0, rework=0.0, extended=0, extension=None, mean_h=6.0, median_h=6.0,
    rated=0, mean_rating=None, bad=0, bad_share=None, score=57.14,
    satisfied=0, satisfaction_rate=None,
)
GRID = [
    card(G2, district=D1, **CARD_G2),
    card(G1, district=D1, **CARD_G1),
    card(G4, district=D2, **CARD_G4),
    card(G3, district=D2, **CARD_G3),
]
DISTRICT = [
    # D1 = G1 + G2: closed 5 of 9; on time 3 of 4; reworked 1 of 5; extended 2 of 7;
    # hours 10, 24, 4, 8, 6 -> mean 10.4, median 8; ratings 5, 2, 4 -> 3.6667.
    # score = 100 * (.25 * 5/9 + .3 * .75 + .15 * .8 + .1 * 5/7 + .2 * 2/3) = 68.8651
    card(D1, cases=7, incidents=2, closed=5, closure=0.5556, with_due=4, on_time=3,
         on_time_rate=0.75, reworked=1, rework=0.2, extended=2, extension=0.2857,
         mean_h=10.4, median_h=8.0, rated=3, mean_rating=3.6667, bad=1, bad_share=0.3333,
         score=68.87, satisfied=2, satisfaction_rate=0.6667),
    # D2 = G3 + G4: closed 3 of 3; on time 1 of 3; reworked 2 of 3; hours 2, 12, 6.
    # score = 100 * (.25 + .3 / 3 + .15 / 3 + .1 + 0) = 50
    card(D2, cases=1, incidents=2, closed=3, closure=1.0, with_due=3, on_time=1,
         on_time_rate=0.3333, reworked=2, rework=0.6667, extended=0, extension=0.0,
         mean_h=6.67, median_h=6.0, rated=1, mean_rating=1.0, bad=1, bad_share=1.0,
         score=50.0, satisfied=0, satisfaction_rate=0.0),
]
DEPARTMENT = [
    card(WATER1, **CARD_WATER1),
    card(ROADS1, **CARD_G1),
    card(WATER2, **CARD_G4),
    card(ROADS2, **CARD_G3),
]
# fmt: on


@pytest.fixture
def pool(settings: Settings) -> Iterator[ConnectionPool]:
    """A pool on the test's fresh database, with the project's tables."""
    pool = make_pool(settings, max_size=2)
    with pool.connection() as conn:
        apply_schema(conn)
    yield pool
    pool.close()


@pytest.fixture
def work(pool: ConnectionPool) -> Scorecards:
    add_work(pool)
    return Scorecards(pool)


# -- scorecards -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [("grid", GRID), ("district", DISTRICT), ("department", DEPARTMENT)],
)
def test_every_figure_at_each_level(work: Scorecards, level: Any, expected: Any) -> None:
    assert work.scorecards(level, START, END) == expected


# fmt: off
def test_the_three_rates_by_hand(pool: ConnectionPool) -> None:
    """April's cases of one department, each deciding a rate (hours to close in brackets)."""
    traffic = "310101-traffic"
    april = {"department": traffic, "month": 4}

    def case(day: int, status: str = "closed", **kw: Any) -> None:
        d = april | kw
        add_case(pool, H1, status, at(day, 0, d.pop("month")), **d)

    # Called within the 2 hours, rated 5, solved (2 h).
    case(1, resolved=at(1, 2, 4), respond_by=at(1, 2, 4), first_contact=at(1, 1, 4),
         rating=5, solved=True)
    # Called 1 hour late, rated 4, not solved (2 h).
    case(2, resolved=at(2, 2, 4), respond_by=at(2, 2, 4), first_contact=at(2, 3, 4),
         rating=4, solved=False)
    # Never called, the deadline long past; rated 2, not solved (2 h).
    case(3, resolved=at(3, 2, 4), respond_by=at(3, 2, 4), rating=2, solved=False)
    # Rated 3, the solved question not asked; called on time (2 h).
    case(4, resolved=at(4, 2, 4), respond_by=at(4, 2, 4), first_contact=at(4, 0, 4), rating=3)
    # Not called yet, its first contact due in the future: not counted.
    case(5, "assigned", respond_by=datetime(2999, 1, 1, tzinfo=UTC))
    # Moved here by an upheld dispute on the 6th: its hours count from then (5 h, not 29).
    case(5, "resolved", resolved=at(6, 5, 4), responsible_since=at(6, 0, 4))
    (row,) = Scorecards(pool).scorecards("department", at(1, 0, 4), at(1, 0, 5))
    # response 2 on time (c1, c4) of 4 due; resolution 1 solved of 3 asked; satisfaction
    # 5 and 4 of 4 rated; index 100 * (.1 * .5 + .45 / 3 + .45 * .5) = 42.5;
    # hours (2 + 2 + 2 + 2 + 5) / 5 = 2.6.
    expected = {
        "response_due": 4, "responded_on_time": 2, "response_rate": 0.5,
        "solved_asked": 3, "solved": 1, "resolution_rate": 0.3333,
        "satisfied": 2, "satisfaction_rate": 0.5,
        "three_rates_index": 42.5, "mean_hours_to_close": 2.6,
    }
    assert {k: row[k] for k in expected} == expected
# fmt: on


def test_period_is_start_inclusive_end_exclusive(work: Scorecards) -> None:
    first_days = work.scorecards("grid", START, at(5))
    # G1: the four cases and the first incident (the second opened on the 6th); G2: the
    # case cancelled at START (the other was submitted on the 5th, the period's end).
    assert [(r["unit_code"], r["cases"], r["incidents"]) for r in first_days] == [
        (G1, 4, 1),
        (G2, 1, 0),
    ]
    # The case submitted at END belongs to April.
    april = work.scorecards("grid", END, at(1, month=5))
    assert [(r["unit_code"], r["volume"], r["closed"]) for r in april] == [(G1, 1, 0)]
    assert work.scorecards("district", at(1, month=1), at(1, month=2)) == []


def test_district_bbox_and_department_filters(work: Scorecards) -> None:
    assert work.scorecards("grid", START, END, district_code=D2) == GRID[2:]
    assert work.scorecards("grid", START, END, bbox=ONLY_G1) == [GRID[1]]
    roads = work.scorecards("district", START, END, department_code=ROADS1)
    assert roads == [card(D1, **CARD_G1)]
    assert work.scorecards("district", START, END, district_code=D2, department_code=ROADS1) == []


def test_rejects_unknown_level_and_empty_period(work: Scorecards) -> None:
    with pytest.raises(ValueError, match="level"):
        work.scorecards("city", START, END)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="after start"):
        work.scorecards("grid", END, START)


# -- hotspots -------------------------------------------------------------------------------

NOW = datetime(2025, 6, 1, 8, tzinfo=UTC)
DAY = timedelta(hours=24)


def add_traffic(pool: ConnectionPool, now: datetime, *, edges: bool = True) -> None:
    """28 days of history and the last 24 hours, per cell (``edges``: at the boundaries)."""
    hour = timedelta(hours=1)

    def cases(grid: str, n: int, when: datetime) -> None:
        for i in range(n):
            add_case(pool, grid, "submitted", when - i * timedelta(minutes=1))

    for k in range(1, 29):
        earlier = now - k * DAY - hour  # inside window k
        cases(H1, 1, earlier)  # steady: one a day
        cases(H2, 2 if k % 2 else 8, earlier)  # 2, 8, 2, 8: mean 5, stddev 3
        cases(H4, 4 if k % 4 == 0 else 0, earlier)  # 4 on 7 days of 28: mean 1, sd sqrt(3)
    cases(H1, 7, now - hour)  # a spike
    cases(H2, 9, now - hour)  # busy as usual
    cases(H3, 2, now - hour)  # new, but only two cases
    cases(H4, 8, now - hour)  # a spike over a patchy history
    if edges:
        add_case(pool, H1, "submitted", now - DAY)  # the window's first instant: in it
        add_case(pool, H1, "rejected", now - hour)  # a rejected duplicate still counts
        add_case(pool, H1, "submitted", now)  # after the window
        add_case(pool, H1, "submitted", now - 29 * DAY - hour)  # before the history


def hotspot(grid: str, district: str, **figures: float) -> dict[str, Any]:
    return {"grid_code": grid, "district_code": district, **figures}


def test_hotspots_against_each_cells_own_history(pool: ConnectionPool) -> None:
    add_traffic(pool, NOW)
    cards = Scorecards(pool)
    # H1: 9 now, mean 1, stddev 0 -> (9 - 1) / max(0, 1, 1) = 8. H4: zero days count:
    # mean 28 / 28 = 1, stddev sqrt(16 / 4 - 1) = sqrt(3) -> 7 / sqrt(3) = 4.0415 (over
    # the non-empty days only it would be (8 - 4) / 2 = 2, no hotspot). H2: (9 - 5) / 3.
    # H3: (2 - 0) / 1 = 2, with fewer cases than min_cases.
    h1 = hotspot(H1, D1, count=9, mean=1.0, stddev=0.0, score=8.0)
    h4 = hotspot(H4, D2, count=8, mean=1.0, stddev=1.7321, score=4.0415)
    h2 = hotspot(H2, D1, count=9, mean=5.0, stddev=3.0, score=1.3333)
    h3 = hotspot(H3, D1, count=2, mean=0.0, stddev=0.0, score=2.0)
    assert cards.hotspots(hours=24, now=NOW) == [h1, h4]
    assert cards.hotspots(hours=24, now=NOW, z=1.0) == [h1, h4, h2]
    assert cards.hotspots(hours=24, now=NOW, z=2.0, min_cases=2) == [h1, h4, h3]
    assert cards.hotspots(hours=24, now=NOW, district_code=D2) == [h4]
    h1_box = BBox(121.4920, 31.2300, 121.4935, 31.2313)
    assert cards.hotspots(hours=24, now=NOW, bbox=h1_box, z=0.5) == [h1]
    # Seen from a day later, yesterday's spike is history and nothing is happening now.
    assert cards.hotspots(hours=24, now=NOW + DAY) == []


def test_hotspot_windows_of_other_lengths(pool: ConnectionPool) -> None:
    add_traffic(pool, NOW, edges=False)
    cards = Scorecards(pool)
    # 48-hour windows over 28 days: 14 windows of history. H1: the 7 of the last hours
    # and yesterday's one; the history holds the other 27 days' cases, 2 per window and
    # 1 in the oldest: mean 27 / 14, stddev sqrt(53 / 14 - (27 / 14) ** 2) = 0.2575, below
    # sqrt(mean): score (8 - 27 / 14) / sqrt(27 / 14) = 4.3719.
    assert cards.hotspots(hours=48, now=NOW, district_code=D1) == [
        hotspot(H1, D1, count=8, mean=1.9286, stddev=0.2575, score=4.3719)
    ]
    with pytest.raises(ValueError, match="no whole window"):
        cards.hotspots(hours=48, now=NOW, history_days=1)


# -- HTTP -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The app over one database with March 2025's work and the last 29 days' traffic."""
    with fresh_settings(tmp_path_factory.mktemp("city") / "city") as settings:
        pool = make_pool(settings, max_size=2)
        try:
            with pool.connection() as conn:
                apply_schema(conn)
            add_work(pool)
            # A minute back: the API's windows end at its own "now", a little later.
            add_traffic(pool, datetime.now(UTC) - timedelta(minutes=1), edges=False)
            with served(settings) as client:
                yield Api(settings, client)
        finally:
            pool.close()


def test_api_scorecards(api: Api) -> None:
    for level, expected in (("grid", GRID), ("district", DISTRICT), ("department", DEPARTMENT)):
        r = api.get("/api/v1/scorecards", level=level, start=START.isoformat(), end=END.isoformat())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["units"] == expected
        assert (body["level"], body["start"], body["end"]) == (
            level,
            "2025-03-01T00:00:00+00:00",
            "2025-04-01T00:00:00+00:00",
        )
        assert body["weights"] == {
            "version": 2,
            "closure": 0.25,
            "on_time": 0.3,
            "rework": 0.15,
            "extension": 0.1,
            "satisfaction": 0.2,
            "three_rates": {"response": 0.1, "resolution": 0.45, "satisfaction": 0.45},
        }
    r = api.get(
        "/api/v1/scorecards",
        level="grid",
        start="2025-03-01T08:00:00+08:00",  # the same instant as START
        end="2025-04-01T00:00:00Z",
        bbox="121.4890,31.2300,121.4903,31.2313",
    )
    assert r.json()["units"] == [GRID[1]]
    r = api.get(
        "/api/v1/scorecards",
        start=START.isoformat(),
        end=END.isoformat(),
        district_code=D2,
        department_code=WATER2,
    )
    assert [u["unit_code"] for u in r.json()["units"]] == [D2]


def test_api_scorecards_default_to_the_last_30_days(api: Api) -> None:
    body = api.get("/api/v1/scorecards", level="grid").json()
    start, end = datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"])
    assert end - start == timedelta(days=30)
    assert abs(datetime.now(UTC) - end) < timedelta(minutes=1)
    # Only the last 29 days' traffic, none of March 2025's work.
    volumes = {u["unit_code"]: u["volume"] for u in body["units"]}
    assert volumes == {H1: 35, H2: 149, H3: 2, H4: 36}
    # A start alone: up to now.
    since = datetime.now(UTC) - timedelta(days=10)
    body = api.get("/api/v1/scorecards", start=since.isoformat()).json()
    assert datetime.fromisoformat(body["start"]) == since
    assert abs(datetime.now(UTC) - datetime.fromisoformat(body["end"])) < timedelta(minutes=1)


def test_api_hotspots(api: Api) -> None:
    r = api.get("/api/v1/hotspots")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(h["grid_code"], h["count"], h["score"]) for h in body["hotspots"]] == [
        (H1, 7, 6.0),
        (H4, 8, 4.0415),
    ]
    window_start = datetime.fromisoformat(body["window"]["start"])
    assert datetime.fromisoformat(body["window"]["end"]) - window_start == DAY
    assert body["history"]["windows"] == 28
    assert (body["z"], body["min_cases"]) == (3.0, 3)
    r = api.get("/api/v1/hotspots", district_code=D1, z=1, min_cases=2, hours=24)
    assert [h["grid_code"] for h in r.json()["hotspots"]] == [H1, H3, H2]
    r = api.get("/api/v1/hotspots", bbox="121.45,31.23,121.46,31.24")
    assert [h["grid_code"] for h in r.json()["hotspots"]] == [H4]


def test_api_hotspots_geojson(api: Api) -> None:
    r = api.get("/api/v1/hotspots.geojson", history_days=28)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["type"] == "FeatureCollection"
    assert [f["id"] for f in doc["features"]] == [H1, H4]
    grid = api.client.get("/api/v1/map/layers/grid", headers=bearer(api.settings)).json()
    polygons = {f["id"]: f["geometry"] for f in grid["features"]}
    for f in doc["features"]:
        assert f["type"] == "Feature"
        assert f["geometry"]["type"] == "Polygon"
        assert f["geometry"] == polygons[f["id"]]
        assert set(f["properties"]) == {
            "grid_code",
            "district_code",
            "count",
            "mean",
            "stddev",
            "score",
        }
    assert doc["features"][1]["properties"]["stddev"] == 1.7321
    assert doc["window"]["hours"] == 24


@pytest.mark.parametrize(
    "path", ["/api/v1/scorecards", "/api/v1/hotspots", "/api/v1/hotspots.geojson"]
)
def test_api_access(api: Api, path: str) -> None:
    for role in ("operator", "dispatcher", "auditor"):
        assert api.get(path, role).status_code == 200, role
    assert api.get(path, "citizen").status_code == 403
    assert api.get(path, None).status_code == 401


CARDS, HOT, HOT_GEO = "/api/v1/scorecards", "/api/v1/hotspots", "/api/v1/hotspots.geojson"
MARCH, APRIL = START.isoformat(), END.isoformat()
LONG = {"start": "2024-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z"}  # 367 days


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        (CARDS, {"level": "city"}, "invalid request"),
        (CARDS, {"start": APRIL, "end": MARCH}, "end must be after start"),
        (CARDS, {"start": MARCH, "end": MARCH}, "end must be after start"),
        (CARDS, LONG, "at most 366 days"),
        (CARDS, {"start": LONG["start"]}, "at most 366 days"),
        (CARDS, {"start": "2025-03-01T00:00:00"}, "UTC offset"),
        (CARDS, {"start": "yesterday"}, "invalid request"),
        (CARDS, {"bbox": "1,2,3"}, "bbox: bbox must be four numbers"),
        (CARDS, {"bbox": "3,2,1,4"}, "west <= east"),
        (CARDS, {"district_code": "31x"}, "invalid request"),
        (HOT, {"hours": 0}, "invalid request"),
        (HOT, {"hours": 169}, "invalid request"),
        (HOT, {"history_days": 0}, "invalid request"),
        (HOT, {"history_days": 366}, "invalid request"),
        (HOT, {"hours": 48, "history_days": 1}, "no whole window"),
        (HOT, {"z": -1}, "invalid request"),
        (HOT, {"min_cases": 0}, "invalid request"),
        (HOT_GEO, {"bbox": "a,b,c,d"}, "bbox"),
        (HOT_GEO, {"hours": 200}, "invalid request"),
    ],
)
def test_api_bad_input_is_422_with_a_message(
    api: Api, path: str, params: dict[str, Any], message: str
) -> None:
    r = api.get(path, **params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["detail"]
    assert "Traceback" not in r.text

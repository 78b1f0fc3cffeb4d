"""The responsibility catalogue (core/case/catalogue.py) and dispatch by it."""

from __future__ import annotations

from datetime import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.app import CityApp
from core.case.catalogue import (
    CatalogueError,
    CatalogueVersion,
    CatalogueVersionConflictError,
    Window,
    catalogue_version_id,
    load_catalogue,
    parse_catalogue,
)
from gis.shanghai import DISTRICTS
from tests.helpers.desk import CATEGORIES, DEPARTMENT_TYPES, FakeClock, make_desk, request

CODES = [c.code for c in CATEGORIES]
PACKAGED = load_catalogue(categories=CODES)
# Shanghai's departments, named as gis/shanghai.py names them: <district>-<type>.
SHANGHAI_UNITS = {f"{d.code}-{t}" for d in DISTRICTS for t in DEPARTMENT_TYPES}


def entry(entry_id: str = "e", **changes: Any) -> dict[str, Any]:
    return {
        "id": entry_id,
        "categories": ["flooding"],
        "area": "city",
        "lead": "{district}-water",
        "basis": "a regulation",
        **changes,
    }


def grid(low: str, high: str) -> dict[str, Any]:
    return {"grid": {"from": low, "to": high}}


def catalogue(*entries: dict[str, Any]) -> Any:
    return parse_catalogue({"version": 7, "entries": list(entries)}, CODES)


NOON = time(12, 0)


# -- the packaged catalogue ----------------------------------------------------------------


def test_the_packaged_catalogue_names_only_known_categories_and_shanghai_units() -> None:
    assert PACKAGED.version >= 1
    assert PACKAGED.entries
    assert PACKAGED.units(d.code for d in DISTRICTS) <= SHANGHAI_UNITS


@settings(max_examples=300, deadline=None)
@given(
    category=st.sampled_from(CODES),
    district=st.sampled_from([d.code for d in DISTRICTS]),
    cell=st.integers(0, 999_999_999),
    minute=st.integers(0, 24 * 60 - 1),
)
def test_every_category_place_and_time_has_at_most_one_entry_and_real_units(
    category: str, district: str, cell: int, minute: int
) -> None:
    grid_code = f"{district}{cell:09d}"
    at = time(minute // 60, minute % 60)
    winners = PACKAGED.winners(category, grid_code, district, at)
    assert len(winners) <= 1
    routing = PACKAGED.route(category, grid_code, district, at)
    if routing is None:
        return  # the jurisdiction polygons decide (one department per type and point)
    assert routing.lead in SHANGHAI_UNITS
    assert set(routing.co_handlers) <= SHANGHAI_UNITS
    assert routing.lead not in routing.co_handlers


def test_the_narrowest_area_wins_then_a_window() -> None:
    cat = catalogue(
        entry("city"),
        entry("district", area={"districts": ["310101"]}, lead="d-unit"),
        entry("night", area={"districts": ["310101"]}, hours="22:00-06:00", lead="n-unit"),
        entry("grid", area=grid("310101001000000", "310101001999999"), lead="g"),
    )
    bund, elsewhere = "310101001001013", "310101002001001"
    assert cat.route("flooding", bund, "310101", NOON).lead == "g"  # type: ignore[union-attr]
    assert cat.route("flooding", elsewhere, "310101", NOON).lead == "d-unit"  # type: ignore[union-attr]
    assert cat.route("flooding", elsewhere, "310101", time(23)).lead == "n-unit"  # type: ignore[union-attr]
    assert cat.route("flooding", elsewhere, "310101", time(5, 59)).lead == "n-unit"  # type: ignore[union-attr]
    assert cat.route("flooding", elsewhere, "310101", time(6)).lead == "d-unit"  # type: ignore[union-attr]
    assert cat.route("flooding", "310104001001001", "310104", NOON).lead == "310104-water"  # type: ignore[union-attr]
    assert cat.route("road_damage", bund, "310101", NOON) is None


def test_a_unit_named_by_district_needs_the_district() -> None:
    cat = catalogue(entry("city"))
    assert cat.route("flooding", None, None, NOON) is None
    fixed = catalogue(entry("fixed", lead="water-west"))
    assert fixed.route("flooding", None, None, NOON).lead == "water-west"  # type: ignore[union-attr]


def test_a_window_runs_over_midnight() -> None:
    night = Window(22 * 60, 6 * 60)
    assert [night.contains(time(h)) for h in (21, 22, 0, 5, 6)] == [False, True, True, True, False]
    assert str(night) == "22:00-06:00"
    assert night.overlaps(Window(5 * 60, 7 * 60))
    assert not night.overlaps(Window(6 * 60, 22 * 60))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry("a"), entry("b")], "entries a and b could both route a case of flooding"),
        (
            [
                entry("a", area={"districts": ["310101", "310104"]}),
                entry("b", area={"districts": ["310104"]}),
            ],
            "entries a and b could both",
        ),
        (
            [
                entry("a", area=grid("310101001000000", "310101001500000")),
                entry("b", area=grid("310101001400000", "310101001999999")),
            ],
            "entries a and b could both",
        ),
        (
            [entry("a", hours="20:00-08:00"), entry("b", hours="07:00-09:00")],
            "entries a and b could both",
        ),
        ([entry("a"), entry("a", categories=["road_damage"])], "entry id a is used twice"),
        ([entry(categories=["volcano"])], "unknown categories ['volcano']"),
        ([entry(categories=[])], "names no category"),
        ([entry(hours="25:00-06:00")], "is not a time HH:MM"),
        ([entry(hours="08:00")], "hours must read HH:MM-HH:MM"),
        ([entry(hours="08:00-08:00")], "is empty"),
        ([entry(lead="{street}-water")], "is not a unit code"),
        ([entry(co_handlers=["{district}-water"])], "named twice"),
        ([entry(basis=" ")], "gives no legal basis"),
        ([entry(area={"districts": ["31010"]})], "6-digit codes"),
        (
            [entry(area=grid("310101001999999", "310101001000000"))],
            "from <= to",
        ),
        (
            [entry(area=grid("310101001000000", "310104001000000"))],
            "one district",
        ),
        ([entry(area={"street": "x"})], "area is 'city'"),
        ([entry(area={"grid": "310101001000000"})], "grid is"),
        ([entry(area={"districts": "310101"})], "districts is a list"),
        (["not a mapping"], "entries is a list of mappings"),
        ([entry(entry_id="Bad Id")], "id must match"),
    ],
)
def test_a_bad_catalogue_is_refused_with_the_reason(
    entries: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(CatalogueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        catalogue(*entries)


def test_disjoint_windows_and_areas_may_share_a_category() -> None:
    cat = catalogue(
        entry("day", hours="06:00-22:00"),
        entry("night", hours="22:00-06:00", lead="{district}-urban_management"),
        entry("a", area={"districts": ["310101"]}),
        entry("b", area={"districts": ["310104"]}),
    )
    assert len(cat.entries) == 4


def test_version_must_be_a_positive_integer() -> None:
    with pytest.raises(CatalogueError, match="version must be a positive integer"):
        parse_catalogue({"version": "2", "entries": []})


# -- dispatch by the catalogue -------------------------------------------------------------


def desk_with(clock: FakeClock, *entries: dict[str, Any]) -> Any:
    return make_desk(CityApp(), clock, catalogue=catalogue(*entries))


def test_dispatch_records_the_catalogue_entry_lead_and_co_handlers() -> None:
    clock = FakeClock()
    desk = desk_with(
        clock,
        entry("roads", categories=["road_damage"], lead="roads-east", co_handlers=["traffic-west"]),
    )
    case = desk.submit(request(), actor="citizen:1", correlation_id="c")
    assert case.status == "assigned"
    assert case.department_code == "roads-east"  # the polygons would say roads-west
    assert case.dispatch == {
        "by": "policy",
        "department_type": "roads",
        "categories_version": 2,
        "rule": "catalogue",
        "catalogue_version": 7,
        "catalogue_entry": "roads",
        "lead": "roads-east",
        "co_handlers": ["traffic-west"],
        "co_handler_parts": {},
        "basis": "a regulation",
        "time_limit_h": 24.0,
        "clock": "working",
        "clock_started_at": "2026-03-02T01:30:00+00:00",
        "respond_by": "2026-03-02T03:30:00+00:00",
        "dispute_until": "2026-03-02T05:30:00+00:00",
    }


def test_the_hours_are_the_city_time_the_case_was_received() -> None:
    clock = FakeClock()
    desk = desk_with(
        clock,
        entry("day", categories=["road_damage"], lead="roads-east"),
        entry("night", categories=["road_damage"], hours="22:00-06:00", lead="roads-west"),
    )
    day = desk.submit(request("d"), actor="citizen:1", correlation_id="c")
    # 01:30 UTC is 09:30 in Shanghai; 15:00 UTC is 23:00 there.
    clock.advance(hours=13, minutes=30)
    night = desk.submit(request("n"), actor="citizen:1", correlation_id="c")
    assert (day.department_code, night.department_code) == ("roads-east", "roads-west")
    assert night.dispatch is not None
    assert night.dispatch["catalogue_entry"] == "night"
    assert night.dispatch["clock_started_at"] == "2026-03-02T15:00:00+00:00"
    clock.advance(hours=7)  # 06:00 in Shanghai: day again
    morning = desk.submit(request("m"), actor="citizen:1", correlation_id="c")
    assert morning.department_code == "roads-east"


@pytest.mark.parametrize(
    ("found", "unknown"),
    [
        # The entry names a unit the city does not have: the decision says which.
        (entry("gone", categories=["road_damage"], lead="roads-north"), "roads-north"),
        # No entry for the category.
        (entry("other", categories=["flooding"], lead="water-west"), None),
    ],
)
def test_otherwise_the_polygons_decide(found: dict[str, Any], unknown: str | None) -> None:
    case = desk_with(FakeClock(), found).submit(request(), actor="citizen:1", correlation_id="c")
    assert case.department_code == "roads-west"
    assert case.dispatch is not None
    assert case.dispatch["rule"] == "jurisdiction_polygon"
    assert case.dispatch.get("catalogue_unit_unknown") == unknown


# -- each version recorded once ------------------------------------------------------------


def test_a_version_is_recorded_once_and_a_changed_one_under_its_number_is_refused() -> None:
    app = CityApp()
    assert app.publish_catalogue(PACKAGED, actor="system:seed", correlation_id="s1")
    assert not app.publish_catalogue(PACKAGED, actor="system:seed", correlation_id="s2")
    recorded = app.get_typed(catalogue_version_id(PACKAGED.version), CatalogueVersion, "v")
    assert (recorded.catalogue_version, recorded.digest) == (PACKAGED.version, PACKAGED.digest)
    assert (
        parse_catalogue({"version": 2, "entries": recorded.entries}, CODES) == PACKAGED
    )  # round trip
    changed = parse_catalogue({"version": PACKAGED.version, "entries": [entry("only")]}, CODES)
    with pytest.raises(CatalogueVersionConflictError, match="publish the change as a new version"):
        app.publish_catalogue(changed, actor="system:seed", correlation_id="s3")
    assert app.publish_catalogue(
        parse_catalogue({"version": PACKAGED.version + 1, "entries": [entry("only")]}, CODES),
        actor="system:seed",
        correlation_id="s4",
    )

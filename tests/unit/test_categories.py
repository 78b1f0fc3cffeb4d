"""Service-case categories: the packaged reference data, malformed files, Open311 attributes."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from core.case.categories import (
    DATATYPES,
    Attribute,
    Categories,
    CategoriesError,
    Category,
    InvalidAttributeError,
    UnknownCategoryError,
    load_categories,
    parse_categories,
)
from core.errors import DomainError

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def packaged() -> Categories:
    return load_categories()


def test_the_packaged_file_loads(packaged: Categories) -> None:
    assert packaged.version >= 1
    assert len(packaged) >= 20
    assert len(list(packaged)) == len(packaged)
    assert packaged.calendar.timezone == "Asia/Shanghai"
    assert (packaged.revisit.max_rating, packaged.revisit.clock) == (2, "working")
    assert packaged.revisit.time_limit_h > 0


def test_every_packaged_category_is_well_formed(packaged: Categories) -> None:
    department_types = set()
    for cat in packaged:
        assert packaged.get(cat.code) is cat
        assert re.fullmatch(r"[a-z][a-z0-9_]*", cat.code), cat.code
        assert CJK.search(cat.name_zh), cat.code
        assert cat.name_en.strip(), cat.code
        assert not CJK.search(cat.name_en), cat.code
        assert cat.case_class in ("component", "event")
        assert cat.clock in ("calendar", "working")
        assert cat.time_limit_h > 0
        assert cat.duplicate_radius_m > 0
        assert cat.department_type
        department_types.add(cat.department_type)
        codes = [a.code for a in cat.attributes]
        assert len(codes) == len(set(codes)), cat.code
        for attr in cat.attributes:
            assert attr.datatype in DATATYPES
            if attr.datatype.endswith("valuelist"):
                assert attr.values
    assert {"component", "event"} == {c.case_class for c in packaged}
    assert {"roads", "water", "sanitation", "traffic"} <= department_types


def test_packaged_names_are_unique(packaged: Categories) -> None:
    cats = list(packaged)
    assert len({c.name_zh for c in cats}) == len(cats)
    assert len({c.name_en for c in cats}) == len(cats)


def test_unknown_category(packaged: Categories) -> None:
    with pytest.raises(UnknownCategoryError, match="unknown service_code 'ufo'") as err:
        packaged.get("ufo")
    assert isinstance(err.value, DomainError)


def test_flooding_is_defined_as_open311_attributes(packaged: Categories) -> None:
    flooding = packaged.get("flooding")
    assert (flooding.time_limit_h, flooding.clock, flooding.case_class) == (
        2.0,
        "calendar",
        "event",
    )
    depth = next(a for a in flooding.attributes if a.code == "water_depth")
    assert depth.required
    assert depth.datatype == "singlevaluelist"
    assert [k for k, _ in depth.values] == ["ankle", "knee", "above_knee"]


# -- malformed files --------------------------------------------------------------------


def valid_doc() -> dict[str, Any]:
    return {
        "version": 3,
        "calendar": {
            "timezone": "Asia/Shanghai",
            "working_days": ["mon", "tue", "wed", "thu", "fri"],
            "hours": [["09:00", "12:00"], ["13:00", "18:00"]],
        },
        "revisit": {"max_rating": 2, "time_limit": 16, "clock": "working"},
        "categories": [
            {
                "code": "pothole",
                "name_zh": "坑洼",
                "name_en": "Pothole",
                "class": "event",
                "department_type": "roads",
                "time_limit": 24,
                "clock": "working",
                "duplicate_radius_m": 50,
                "attributes": [
                    {
                        "code": "size",
                        "datatype": "singlevaluelist",
                        "values": [["small", "small"], ["large", "large"]],
                    }
                ],
            },
            {
                "code": "lamp",
                "name_zh": "路灯",
                "name_en": "Lamp",
                "class": "component",
                "department_type": "lighting",
                "time_limit": 2.5,
                "clock": "calendar",
                "duplicate_radius_m": 0,
            },
        ],
    }


def test_a_valid_document_parses() -> None:
    cats = parse_categories(valid_doc())
    assert cats.version == 3
    assert [c.code for c in cats] == ["pothole", "lamp"]
    lamp = cats.get("lamp")
    assert lamp == Category(
        code="lamp",
        name_zh="路灯",
        name_en="Lamp",
        case_class="component",
        department_type="lighting",
        time_limit_h=2.5,
        clock="calendar",
        duplicate_radius_m=0.0,
    )
    size = cats.get("pothole").attributes[0]
    assert size == Attribute(
        code="size",
        datatype="singlevaluelist",
        required=False,
        description="size",  # defaults to the code
        values=(("small", "small"), ("large", "large")),
    )


def test_the_yaml_text_round_trips() -> None:
    text = yaml.safe_dump(valid_doc(), allow_unicode=True)
    assert parse_categories(yaml.safe_load(text)) == parse_categories(valid_doc())


def broken(change: str) -> Any:
    doc = valid_doc()
    first = doc["categories"][0]
    if change == "duplicate code":
        doc["categories"].append(copy.deepcopy(first))
    elif change == "bad clock":
        first["clock"] = "lunar"
    elif change == "bad revisit clock":
        doc["revisit"]["clock"] = "wall"
    elif change == "valuelist without values":
        first["attributes"][0]["values"] = []
    elif change == "multivaluelist without values":
        first["attributes"] = [{"code": "kinds", "datatype": "multivaluelist"}]
    elif change == "unknown datatype":
        first["attributes"][0]["datatype"] = "colour"
    elif change == "bad class":
        first["class"] = "incident"
    elif change == "zero time limit":
        first["time_limit"] = 0
    elif change == "negative time limit":
        first["time_limit"] = -4
    elif change == "nan time limit":
        first["time_limit"] = float("nan")
    elif change == "infinite time limit":
        first["time_limit"] = float("inf")
    elif change == "negative radius":
        first["duplicate_radius_m"] = -1
    elif change == "missing name":
        del first["name_en"]
    elif change == "missing categories":
        del doc["categories"]
    elif change == "non-numeric limit":
        first["time_limit"] = "a day"
    elif change == "bad working day":
        doc["calendar"]["working_days"] = ["mon", "funday"]
    elif change == "bad timezone":
        doc["calendar"]["timezone"] = "Atlantis/Capital"
    elif change == "periods out of order":
        doc["calendar"]["hours"].reverse()
    elif change == "not a mapping":
        return ["categories"]
    elif change == "empty file":
        return None
    else:  # pragma: no cover
        raise AssertionError(change)
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("duplicate code", "category pothole: defined twice"),
        ("bad clock", "category pothole: clock must be 'calendar' or 'working', not 'lunar'"),
        ("bad revisit clock", "revisit: clock must be 'calendar' or 'working', not 'wall'"),
        ("valuelist without values", "category pothole: a singlevaluelist needs values"),
        ("multivaluelist without values", "category pothole: a multivaluelist needs values"),
        ("unknown datatype", "category pothole: unknown datatype 'colour'"),
        ("bad class", "category pothole: class must be component or event"),
        ("zero time limit", "category pothole: time_limit and radius must be positive"),
        ("negative time limit", "category pothole: time_limit and radius must be positive"),
        ("nan time limit", "category pothole: time_limit and radius must be positive"),
        ("infinite time limit", "category pothole: time_limit and radius must be positive"),
        ("negative radius", "category pothole: time_limit and radius must be positive"),
        ("missing name", "malformed categories file: KeyError('name_en')"),
        ("missing categories", "malformed categories file: KeyError('categories')"),
        ("non-numeric limit", "malformed categories file: ValueError"),
        ("bad working day", "unknown working day 'funday'"),
        ("bad timezone", "Atlantis/Capital"),
        ("periods out of order", "working periods must be in order"),
        ("not a mapping", "malformed categories file: TypeError"),
        ("empty file", "malformed categories file: TypeError"),
    ],
)
def test_malformed_files_are_refused_clearly(change: str, message: str) -> None:
    with pytest.raises(CategoriesError) as err:
        parse_categories(broken(change))
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


# -- attribute validation ---------------------------------------------------------------


def category(*attributes: Attribute) -> Category:
    return Category(
        code="thing",
        name_zh="东西",
        name_en="Thing",
        case_class="event",
        department_type="roads",
        time_limit_h=1,
        clock="calendar",
        duplicate_radius_m=10,
        attributes=attributes,
    )


DEPTH = Attribute("depth_cm", "number", True, "Depth in cm")
SIZE = Attribute("size", "singlevaluelist", False, "Size", (("s", "small"), ("l", "large")))
KINDS = Attribute(
    "kinds", "multivaluelist", False, "Kinds", (("oil", "oil"), ("foam", "foam"), ("dye", "dye"))
)
NOTE = Attribute("note", "text", False, "A note")
WHEN = Attribute("seen_at", "datetime", False, "When")
THING = category(DEPTH, SIZE, KINDS, NOTE, WHEN)


@pytest.mark.parametrize(
    ("raw", "value"),
    [(12, 12.0), ("12.5", 12.5), (" 7 ", 7.0), ("-3", -3.0), ("1e2", 100.0), (0, 0.0)],
)
def test_number_attribute(raw: object, value: float) -> None:
    assert THING.check_attributes({"depth_cm": raw}) == {"depth_cm": value}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("deep", "attribute depth_cm must be a number"),
        ([1], "attribute depth_cm must be a number"),
        ("nan", "attribute depth_cm must be a finite number"),
        ("inf", "attribute depth_cm must be a finite number"),
        (float("-inf"), "attribute depth_cm must be a finite number"),
    ],
)
def test_bad_numbers(raw: object, message: str) -> None:
    with pytest.raises(InvalidAttributeError, match=re.escape(message)):
        THING.check_attributes({"depth_cm": raw})


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("2026-05-01T08:30:00+08:00", "2026-05-01T00:30:00+00:00"),
        ("2026-05-01T00:30:00Z", "2026-05-01T00:30:00+00:00"),
        (" 2010-04-14T06:37:38-08:00 ", "2010-04-14T14:37:38+00:00"),  # GeoReport v2's example
    ],
)
def test_datetime_attribute_is_kept_in_utc(raw: str, value: str) -> None:
    checked = THING.check_attributes({"depth_cm": 1, "seen_at": raw})
    assert checked == {"depth_cm": 1.0, "seen_at": value}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("yesterday", "ISO 8601"),
        ("2026-13-01T00:00:00Z", "ISO 8601"),
        ("2026-05-01", "UTC offset"),
        ("2026-05-01T08:30:00", "UTC offset"),
    ],
)
def test_bad_datetimes(raw: str, message: str) -> None:
    with pytest.raises(InvalidAttributeError, match=message):
        THING.check_attributes({"depth_cm": 1, "seen_at": raw})


def test_singlevaluelist_attribute() -> None:
    assert THING.check_attributes({"depth_cm": 1, "size": "l"}) == {"depth_cm": 1.0, "size": "l"}
    with pytest.raises(InvalidAttributeError, match=r"attribute size: 'large' is not one of"):
        THING.check_attributes({"depth_cm": 1, "size": "large"})  # the name, not the key


@pytest.mark.parametrize(
    ("raw", "value"),
    [(["oil", "dye"], ["oil", "dye"]), ("oil,foam", ["oil", "foam"]), ("dye", ["dye"])],
)
def test_multivaluelist_attribute(raw: object, value: list[str]) -> None:
    assert THING.check_attributes({"depth_cm": 1, "kinds": raw})["kinds"] == value


@pytest.mark.parametrize("raw", [["oil", "tar"], "oil,tar", "oil,", ["OIL"]])
def test_bad_multivaluelist(raw: object) -> None:
    with pytest.raises(InvalidAttributeError, match=r"attribute kinds: '.*' is not one of"):
        THING.check_attributes({"depth_cm": 1, "kinds": raw})


def test_unknown_attribute() -> None:
    with pytest.raises(InvalidAttributeError, match="thing has no attribute 'colour'"):
        THING.check_attributes({"depth_cm": 1, "colour": "red"})


@pytest.mark.parametrize("missing", [{}, {"depth_cm": None}, {"depth_cm": ""}, {"depth_cm": []}])
def test_required_attribute(missing: dict[str, Any]) -> None:
    with pytest.raises(InvalidAttributeError, match="attribute depth_cm is required"):
        THING.check_attributes(missing)


def test_optional_attributes_left_out_are_not_stored() -> None:
    out = THING.check_attributes({"depth_cm": "3", "size": "", "kinds": [], "note": None})
    assert out == {"depth_cm": 3.0}


def test_text_attributes_are_bounded() -> None:
    assert THING.check_attributes({"depth_cm": 1, "note": "x" * 1000})["note"] == "x" * 1000
    with pytest.raises(InvalidAttributeError, match="longer than 1000"):
        THING.check_attributes({"depth_cm": 1, "note": "x" * 1001})


def test_a_category_without_attributes_accepts_only_none() -> None:
    bare = category()
    assert bare.check_attributes({}) == {}
    with pytest.raises(InvalidAttributeError, match="has no attribute 'x'"):
        bare.check_attributes({"x": 1})

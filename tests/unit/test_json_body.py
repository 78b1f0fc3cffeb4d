"""``api.routing.JSONBody`` writes what FastAPI's own serialization of a
``dict[str, Any]`` answer writes, byte for byte, for every kind of value an answer holds
(and a few it should not)."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import uuid
from typing import Any

import pytest
from pydantic import TypeAdapter

from api.routing import JSONBody

FASTAPIS_OWN = TypeAdapter(dict[str, Any])


class Status(enum.Enum):
    OPEN = "open"


UTC = dt.UTC
VALUES: dict[str, Any] = {
    "text": '上海市 12345 热线 "quoted" \\ \n',
    "float": 121.473701,
    "tiny": 1e-7,
    "huge": 1e22,
    "int": 2**53 + 1,
    "none": None,
    "bool": False,
    "utc": dt.datetime(2026, 12, 7, 1, 2, 3, 456, tzinfo=UTC),
    "utc whole second": dt.datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC),
    "shanghai": dt.datetime(2026, 12, 7, 9, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=8))),
    "date": dt.date(2026, 1, 2),
    "uuid": uuid.UUID("0b0e5b38-4d1c-4d55-9d43-6b3a4fbc1b0e"),
    "decimal": decimal.Decimal("1.50"),
    "set": {3},
    "tuple": (1, "a"),
    "enum": Status.OPEN,
    "nested": {"list": [{"x": [1.5, None]}], "empty": {}},
    "nan": math.nan,
    "inf": math.inf,
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_each_kind_of_value_is_written_as_fastapi_writes_it(name: str) -> None:
    doc = {name: VALUES[name]}
    assert JSONBody(doc).body == FASTAPIS_OWN.dump_json(doc)


def test_a_whole_answer_is_the_same_bytes() -> None:
    assert JSONBody(VALUES).body == FASTAPIS_OWN.dump_json(VALUES)


def test_it_is_json_with_the_status_given() -> None:
    answer = JSONBody({"a": 1}, status_code=201)
    assert answer.status_code == 201
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["content-length"] == str(len(b'{"a":1}'))

"""The writer's one decode per record: a telemetry value straight to COPY text lines."""

from __future__ import annotations

import orjson
import pytest

from sensors.writer import copy_lines


def value(**over: object) -> bytes:
    body: dict[str, object] = {
        "kind": "readings",
        "device_id": "wl-1",
        "gateway_id": "gw-1",
        "received_at": 1763700000.25,
        "readings": [
            {"ts": 1763700000.0, "metric": "water_level", "value": 38.5, "unit": "cm"},
            {"ts": 1763700000.0, "metric": "battery", "value": 91, "unit": "%"},
        ],
    }
    body.update(over)
    return orjson.dumps(body)


def test_each_reading_becomes_one_line_with_its_utc_time() -> None:
    lines: list[str] = []
    assert copy_lines(value(), lines) == 2
    assert lines == [
        "2025-11-21T04:40:00+00:00\twl-1\twater_level\t38.5\tcm\n",
        "2025-11-21T04:40:00+00:00\twl-1\tbattery\t91.0\t%\n",
    ]


def test_a_status_message_has_no_readings() -> None:
    lines: list[str] = []
    status = orjson.dumps(
        {
            "kind": "status",
            "device_id": "wl-1",
            "gateway_id": "g",
            "received_at": 1.0,
            "status": "offline",
        }
    )
    assert copy_lines(status, lines) == 0
    assert lines == []


def test_copy_specials_in_text_are_escaped() -> None:
    lines: list[str] = []
    weird = [{"ts": 1.0, "metric": "a\tb", "value": 1.0, "unit": "c\\d\ne"}]
    copy_lines(value(readings=weird), lines)
    assert lines == ["1970-01-01T00:00:01+00:00\twl-1\ta\\tb\t1.0\tc\\\\d\\ne\n"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        value(kind="other"),
        value(device_id=5),
        value(device_id="wl\x001"),
        value(readings=[{"ts": 1.0, "metric": "m", "value": "high", "unit": "cm"}]),
        value(readings=[{"ts": 1.0, "metric": "m", "unit": "cm"}]),
        value(readings=[{"ts": 1e400, "metric": "m", "value": 1.0, "unit": "cm"}]),
    ],
)
def test_a_value_that_is_not_telemetry_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        copy_lines(raw, [])

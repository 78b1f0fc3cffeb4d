"""core.sensor.senml: a device's position (cityops/<gateway>/<device>/location), converted
to WGS-84 at the edge; without a broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.sensor.senml import Limits, RejectedPayload, decode
from core.sensor.telemetry import Location, TelemetryMessage
from gis.china import to_wgs84_named
from gis.crs import distance_m

NOW = 1_763_700_000.0
DEVICE, GATEWAY = "wl-0042", "gw-01"
TOPIC = f"cityops/{GATEWAY}/{DEVICE}/location"
LIMITS = Limits(max_payload_bytes=1024, max_future_skew_s=300.0, max_past_age_s=86_400.0)
# eviltransform's Shanghai pair, (lon, lat): WGS-84 and its GCJ-02.
WGS = (121.5272106, 31.1774276)
GCJ = (121.531541859215, 31.17530398364597)
# Aliyun's conversion example: GCJ-02 and its BD-09.
ALIYUN_GCJ, ALIYUN_BD = (120.026268, 30.279164), (120.032768, 30.285238)


def located(body: Any, topic: str = TOPIC) -> TelemetryMessage:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return decode(topic, payload, NOW, {DEVICE: GATEWAY}.get, LIMITS, to_wgs84_named)


def reason(body: Any) -> str:
    with pytest.raises(RejectedPayload) as info:
        located(body)
    return info.value.reason_code


def off_m(where: Location | None, lonlat: tuple[float, float]) -> float:
    assert where is not None
    return float(distance_m(where.lon, where.lat, *lonlat))


def test_a_gcj02_position_leaves_the_decoder_in_wgs84() -> None:
    message = located({"lon": GCJ[0], "lat": GCJ[1], "coord_system": "GCJ-02", "ts": NOW - 5})
    assert message.kind == "location"
    assert message.readings == ()
    assert off_m(message.location, WGS) < 0.01
    assert message.location is not None
    assert (message.location.ts, message.location.coord_system) == (NOW - 5, "gcj02")


def test_a_bd09_position_leaves_the_decoder_in_wgs84() -> None:
    from_bd = located({"lon": ALIYUN_BD[0], "lat": ALIYUN_BD[1], "coord_system": "bd09ll"})
    from_gcj = located({"lon": ALIYUN_GCJ[0], "lat": ALIYUN_GCJ[1], "coord_system": "gcj02"})
    assert from_bd.location is not None
    assert from_gcj.location is not None
    # The published pair agrees to its six decimals (about 5 cm).
    assert off_m(from_bd.location, (from_gcj.location.lon, from_gcj.location.lat)) < 0.1
    assert from_bd.location.coord_system == "bd09"


def test_wgs84_is_the_default_and_is_not_moved() -> None:
    message = located({"lon": WGS[0], "lat": WGS[1]})
    assert message.location == Location(NOW, WGS[0], WGS[1], "wgs84")


def test_outside_china_no_system_moves_a_position() -> None:
    paris = (2.3522, 48.8566)
    for system in ("wgs84", "gcj02", "bd09"):
        message = located({"lon": paris[0], "lat": paris[1], "coord_system": system})
        assert message.location is not None
        assert (message.location.lon, message.location.lat) == paris


def test_the_kafka_value_round_trips() -> None:
    message = located({"lon": GCJ[0], "lat": GCJ[1], "coord_system": "gcj02"})
    assert TelemetryMessage.from_json(message.to_json()) == message
    assert orjson.loads(message.to_json())["location"]["coord_system"] == "gcj02"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ([{"n": "lon", "u": "lon", "v": 121.5}], "bad_location"),  # an object, not a pack
        ({"lat": 31.2}, "bad_location"),
        ({"lon": "121.5", "lat": 31.2}, "bad_location"),
        ({"lon": True, "lat": 31.2}, "bad_location"),
        ({"lon": 181.0, "lat": 31.2}, "bad_location"),
        ({"lon": 121.5, "lat": -90.5}, "bad_location"),
        # A misspelt field must not let a GCJ-02 position pass for WGS-84.
        ({"lon": 121.5, "lat": 31.2, "coordsystem": "gcj02"}, "bad_location"),
        ({"lon": 121.5, "lat": 31.2, "coord_system": 2}, "bad_location"),
        ({"lon": 121.5, "lat": 31.2, "coord_system": "mars"}, "unknown_coord_system"),
        ({"lon": 121.5, "lat": 31.2, "ts": NOW + 3_600}, "future_timestamp"),
        ({"lon": 121.5, "lat": 31.2, "ts": NOW - 10 * 86_400}, "stale_timestamp"),
        ({"lon": 121.5, "lat": 31.2, "ts": "yesterday"}, "bad_senml"),
        (b'{"lon": NaN, "lat": 31.2}', "non_finite"),
        (b"not json", "not_json"),
    ],
)
def test_a_bad_position_is_rejected_with_its_reason(body: Any, code: str) -> None:
    assert reason(body) == code


def test_an_intake_without_a_converter_takes_no_positions() -> None:
    payload = orjson.dumps({"lon": WGS[0], "lat": WGS[1]})
    with pytest.raises(RejectedPayload) as info:
        decode(TOPIC, payload, NOW, {DEVICE: GATEWAY}.get, LIMITS)
    assert info.value.reason_code == "bad_location"


def test_a_position_for_another_gateways_device_is_refused() -> None:
    with pytest.raises(RejectedPayload) as info:
        located({"lon": WGS[0], "lat": WGS[1]}, topic=f"cityops/gw-99/{DEVICE}/location")
    assert info.value.reason_code == "foreign_device"

"""core.sensor.senml: the MQTT payload contract, without a broker."""

from __future__ import annotations

import base64
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.sensor.senml import (
    REASON_CODES,
    Limits,
    RejectedPayload,
    deadletter_record,
    decode,
)
from core.sensor.telemetry import CANONICAL_UNITS, TelemetryMessage

NOW = 1_763_700_000.0
DEVICE = "wl-0042"
GATEWAY = "gw-01"
TOPIC = f"cityops/{GATEWAY}/{DEVICE}/telemetry"
STATUS_TOPIC = f"cityops/{GATEWAY}/{DEVICE}/status"
LIMITS = Limits(max_payload_bytes=1024, max_future_skew_s=300.0, max_past_age_s=86_400.0)


def senml(*records: dict[str, Any]) -> bytes:
    return orjson.dumps(list(records))


def run(
    payload: bytes,
    topic: str = TOPIC,
    known: frozenset[str] = frozenset({DEVICE}),
    gateway: str = GATEWAY,
) -> TelemetryMessage:
    """Decode with ``known`` devices registered under ``gateway``."""
    return decode(topic, payload, NOW, dict.fromkeys(known, gateway).get, LIMITS)


def rejected(payload: bytes, topic: str = TOPIC, **kwargs: Any) -> RejectedPayload:
    with pytest.raises(RejectedPayload) as info:
        run(payload, topic, **kwargs)
    assert info.value.reason_code in REASON_CODES
    return info.value


def values(message: TelemetryMessage) -> list[tuple[float, str, float, str]]:
    return [(r.ts, r.metric, r.value, r.unit) for r in message.readings]


# --- good SenML -----------------------------------------------------------------------------


def test_contract_example() -> None:
    payload = (
        b'[{"bn":"wl-0042:","bt":1763700000.0,"n":"water_level","u":"cm","v":38.5},'
        b'{"n":"battery","u":"%","v":91}]'
    )
    message = run(payload)
    assert (message.kind, message.device_id, message.gateway_id) == ("readings", DEVICE, GATEWAY)
    assert message.received_at == NOW
    assert values(message) == [(NOW, "water_level", 38.5, "cm"), (NOW, "battery", 91.0, "%")]
    assert TelemetryMessage.from_json(message.to_json()) == message


def test_relative_times_are_relative_to_now() -> None:
    message = run(senml({"n": "water_level", "v": 1, "t": -60}, {"n": "water_level", "v": 2}))
    assert [r.ts for r in message.readings] == [NOW - 60, NOW]


def test_relative_base_time_adds_to_record_time() -> None:
    message = run(senml({"bt": -120, "n": "water_level", "v": 1, "t": 30}))
    assert message.readings[0].ts == NOW - 90


def test_absolute_base_time_plus_offsets() -> None:
    message = run(
        senml(
            {"bt": NOW - 100, "n": "water_level", "v": 1},
            {"n": "water_level", "v": 2, "t": 10},
        )
    )
    assert [r.ts for r in message.readings] == [NOW - 100, NOW - 90]


def test_base_name_unit_and_value_apply_to_following_records() -> None:
    message = run(
        senml(
            {"bn": f"{DEVICE}:", "bu": "m", "bv": 1.0, "n": "water_level", "v": 0.5},
            {"n": "water_level", "v": 0.25},
            {"n": "battery", "u": "%", "v": 90},
        )
    )
    assert values(message) == [
        (NOW, "water_level", 150.0, "cm"),
        (NOW, "water_level", 125.0, "cm"),
        (NOW, "battery", 91.0, "%"),  # bv still applies; u overrides bu
    ]


def test_record_with_only_base_fields_sets_them() -> None:
    message = run(senml({"bn": f"{DEVICE}:", "bt": NOW - 5}, {"n": "pm25", "v": 12}))
    assert values(message) == [(NOW - 5, "pm25", 12.0, "ug/m3")]


def test_name_carrying_the_device_without_base_name() -> None:
    assert values(run(senml({"n": f"{DEVICE}:tilt", "v": 3})))[0][1:] == (
        "tilt",
        3.0,
        "deg",
    )


@pytest.mark.parametrize(
    ("metric", "unit", "raw", "expected"),
    [
        ("water_level", "m", 0.385, 38.5),
        ("water_level", "mm", 385, 38.5),
        ("tilt", "rad", math.pi, 180.0),
        ("pm25", "mg/m3", 0.035, 35.0),
        ("power", "kW", 1.5, 1500.0),
        ("battery", "/", 0.5, 50.0),
        ("temperature", "K", 300.0, 26.85),
        ("rssi", "dBm", -60, -90.0),
    ],
)
def test_units_convert_to_canonical(metric: str, unit: str, raw: float, expected: float) -> None:
    (reading,) = run(senml({"n": metric, "u": unit, "v": raw})).readings
    assert reading.unit == CANONICAL_UNITS[metric]
    assert reading.value == pytest.approx(expected)


def test_missing_unit_means_canonical() -> None:
    assert values(run(senml({"n": "temperature", "v": 21.5}))) == [
        (NOW, "temperature", 21.5, "Cel")
    ]


def test_sum_and_unknown_optional_fields_are_ignored_next_to_v() -> None:
    message = run(senml({"n": "power", "v": 5, "s": 900, "ut": 60, "vendor": {"x": 1}}))
    assert values(message) == [(NOW, "power", 5.0, "W")]


def test_bver_accepted() -> None:
    assert run(senml({"bver": 10, "n": "power", "v": 5})).readings[0].value == 5.0


# --- plain object form ------------------------------------------------------------------------


def test_plain_object_with_iso_timestamp() -> None:
    payload = orjson.dumps({"ts": "2025-11-21T04:39:00Z", "metrics": {"water_level": 38.5}})
    assert values(run(payload)) == [(NOW - 60, "water_level", 38.5, "cm")]


def test_plain_object_iso_with_offset_and_naive_utc() -> None:
    with_offset = orjson.dumps({"ts": "2025-11-21T12:39:00+08:00", "metrics": {"pm25": 1}})
    naive = orjson.dumps({"ts": "2025-11-21T04:39:00", "metrics": {"pm25": 1}})
    assert run(with_offset).readings[0].ts == run(naive).readings[0].ts == NOW - 60


def test_plain_object_with_epoch_seconds_and_units() -> None:
    payload = orjson.dumps(
        {
            "ts": NOW - 30,
            "metrics": {"water_level": 0.5, "battery": 77},
            "units": {"water_level": "m"},
        }
    )
    assert values(run(payload)) == [
        (NOW - 30, "water_level", 50.0, "cm"),
        (NOW - 30, "battery", 77.0, "%"),
    ]


def test_plain_object_without_ts_is_now() -> None:
    assert run(b'{"metrics": {"power": 3}}').readings[0].ts == NOW


# --- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"online", "online"),
        (b"offline", "offline"),
        (b" offline\n", "offline"),
        (b'"online"', "online"),
        (b'{"status": "offline"}', "offline"),
    ],
)
def test_status_payloads(payload: bytes, status: str) -> None:
    message = run(payload, STATUS_TOPIC)
    assert (message.kind, message.status, message.readings) == ("status", status, ())
    assert (message.device_id, message.gateway_id, message.received_at) == (DEVICE, GATEWAY, NOW)


@pytest.mark.parametrize(
    "payload", [b"ONLINE", b"up", b'"maybe"', b'{"state": "online"}', b"{online", b"[1]", b"1"]
)
def test_bad_status(payload: bytes) -> None:
    assert rejected(payload, STATUS_TOPIC).reason_code == "bad_status"


# --- every reason code ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "cityops/gw-01/wl-0042",
        "cityops/gw-01/wl-0042/telemetry/extra",
        "cityops/gw-01/wl-0042/events",
        "other/gw-01/wl-0042/telemetry",
        "cityops//wl-0042/telemetry",
        "cityops/gw 01/wl-0042/telemetry",
        "cityops/-gw/wl-0042/telemetry",
        f"cityops/gw-01/{'d' * 65}/telemetry",
        "cityops/gw-01/wl-0042/telemetry\n",
        "cityops/gw-01/wl-ö/telemetry",
    ],
)
def test_topic_shape(topic: str) -> None:
    assert rejected(senml({"n": "power", "v": 1}), topic).reason_code == "topic_shape"


def test_longest_ids_are_accepted() -> None:
    device = "d" * 64
    message = run(
        senml({"n": "power", "v": 1}),
        f"cityops/{'g' * 64}/{device}/telemetry",
        known=frozenset({device}),
        gateway="g" * 64,
    )
    assert message.device_id == device


def test_oversized_is_checked_before_parsing() -> None:
    payload = b"\xff" * (LIMITS.max_payload_bytes + 1)
    error = rejected(payload)
    assert error.reason_code == "oversized"
    assert str(LIMITS.max_payload_bytes) in error.detail


def test_payload_at_the_limit_is_parsed() -> None:
    record = senml({"n": "power", "v": 1})
    payload = record[:-1] + b" " * (LIMITS.max_payload_bytes - len(record)) + b"]"
    assert len(payload) == LIMITS.max_payload_bytes
    assert run(payload).readings[0].value == 1.0


@pytest.mark.parametrize(
    "payload", [b"", b"  \n", b"[]", b'[{"bn": "wl-0042:"}]', b'{"metrics": {}}']
)
def test_empty(payload: bytes) -> None:
    assert rejected(payload).reason_code == "empty"


def test_empty_status_is_empty() -> None:
    assert rejected(b"", STATUS_TOPIC).reason_code == "empty"


@pytest.mark.parametrize("topic", [TOPIC, STATUS_TOPIC])
def test_not_utf8(topic: str) -> None:
    assert rejected(b'[{"n":"power","v":1,"x":"\xff\xfe"}]', topic).reason_code == "not_utf8"


def test_deep_nesting_is_not_json() -> None:
    payload = b"[" * 20_000 + b"]" * 20_000  # beyond both parsers' recursion limits
    with pytest.raises(RejectedPayload) as info:
        decode(TOPIC, payload, NOW, {DEVICE: GATEWAY}.get, Limits(max_payload_bytes=65_536))
    assert info.value.reason_code == "not_json"


# reason -> payloads refused with it
REFUSED: dict[str, list[bytes]] = {
    "not_json": [b"{", b"[1,]", b"hello", b"[{'n': 'power'}]", b'["\\ud800"]', b"[" * 1000],
    "non_finite": [
        b'[{"n":"power","v":NaN}]',
        b'[{"n":"power","v":Infinity}]',
        b'[{"n":"power","v":-Infinity}]',
        b'[{"n":"power","v":1e400}]',
        b'[{"n":"power","v":' + b"9" * 400 + b"}]",
        b'{"metrics":{"power":NaN}}',
        b'[{"n":"pm25","u":"kg/m3","v":1e300}]',  # finite as sent, infinite in ug/m3
        b'[{"bt":1e308,"n":"power","v":1,"t":1e308}]',
        b'{"metrics": {"power": 1e308}, "units": {"power": "kW"}}',
    ],
    "bad_senml": [
        b"42",
        b'"water_level"',
        b"null",
        b"[1]",
        b'[{"n":"power","v":1,"vs":"x"}]',
        b'[{"n":"power"}]',
        b'[{"n":5,"v":1}]',
        b'[{"bn":["x"],"n":"power","v":1}]',
        b'[{"n":"power","v":1,"t":"yesterday"}]',
        b'[{"bt":true,"n":"power","v":1}]',
        b'[{"n":"power","u":7,"v":1}]',
        b'[{"n":"power","v":1,"crit_":1}]',
        b'[{"bver":99,"n":"power","v":1}]',
        b'[{"bver":10,"n":"power","v":1},{"bver":5,"n":"power","v":1}]',
        b'[{"n":"bad name","v":1}]',
        b'[{"v":1}]',
        b'{"metric": {"power": 1}}',
        b'{"metrics": [1]}',
        b'{"metrics": {"power": 1}, "units": "kW"}',
        b'{"metrics": {"power": 1}, "units": {"power": 1000}}',
        b'{"ts": "soon", "metrics": {"power": 1}}',
        b'{"ts": true, "metrics": {"power": 1}}',
    ],
    "wrong_type": [
        b'[{"n":"water_level","v":true}]',
        b'[{"n":"water_level","v":"38.5"}]',
        b'[{"n":"water_level","v":null}]',
        b'[{"n":"water_level","vs":"high"}]',
        b'[{"n":"water_level","vb":false}]',
        b'[{"n":"water_level","vd":"AAE"}]',
        b'[{"n":"power","s":1200}]',
        b'{"metrics": {"water_level": false}}',
        b'{"metrics": {"water_level": [1]}}',
    ],
}


@pytest.mark.parametrize(
    ("reason", "payload"), [(reason, p) for reason, ps in REFUSED.items() for p in ps]
)
def test_refused_with_its_reason(reason: str, payload: bytes) -> None:
    assert rejected(payload).reason_code == reason


@pytest.mark.parametrize("topic", [TOPIC, STATUS_TOPIC])
def test_a_gateway_speaks_only_for_its_own_devices(topic: str) -> None:
    other = topic.replace(f"/{GATEWAY}/", "/gw-02/")
    payload = senml({"n": "water_level", "v": 1.0}) if "telemetry" in topic else b"online"
    error = rejected(payload, other)
    assert error.reason_code == "foreign_device"
    assert DEVICE in error.detail
    assert "gw-02" in error.detail


@pytest.mark.parametrize("topic", [TOPIC, STATUS_TOPIC])
def test_unknown_device(topic: str) -> None:
    error = rejected(b"online", topic, known=frozenset({"someone-else"}))
    assert error.reason_code == "unknown_device"
    assert DEVICE in error.detail


@pytest.mark.parametrize(
    "payload",
    [
        senml({"bn": "wl-0043:", "n": "water_level", "v": 1}),
        senml({"bn": "urn:dev:ow:10e2073a01080063:", "n": "water_level", "v": 1}),
        senml({"n": "wl-0043:water_level", "v": 1}),
        senml({"n": "water_level", "v": 1}, {"bn": "wl-0043:", "n": "battery", "v": 1}),
    ],
)
def test_device_mismatch(payload: bytes) -> None:
    assert rejected(payload).reason_code == "device_mismatch"


@pytest.mark.parametrize(
    "payload",
    [
        senml({"n": "humidity", "v": 40}),
        senml({"bn": "wl-0042", "n": "water_level", "v": 1}),  # no separator: one odd name
        senml({"n": "wl-0042:water_level:max", "v": 1}),
        b'{"metrics": {"humidity": 40}}',
    ],
)
def test_unknown_metric(payload: bytes) -> None:
    assert rejected(payload).reason_code == "unknown_metric"


@pytest.mark.parametrize(
    "payload",
    [
        senml({"n": "water_level", "u": "ft", "v": 1}),
        senml({"bu": "m", "n": "battery", "v": 90}),  # bu applies, and is not a battery unit
        senml({"n": "temperature", "u": "Far", "v": 70}),
        b'{"metrics": {"water_level": 1}, "units": {"water_level": "in"}}',
    ],
)
def test_unknown_unit(payload: bytes) -> None:
    assert rejected(payload).reason_code == "unknown_unit"


@pytest.mark.parametrize(
    "payload",
    [
        senml({"bt": NOW + 301, "n": "power", "v": 1}),
        senml({"n": "power", "v": 1, "t": 301}),  # relative
        senml({"n": "power", "v": 1}, {"n": "power", "v": 1, "t": 3600}),
        orjson.dumps({"ts": NOW + 3600, "metrics": {"power": 1}}),
        orjson.dumps({"ts": "2030-01-01T00:00:00Z", "metrics": {"power": 1}}),
        orjson.dumps({"ts": NOW * 1000, "metrics": {"power": 1}}),  # milliseconds
    ],
)
def test_future_timestamp(payload: bytes) -> None:
    assert rejected(payload).reason_code == "future_timestamp"


@pytest.mark.parametrize(
    "payload",
    [
        senml({"bt": NOW - 86_401, "n": "power", "v": 1}),
        senml({"n": "power", "v": 1, "t": -86_401}),
        orjson.dumps({"ts": 0, "metrics": {"power": 1}}),
        orjson.dumps({"ts": "2020-01-01T00:00:00Z", "metrics": {"power": 1}}),
    ],
)
def test_stale_timestamp(payload: bytes) -> None:
    assert rejected(payload).reason_code == "stale_timestamp"


def test_timestamps_at_the_limits_are_accepted() -> None:
    message = run(senml({"n": "power", "v": 1, "t": 300}, {"n": "power", "v": 2, "t": -86_400}))
    assert [r.ts for r in message.readings] == [NOW + 300, NOW - 86_400]


def test_every_reason_code_is_exercised() -> None:
    # Guards the list above against a new code without a test.
    tested = {
        "topic_shape", "oversized", "empty", "not_utf8", "not_json", "non_finite",
        "bad_senml", "wrong_type", "unknown_device", "foreign_device", "device_mismatch",
        "unknown_metric",
        "unknown_unit", "future_timestamp", "stale_timestamp", "bad_status",
        # tests/unit/test_location_payload.py
        "bad_location", "unknown_coord_system",
    }  # fmt: skip
    assert tested == set(REASON_CODES)


def test_limits_from_settings() -> None:
    from infra.settings import Settings

    s = Settings(max_payload_bytes=512, max_future_skew_s=5.0, max_past_age_s=60.0)
    assert Limits.from_settings(s) == Limits(512, 5.0, 60.0)


# --- dead letter ------------------------------------------------------------------------------


def test_deadletter_record_for_text() -> None:
    payload = b'[{"n":"power","v":NaN}]'
    error = rejected(payload)
    record = orjson.loads(deadletter_record("mqtt", TOPIC, payload, error, NOW))
    assert record == {
        "source": "mqtt",
        "topic": TOPIC,
        "reason": "non_finite",
        "detail": error.detail,
        "received_at": NOW,
        "payload": payload.decode(),
        "payload_encoding": "utf-8",
        "payload_bytes": len(payload),
        "truncated": False,
    }


def test_deadletter_record_for_binary_is_base64() -> None:
    payload = bytes(range(256)) * 20
    record = orjson.loads(
        deadletter_record("mqtt", TOPIC, payload, RejectedPayload("not_utf8", "x"), NOW)
    )
    assert record["payload_encoding"] == "base64"
    assert base64.b64decode(record["payload"]) == payload[:4096]
    assert (record["payload_bytes"], record["truncated"]) == (len(payload), True)


def test_deadletter_record_truncates_text_on_a_character_boundary() -> None:
    payload = "水".encode() * 2000  # 3 bytes each; 4096 is not a multiple of 3
    record = orjson.loads(
        deadletter_record("mqtt", TOPIC, payload, RejectedPayload("oversized", "x"), NOW)
    )
    assert record["payload_encoding"] == "utf-8"
    assert record["payload"] == "水" * (4096 // 3)
    assert record["truncated"] is True


# --- properties -------------------------------------------------------------------------------


def outcome_of(payload: bytes, topic: str) -> TelemetryMessage | RejectedPayload:
    # Anything other than RejectedPayload propagates and fails the property.
    try:
        return run(payload, topic)
    except RejectedPayload as error:
        return error


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.text(max_size=12)
    | st.sampled_from(["water_level", "wl-0042:", "m", "rad", "v", "n", "bt", "t", "%"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["bn", "bt", "bu", "bv", "bver", "n", "u", "v", "vs", "s", "t", "x_"])
            | st.text(max_size=4),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=2048), status=st.booleans())
def test_any_bytes_only_ever_raise_rejected_payload(payload: bytes, status: bool) -> None:
    outcome = outcome_of(payload, STATUS_TOPIC if status else TOPIC)
    if isinstance(outcome, RejectedPayload):
        assert outcome.reason_code in REASON_CODES
    else:
        assert all(math.isfinite(r.value) and math.isfinite(r.ts) for r in outcome.readings)


@settings(max_examples=400, deadline=None)
@given(body=json_values)
def test_any_json_only_ever_raises_rejected_payload(body: Any) -> None:
    outcome = outcome_of(orjson.dumps(body), TOPIC)
    if isinstance(outcome, RejectedPayload):
        assert outcome.reason_code in REASON_CODES
    else:
        assert outcome.readings
        assert all(r.unit == CANONICAL_UNITS[r.metric] for r in outcome.readings)
        assert all(math.isfinite(r.value) for r in outcome.readings)
        assert all(NOW - 86_400 <= r.ts <= NOW + 300 for r in outcome.readings)

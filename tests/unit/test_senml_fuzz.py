"""core.sensor.senml under hostile MQTT input, and valid packs that must round-trip.

Whatever a gateway (or anyone holding its credentials) publishes, ``decode`` either
returns a message whose readings are finite, in their canonical unit and inside the
time window, or raises ``RejectedPayload`` with one of its reason codes; any other
exception fails these properties. Its work stays proportional to the payload: the
calls it makes (counted with ``sys.setprofile``, not timed) are bounded by a constant
per byte, so nothing it is sent can make it catastrophically slow.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.sensor.senml import REASON_CODES, Limits, RejectedPayload, decode
from core.sensor.telemetry import CANONICAL_UNITS, UNIT_CONVERSIONS, TelemetryMessage

NOW = 1_763_700_000.0
DEVICE = "wl-0042"
GATEWAY = "gw-01"
TOPIC = f"cityops/{GATEWAY}/{DEVICE}/telemetry"
STATUS_TOPIC = f"cityops/{GATEWAY}/{DEVICE}/status"
LIMITS = Limits()  # the production defaults: 16 KiB, 300 s ahead, 7 days back
SENML_KEYS = ("bn", "bt", "bu", "bv", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def gateway_of(device_id: str) -> str | None:
    return GATEWAY if device_id == DEVICE else None


# The bridge decodes at the interpreter's recursion limit; Hypothesis raises the limit
# while it runs a test, which would hide a RecursionError, so decoding runs at this one.
RECURSION_LIMIT = sys.getrecursionlimit()


def outcome(payload: bytes, topic: str = TOPIC) -> TelemetryMessage | RejectedPayload:
    """What ``decode`` makes of it; any exception but RejectedPayload propagates."""
    raised = sys.getrecursionlimit()
    sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        return decode(topic, payload, NOW, gateway_of, LIMITS)
    except RejectedPayload as error:
        return error
    finally:
        sys.setrecursionlimit(raised)


def assert_sound(result: TelemetryMessage | RejectedPayload) -> None:
    """A reject names a known reason; a message carries only readings fit to store."""
    if isinstance(result, RejectedPayload):
        assert result.reason_code in REASON_CODES
        assert isinstance(result.detail, str)
        return
    assert (result.device_id, result.gateway_id) == (DEVICE, GATEWAY)
    if result.kind == "status":
        assert result.status in ("online", "offline")
        return
    assert result.readings
    for r in result.readings:
        assert r.unit == CANONICAL_UNITS[r.metric]
        assert math.isfinite(r.value)
        assert NOW - LIMITS.max_past_age_s <= r.ts <= NOW + LIMITS.max_future_skew_s


def calls_made(run: Callable[[], object]) -> int:
    """The Python and C function calls ``run`` makes: its work, counted, not timed."""
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


# Generous for linear work (a few calls per record or number, each of several bytes),
# far below what quadratic work on a payload at the 16 KiB limit would take.
CALLS_BASE = 500
CALLS_PER_BYTE = 8


def assert_linear_work(payload: bytes, topic: str = TOPIC) -> None:
    calls = calls_made(lambda: outcome(payload, topic))
    assert calls <= CALLS_BASE + CALLS_PER_BYTE * len(payload), (calls, len(payload))


# -- hostile JSON text ------------------------------------------------------------------------

huge_numbers = st.sampled_from(
    ["1e400", "-1e400", "1e-400", "9" * 400, "-" + "9" * 5000, "0." + "0" * 400 + "1"]
)
non_finite = st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "inf"])
numbers = (
    st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.floats().map(lambda f: json.dumps(f))  # NaN and Infinity as Python writes them
    | huge_numbers
    | non_finite
)
# Any text, written by either encoder; and the escapes strict JSON or PostgreSQL refuse.
strings = (
    st.text(max_size=20).map(lambda s: json.dumps(s, ensure_ascii=False))
    | st.text(max_size=20).map(json.dumps)
    | st.sampled_from(['"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"', '"a\\u0000b"', '"\\x41"'])
    | st.sampled_from(["water_level", f"{DEVICE}:", f"{DEVICE}:power", "m", "%", "ẅater"]).map(
        json.dumps
    )
)
keys = st.sampled_from((*SENML_KEYS, "metrics", "units", "ts", "status")).map(json.dumps) | strings
json_text = st.recursive(
    numbers | strings | st.sampled_from(["true", "false", "null"]),
    lambda children: (
        st.lists(children, max_size=6).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.lists(st.tuples(keys, children), max_size=6).map(
            lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"
        )
    ),
    max_leaves=30,
)
# Shapes of the two payload forms with hostile parts, so the checks past parsing run too.
senml_text = st.lists(
    st.lists(st.tuples(keys, json_text), max_size=6).map(
        lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"
    ),
    min_size=1,
    max_size=6,
).map(lambda records: "[" + ",".join(records) + "]")
plain_text = st.tuples(json_text, json_text, json_text).map(
    lambda p: f'{{"ts":{p[0]},"metrics":{{"power":{p[1]},"water_level":{p[2]}}}}}'
)


@st.composite
def nested(draw: st.DrawFn) -> str:
    """A value buried under 1 to 3,000 containers, where the payload forms expect a value."""
    depth = draw(st.integers(min_value=1, max_value=3_000))
    opening, closing = draw(st.sampled_from([("[", "]"), ('{"v":', "}"), ('{"metrics":', "}")]))
    inner = opening * depth + draw(json_text) + closing * depth
    return draw(
        st.sampled_from(
            [
                inner,
                f'[{{"n":"power","v":{inner}}}]',
                f'{{"metrics":{{"power":{inner}}}}}',
                f'{{"status":{inner}}}',
            ]
        )
    )


hostile = (json_text | senml_text | plain_text | nested()).map(
    lambda t: t.encode("utf-8", "surrogatepass")
)

# Deep nesting within orjson's limit (1,024 levels) and past the interpreter's recursion
# limit (1,000 frames): describing the value in the reject's detail used to raise
# RecursionError out of decode (a 500 over HTTP; over MQTT, never acknowledged).
DEEP = 1_020
DEEP_VALUE = b"[" * DEEP + b"]" * DEEP


@FUZZ
@given(payload=hostile, status=st.booleans())
@example(payload=b'[{"n":"power","v":' + DEEP_VALUE + b"}]", status=False)
@example(payload=b'{"metrics":{"power":' + DEEP_VALUE + b"}}", status=False)
@example(payload=b'{"status":' + DEEP_VALUE + b"}", status=True)
def test_hostile_json_is_decoded_or_rejected_with_its_reason(payload: bytes, status: bool) -> None:
    topic = STATUS_TOPIC if status else TOPIC
    assert_sound(outcome(payload, topic))
    assert_linear_work(payload, topic)


@FUZZ
@given(topic=st.text(max_size=120), payload=st.binary(max_size=64))
@example(topic="cityops/gw-01/wl-0042/telemetry\n", payload=b"[]")
@example(topic="cityops/gw-01/ｗl-0042/telemetry", payload=b"[]")  # fullwidth: not an id
def test_any_topic_is_decoded_or_rejected(topic: str, payload: bytes) -> None:
    assert_sound(outcome(payload, topic))


# -- work at the size limit -------------------------------------------------------------------


def _filled(head: bytes, unit: bytes, tail: bytes) -> bytes:
    """``head`` + as many ``unit`` as fit under the size limit + ``tail``."""
    n = (LIMITS.max_payload_bytes - len(head) - len(tail)) // len(unit)
    return head + unit * n + tail


AT_THE_LIMIT = {
    "many small records": _filled(b"[", b'{"n":"power","v":1},', b'{"n":"power","v":1}]'),
    "many base-only records": _filled(b"[", b'{"bv":1},', b'{"n":"power","v":1}]'),
    "many numbers, strict JSON": _filled(b'[{"n":"power","v":1,"x":[', b"1,", b"1]}]"),
    "many numbers, then NaN": _filled(b'[{"n":"power","v":1,"x":[', b"1,", b"NaN]}]"),
    "many huge numbers": _filled(b"[", b"1e999,", b"1]"),
    "many metrics": _filled(b'{"metrics":{', b'"power":1,', b'"power":1}}'),
    "one long name": _filled(b'[{"n":"', b"a", b'","v":1}]'),
    "one long bad name": _filled(b'[{"n":"', b"a:", b'","v":1}]'),
    "deep nesting": _filled(b"", b"[", b""),
    "many keys": _filled(b'[{"n":"power","v":1,', b'"k":1,', b'"k":1}]'),
}


@pytest.mark.parametrize("payload", AT_THE_LIMIT.values(), ids=AT_THE_LIMIT.keys())
def test_work_at_the_size_limit_is_linear(payload: bytes) -> None:
    assert len(payload) <= LIMITS.max_payload_bytes
    assert_sound(outcome(payload))
    assert_linear_work(payload)


def test_the_work_bound_catches_quadratic_work() -> None:
    """The bound is not vacuous: work quadratic in a payload at the limit exceeds it."""
    payload = AT_THE_LIMIT["many small records"]
    records = payload.count(b"},") + 1

    def quadratic() -> None:  # per record, one look at every record
        for _ in range(records):
            for _ in range(records):
                len(payload)

    assert calls_made(quadratic) > CALLS_BASE + CALLS_PER_BYTE * len(payload)


# -- valid packs round-trip -------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    ts: float
    metric: str
    value: float
    unit: str


def canonical(metric: str, unit: str, raw: float) -> float:
    factor, offset = UNIT_CONVERSIONS[metric][unit]
    return raw * factor + offset


METRICS = sorted(CANONICAL_UNITS)
# Whole seconds from now, inside the window: sums of them and NOW are exact.
OFFSETS = st.integers(
    min_value=-int(LIMITS.max_past_age_s) + 1, max_value=int(LIMITS.max_future_skew_s) - 1
)
RAW = st.integers(min_value=-(10**6), max_value=10**6) | st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False
)


@st.composite
def senml_packs(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[Expected]]:
    """A valid SenML pack using base fields as a gateway may, and the readings it means."""
    records: list[dict[str, Any]] = []
    expected: list[Expected] = []
    base_time, base_unit, base_value = 0.0, None, 0
    version = draw(st.none() | st.integers(min_value=1, max_value=10))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        record: dict[str, Any] = {}
        if version is not None and draw(st.booleans()):
            record["bver"] = version
        if draw(st.booleans()):
            record["bn"] = base_name = draw(st.sampled_from(["", f"{DEVICE}:"]))
        else:
            base_name = next((r["bn"] for r in reversed(records) if "bn" in r), "")
        if draw(st.booleans()):  # absolute (now give or take) or relative base time
            base_time = draw(st.sampled_from([NOW, NOW - 3_600.0, -60.0, 0.0]))
            record["bt"] = base_time
        if draw(st.booleans()):
            base_unit = draw(
                st.sampled_from(sorted({u for c in UNIT_CONVERSIONS.values() for u in c}))
            )
            record["bu"] = base_unit
        if draw(st.booleans()):
            base_value = draw(st.integers(min_value=-1_000, max_value=1_000))
            record["bv"] = base_value
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            records.append(record)  # a record of base fields only: no reading
            continue
        metric = draw(st.sampled_from(METRICS))
        unit = draw(st.sampled_from(sorted(UNIT_CONVERSIONS[metric])))
        if base_name and draw(st.booleans()):
            record["n"] = metric
        elif base_name:
            record["bn"] = ""  # the name carries the device itself
            record["n"] = f"{DEVICE}:{metric}"
        else:
            record["n"] = draw(st.sampled_from([metric, f"{DEVICE}:{metric}"]))
        inherited = base_unit if base_unit is not None else CANONICAL_UNITS[metric]
        if unit != inherited or draw(st.booleans()):
            record["u"] = unit
        raw = draw(RAW)
        record["v"] = raw - base_value if isinstance(raw, int) else raw
        offset = draw(OFFSETS)
        relative = draw(st.booleans())
        total = float(offset) if relative else NOW + offset
        if total != base_time:
            record["t"] = total - base_time
        value = raw if isinstance(raw, int) else raw + base_value
        expected.append(
            Expected(NOW + offset, metric, canonical(metric, unit, value), CANONICAL_UNITS[metric])
        )
        records.append(record)
    return records, expected


def assert_readings(message: TelemetryMessage, expected: list[Expected]) -> None:
    got = [Expected(r.ts, r.metric, r.value, r.unit) for r in message.readings]
    assert [(g.metric, g.unit) for g in got] == [(e.metric, e.unit) for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.ts == pytest.approx(e.ts, abs=1e-6)
        assert g.value == pytest.approx(e.value, rel=1e-12, abs=1e-9)


@FUZZ
@given(pack=senml_packs().filter(lambda p: bool(p[1])), ascii_only=st.booleans())
def test_valid_senml_packs_round_trip(
    pack: tuple[list[dict[str, Any]], list[Expected]], ascii_only: bool
) -> None:
    records, expected = pack
    payload = json.dumps(records, ensure_ascii=ascii_only).encode()
    message = outcome(payload)
    assert isinstance(message, TelemetryMessage), message
    assert_readings(message, expected)
    assert TelemetryMessage.from_json(message.to_json()) == message


@st.composite
def plain_objects(draw: st.DrawFn) -> tuple[dict[str, Any], list[Expected]]:
    """A valid plain-object payload and the readings it means."""
    offset = draw(OFFSETS)
    ts: Any = draw(
        st.sampled_from(
            [
                NOW + offset,
                int(NOW) + offset,
                f"{_iso(NOW + offset)}Z",
                f"{_iso(NOW + offset)}+00:00",
                _iso(NOW + offset),  # naive: UTC, as gateways are told
            ]
        )
    )
    metrics = draw(
        st.lists(st.sampled_from(METRICS), min_size=1, max_size=len(METRICS), unique=True)
    )
    body: dict[str, Any] = {"ts": ts, "metrics": {}, "units": {}}
    expected = []
    for metric in metrics:
        unit = draw(st.none() | st.sampled_from(sorted(UNIT_CONVERSIONS[metric])))
        raw = draw(RAW)
        body["metrics"][metric] = raw
        if unit is not None:
            body["units"][metric] = unit
        used = CANONICAL_UNITS[metric] if unit is None else unit
        expected.append(
            Expected(NOW + offset, metric, canonical(metric, used, raw), CANONICAL_UNITS[metric])
        )
    return body, expected


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat()


@FUZZ
@given(plain=plain_objects())
def test_valid_plain_objects_round_trip(plain: tuple[dict[str, Any], list[Expected]]) -> None:
    body, expected = plain
    message = outcome(orjson.dumps(body))
    assert isinstance(message, TelemetryMessage), message
    assert_readings(message, expected)


# -- near-valid bytes -------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid pack with a few bytes flipped, dropped or inserted."""
    records, _ = draw(senml_packs())
    payload = bytearray(orjson.dumps(records))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=max(0, len(payload) - 1)))
        action = draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip" and payload:
            payload[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif action == "drop" and payload:
            del payload[at]
        else:
            payload[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(payload)


@FUZZ
@given(payload=mutated())
def test_mutated_packs_are_decoded_or_rejected(payload: bytes) -> None:
    assert_sound(outcome(payload))
    assert_linear_work(payload)

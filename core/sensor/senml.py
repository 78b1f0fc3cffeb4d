"""Decode and validate what sensor gateways publish over MQTT (the gateways' payload contract).

Pure: no clock, no I/O. The caller passes ``now`` and a ``gateway_of`` look-up (the
gateway a device is registered under, None if it is not), and
gets a normalised :class:`~core.sensor.telemetry.TelemetryMessage` or a :class:`RejectedPayload`
carrying a short machine reason code (counted, logged and dead-lettered by the bridge).

Accepted telemetry payloads:

- a SenML JSON pack (RFC 8428)::

    [{"bn": "wl-0042:", "bt": 1763700000.0, "n": "water_level", "u": "cm", "v": 38.5},
     {"n": "battery", "u": "%", "v": 91}]

- a plain object::

    {"ts": "2025-11-21T04:40:00Z", "metrics": {"water_level": 38.5}, "units": {"water_level": "m"}}

Status payloads: ``online`` / ``offline``, as text, a JSON string or ``{"status": ...}``.

Location payloads (``cityops/<gateway>/<device>/location``: where a device is, surveyed
or from its GNSS fix), in WGS-84 or the offset systems of Chinese maps and phones::

    {"lon": 121.4788, "lat": 31.2285, "coord_system": "gcj02", "ts": 1763700000.0}

``coord_system`` is ``wgs84`` (the default), ``gcj02`` or ``bd09``; the caller's
``to_wgs84`` converts, so that what leaves the decoder is WGS-84.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from core.sensor.telemetry import (
    CANONICAL_UNITS,
    UNIT_CONVERSIONS,
    DeviceStatus,
    Location,
    Reading,
    TelemetryMessage,
)

# (lon, lat, the system they are in) -> (WGS-84 lon, lat, the system's canonical name);
# ValueError for a system it does not know.
ToWgs84 = Callable[[float, float, str], tuple[float, float, str]]


class LimitSettings(Protocol):
    """The part of the process settings that :class:`Limits` reads."""

    max_payload_bytes: int
    max_future_skew_s: float
    max_past_age_s: float


REASON_CODES: tuple[str, ...] = (
    "topic_shape",
    "oversized",
    "empty",
    "not_utf8",
    "not_json",
    "non_finite",
    "bad_senml",
    "wrong_type",
    "unknown_device",
    "foreign_device",
    "device_mismatch",
    "unknown_metric",
    "unknown_unit",
    "future_timestamp",
    "stale_timestamp",
    "bad_status",
    "bad_location",
    "unknown_coord_system",
)

_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_TOPIC = re.compile(
    rf"cityops/(?P<gateway>{_ID})/(?P<device>{_ID})/(?P<channel>telemetry|status|location)"
)
# RFC 8428 section 4.5.1: the characters a resolved SenML name may use.
_SENML_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")
# RFC 8428 section 4.5.3: smaller resolved times are relative to "now".
_RELATIVE_TIME_LIMIT = 2.0**28
# RFC 8428 uses 10; older drafts used smaller numbers for the same JSON layout.
_MAX_SENML_VERSION = 10
_SENML_VALUE_FIELDS = ("v", "vs", "vb", "vd")
_DEADLETTER_PAYLOAD_MAX = 4096
_DETAIL_MAX = 80
_CONTAINER_REPR = reprlib.Repr()
_CONTAINER_REPR.maxlevel = 3
_CONTAINER_REPR.maxstring = _DETAIL_MAX


class RejectedPayload(Exception):  # noqa: N818 - the contract's name: a payload, rejected
    """A payload that must not enter the pipeline; ``reason_code`` is one of REASON_CODES."""

    def __init__(self, reason_code: str, detail: str) -> None:
        super().__init__(f"{reason_code}: {detail}")
        self.reason_code = reason_code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Limits:
    """Ingestion limits applied by :func:`decode`."""

    max_payload_bytes: int = 16_384
    max_future_skew_s: float = 300.0
    max_past_age_s: float = 7 * 86_400.0

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> Limits:
        """The limits configured in ``settings``."""
        return cls(
            max_payload_bytes=settings.max_payload_bytes,
            max_future_skew_s=settings.max_future_skew_s,
            max_past_age_s=settings.max_past_age_s,
        )


def decode(
    topic: str,
    payload: bytes,
    now: float,
    gateway_of: Callable[[str], str | None],
    limits: Limits,
    to_wgs84: ToWgs84 | None = None,
) -> TelemetryMessage:
    """Normalise one MQTT message, or raise RejectedPayload with the reason.

    Locations are taken only where ``to_wgs84`` is given (what leaves here is WGS-84)."""
    match = _TOPIC.fullmatch(topic)
    if match is None:
        raise RejectedPayload(
            "topic_shape",
            f"topic {_clip(topic)} is not cityops/<gateway>/<device>/telemetry|status|location",
        )
    gateway_id, device_id = match["gateway"], match["device"]
    # Before any parsing, so a flood of huge payloads costs nothing but a length check.
    if len(payload) > limits.max_payload_bytes:
        raise RejectedPayload(
            "oversized", f"{len(payload)} bytes > limit {limits.max_payload_bytes}"
        )
    owner = gateway_of(device_id)
    if owner is None:
        raise RejectedPayload("unknown_device", f"device {device_id!r} is not registered")
    if owner != gateway_id:  # a gateway speaks for its own devices only
        raise RejectedPayload(
            "foreign_device", f"device {device_id!r} is not a device of {gateway_id!r}"
        )
    if not payload.strip():
        # An empty publish is also how MQTT clears a retained message: not a bad status.
        raise RejectedPayload("empty", "empty payload")

    if match["channel"] == "status":
        return TelemetryMessage(
            device_id=device_id,
            gateway_id=gateway_id,
            received_at=now,
            kind="status",
            status=_status(payload),
        )

    body = _parse_json(payload)
    if match["channel"] == "location":
        return TelemetryMessage(
            device_id=device_id,
            gateway_id=gateway_id,
            received_at=now,
            kind="location",
            location=_location(body, now, limits, to_wgs84),
        )
    if isinstance(body, list):
        readings = _senml_readings(body, device_id, now, limits)
    elif isinstance(body, dict):
        readings = _plain_readings(body, now, limits)
    else:
        raise RejectedPayload(
            "bad_senml", f"expected a SenML array or an object, got {type(body).__name__}"
        )
    if not readings:
        raise RejectedPayload("empty", "no readings in payload")
    return TelemetryMessage(
        device_id=device_id, gateway_id=gateway_id, received_at=now, readings=tuple(readings)
    )


def deadletter_record(
    source: str, topic: str, payload: bytes, reason: RejectedPayload, now: float
) -> bytes:
    """The JSON value sent to ``cityops.deadletter`` for a rejected payload."""
    head = payload[:_DEADLETTER_PAYLOAD_MAX]
    truncated = len(head) < len(payload)
    record: dict[str, Any] = {
        "source": source,
        "topic": topic,
        "reason": reason.reason_code,
        "detail": reason.detail,
        "received_at": now,
        "payload_bytes": len(payload),
        "truncated": truncated,
    }
    text = _utf8_prefix(head, truncated)
    if text is None:
        record["payload"] = base64.b64encode(head).decode("ascii")
        record["payload_encoding"] = "base64"
    else:
        record["payload"] = text
        record["payload_encoding"] = "utf-8"
    return orjson.dumps(record)


# --- status ------------------------------------------------------------------------------


def _status(payload: bytes) -> DeviceStatus:
    text = _utf8(payload).strip()
    value: Any = text
    if text[:1] in ('"', "{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise RejectedPayload("bad_status", f"status {_clip(text)} is not valid JSON") from None
        if isinstance(value, dict):
            value = value.get("status")
    if value == "online":
        return "online"
    if value == "offline":
        return "offline"
    raise RejectedPayload("bad_status", f"status {_clip(value)} is not 'online' or 'offline'")


# --- location -----------------------------------------------------------------------------

_LOCATION_FIELDS = frozenset(("lon", "lat", "coord_system", "ts"))


def _location(body: Any, now: float, limits: Limits, to_wgs84: ToWgs84 | None) -> Location:
    if to_wgs84 is None:
        raise RejectedPayload("bad_location", "this intake takes no locations")
    if not isinstance(body, dict):
        raise RejectedPayload("bad_location", "a location is an object with lon and lat")
    unknown = body.keys() - _LOCATION_FIELDS
    if unknown:
        # A misspelt coord_system must not pass for WGS-84 (hundreds of metres off).
        raise RejectedPayload("bad_location", f"unknown field {_clip(min(unknown))}")
    if not (_is_number(body.get("lon")) and _is_number(body.get("lat"))):
        raise RejectedPayload("bad_location", "lon and lat must both be numbers")
    lon, lat = float(body["lon"]), float(body["lat"])
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise RejectedPayload("bad_location", f"({lon}, {lat}) is not a longitude/latitude")
    system = body.get("coord_system", "wgs84")
    if not isinstance(system, str):
        raise RejectedPayload("bad_location", "coord_system must be a string")
    ts = _plain_time(body.get("ts"), now)
    _check_time(ts, now, limits, "ts")
    try:
        wgs_lon, wgs_lat, name = to_wgs84(lon, lat, system)
    except ValueError:
        raise RejectedPayload(
            "unknown_coord_system", f"coord_system {_clip(system)} is not wgs84, gcj02 or bd09"
        ) from None
    return Location(ts, wgs_lon, wgs_lat, name)


# --- JSON ---------------------------------------------------------------------------------


def _parse_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass
    # Only failures pay for this: tell the gateway's owner *why* it is not JSON.
    text = _utf8(payload)
    non_finite = False

    def constant(name: str) -> float:
        nonlocal non_finite
        non_finite = True
        return 0.0

    def number(literal: str) -> float:
        nonlocal non_finite
        value = float(literal)  # overflow gives inf here, never an exception
        non_finite = non_finite or not math.isfinite(value)
        return value

    try:
        # The stdlib parser accepts NaN/Infinity and overflowing numbers, which orjson
        # refuses; if it succeeds where orjson failed, that is usually why.
        json.loads(text, parse_constant=constant, parse_float=number, parse_int=number)
    except (ValueError, RecursionError):
        raise RejectedPayload("not_json", "payload is not valid JSON") from None
    if non_finite:
        raise RejectedPayload(
            "non_finite", "payload contains NaN, Infinity or an overflowing number"
        )
    raise RejectedPayload("not_json", "payload is not strict JSON (RFC 8259)")


def _utf8(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedPayload("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None


def _utf8_prefix(head: bytes, truncated: bool) -> str | None:
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Cutting at 4 KiB may split a multi-byte character; that alone is still text.
        if truncated and exc.reason == "unexpected end of data":
            return head[: exc.start].decode("utf-8")
        return None


# --- SenML (RFC 8428) ---------------------------------------------------------------------


class _Base:
    """The base fields of a SenML pack so far (RFC 8428 section 4.1)."""

    __slots__ = ("name", "time", "unit", "value", "version")

    def __init__(self) -> None:
        self.name = ""
        self.time = 0.0
        self.unit: str | None = None
        self.value = 0.0
        self.version: int | None = None


# The fields of the records gateways usually send. A record made of these alone, each of
# its JSON type, is read by _common_reading in a few look-ups; anything else about it,
# and every record it cannot vouch for, goes through _checked_reading's every check.
_COMMON_FIELDS = frozenset(("bn", "bt", "n", "u", "v", "t"))
_NUMBER_TYPES = (float, int)  # type(x) in these: bool is not one of them


def _senml_readings(pack: list[Any], device_id: str, now: float, limits: Limits) -> list[Reading]:
    base = _Base()
    readings: list[Reading] = []
    for index, record in enumerate(pack):
        reading = _common_reading(record, base, device_id, now, limits)
        if reading is None:
            reading = _checked_reading(record, index, base, device_id, now, limits)
        if reading is not None:
            readings.append(reading)
    return readings


def _common_reading(
    record: Any, base: _Base, device_id: str, now: float, limits: Limits
) -> Reading | None:
    """The reading of a plain, well-formed record, updating ``base``; None if the record
    is anything else (it is then checked in full, which also names what is wrong)."""
    if type(record) is not dict or "v" not in record or not record.keys() <= _COMMON_FIELDS:
        return None
    name = record.get("bn", base.name)
    base_time = record.get("bt", base.time)
    unit = record.get("u", base.unit)
    raw = record["v"]
    offset_time = record.get("t", 0.0)
    suffix = record.get("n", "")
    if not (
        type(name) is str
        and type(suffix) is str
        and type(base_time) in _NUMBER_TYPES
        and (unit is None or type(unit) is str)
        and type(raw) in _NUMBER_TYPES
        and type(offset_time) in _NUMBER_TYPES
    ):
        return None
    metric = _metric_of(name + suffix, device_id)
    if metric is None:
        return None
    time = float(base_time) + float(offset_time)
    if time < _RELATIVE_TIME_LIMIT:
        time += now
    if not (now - limits.max_past_age_s <= time <= now + limits.max_future_skew_s):
        return None
    conversion = UNIT_CONVERSIONS[metric].get(CANONICAL_UNITS[metric] if unit is None else unit)
    if conversion is None:
        return None
    value = (float(raw) + base.value) * conversion[0] + conversion[1]
    if not math.isfinite(value):
        return None
    base.name, base.time = name, float(base_time)
    return Reading(ts=time, metric=metric, value=value, unit=CANONICAL_UNITS[metric])


@functools.lru_cache(maxsize=65_536)
def _metric_of(name: str, device_id: str) -> str | None:
    """The metric a resolved SenML name gives for ``device_id``; None if it gives none."""
    if not _SENML_NAME.fullmatch(name):
        return None
    device_part, colon, metric = name.partition(":")
    if colon and device_part != device_id:
        return None
    metric = metric if colon else name
    return metric if metric in CANONICAL_UNITS else None


def _checked_reading(
    record: Any, index: int, base: _Base, device_id: str, now: float, limits: Limits
) -> Reading | None:
    """One record with every check, updating ``base``; None for a base-only record."""
    where = f"record {index}"
    if not isinstance(record, dict):
        raise RejectedPayload("bad_senml", f"{where} is not an object")
    for key in record:
        if key.endswith("_"):
            # RFC 8428 section 4.4: a "must understand" extension we do not know.
            raise RejectedPayload("bad_senml", f"{where}: unsupported field {_clip(key)}")
    if "bver" in record:
        bver = record["bver"]
        if not _is_int(bver) or not 1 <= bver <= _MAX_SENML_VERSION:
            raise RejectedPayload("bad_senml", f"{where}: unsupported bver {_clip(bver)}")
        if base.version is not None and bver != base.version:
            raise RejectedPayload("bad_senml", f"{where}: bver changes within the pack")
        base.version = bver
    if "bn" in record:
        base.name = _text_field(record, "bn", where)
    if "bt" in record:
        base.time = _number_field(record, "bt", where)
    if "bu" in record:
        base.unit = _text_field(record, "bu", where)
    if "bv" in record:
        base.value = _number_field(record, "bv", where)

    value_fields = [f for f in _SENML_VALUE_FIELDS if f in record]
    if len(value_fields) > 1:
        raise RejectedPayload("bad_senml", f"{where} has several value fields")
    if not value_fields and "s" not in record:
        if any(f in record for f in ("n", "u", "t")):
            raise RejectedPayload("bad_senml", f"{where} has no value")
        return None  # a record that only sets base fields for the ones after it

    name = base.name + (_text_field(record, "n", where) if "n" in record else "")
    if not _SENML_NAME.fullmatch(name):
        raise RejectedPayload("bad_senml", f"{where}: invalid name {_clip(name)}")
    device_part, colon, metric = name.partition(":")
    if not colon:
        metric = name  # a bare metric name: the device is the topic's
    elif device_part != device_id:
        raise RejectedPayload(
            "device_mismatch",
            f"{where}: name {_clip(name)} is not for topic device {device_id!r}",
        )
    if metric not in CANONICAL_UNITS:
        raise RejectedPayload("unknown_metric", f"{where}: unknown metric {_clip(metric)}")
    if value_fields != ["v"]:
        kind = value_fields[0] if value_fields else "s"
        raise RejectedPayload("wrong_type", f"{where}: {metric} needs a numeric v, got {kind}")
    unit = _text_field(record, "u", where) if "u" in record else base.unit
    raw = _numeric_value(record["v"], f"{where}: {metric}")
    time = base.time + (_number_field(record, "t", where) if "t" in record else 0.0)
    if not math.isfinite(time):
        raise RejectedPayload("non_finite", f"{where}: time is not finite")
    if time < _RELATIVE_TIME_LIMIT:
        time += now
    _check_time(time, now, limits, where)
    return _reading(metric, raw + base.value, unit, time, where)


def _text_field(record: dict[str, Any], key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise RejectedPayload("bad_senml", f"{where}: {key} must be a string")
    return value


def _number_field(record: dict[str, Any], key: str, where: str) -> float:
    value = record[key]
    if not _is_number(value):
        raise RejectedPayload("bad_senml", f"{where}: {key} must be a number")
    return float(value)


# --- plain object form --------------------------------------------------------------------


def _plain_readings(body: dict[str, Any], now: float, limits: Limits) -> list[Reading]:
    metrics = body.get("metrics")
    if not isinstance(metrics, dict):
        raise RejectedPayload("bad_senml", "object payload needs a 'metrics' object")
    units = body.get("units", {})
    if not isinstance(units, dict):
        raise RejectedPayload("bad_senml", "'units' must be an object")
    if not metrics:
        return []
    ts = _plain_time(body.get("ts"), now)
    _check_time(ts, now, limits, "ts")
    readings = []
    for metric, raw in metrics.items():
        where = f"metrics.{_clip(metric)}"
        if metric not in CANONICAL_UNITS:
            raise RejectedPayload("unknown_metric", f"unknown metric {_clip(metric)}")
        unit = units.get(metric)
        if unit is not None and not isinstance(unit, str):
            raise RejectedPayload("bad_senml", f"unit of {metric} must be a string")
        readings.append(_reading(metric, _numeric_value(raw, where), unit, ts, where))
    return readings


def _plain_time(ts: Any, now: float) -> float:
    if ts is None:
        return now
    if _is_number(ts):
        value = float(ts)
    elif isinstance(ts, str):
        try:
            parsed = datetime.fromisoformat(ts)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)  # gateways are told to send UTC
            value = parsed.timestamp()
        except (ValueError, OverflowError):
            raise RejectedPayload("bad_senml", f"ts {_clip(ts)} is not ISO 8601") from None
    else:
        raise RejectedPayload("bad_senml", "ts must be an ISO 8601 string or epoch seconds")
    if not math.isfinite(value):
        raise RejectedPayload("non_finite", "ts is not finite")
    return value


# --- shared -------------------------------------------------------------------------------


def _numeric_value(value: Any, where: str) -> float:
    if not _is_number(value):
        raise RejectedPayload("wrong_type", f"{where}: {_clip(value)} is not a number")
    return float(value)


def _reading(metric: str, raw: float, unit: str | None, ts: float, where: str) -> Reading:
    canonical = CANONICAL_UNITS[metric]
    conversion = UNIT_CONVERSIONS[metric].get(canonical if unit is None else unit)
    if conversion is None:
        raise RejectedPayload("unknown_unit", f"{where}: unit {_clip(unit)} for {metric}")
    factor, offset = conversion
    value = raw * factor + offset
    if not math.isfinite(value):
        raise RejectedPayload("non_finite", f"{where}: value overflows in {canonical}")
    return Reading(ts=ts, metric=metric, value=value, unit=canonical)


def _check_time(ts: float, now: float, limits: Limits, where: str) -> None:
    if ts > now + limits.max_future_skew_s:
        raise RejectedPayload("future_timestamp", f"{where}: {ts - now:.0f} s ahead of now")
    if ts < now - limits.max_past_age_s:
        raise RejectedPayload("stale_timestamp", f"{where}: {now - ts:.0f} s old")


def _is_number(value: Any) -> bool:
    # JSON true/false arrive as bool, which Python counts as int.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clip(value: Any) -> str:
    # A parsed container nests as deep as orjson allows (1024 levels), past the
    # interpreter's recursion limit, where repr raises RecursionError: only its top
    # levels are shown (and only its first items: the text is clipped anyway).
    text = _CONTAINER_REPR.repr(value) if isinstance(value, list | dict) else repr(value)
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."

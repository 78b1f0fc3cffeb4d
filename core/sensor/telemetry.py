"""Normalised telemetry: what travels on Kafka ``cityops.telemetry`` (not a domain event).

One Kafka message per MQTT message, keyed by device id, value::

    {"kind": "readings", "device_id": "wl-0042", "gateway_id": "gw-01",
     "received_at": 1763700000.25,
     "readings": [{"ts": 1763700000.0, "metric": "water_level", "value": 38.5, "unit": "cm"}]}

    {"kind": "status", "device_id": "wl-0042", "gateway_id": "gw-01",
     "received_at": 1763700000.25, "status": "offline"}

    {"kind": "location", "device_id": "wl-0042", "gateway_id": "gw-01",
     "received_at": 1763700000.25,
     "location": {"ts": 1763700000.0, "lon": 121.4737, "lat": 31.2304,
                  "coord_system": "gcj02"}}

Timestamps are epoch seconds (UTC); values are floats in the canonical unit of the metric;
a location's lon/lat are WGS-84 whatever system the device reported them in
(``coord_system``: the decoder converts at the edge).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

# Canonical unit per metric, and how other accepted units convert to it (factor, offset).
CANONICAL_UNITS: dict[str, str] = {
    "water_level": "cm",
    "pm25": "ug/m3",
    "tilt": "deg",
    "power": "W",
    "battery": "%",
    "temperature": "Cel",
    "rssi": "dBW",
}

UNIT_CONVERSIONS: dict[str, dict[str, tuple[float, float]]] = {
    "water_level": {"cm": (1.0, 0.0), "m": (100.0, 0.0), "mm": (0.1, 0.0)},
    "pm25": {"ug/m3": (1.0, 0.0), "mg/m3": (1000.0, 0.0), "kg/m3": (1e9, 0.0)},
    "tilt": {"deg": (1.0, 0.0), "rad": (57.29577951308232, 0.0)},
    "power": {"W": (1.0, 0.0), "kW": (1000.0, 0.0)},
    "battery": {"%": (1.0, 0.0), "%EL": (1.0, 0.0), "/": (100.0, 0.0)},
    "temperature": {"Cel": (1.0, 0.0), "K": (1.0, -273.15)},
    "rssi": {"dBW": (1.0, 0.0), "dBm": (1.0, -30.0)},
}

# Which metrics each sensor type reports; the first one is the one its rules watch.
SENSOR_TYPES: dict[str, tuple[str, ...]] = {
    "water_level": ("water_level", "battery", "temperature"),
    "pm25": ("pm25", "battery", "temperature"),
    "manhole_tilt": ("tilt", "battery", "temperature"),
    "streetlight_power": ("power", "battery", "temperature"),
}

DeviceStatus = Literal["online", "offline"]
TelemetryKind = Literal["readings", "status", "location"]


class Reading(NamedTuple):
    # A named tuple, not a dataclass: the bridge and the monitor make three of these per
    # message, and a tuple is built in half the time of a frozen dataclass.
    ts: float
    metric: str
    value: float
    unit: str


class Location(NamedTuple):
    """Where a device says it is: WGS-84 lon/lat, and the system it reported them in."""

    ts: float
    lon: float
    lat: float
    coord_system: str


@dataclass(frozen=True, slots=True)
class TelemetryMessage:
    """One normalised message from one device: readings, a status change, or its position."""

    device_id: str
    gateway_id: str
    received_at: float
    kind: TelemetryKind = "readings"
    readings: tuple[Reading, ...] = field(default_factory=tuple)
    status: DeviceStatus | None = None
    location: Location | None = None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "kind": self.kind,
            "device_id": self.device_id,
            "gateway_id": self.gateway_id,
            "received_at": self.received_at,
        }
        if self.kind == "readings":
            body["readings"] = [
                {"ts": r.ts, "metric": r.metric, "value": r.value, "unit": r.unit}
                for r in self.readings
            ]
        elif self.kind == "location" and self.location is not None:
            body["location"] = self.location._asdict()
        else:
            body["status"] = self.status
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes) -> TelemetryMessage:
        body = orjson.loads(raw)
        kind = body["kind"]
        if kind == "readings":
            return cls(
                device_id=body["device_id"],
                gateway_id=body["gateway_id"],
                received_at=float(body["received_at"]),
                readings=tuple(
                    [
                        Reading(float(r["ts"]), r["metric"], float(r["value"]), r["unit"])
                        for r in body["readings"]
                    ]
                ),
            )
        if kind == "status":
            return cls(
                device_id=body["device_id"],
                gateway_id=body["gateway_id"],
                received_at=float(body["received_at"]),
                kind="status",
                status=body["status"],
            )
        if kind == "location":
            where = body["location"]
            return cls(
                device_id=body["device_id"],
                gateway_id=body["gateway_id"],
                received_at=float(body["received_at"]),
                kind="location",
                location=Location(
                    float(where["ts"]),
                    float(where["lon"]),
                    float(where["lat"]),
                    str(where["coord_system"]),
                ),
            )
        raise ValueError(f"unknown telemetry kind {kind!r}")

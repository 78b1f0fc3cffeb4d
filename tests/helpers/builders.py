"""Small builders of test data; unique ids per test."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.application import ProcessingEvent
from kafka import KafkaProducer

from core.app import CityApp
from core.case.desk import ServiceDesk, SubmitCase
from core.incident import Incident
from core.incident.policy import IncidentPolicy
from core.personal import Contact
from core.sensor import SensorSpec
from core.sensor.rules import Transition, load_rules
from core.sensor.telemetry import Reading, TelemetryMessage
from infra import kafka as topics
from infra.pgstore import apply_schema, make_pool
from infra.settings import Settings


def sensor(
    device_id: str, sensor_type: str = "water_level", gateway_id: str = "gw-t"
) -> SensorSpec:
    return SensorSpec(
        device_id=device_id,
        sensor_type=sensor_type,
        gateway_id=gateway_id,
        lon=121.47,
        lat=31.23,
        grid_code="310101001001001",
        district_code="310101",
        department_code="310101-water",
    )


def prepare(settings: Settings, app: CityApp, specs: Iterable[SensorSpec]) -> None:
    """Schema, topics and registered sensors, as `cityops seed` would leave them."""
    pool = make_pool(settings, max_size=1)
    with pool.connection() as conn:
        apply_schema(conn)
    pool.close()
    topics.ensure_topics(settings)
    app.register_sensors(specs, actor="test", correlation_id="test-seed")


def readings_message(
    device_id: str, values: dict[str, float], ts: float | None = None, gateway_id: str = "gw-t"
) -> TelemetryMessage:
    now = time.time() if ts is None else ts
    units = {
        "water_level": "cm",
        "battery": "%",
        "temperature": "Cel",
        "pm25": "ug/m3",
        "tilt": "deg",
        "power": "W",
    }
    return TelemetryMessage(
        device_id=device_id,
        gateway_id=gateway_id,
        received_at=now,
        readings=tuple(Reading(now, m, v, units[m]) for m, v in values.items()),
    )


def status_message(device_id: str, status: str, gateway_id: str = "gw-t") -> TelemetryMessage:
    return TelemetryMessage(
        device_id=device_id,
        gateway_id=gateway_id,
        received_at=time.time(),
        kind="status",
        status=status,  # type: ignore[arg-type]
    )


def send(settings: Settings, producer: KafkaProducer, messages: Iterable[TelemetryMessage]) -> int:
    topic = topics.Topics.of(settings).telemetry
    n = 0
    for msg in messages:
        producer.send(topic, key=msg.device_id.encode(), value=msg.to_json())
        n += 1
    producer.flush()
    return n


def link_as_brain(app: CityApp, pool: Any, case_ids: Iterable[UUID]) -> None:
    """Link accepted reports to nearby incidents as the urban brain does (its worker is
    tested in test_urban_brain); the read models must be caught up first."""
    from eventsourcing.application import ProcessingEvent

    from core.brain.correlation import Correlator, load_policy
    from gis.crs import distance_m
    from projections.nearby import NearbyQueries

    correlator = Correlator(
        load_policy(), NearbyQueries(pool), app.get_typed, app.exists, {}, distance_m
    )
    for case_id in case_ids:
        pe: ProcessingEvent[UUID] = ProcessingEvent()
        correlator.case_accepted(case_id, "t", pe)
        app.record(pe)


def senml(
    device_id: str,
    value: float,
    *more: dict[str, Any],
    ts: float | None = None,
    unit: str | None = "cm",
) -> bytes:
    """A SenML pack of one water level (at ``ts``, now by default) and ``more`` records."""
    first: dict[str, Any] = {"bn": f"{device_id}:", "bt": time.time() if ts is None else ts}
    first.update({"n": "water_level", **({"u": unit} if unit else {}), "v": value})
    return orjson.dumps([first, *more])


M_PER_DEG = 111_320.0


def offset(lon: float, lat: float, east_m: float, north_m: float) -> tuple[float, float]:
    """The point ``east_m`` east and ``north_m`` north of (lon, lat)."""
    return (
        lon + east_m / (M_PER_DEG * math.cos(math.radians(lat))),
        lat + north_m / M_PER_DEG,
    )


def flood_alarm(
    app: CityApp, device_id: str, reading_ts: float = 1.0, correlation_id: str = "test-storm"
) -> UUID:
    """What the sensor monitor does on a water level over the flooding threshold."""
    pe: ProcessingEvent[UUID] = ProcessingEvent()
    IncidentPolicy(app, load_rules()).apply(
        app.get_sensor(device_id),
        [Transition("raised", "water_level_high", "major", "water_level", 62.0, reading_ts)],
        correlation_id,
        pe,
    )
    app.record(pe)
    return UUID(app.get_sensor(device_id).open_incidents["water_level_high"])


REPORTER_PHONE = "13800138000"


def report(desk: ServiceDesk, key: str, lon: float, lat: float, category: str = "flooding") -> UUID:
    """A citizen's report by the hotline, the caller's phone ``REPORTER_PHONE``."""
    attributes = {"water_depth": "knee"} if category == "flooding" else {}
    case = desk.submit(
        SubmitCase(
            "hotline",
            key,
            category,
            f"storm report {key}",
            lon=lon,
            lat=lat,
            attributes=attributes,
            contact=Contact(phone=REPORTER_PHONE),
        ),
        actor="hotline:test",
        correlation_id=key,
    )
    return case.id


def operator_incident(
    incident_id: UUID, title: str, severity: str, department_code: str | None
) -> Incident:
    """An incident an operator opens by hand (no sensor), at a point of the test city."""
    return Incident.open(
        incident_id,
        kind="operator",
        title=title,
        category="flooding",
        severity=severity,
        device_id=None,
        rule_id=None,
        rule_version=None,
        lon=121.49,
        lat=31.23,
        grid_code=None,
        district_code=None,
        department_code=department_code,
        metric=None,
        value=None,
        reading_ts=None,
        actor="test",
        correlation_id="t",
    )


# A scorecard's first-contact and solved figures for rows written straight into the read
# model without a first-contact deadline or a "solved?" answer: nothing to count.
NOTHING_TO_RATE: dict[str, Any] = {
    "response_due": 0,
    "responded_on_time": 0,
    "response_rate": None,
    "solved_asked": 0,
    "solved": 0,
    "resolution_rate": None,
}

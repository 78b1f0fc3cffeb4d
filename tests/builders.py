"""Small builders of test data; unique ids per test."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from kafka import KafkaProducer

from core.app import CityApp
from core.sensor import SensorSpec
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

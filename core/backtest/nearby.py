"""The backtest's scratch city: aggregates held in memory, asked through ``Nearby``.

The correlation backtest rebuilds cases, incidents and sensors from the log into a
``ScratchCity`` and lets the real ``core.brain.correlation.Correlator`` decide over it. The
look-ups apply the same filters as the read-model queries (``projections.nearby``), on
the aggregates as they stand at that point of the replay; nothing leaves the process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from core.brain.correlation import NearCase, NearIncident, NearSensor
from core.case import OPEN, ServiceCase
from core.errors import NotFoundError
from core.incident import Incident
from core.sensor import Sensor

A = TypeVar("A", bound=Aggregate)
# Incident stages the map's "open" incidents are in (as ``projections.nearby`` asks).
LINKABLE_STAGES = ("reported", "dispatched", "accepted")


class ScratchCity:
    """Cases, incidents and sensors in memory: the Correlator's store and ``Nearby`` port."""

    def __init__(self, distance_m: Callable[[float, float, float, float], float]) -> None:
        self.distance_m = distance_m
        self.cases: dict[UUID, ServiceCase] = {}
        self.incidents: dict[UUID, Incident] = {}
        self.sensors: dict[UUID, Sensor] = {}

    # -- the store ------------------------------------------------------------------------

    def hold(self, aggregate: Any) -> None:
        """Keep an aggregate of a kind the correlation asks about (others are ignored)."""
        if isinstance(aggregate, ServiceCase):
            self.cases[aggregate.id] = aggregate
        elif isinstance(aggregate, Incident):
            self.incidents[aggregate.id] = aggregate
        elif isinstance(aggregate, Sensor):
            self.sensors[aggregate.id] = aggregate

    def find(self, aggregate_id: UUID) -> Aggregate | None:
        return (
            self.cases.get(aggregate_id)
            or self.incidents.get(aggregate_id)
            or self.sensors.get(aggregate_id)
        )

    def get(self, aggregate_id: UUID, cls: type[A], what: str) -> A:
        """As ``CityApp.get_typed``: the aggregate of that id and class, or NotFoundError."""
        found = self.find(aggregate_id)
        if not isinstance(found, cls):
            raise NotFoundError(f"unknown {what} {aggregate_id}")
        return found

    def exists(self, aggregate_id: UUID) -> bool:
        return self.find(aggregate_id) is not None

    # -- the Nearby port ------------------------------------------------------------------

    def _within(
        self, items: Iterable[tuple[UUID | str, float, float, A]], lon: float, lat: float, r: float
    ) -> list[tuple[float, A]]:
        found = [(float(self.distance_m(lon, lat, x, y)), str(key), a) for key, x, y, a in items]
        return [(d, a) for d, _, a in sorted(found, key=lambda f: (f[0], f[1])) if d <= r]

    def incidents_near(
        self, lon: float, lat: float, radius_m: float, categories: tuple[str, ...], since: datetime
    ) -> list[NearIncident]:
        """Open incidents of these categories, opened since ``since`` or still alarming."""
        candidates = (
            (i.id, i.lon, i.lat, i)
            for i in self.incidents.values()
            if i.status == "open"
            and i.stage in LINKABLE_STAGES
            and i.category in categories
            and (i.created_on >= since or i.alarm_status == "active")
        )
        return [
            NearIncident(i.id, d, i.kind) for d, i in self._within(candidates, lon, lat, radius_m)
        ]

    def cases_near(
        self, lon: float, lat: float, radius_m: float, categories: tuple[str, ...], since: datetime
    ) -> list[NearCase]:
        """Open cases of these categories with no incident, submitted since ``since``."""
        candidates = (
            (c.id, c.lon, c.lat, c)
            for c in self.cases.values()
            if c.status in OPEN
            and c.incident_id is None
            and c.category in categories
            and c.lon is not None
            and c.lat is not None
            and c.created_on >= since
        )
        return [NearCase(c.id, d) for d, c in self._within(candidates, lon, lat, radius_m)]

    def sensors_near(
        self, lon: float, lat: float, radius_m: float, sensor_types: tuple[str, ...]
    ) -> list[NearSensor]:
        """Sensors of these types, with their alarms and silence at this point of the log."""
        candidates = (
            (s.device_id, s.lon, s.lat, s)
            for s in self.sensors.values()
            if s.sensor_type in sensor_types
        )
        return [
            NearSensor(s.device_id, d, tuple(sorted(s.alarms)), bool(s.silent))
            for d, s in self._within(candidates, lon, lat, radius_m)
        ]

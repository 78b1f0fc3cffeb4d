"""The ``Sensor`` aggregate: a device on the grid and every state change it went through."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from core.errors import IllegalTransitionError

SENSOR_NS = uuid5(NAMESPACE_URL, "https://cityops.example/sensor")
INCIDENT_NS = uuid5(NAMESPACE_URL, "https://cityops.example/incident")

SILENCE_RULE = "device_silent"


def sensor_id(device_id: str) -> UUID:
    """Deterministic id: a redelivered registration hits the same aggregate."""
    return uuid5(SENSOR_NS, device_id)


def incident_id(device_id: str, rule_id: str, seq: int) -> UUID:
    """Deterministic id of the ``seq``-th incident of one (sensor, rule)."""
    return uuid5(INCIDENT_NS, f"{device_id}/{rule_id}/{seq}")


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """What registering a device needs (the ``Registered`` event's fields, by name);
    placement comes from gis/."""

    device_id: str
    sensor_type: str
    gateway_id: str
    lon: float
    lat: float
    grid_code: str | None
    district_code: str | None
    department_code: str | None


class Sensor(Aggregate):
    """A registered device. States: normal, alarm, silent, maintenance."""

    @staticmethod
    def create_id(device_id: str, **_: object) -> UUID:
        return sensor_id(device_id)

    @event("Registered")
    def __init__(
        self,
        device_id: str,
        sensor_type: str,
        gateway_id: str,
        lon: float,
        lat: float,
        grid_code: str | None,
        district_code: str | None,
        department_code: str | None,
        actor: str,
        correlation_id: str,
    ) -> None:
        self.device_id = device_id
        self.sensor_type = sensor_type
        self.gateway_id = gateway_id
        self.lon = lon
        self.lat = lat
        self.grid_code = grid_code
        self.district_code = district_code
        self.department_code = department_code
        self.alarms: dict[str, str] = {}  # rule id -> severity
        self.silent = False
        self.maintenance = False
        self.open_incidents: dict[str, str] = {}  # rule id -> incident id (hex)
        self.incident_seq: dict[str, int] = {}
        self.located_at: float | None = None  # time of the fix that placed it, if one did

    @property
    def state(self) -> str:
        if self.maintenance:
            return "maintenance"
        if self.silent:
            return "silent"
        return "alarm" if self.alarms else "normal"

    def next_incident_id(self, rule_id: str) -> tuple[UUID, int]:
        seq = self.incident_seq.get(rule_id, 0) + 1
        return incident_id(self.device_id, rule_id, seq), seq

    def _incident_opened(self, rule_id: str, incident_id: str, incident_seq: int) -> None:
        self.open_incidents[rule_id] = incident_id
        self.incident_seq[rule_id] = max(self.incident_seq.get(rule_id, 0), incident_seq)

    def _require_alarm(self, rule_id: str) -> None:
        if rule_id not in self.alarms:
            raise IllegalTransitionError(f"no active alarm for rule {rule_id}")

    @event("AlarmRaised")
    def raise_alarm(
        self,
        rule_id: str,
        rule_version: int,
        severity: str,
        metric: str,
        value: float,
        reading_ts: float,
        incident_id: str,
        incident_seq: int,
        actor: str,
        correlation_id: str,
    ) -> None:
        self.alarms[rule_id] = severity
        self._incident_opened(rule_id, incident_id, incident_seq)

    @event("AlarmSeverityChanged")
    def change_severity(
        self,
        rule_id: str,
        rule_version: int,
        severity: str,
        metric: str,
        value: float,
        reading_ts: float,
        actor: str,
        correlation_id: str,
    ) -> None:
        self._require_alarm(rule_id)
        self.alarms[rule_id] = severity

    @event("AlarmCleared")
    def clear_alarm(
        self,
        rule_id: str,
        rule_version: int,
        metric: str,
        value: float,
        reading_ts: float,
        actor: str,
        correlation_id: str,
    ) -> None:
        self._require_alarm(rule_id)
        del self.alarms[rule_id]

    @event("WentSilent")
    def go_silent(
        self,
        reason: str,
        last_seen: float | None,
        incident_id: str,
        incident_seq: int,
        actor: str,
        correlation_id: str,
    ) -> None:
        if self.silent:
            raise IllegalTransitionError("sensor is already silent")
        self.silent = True
        self._incident_opened(SILENCE_RULE, incident_id, incident_seq)

    @event("Relocated")
    def relocate(
        self,
        lon: float,
        lat: float,
        grid_code: str | None,
        district_code: str | None,
        department_code: str | None,
        coord_system: str,
        located_at: float,
        moved_m: float,
        actor: str,
        correlation_id: str,
    ) -> None:
        """The device reported a position ``moved_m`` from where it was (WGS-84 ``lon``,
        ``lat``; ``coord_system`` is what it reported in); its incidents stay where they
        opened."""
        if self.located_at is not None and located_at <= self.located_at:
            raise IllegalTransitionError("a fix no newer than the one that placed the sensor")
        self.lon, self.lat = lon, lat
        self.grid_code, self.district_code = grid_code, district_code
        self.department_code = department_code
        self.located_at = located_at

    @event("CameBack")
    def come_back(self, seen_at: float, actor: str, correlation_id: str) -> None:
        if not self.silent:
            raise IllegalTransitionError("sensor is not silent")
        self.silent = False

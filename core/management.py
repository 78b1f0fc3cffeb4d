"""The management network (一网统管) application: sensors and incidents.

Commands carry who did it (``actor``) and a correlation id; every event records both.
Workers collect events from many aggregates into one ``ProcessingEvent`` so that the
events, the input position and the worker's own state commit in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import Recording

from core.errors import IllegalTransitionError, NotFoundError
from core.incident import Incident
from core.rules import RuleSet, Transition
from core.sensor import SILENCE_RULE, Sensor, sensor_id

SYSTEM_MONITOR = "system:sensor-monitor"


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """What registering a device needs; placement comes from gis/."""

    device_id: str
    sensor_type: str
    gateway_id: str
    lon: float
    lat: float
    grid_code: str | None
    district_code: str | None
    department_code: str | None


class ManagementApp(Application[UUID]):
    name = "management"

    def construct_recorder(self) -> Any:
        # Workers record their input position with their events: use a process recorder.
        return self.factory.process_recorder()

    # -- commands -------------------------------------------------------------------

    def register_sensors(self, specs: Iterable[SensorSpec], actor: str, correlation_id: str) -> int:
        """Register devices not yet known (idempotent); return how many were new."""
        new = []
        for spec in specs:
            if self._exists(sensor_id(spec.device_id)):
                continue
            new.append(
                Sensor(
                    device_id=spec.device_id,
                    sensor_type=spec.sensor_type,
                    gateway_id=spec.gateway_id,
                    lon=spec.lon,
                    lat=spec.lat,
                    grid_code=spec.grid_code,
                    district_code=spec.district_code,
                    department_code=spec.department_code,
                    actor=actor,
                    correlation_id=correlation_id,
                )
            )
            if len(new) >= 500:
                self.save(*new)
                new.clear()
        if new:
            self.save(*new)
        return len(new)

    def acknowledge_incident(
        self, incident_id: UUID, actor: str, reason: str, correlation_id: str
    ) -> Incident:
        incident = self.get_incident(incident_id)
        incident.acknowledge(actor=actor, reason=reason, correlation_id=correlation_id)
        if incident.ready_to_close:
            incident.close(
                reason="alarm cleared and acknowledged", actor=actor, correlation_id=correlation_id
            )
        self.save(incident)
        return incident

    # -- queries --------------------------------------------------------------------

    def get_sensor(self, device_id: str) -> Sensor:
        try:
            aggregate: Sensor = self.repository.get(sensor_id(device_id))
            return aggregate
        except AggregateNotFoundError:
            raise NotFoundError(f"unknown sensor {device_id!r}") from None

    def get_incident(self, incident_id: UUID) -> Incident:
        try:
            aggregate: object = self.repository.get(incident_id)
        except AggregateNotFoundError:
            raise NotFoundError(f"unknown incident {incident_id}") from None
        if not isinstance(aggregate, Incident):
            raise NotFoundError(f"unknown incident {incident_id}")
        return aggregate

    def is_registered(self, device_id: str) -> bool:
        return self._exists(sensor_id(device_id))

    def _exists(self, aggregate_id: UUID) -> bool:
        return bool(list(self.events.get(aggregate_id, limit=1)))

    # -- workers --------------------------------------------------------------------

    def record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        """Record a worker's events, input position and extra state in one transaction."""
        recordings = self._record(processing_event)
        self._notify(recordings)
        return recordings


class IncidentPolicy:
    """Turns sensor state changes into Sensor and Incident events.

    One open incident per (sensor, rule): a re-trigger while it is open updates it.
    """

    def __init__(self, app: ManagementApp, ruleset: RuleSet) -> None:
        self.app = app
        self.ruleset = ruleset

    def _open_incident(
        self, sensor: Sensor, rule_id: str, pe: ProcessingEvent[UUID]
    ) -> Incident | None:
        hex_id = sensor.open_incidents.get(rule_id)
        if hex_id is None:
            return None
        incident_uuid = UUID(hex_id)
        held = pe.aggregates.get(incident_uuid)
        incident = held if isinstance(held, Incident) else self.app.get_incident(incident_uuid)
        return None if incident.closed else incident

    def _raise(
        self,
        sensor: Sensor,
        rule_id: str,
        kind: str,
        severity: str,
        title: str,
        category: str,
        metric: str | None,
        value: float | None,
        ts: float | None,
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> tuple[Incident, int]:
        incident = self._open_incident(sensor, rule_id, pe)
        if incident is not None:
            incident.retrigger(
                severity=severity,
                value=value,
                reading_ts=ts,
                actor=SYSTEM_MONITOR,
                correlation_id=correlation_id,
            )
            return incident, sensor.incident_seq.get(rule_id, 1)
        new_id, seq = sensor.next_incident_id(rule_id)
        incident = Incident.open(
            new_id,
            kind=kind,
            title=title,
            category=category,
            severity=severity,
            device_id=sensor.device_id,
            rule_id=rule_id,
            rule_version=self.ruleset.version,
            lon=sensor.lon,
            lat=sensor.lat,
            grid_code=sensor.grid_code,
            district_code=sensor.district_code,
            department_code=sensor.department_code,
            metric=metric,
            value=value,
            reading_ts=ts,
            actor=SYSTEM_MONITOR,
            correlation_id=correlation_id,
        )
        return incident, seq

    def apply(
        self,
        sensor: Sensor,
        transitions: Iterable[Transition],
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> None:
        """Apply rule transitions to the sensor and its incidents; collect into ``pe``."""
        version = self.ruleset.version
        for tr in transitions:
            rule = self.ruleset.by_id(tr.rule_id)
            active = tr.rule_id in sensor.alarms
            if tr.kind in ("raised", "severity_changed") and tr.severity is not None:
                if not active:
                    incident, seq = self._raise(
                        sensor,
                        rule.id,
                        "sensor_alarm",
                        tr.severity,
                        rule.title,
                        rule.category,
                        tr.metric,
                        tr.value,
                        tr.ts,
                        correlation_id,
                        pe,
                    )
                    sensor.raise_alarm(
                        rule_id=rule.id,
                        rule_version=version,
                        severity=tr.severity,
                        metric=tr.metric,
                        value=tr.value,
                        reading_ts=tr.ts,
                        incident_id=incident.id.hex,
                        incident_seq=seq,
                        actor=SYSTEM_MONITOR,
                        correlation_id=correlation_id,
                    )
                    pe.collect_events(incident)
                elif sensor.alarms[tr.rule_id] != tr.severity:
                    sensor.change_severity(
                        rule_id=rule.id,
                        rule_version=version,
                        severity=tr.severity,
                        metric=tr.metric,
                        value=tr.value,
                        reading_ts=tr.ts,
                        actor=SYSTEM_MONITOR,
                        correlation_id=correlation_id,
                    )
                    open_incident = self._open_incident(sensor, rule.id, pe)
                    if open_incident is not None:
                        open_incident.change_severity(
                            severity=tr.severity,
                            value=tr.value,
                            reading_ts=tr.ts,
                            actor=SYSTEM_MONITOR,
                            correlation_id=correlation_id,
                        )
                        pe.collect_events(open_incident)
            elif tr.kind == "cleared" and active:
                sensor.clear_alarm(
                    rule_id=rule.id,
                    rule_version=version,
                    metric=tr.metric,
                    value=tr.value,
                    reading_ts=tr.ts,
                    actor=SYSTEM_MONITOR,
                    correlation_id=correlation_id,
                )
                self._clear_incident(sensor, rule.id, tr.value, tr.ts, correlation_id, pe)
        pe.collect_events(sensor)

    def _clear_incident(
        self,
        sensor: Sensor,
        rule_id: str,
        value: float | None,
        ts: float | None,
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> None:
        incident = self._open_incident(sensor, rule_id, pe)
        if incident is None or incident.alarm_status == "cleared":
            return
        incident.clear(
            value=value, reading_ts=ts, actor=SYSTEM_MONITOR, correlation_id=correlation_id
        )
        if incident.ready_to_close:
            incident.close(
                reason="alarm cleared and acknowledged",
                actor=SYSTEM_MONITOR,
                correlation_id=correlation_id,
            )
        pe.collect_events(incident)

    def went_silent(
        self,
        sensor: Sensor,
        reason: str,
        last_seen: float | None,
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> None:
        if sensor.silent:
            return
        policy = self.ruleset.silence
        incident, seq = self._raise(
            sensor,
            SILENCE_RULE,
            "device_silent",
            policy.severity,
            policy.title,
            policy.category,
            None,
            None,
            last_seen,
            correlation_id,
            pe,
        )
        sensor.go_silent(
            reason=reason,
            last_seen=last_seen,
            incident_id=incident.id.hex,
            incident_seq=seq,
            actor=SYSTEM_MONITOR,
            correlation_id=correlation_id,
        )
        pe.collect_events(incident, sensor)

    def came_back(
        self, sensor: Sensor, seen_at: float, correlation_id: str, pe: ProcessingEvent[UUID]
    ) -> None:
        if not sensor.silent:
            return
        sensor.come_back(seen_at=seen_at, actor=SYSTEM_MONITOR, correlation_id=correlation_id)
        self._clear_incident(sensor, SILENCE_RULE, None, seen_at, correlation_id, pe)
        pe.collect_events(sensor)


__all__ = [
    "SYSTEM_MONITOR",
    "IllegalTransitionError",
    "IncidentPolicy",
    "ManagementApp",
    "NotFoundError",
    "SensorSpec",
]

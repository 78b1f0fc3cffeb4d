"""The management network (一网统管) policy: sensor state changes -> Incident events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict
from uuid import UUID

from eventsourcing.application import ProcessingEvent

from core.app import CityApp
from core.incident import Incident, placement
from core.sensor import SILENCE_RULE, Sensor
from core.sensor.rules import RuleSet, Transition

SYSTEM_MONITOR = "system:sensor-monitor"


class _AlarmFacts(TypedDict):
    """What each Sensor alarm event of one rule transition records about it."""

    rule_id: str
    rule_version: int
    metric: str
    value: float
    reading_ts: float
    actor: str
    correlation_id: str


class IncidentPolicy:
    """Turns sensor state changes into Sensor and Incident events.

    One open incident per (sensor, rule): a re-trigger while it is open updates it.
    """

    def __init__(self, app: CityApp, ruleset: RuleSet) -> None:
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
            **placement(sensor),
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
            facts = _AlarmFacts(
                rule_id=rule.id,
                rule_version=version,
                metric=tr.metric,
                value=tr.value,
                reading_ts=tr.ts,
                actor=SYSTEM_MONITOR,
                correlation_id=correlation_id,
            )
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
                        **facts,
                        severity=tr.severity,
                        incident_id=incident.id.hex,
                        incident_seq=seq,
                    )
                    pe.collect_events(incident)
                elif sensor.alarms[tr.rule_id] != tr.severity:
                    sensor.change_severity(**facts, severity=tr.severity)
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
                sensor.clear_alarm(**facts)
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

"""The urban brain's correlation policy: citizen reports and incidents, one per problem.

When a service case is accepted, the ``Correlator`` looks for an open incident of a
paired category within the rule's radius and time window and links both (each records
the link with the rule and its version). With no incident, several reports of the
same thing open one incident together. Nearby sensors of the right type that show
nothing mark the report "not confirmed by sensors"; an alarm confirmed by many reports
is raised one severity step. When a sensor alarm opens, it adopts the reports made
before it (and merges an incident those reports had opened).

The rules are versioned data (``core/brain/correlation.yaml``). Spatial look-ups go through
the ``Nearby`` port (the read models); every decision is re-checked on the aggregates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypedDict
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import ProcessingEvent
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.case import OPEN, ServiceCase
from core.incident import SEVERITIES, Incident, placement, raised_severity
from core.refdata import load_yaml

SYSTEM_BRAIN = "system:urban-brain"
CLUSTER_NS = uuid5(NAMESPACE_URL, "https://cityops.example/citizen-report-cluster")


class PolicyError(ValueError):
    """The correlation policy file is malformed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CorrelationRule(_Frozen):
    id: str = Field(min_length=1)
    case_categories: tuple[str, ...] = Field(min_length=1)
    incident_categories: tuple[str, ...] = Field(min_length=1)
    sensor_types: tuple[str, ...] = ()
    radius_m: float = Field(gt=0, le=10_000)
    window_h: float = Field(gt=0, le=24 * 30)
    cluster_severity: str = "minor"
    # Reports needed to open an incident together; None: the policy's cluster_min_reports.
    cluster_min_reports: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _severity(self) -> CorrelationRule:
        if self.cluster_severity not in SEVERITIES:
            raise ValueError(f"cluster_severity must be one of {SEVERITIES}")
        return self

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.window_h)


class CorrelationPolicy(_Frozen):
    version: int = Field(ge=1)
    rules: tuple[CorrelationRule, ...]
    cluster_min_reports: int = Field(ge=2)
    confirm_after_reports: int = Field(ge=1)
    incident_time_limits_h: dict[str, float]
    max_escalation_level: int = Field(ge=0, le=10)

    @model_validator(mode="after")
    def _consistent(self) -> CorrelationPolicy:
        ids = [r.id for r in self.rules]
        if len(set(ids)) != len(ids):
            raise ValueError("rule ids must be unique")
        seen: dict[str, str] = {}
        for rule in self.rules:
            for category in rule.case_categories:
                if category in seen:
                    raise ValueError(
                        f"case category {category!r} is in rules {seen[category]!r} and {rule.id!r}"
                    )
                seen[category] = rule.id
        missing = [s for s in SEVERITIES if s not in self.incident_time_limits_h]
        if missing or any(h <= 0 for h in self.incident_time_limits_h.values()):
            raise ValueError(f"incident_time_limits_h needs a positive limit for {SEVERITIES}")
        return self

    def rule_for_case(self, category: str) -> CorrelationRule | None:
        return next((r for r in self.rules if category in r.case_categories), None)

    def rule_for_incident(self, category: str) -> CorrelationRule | None:
        return next((r for r in self.rules if category in r.incident_categories), None)

    def min_reports(self, rule: CorrelationRule) -> int:
        """Reports of ``rule`` that open an incident together."""
        return rule.cluster_min_reports or self.cluster_min_reports

    def time_limit(self, severity: str) -> timedelta:
        return timedelta(hours=self.incident_time_limits_h.get(severity, 24.0))


def load_policy(path: Path | None = None) -> CorrelationPolicy:
    """Load and validate a policy file (default: the packaged ``core/brain/correlation.yaml``)."""
    raw = load_yaml(
        "core.brain",
        "correlation.yaml",
        path,
        invalid=(PolicyError, "correlation policy is not YAML"),
    )
    try:
        return CorrelationPolicy.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "policy"
        raise PolicyError(f"correlation policy: {where}: {first['msg']}") from None


# -- the read side it asks (a port) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NearIncident:
    """An incident the read side finds near a point, and how far it is."""

    id: UUID
    distance_m: float
    kind: str


@dataclass(frozen=True, slots=True)
class NearCase:
    """A service case the read side finds near a point, and how far it is."""

    id: UUID
    distance_m: float


@dataclass(frozen=True, slots=True)
class NearSensor:
    device_id: str
    distance_m: float
    alarm_rules: tuple[str, ...]
    silent: bool


class Nearby(Protocol):
    def incidents_near(
        self, lon: float, lat: float, radius_m: float, categories: tuple[str, ...], since: datetime
    ) -> list[NearIncident]:
        """Open incidents of these categories, opened since ``since`` or still alarming."""
        ...

    def cases_near(
        self, lon: float, lat: float, radius_m: float, categories: tuple[str, ...], since: datetime
    ) -> list[NearCase]:
        """Open cases of these categories with no incident, submitted since ``since``."""
        ...

    def sensors_near(
        self, lon: float, lat: float, radius_m: float, sensor_types: tuple[str, ...]
    ) -> list[NearSensor]: ...


# -- the policy at work --------------------------------------------------------------------


class _Link(TypedDict):
    """What the incident's CaseLinked and the case's LinkedToIncident both record."""

    rule_id: str
    rule_version: int
    distance_m: float
    actor: str
    correlation_id: str


@dataclass(eq=False)
class Correlator:
    """Links cases and incidents; collects every change into the caller's ``ProcessingEvent``.

    ``get`` loads an aggregate by id (``CityApp.get_typed``); ``exists`` says whether an id
    is taken; ``alarm_categories`` maps sensor rule ids to their incident category.
    """

    policy: CorrelationPolicy
    nearby: Nearby
    get: Callable[[UUID, type[Any], str], Any]
    exists: Callable[[UUID], bool]
    alarm_categories: dict[str, str]
    distance_m: Callable[[float, float, float, float], float]

    def _load(self, pe: ProcessingEvent[UUID], aggregate_id: UUID, cls: type[Any]) -> Any:
        held = pe.aggregates.get(aggregate_id)
        if isinstance(held, cls):
            return held
        return self.get(aggregate_id, cls, cls.__name__)

    # -- a report arrives --------------------------------------------------------------

    def case_accepted(self, case_uuid: UUID, correlation_id: str, pe: ProcessingEvent[UUID]) -> str:
        """Correlate an accepted case; returns what happened (for logs and tests)."""
        case: ServiceCase = self._load(pe, case_uuid, ServiceCase)
        rule = self.policy.rule_for_case(case.category)
        if rule is None or case.lon is None or case.lat is None:
            return "no_rule"
        if case.status not in OPEN:
            return "not_open"
        self._sensor_check(case, rule, correlation_id, pe)
        if case.incident_id is not None:
            return "already_linked"
        since = case.created_on - rule.window
        candidates = self.nearby.incidents_near(
            case.lon, case.lat, rule.radius_m, rule.incident_categories, since
        )
        # A sensor's incident first (the city's own evidence), then the nearest.
        for cand in sorted(candidates, key=lambda c: (c.kind == "citizen_reports", c.distance_m)):
            incident: Incident = self._load(pe, cand.id, Incident)
            if incident.correlatable and str(case.id) not in incident.linked_cases:
                self._link(case, incident, rule, cand.distance_m, correlation_id, pe)
                return "linked"
        return self._cluster(case, rule, since, correlation_id, pe)

    def _sensor_check(
        self,
        case: ServiceCase,
        rule: CorrelationRule,
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> None:
        if not rule.sensor_types or case.sensor_check is not None:
            return
        assert case.lon is not None
        assert case.lat is not None
        sensors = self.nearby.sensors_near(case.lon, case.lat, rule.radius_m, rule.sensor_types)
        alarming = [
            s
            for s in sensors
            if any(self.alarm_categories.get(r) in rule.incident_categories for r in s.alarm_rules)
        ]
        reporting = [s for s in sensors if not s.silent]
        if alarming:
            result, shown = "confirmed", alarming
        elif reporting:
            result, shown = "not_confirmed", reporting
        else:
            result, shown = "no_sensors", sensors
        case.note_sensor_check(
            result=result,
            sensors=[s.device_id for s in shown[:20]],
            rule_id=rule.id,
            rule_version=self.policy.version,
            actor=SYSTEM_BRAIN,
            correlation_id=correlation_id,
        )
        pe.collect_events(case)

    def _cluster(
        self,
        case: ServiceCase,
        rule: CorrelationRule,
        since: datetime,
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> str:
        assert case.lon is not None
        assert case.lat is not None
        peers: list[ServiceCase] = []
        for near in self.nearby.cases_near(
            case.lon, case.lat, rule.radius_m, rule.case_categories, since
        ):
            if near.id == case.id:
                continue
            peer: ServiceCase = self._load(pe, near.id, ServiceCase)
            if peer.status in OPEN and peer.incident_id is None and peer.lon is not None:
                peers.append(peer)
        members = [case, *peers]
        if len(members) < self.policy.min_reports(rule):
            return "alone"
        incident_uuid = uuid5(CLUSTER_NS, f"{rule.id}:{min(m.id for m in members)}")
        if incident_uuid in pe.aggregates or self.exists(incident_uuid):
            return "cluster_exists"  # opened already; the next report links to it
        lon = sum(float(m.lon or 0.0) for m in members) / len(members)
        lat = sum(float(m.lat or 0.0) for m in members) / len(members)
        incident = Incident.open(
            incident_uuid,
            kind="citizen_reports",
            title=f"Citizen reports: {rule.id.replace('_', ' ')}",
            category=rule.incident_categories[0],
            severity=rule.cluster_severity,
            device_id=None,
            rule_id=rule.id,
            rule_version=self.policy.version,
            lon=lon,
            lat=lat,
            **placement(case),
            metric=None,
            value=None,
            reading_ts=None,
            actor=SYSTEM_BRAIN,
            correlation_id=correlation_id,
        )
        for member in members:
            distance = self.distance_m(float(member.lon or 0.0), float(member.lat or 0.0), lon, lat)
            self._link(member, incident, rule, distance, correlation_id, pe)
        return "clustered"

    def _link(
        self,
        case: ServiceCase,
        incident: Incident,
        rule: CorrelationRule,
        distance_m: float,
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> None:
        self._sensor_check(case, rule, correlation_id, pe)
        # Both sides record the same link.
        link = _Link(
            rule_id=rule.id,
            rule_version=self.policy.version,
            distance_m=round(distance_m, 1),
            actor=SYSTEM_BRAIN,
            correlation_id=correlation_id,
        )
        incident.link_case(case_id=str(case.id), **link)
        case.link_incident(incident_id=str(incident.id), **link)
        if (
            incident.kind == "sensor_alarm"
            and not incident.confirmed_by_reports
            and len(incident.linked_cases) >= self.policy.confirm_after_reports
        ):
            incident.confirm_by_reports(
                severity=raised_severity(incident.severity),
                reports=len(incident.linked_cases),
                rule_version=self.policy.version,
                actor=SYSTEM_BRAIN,
                correlation_id=correlation_id,
            )
        pe.collect_events(incident, case)

    # -- an alarm opens --------------------------------------------------------------------

    def incident_opened(
        self, incident_uuid: UUID, correlation_id: str, pe: ProcessingEvent[UUID]
    ) -> str:
        """A sensor's incident adopts the reports made before it, and their incidents."""
        incident: Incident = self._load(pe, incident_uuid, Incident)
        if incident.kind != "sensor_alarm" or not incident.correlatable:
            return "not_a_sensor_alarm"
        rule = self.policy.rule_for_incident(incident.category)
        if rule is None:
            return "no_rule"
        since = incident.created_on - rule.window
        adopted = 0
        for near in self.nearby.incidents_near(
            incident.lon, incident.lat, rule.radius_m, rule.incident_categories, since
        ):
            if near.kind != "citizen_reports" or near.id == incident.id:
                continue
            cluster: Incident = self._load(pe, near.id, Incident)
            if not cluster.correlatable:
                continue
            for case_key in list(cluster.linked_cases):
                case: ServiceCase = self._load(pe, UUID(case_key), ServiceCase)
                if case.status in OPEN and case.incident_id == str(cluster.id):
                    adopted += self._adopt(incident, case, rule, correlation_id, pe)
            cluster.merge_into(
                target_id=str(incident.id), actor=SYSTEM_BRAIN, correlation_id=correlation_id
            )
            pe.collect_events(cluster)
        for near_case in self.nearby.cases_near(
            incident.lon, incident.lat, rule.radius_m, rule.case_categories, since
        ):
            case = self._load(pe, near_case.id, ServiceCase)
            if case.status in OPEN and case.incident_id is None:
                adopted += self._adopt(incident, case, rule, correlation_id, pe)
        return f"adopted {adopted}"

    def _adopt(
        self,
        incident: Incident,
        case: ServiceCase,
        rule: CorrelationRule,
        correlation_id: str,
        pe: ProcessingEvent[UUID],
    ) -> int:
        if case.lon is None or case.lat is None or str(case.id) in incident.linked_cases:
            return 0
        distance = self.distance_m(case.lon, case.lat, incident.lon, incident.lat)
        if distance > rule.radius_m:
            return 0
        self._link(case, incident, rule, distance, correlation_id, pe)
        return 1

"""Audit reads: each aggregate's history, its state at a version or instant, and
an incident's causal trace. Read-only; every read is itself recorded.

Open to auditors and the operations center (both read everything with personal data
masked); every other role gets 403. A successful read is recorded as an ``AuditRead``
event in the city log (chained like every event) before its answer is returned; a
refused or invalid one is not.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from eventsourcing.domain import Aggregate
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request

from api.audit_reads import record_audit_read
from api.auth import Principal, require
from api.deps import Container, ContainerDep, correlation
from api.responses import errors
from core.audit import (
    CASE_STEPS,
    INCIDENT_STEPS,
    SENSOR_STEPS,
    ContactView,
    event_view,
    jsonable,
    mask_actor,
    state_view,
    summary,
)
from core.case import ServiceCase
from core.case.desk import ServiceDesk
from core.incident import Incident
from core.paging import Escalation
from core.personal import ERASED_VIEW
from core.sensor import Sensor, sensor_id
from projections.history import LoggedEvent, LogHistory

router = APIRouter(
    prefix="/api/v1/audit", tags=["audit"], responses=errors(401, 403, 404, 422, 503)
)

PREFIX = "/api/v1/audit"
AUDIT_ROLES = ("auditor", "operator")
MAX_LIMIT = 500
Reader = Annotated[Principal, Depends(require(*AUDIT_ROLES))]
Kind = Literal["incidents", "cases", "sensors", "escalations"]
KINDS: dict[str, tuple[type[Aggregate], str]] = {
    "incidents": (Incident, "incident"),
    "cases": (ServiceCase, "case"),
    "sensors": (Sensor, "sensor"),
    # who was paged, when, over which channel, and who acknowledged (core/paging)
    "escalations": (Escalation, "escalation"),
}
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
IdPath = Annotated[
    str, Path(max_length=128, description="the aggregate's UUID (for sensors, or the device id)")
]
CorrelationHeader = Annotated[
    str | None,
    Header(alias="X-Correlation-ID", description="recorded with the read (else a new one)"),
]


# -- helpers --------------------------------------------------------------------------------


def _history(c: Container) -> LogHistory:
    return LogHistory(c.pool, c.city.mapper)


def _contact(desk: ServiceDesk) -> ContactView:
    """A sealed contact as auditors see it: masked, or ``[erased]`` once the key is gone."""

    def view(citizen_id: str | None, token: str) -> dict[str, Any]:
        contact = None if citizen_id is None else desk.personal.open(uuid.UUID(citizen_id), token)
        return dict(ERASED_VIEW) if contact is None else contact.masked()

    return view


def _correlation_id(given: str | None) -> str:
    if given is None:
        return correlation()
    if not _CORRELATION_ID.match(given):
        raise HTTPException(422, "X-Correlation-ID must be 1 to 128 of A-Z a-z 0-9 . _ : -")
    return given


def _resolve(history: LogHistory, kind: str, raw: str) -> tuple[uuid.UUID, LoggedEvent]:
    """The aggregate's id and first event; 422 for a malformed id, 404 for an unknown one."""
    cls, what = KINDS[kind]
    candidates: list[uuid.UUID] = []
    try:
        candidates.append(uuid.UUID(raw))
    except ValueError:
        if kind != "sensors":
            raise HTTPException(422, f"malformed {what} id {raw!r}: expected a UUID") from None
    if kind == "sensors":
        if not candidates and not _DEVICE_ID.match(raw):
            raise HTTPException(422, f"malformed sensor id {raw!r}: a UUID or a device id")
        candidates.append(sensor_id(raw))
    for candidate in candidates:
        first = history.first(candidate)
        if first is not None and isinstance(first.event, cls.Event):
            return candidate, first
    raise HTTPException(404, f"unknown {what} {raw}")


def _links(kind: str, aggregate_id: uuid.UUID, version: int) -> dict[str, str]:
    base = f"{PREFIX}/{kind}/{aggregate_id}"
    return {
        "href": f"{base}/history?after_version={version - 1}&limit=1",
        "state_href": f"{base}/state?version={version}",
    }


def _entry(logged: LoggedEvent, contact: ContactView) -> dict[str, Any]:
    view = event_view(logged.event, contact)
    return {
        "position": logged.position,
        **view,
        "recorded_at": jsonable(logged.recorded_at),
        "hash": logged.chain_hash,
    }


# -- history and state ----------------------------------------------------------------------


@router.get("/{kind}/{aggregate_id}/history")
def history(
    who: Reader,
    c: ContainerDep,
    request: Request,
    kind: Kind,
    aggregate_id: IdPath,
    after_version: Annotated[int, Query(ge=0, description="events after this version")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    x_correlation_id: CorrelationHeader = None,
) -> dict[str, Any]:
    """Every event of one incident, case or sensor, in order, with its position, times,
    actor, reason, rule and chain hash (personal data masked). Paged by version."""
    correlation_id = _correlation_id(x_correlation_id)
    log = _history(c)
    agg_id, _ = _resolve(log, kind, aggregate_id)
    found = log.events(agg_id, after_version, limit + 1)
    page = found[:limit]
    contact = _contact(c.desk)
    out: dict[str, Any] = {
        "kind": kind,
        "id": str(agg_id),
        "last_version": log.last_version(agg_id),
        "after_version": after_version,
        "limit": limit,
        "events": [_entry(e, contact) for e in page],
        "next_after_version": page[-1].version if len(found) > limit else None,
    }
    out["audit_read"] = record_audit_read(c, who, request, correlation_id)
    return out


@router.get("/{kind}/{aggregate_id}/state")
def state(
    who: Reader,
    c: ContainerDep,
    request: Request,
    kind: Kind,
    aggregate_id: IdPath,
    version: Annotated[int | None, Query(ge=1, description="rebuild up to this version")] = None,
    as_of: Annotated[
        datetime | None,
        Query(description="ISO 8601 instant with offset: the state as last recorded by then"),
    ] = None,
    x_correlation_id: CorrelationHeader = None,
) -> dict[str, Any]:
    """The aggregate rebuilt from its events up to a version, or as it was at an instant
    (its last event recorded at or before it); the current state with neither."""
    correlation_id = _correlation_id(x_correlation_id)
    if version is not None and as_of is not None:
        raise HTTPException(422, "give either version or as_of, not both")
    if as_of is not None:
        if as_of.tzinfo is None or as_of.utcoffset() is None:
            raise HTTPException(422, "as_of needs a time zone offset (e.g. 2025-11-21T08:00:00Z)")
        now = datetime.now(UTC)
        if as_of > now:
            raise HTTPException(422, f"as_of {as_of.isoformat()} is in the future (now {now})")
    what = KINDS[kind][1]
    log = _history(c)
    agg_id, first = _resolve(log, kind, aggregate_id)
    last = log.last_version(agg_id)
    if version is not None and version > last:
        raise HTTPException(
            422, f"{what} {agg_id} has {last} versions: version {version} is beyond the last"
        )
    target = last if version is None else version
    if as_of is not None:
        target = log.version_at(agg_id, as_of)
        if target == 0:
            since = jsonable(first.recorded_at)
            raise HTTPException(
                404,
                f"{what} {agg_id} did not exist at {as_of.isoformat()}:"
                f" its first event was recorded at {since}",
            )
    aggregate: Aggregate = c.city.repository.get(agg_id, version=target)
    at = log.at_version(agg_id, target)
    out: dict[str, Any] = {
        "kind": kind,
        "id": str(agg_id),
        "version": target,
        "last_version": last,
        "as_of": None if as_of is None else as_of.isoformat(),
        "position": None if at is None else at.position,
        "recorded_at": None if at is None else jsonable(at.recorded_at),
        "hash": None if at is None else at.chain_hash,
        "state": state_view(aggregate, _contact(c.desk)),
    }
    out["audit_read"] = record_audit_read(c, who, request, correlation_id)
    return out


# -- the causal trace ---------------------------------------------------------------------


def _step(step: str, kind: str, logged: LoggedEvent) -> dict[str, Any]:
    ev = logged.event
    return {
        "step": step,
        "position": logged.position,
        "time": jsonable(ev.timestamp),
        "recorded_at": jsonable(logged.recorded_at),
        "actor": mask_actor(getattr(ev, "actor", None)),
        "summary": summary(ev),
        "aggregate": {"kind": kind, "id": str(ev.originator_id), "version": ev.originator_version},
        "event": type(ev).__name__,
        "correlation_id": getattr(ev, "correlation_id", None),
        "rule_id": getattr(ev, "rule_id", None),
        "rule_version": getattr(ev, "rule_version", None),
        "hash": logged.chain_hash,
        **_links(kind, ev.originator_id, ev.originator_version),
    }


def _reading_step(
    log: LogHistory, device: str, metric: str, value: float | None, ts: float
) -> dict[str, Any]:
    """The telemetry row that crossed the rule (not in the log: it has no position)."""
    found = log.reading_near(device, metric, ts, value)
    at = datetime.fromtimestamp(ts, UTC)
    window = urlencode(
        {
            "from": (at - timedelta(minutes=1)).isoformat(),
            "to": (at + timedelta(minutes=1)).isoformat(),
        }
    )
    return {
        "step": "reading",
        "position": None,
        "time": jsonable(found["ts"] if found else at),
        "recorded_at": jsonable(found["ingested_at"]) if found else None,
        "actor": None,
        "summary": (
            f"{device} read {metric} = {found['value']} {found['unit']}"
            if found
            else f"{device} read {metric} = {value} (not in the telemetry store)"
        ),
        "reading": None if found is None else jsonable(found),
        "aggregate": None,
        "href": f"/api/v1/sensors/{device}/readings?{window}",
    }


@router.get("/incidents/{incident_id}/trace")
def trace(
    who: Reader,
    c: ContainerDep,
    request: Request,
    incident_id: IdPath,
    x_correlation_id: CorrelationHeader = None,
) -> dict[str, Any]:
    """The causal chain of one incident: reading -> alarm -> incident -> dispatch ->
    feedback -> verification -> linked cases -> ratings, in log order, each step linked
    to the history of the aggregate it happened to."""
    correlation_id = _correlation_id(x_correlation_id)
    log = _history(c)
    agg_id, opened = _resolve(log, "incidents", incident_id)
    incident_events = log.events(agg_id)
    steps: list[dict[str, Any]] = []
    opening = opened.event
    device_id: str | None = opening.device_id
    if device_id:
        if opening.metric is not None and opening.reading_ts is not None:
            steps.append(
                _reading_step(log, device_id, opening.metric, opening.value, opening.reading_ts)
            )
        for logged in log.events(sensor_id(device_id)):
            name = type(logged.event).__name__
            if name in SENSOR_STEPS and getattr(logged.event, "incident_id", None) == agg_id.hex:
                steps.append(
                    {**_step(SENSOR_STEPS[name], "sensors", logged), "device_id": device_id}
                )
    for logged in incident_events:
        name = type(logged.event).__name__
        if name in INCIDENT_STEPS:
            steps.append(_step(INCIDENT_STEPS[name], "incidents", logged))
    case_ids = [
        uuid.UUID(e.event.case_id)
        for e in incident_events
        if type(e.event).__name__ == "CaseLinked"
    ]
    cases: list[dict[str, Any]] = []
    for case_uuid in dict.fromkeys(case_ids):
        case_events = log.events(case_uuid)
        for logged in case_events:
            name = type(logged.event).__name__
            if name == "LinkedToIncident" and logged.event.incident_id != str(agg_id):
                continue  # a link to another incident is not part of this chain
            if name in CASE_STEPS:
                steps.append(_step(CASE_STEPS[name], "cases", logged))
        last = case_events[-1].event if case_events else None
        ratings = [e.event.rating for e in case_events if type(e.event).__name__ == "CaseRated"]
        cases.append(
            {
                "id": str(case_uuid),
                "href": f"{PREFIX}/cases/{case_uuid}/history",
                "version": None if last is None else last.originator_version,
                "ratings": ratings,
            }
        )
    # Causal order: the reading, then the alarm it raised (recorded in the same
    # transaction as the incident it opened, after it), then the log's order.
    cause = {"reading": 0, "alarm": 1}
    ordered = sorted(steps, key=lambda s: (cause.get(s["step"], 2), s["position"] or 0))
    out: dict[str, Any] = {
        "incident_id": str(agg_id),
        "href": f"{PREFIX}/incidents/{agg_id}/history",
        "device_id": device_id,
        "linked_cases": cases,
        "steps": ordered,
    }
    out["audit_read"] = record_audit_read(c, who, request, correlation_id)
    return out

"""The public contract of ``cityops.domain-events``: CloudEvents 1.0, structured JSON mode.

Outside systems read this topic, so the event store's own encoding (Python class paths
as topics, ``{"_type_", "_data_"}`` wrappers) stays inside. Each recorded event of a
class in ``TYPES`` is one Kafka record: key the aggregate id (as before the contract),
header ``content-type: application/cloudevents+json``, value one CloudEvent:

- ``type``: a stable name from ``TYPES`` (``cityops.case.submitted``). The table is keyed
  by the event class itself, so renaming a class changes a key here, never a name;
- ``source``: the kind of aggregate, ``/cityops/cases``, ``/cityops/incidents`` or
  ``/cityops/sensors``; ``subject``: the aggregate's id;
- ``id``: ``<aggregate id>:<version>``, unique in the log, the same on a redelivery;
- ``time``: when the event was recorded (RFC 3339, UTC);
- ``logposition`` and ``aggregateversion`` (extension attributes): the event's position in
  the city log (rising in log order) and its aggregate's version (1, 2, ... without gaps);
- ``dataschema``: the URI of the JSON Schema of ``data``, ``schemas/<type>.v1.json``
  beside this module (its ``$id``); ``asyncapi.yaml`` here describes the topic;
- ``data``: the event's own fields as plain JSON: times in RFC 3339 (also those the
  domain keeps as epoch seconds), ids as UUID text, no class paths.

Personal data never leaves: the citizen's pseudonymous id and sealed contact are not
published, nor text a citizen wrote (a case's description, address and attributes, a
rating's comment, a cancellation's or an erasure's reason: it may name people, and an
erasure could not take it back from the systems that read it). A person who acted is
named by role only (``dispatcher``, ``citizen``), and so is a person paged (``PEOPLE``);
system actors keep their names (``system:sensor-monitor``).

Compatibility: within a version only additive changes, a new field in ``data`` (not
``required``) or a new type; consumers ignore fields they do not know. Removing,
renaming or retyping a field publishes ``<type>.v2.json`` with a new ``dataschema`` and
a new major ``info.version`` in ``asyncapi.yaml``. The audit trail's own record of reads
(``NOT_PUBLISHED``) is not a domain event for other systems and is never sent.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
from cloudevents.core.bindings.kafka import KafkaMessage, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from eventsourcing.domain import Aggregate, DomainEvent
from eventsourcing.persistence import Mapper, StoredEvent
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from core.app import CityApp
from core.audit import AuditRead, citizen_data
from core.case import ServiceCase
from core.case.catalogue import CatalogueVersion
from core.incident import Incident
from core.paging import Escalation
from core.sensor import Sensor

HERE = Path(__file__).parent
SCHEMAS = HERE / "schemas"
ASYNCAPI = HERE / "asyncapi.yaml"
BASE_URI = "https://cityops.example/events/"
VERSION = 1
CONTENT_TYPE = JSONFormat.CONTENT_TYPE
DATA_CONTENT_TYPE = "application/json"
POSITION = "logposition"
AGGREGATE_VERSION = "aggregateversion"

# Aggregate class -> (kind in the type names, source, {event class name: type suffix}).
_NAMES: dict[type[Aggregate], tuple[str, str, dict[str, str]]] = {
    ServiceCase: (
        "case",
        "/cityops/cases",
        {
            "CaseSubmitted": "submitted",
            "DuplicatesSuggested": "duplicates-suggested",
            "CaseAccepted": "accepted",
            "CaseRejected": "rejected",
            "AssignmentPending": "assignment-pending",
            "CaseAssigned": "assigned",
            "CaseReturned": "returned",
            "CaseStarted": "started",
            "ExtensionRequested": "extension-requested",
            "ExtensionApproved": "extension-approved",
            "ExtensionRefused": "extension-refused",
            "CaseDueSoon": "due-soon",
            "CaseBecameOverdue": "overdue",
            "CaseResolved": "resolved",
            "CaseResolvedWithIncident": "resolved-with-incident",
            "CaseRated": "rated",
            "CaseClosed": "closed",
            "CaseCancelled": "cancelled",
            "LinkedToIncident": "linked-to-incident",
            "SensorsChecked": "sensors-checked",
            "PersonalDataErased": "personal-data-erased",
            "CoHandlerAdded": "co-handler-added",
            "CoHandlingAnswered": "co-handling-answered",
            "CoHandlingWaived": "co-handling-waived",
            "DisputeRaised": "dispute-raised",
            "DisputeUpheld": "dispute-upheld",
            "DisputeRejected": "dispute-rejected",
            "CitizenContacted": "citizen-contacted",
        },
    ),
    Incident: (
        "incident",
        "/cityops/incidents",
        {
            "Opened": "opened",
            "Retriggered": "retriggered",
            "SeverityChanged": "severity-changed",
            "AlarmCleared": "alarm-cleared",
            "Acknowledged": "acknowledged",
            "CaseLinked": "case-linked",
            "ConfirmedByReports": "confirmed-by-reports",
            "Dispatched": "dispatched",
            "WorkAccepted": "work-accepted",
            "Resolved": "resolved",
            "Verified": "verified",
            "ReworkOrdered": "rework-ordered",
            "Escalated": "escalated",
            "MergedInto": "merged",
            "Closed": "closed",
        },
    ),
    CatalogueVersion: (
        "catalogue",
        "/cityops/catalogue",
        {"Published": "version-published"},
    ),
    Escalation: (
        "escalation",
        "/cityops/escalations",
        {
            "Opened": "opened",
            "Paged": "paged",
            "PageDelivered": "page-delivered",
            "PageDeliveryFailed": "page-delivery-failed",
            "PageWithdrawn": "page-withdrawn",
            "Acknowledged": "acknowledged",
            "Stopped": "stopped",
        },
    ),
    Sensor: (
        "sensor",
        "/cityops/sensors",
        {
            "Registered": "registered",
            "AlarmRaised": "alarm-raised",
            "AlarmSeverityChanged": "alarm-severity-changed",
            "AlarmCleared": "alarm-cleared",
            "WentSilent": "went-silent",
            "CameBack": "came-back",
            "Relocated": "relocated",
        },
    ),
}


def _event_class(aggregate: type[Aggregate], name: str) -> type[DomainEvent]:
    cls = vars(aggregate)[name]
    if not (inspect.isclass(cls) and issubclass(cls, DomainEvent)):
        raise TypeError(f"{aggregate.__name__}.{name} is not an event class")
    return cls


TYPES: dict[type[DomainEvent], str] = {
    _event_class(aggregate, name): f"cityops.{kind}.{suffix}"
    for aggregate, (kind, _, names) in _NAMES.items()
    for name, suffix in names.items()
}
SOURCES: dict[type[DomainEvent], str] = {
    _event_class(aggregate, name): source
    for aggregate, (_, source, names) in _NAMES.items()
    for name in names
}
NOT_PUBLISHED: dict[type[DomainEvent], str] = {
    _event_class(AuditRead, "Recorded"): "who read the audit trail: the audit API's own record",
}

# Kept by the domain as epoch seconds (readings' times), published as RFC 3339.
EPOCH_TIMES = frozenset({"reading_ts", "last_seen", "seen_at", "located_at"})
# Ids of other aggregates, published as UUID text (the sensor records an incident's as hex).
IDS = frozenset({"incident_id", "case_id", "target_id"})
# Fields that name a person (who acted, who was paged): published by role only.
PEOPLE = frozenset({"actor", "person"})


class UnmappedEventError(LookupError):
    """A recorded event of a class this contract neither publishes nor withholds."""


def fields(cls: type[DomainEvent]) -> tuple[str, ...]:
    """The fields of ``cls`` published in ``data``, in the order the event declares them."""
    withheld = citizen_data(cls.__qualname__)
    return tuple(name for name in inspect.get_annotations(cls) if name not in withheld)


def dataschema(event_type: str) -> str:
    """The URI of the JSON Schema of ``data`` of ``event_type`` (the schema's ``$id``)."""
    return f"{BASE_URI}schemas/{event_type}.v{VERSION}.json"


def schema_file(event_type: str) -> Path:
    return SCHEMAS / f"{event_type}.v{VERSION}.json"


def rfc3339(value: datetime) -> str:
    """``value`` in UTC as RFC 3339 text (``2026-03-02T01:30:00Z``); naive means UTC."""
    utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return utc.isoformat().replace("+00:00", "Z")


def public_actor(actor: str) -> str:
    """System actors by name; a person by role only (``dispatcher:alice`` -> ``dispatcher``)."""
    return actor if actor.startswith("system:") else actor.partition(":")[0]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _field(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in EPOCH_TIMES:
        return rfc3339(datetime.fromtimestamp(value, UTC))
    if name in IDS:
        return str(UUID(str(value)))
    if name in PEOPLE:
        return public_actor(str(value))
    return _plain(value)


def data(event: DomainEvent) -> dict[str, Any]:
    """The event's published fields as plain JSON (a field an old event lacks is null)."""
    return {name: _field(name, getattr(event, name, None)) for name in fields(type(event))}


def cloudevent(event: DomainEvent, position: int) -> CloudEvent | None:
    """The CloudEvent of ``event`` recorded at ``position``; None for a withheld class."""
    cls = type(event)
    event_type = TYPES.get(cls)
    if event_type is None:
        if cls in NOT_PUBLISHED:
            return None
        raise UnmappedEventError(f"no public type for {cls.__qualname__}")
    aggregate_id = str(event.originator_id)
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": f"{aggregate_id}:{event.originator_version}",
            "source": SOURCES[cls],
            "type": event_type,
            "subject": aggregate_id,
            "time": event.timestamp,
            "datacontenttype": DATA_CONTENT_TYPE,
            "dataschema": dataschema(event_type),
            POSITION: position,
            AGGREGATE_VERSION: event.originator_version,
        },
        data(event),
    )


def kafka_message(event: DomainEvent, position: int) -> KafkaMessage | None:
    """The Kafka record of ``event``: key the aggregate id, structured JSON mode."""
    found = cloudevent(event, position)
    if found is None:
        return None
    return to_structured(found, JSONFormat(), key_mapper=lambda e: str(e.get_subject()).encode())


@cache
def _mapper() -> Mapper[UUID]:
    # The city app's mapper and transcoder, without its event store.
    return CityApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).mapper


def decode(stored: StoredEvent) -> DomainEvent:
    """The domain event of a stored event (a notification of the city log)."""
    event = _mapper().to_domain_event(stored)
    if not isinstance(event, DomainEvent):
        raise UnmappedEventError(f"{stored.topic} is not a domain event class")
    return event


# -- validating -------------------------------------------------------------------------

_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", re.IGNORECASE)
FORMATS = FormatChecker(formats=("uuid",))


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return bool(_RFC3339.match(value)) and datetime.fromisoformat(value) is not None


@cache
def registry() -> Registry[Any]:
    """Every schema of the contract by its ``$id`` (for ``$ref`` between them)."""
    resources = []
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = orjson.loads(path.read_bytes())
        resources.append((schema["$id"], Resource.from_contents(schema, DRAFT202012)))
    return Registry().with_resources(resources)


def validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    """A validator of ``schema`` that resolves the contract's schemas and checks formats."""
    return Draft202012Validator(schema, registry=registry(), format_checker=FORMATS)


def validate(value: bytes) -> dict[str, Any]:
    """Check one record's value against the envelope and its type's data schema; return it."""
    event: dict[str, Any] = orjson.loads(value)
    validator({"$ref": f"{BASE_URI}schemas/cloudevent.v{VERSION}.json"}).validate(event)
    validator({"$ref": event["dataschema"]}).validate(event["data"])
    return event

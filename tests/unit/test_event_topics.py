"""The topics under which events are stored stay the same: a moved class would orphan the log.

The event store keeps each event's class as a topic (``module:Class.Event``) and the audit
chain hashes it (the relay publishes stable CloudEvents type names instead, from
``infra.domain_events``). So a topic once written must keep resolving to its class, and
that class must still write the same topic. This list holds every topic so far; new
events add to it.
"""

from __future__ import annotations

import inspect

import pytest
from eventsourcing.domain import Aggregate, DomainEvent
from eventsourcing.utils import get_topic, resolve_topic

import core.audit
import core.case
import core.incident
import core.sensor

STORED_TOPICS = (
    "core.audit:AuditRead",
    "core.audit:AuditRead.Created",
    "core.audit:AuditRead.Event",
    "core.audit:AuditRead.Recorded",
    "core.case:ServiceCase",
    "core.case:ServiceCase.AssignmentPending",
    "core.case:ServiceCase.CaseAccepted",
    "core.case:ServiceCase.CaseAssigned",
    "core.case:ServiceCase.CaseBecameOverdue",
    "core.case:ServiceCase.CaseCancelled",
    "core.case:ServiceCase.CaseClosed",
    "core.case:ServiceCase.CaseDueSoon",
    "core.case:ServiceCase.CaseRated",
    "core.case:ServiceCase.CaseRejected",
    "core.case:ServiceCase.CaseResolved",
    "core.case:ServiceCase.CaseResolvedWithIncident",
    "core.case:ServiceCase.CaseReturned",
    "core.case:ServiceCase.CaseStarted",
    "core.case:ServiceCase.CaseSubmitted",
    "core.case:ServiceCase.CitizenContacted",
    "core.case:ServiceCase.CoHandlerAdded",
    "core.case:ServiceCase.CoHandlingAnswered",
    "core.case:ServiceCase.CoHandlingWaived",
    "core.case:ServiceCase.Created",
    "core.case:ServiceCase.DisputeRaised",
    "core.case:ServiceCase.DisputeRejected",
    "core.case:ServiceCase.DisputeUpheld",
    "core.case:ServiceCase.DuplicatesSuggested",
    "core.case:ServiceCase.Event",
    "core.case:ServiceCase.ExtensionApproved",
    "core.case:ServiceCase.ExtensionRefused",
    "core.case:ServiceCase.ExtensionRequested",
    "core.case:ServiceCase.LinkedToIncident",
    "core.case:ServiceCase.PersonalDataErased",
    "core.case:ServiceCase.SensorsChecked",
    "core.incident:Incident",
    "core.incident:Incident.Acknowledged",
    "core.incident:Incident.AlarmCleared",
    "core.incident:Incident.CaseLinked",
    "core.incident:Incident.Closed",
    "core.incident:Incident.ConfirmedByReports",
    "core.incident:Incident.Created",
    "core.incident:Incident.Dispatched",
    "core.incident:Incident.Escalated",
    "core.incident:Incident.Event",
    "core.incident:Incident.MergedInto",
    "core.incident:Incident.Opened",
    "core.incident:Incident.Resolved",
    "core.incident:Incident.Retriggered",
    "core.incident:Incident.ReworkOrdered",
    "core.incident:Incident.SeverityChanged",
    "core.incident:Incident.Verified",
    "core.incident:Incident.WorkAccepted",
    "core.sensor:Sensor",
    "core.sensor:Sensor.AlarmCleared",
    "core.sensor:Sensor.AlarmRaised",
    "core.sensor:Sensor.AlarmSeverityChanged",
    "core.sensor:Sensor.CameBack",
    "core.sensor:Sensor.Created",
    "core.sensor:Sensor.Event",
    "core.sensor:Sensor.Registered",
    "core.sensor:Sensor.Relocated",
    "core.sensor:Sensor.WentSilent",
)


@pytest.mark.parametrize("topic", STORED_TOPICS)
def test_a_stored_topic_resolves_to_a_class_that_writes_it(topic: str) -> None:
    assert get_topic(resolve_topic(topic)) == topic


def _aggregates() -> list[type[Aggregate]]:
    modules = (core.case, core.incident, core.sensor, core.audit)
    return [
        cls
        for module in modules
        for cls in vars(module).values()
        if inspect.isclass(cls) and issubclass(cls, Aggregate) and cls.__module__ == module.__name__
    ]


def test_every_event_class_is_listed() -> None:
    found = set()
    for cls in _aggregates():
        found.add(get_topic(cls))
        found |= {
            get_topic(event)
            for event in vars(cls).values()
            if inspect.isclass(event) and issubclass(event, DomainEvent)
        }
    assert found == set(STORED_TOPICS)

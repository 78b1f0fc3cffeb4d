"""The management application on the in-memory event store: policy and transitions."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import ProcessingEvent

from core.app import CityApp, CityProcessingEvent
from core.errors import IllegalTransitionError, NotFoundError
from core.incident.policy import IncidentPolicy
from core.sensor import Sensor
from core.sensor.rules import Transition, load_rules
from tests.helpers.builders import sensor


@pytest.fixture
def app() -> CityApp:
    app = CityApp()
    app.register_sensors([sensor("wl-1")], actor="test", correlation_id="c")
    return app


def apply(app: CityApp, *transitions: Transition) -> None:
    pe: ProcessingEvent[UUID] = ProcessingEvent()
    IncidentPolicy(app, load_rules()).apply(app.get_sensor("wl-1"), transitions, "corr", pe)
    app.record(pe)


def raised(sev: str = "major", v: float = 60.0) -> Transition:
    return Transition("raised", "water_level_high", sev, "water_level", v, 1.0)


def cleared() -> Transition:
    return Transition("cleared", "water_level_high", None, "water_level", 30.0, 2.0)


def test_registration_is_idempotent(app: CityApp) -> None:
    assert app.register_sensors([sensor("wl-1")], actor="test", correlation_id="c") == 0
    with pytest.raises(NotFoundError):
        app.get_sensor("wl-unknown")


def test_retrigger_while_open_updates_the_same_incident(app: CityApp) -> None:
    apply(app, raised())
    first = UUID(app.get_sensor("wl-1").open_incidents["water_level_high"])
    apply(app, cleared())
    apply(app, raised("critical", 90.0))
    s = app.get_sensor("wl-1")
    assert UUID(s.open_incidents["water_level_high"]) == first
    incident = app.get_incident(first)
    assert incident.trigger_count == 2
    assert incident.severity == "critical"
    assert incident.alarm_status == "active"


def test_cleared_and_acknowledged_closes_then_a_new_breach_opens_another(
    app: CityApp,
) -> None:
    apply(app, raised())
    first = UUID(app.get_sensor("wl-1").open_incidents["water_level_high"])
    app.acknowledge_incident(first, actor="user:op", reason="seen", correlation_id="c")
    assert app.get_incident(first).status == "open"  # still active
    apply(app, cleared())
    assert app.get_incident(first).status == "closed"
    with pytest.raises(IllegalTransitionError):
        app.acknowledge_incident(first, actor="user:op", reason="again", correlation_id="c")
    apply(app, raised())
    second = UUID(app.get_sensor("wl-1").open_incidents["water_level_high"])
    assert second != first
    assert app.get_sensor("wl-1").incident_seq["water_level_high"] == 2


def test_every_event_records_actor_and_correlation(app: CityApp) -> None:
    apply(app, raised())
    s = app.get_sensor("wl-1")
    for e in app.events.get(s.id):
        assert e.actor  # type: ignore[attr-defined]
        assert e.correlation_id  # type: ignore[attr-defined]


def test_replay_equals_live_state(app: CityApp) -> None:
    apply(
        app,
        raised(),
        Transition("severity_changed", "water_level_high", "critical", "water_level", 85.0, 1.5),
    )
    apply(app, cleared())
    live = app.get_sensor("wl-1")
    replayed = app.repository.get(live.id)
    assert replayed.__dict__ == live.__dict__


def test_the_city_processing_event_collects_as_the_library_does() -> None:
    def new(device_id: str) -> Sensor:
        return Sensor(**asdict(sensor(device_id)), actor="t", correlation_id="c")

    def collected(pe: ProcessingEvent[UUID]) -> tuple[list[Any], list[UUID], dict[str, Any]]:
        first, second, third = new("wl-a"), new("wl-b"), new("wl-c")
        event = third.collect_events()[0]
        pe.collect_events(first, None, event, second, state_rows=[("k", "{}")])
        pe.collect_events(first)  # nothing new to collect; still the same aggregate
        return (
            [(type(e).__name__, e.originator_id, e.originator_version) for e in pe.events],
            list(pe.aggregates),
            pe.saved_kwargs,
        )

    city = collected(CityProcessingEvent())
    assert city == collected(ProcessingEvent())
    assert len(city[0]) == 3
    assert len(city[1]) == 2

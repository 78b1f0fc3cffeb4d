"""The public contract of ``cityops.domain-events`` (``infra.domain_events``) kept equal to
the code: every recorded event class has a stable type, a JSON Schema and an AsyncAPI
message; real events of every type, recorded on the in-memory store and turned into
Kafka records by the relay's own function, are CloudEvents that validate; none carries
the citizens' personal data."""

from __future__ import annotations

import inspect
import re
from datetime import timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import orjson
import pytest
import yaml
from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat
from eventsourcing.domain import Aggregate, DomainEvent, event
from jsonschema import Draft202012Validator, ValidationError

import core.audit
import core.case
import core.case.catalogue
import core.incident
import core.paging
import core.sensor
from core.app import CityApp
from core.audit import record_read
from core.case import ServiceCase, case_id
from core.case.catalogue import load_catalogue
from core.incident import Incident
from core.paging import Escalation
from core.personal import Contact, InMemoryKeyStore, PersonalData
from core.sensor import Sensor, sensor_id
from infra import domain_events as contract
from infra.kafka import DOMAIN_EVENTS
from tests.helpers.builders import operator_incident
from tests.helpers.desk import PEPPER, T0, utc
from workers.relay import message, position_of

# Every type name published so far. A name once published stays, whatever its class is
# called; new types add to this list (and to the schemas and asyncapi.yaml).
PUBLISHED_TYPES = (
    "cityops.case.submitted",
    "cityops.case.duplicates-suggested",
    "cityops.case.accepted",
    "cityops.case.rejected",
    "cityops.case.assignment-pending",
    "cityops.case.assigned",
    "cityops.case.returned",
    "cityops.case.started",
    "cityops.case.extension-requested",
    "cityops.case.extension-approved",
    "cityops.case.extension-refused",
    "cityops.case.due-soon",
    "cityops.case.overdue",
    "cityops.case.resolved",
    "cityops.case.resolved-with-incident",
    "cityops.case.rated",
    "cityops.case.closed",
    "cityops.case.cancelled",
    "cityops.case.linked-to-incident",
    "cityops.case.sensors-checked",
    "cityops.case.personal-data-erased",
    "cityops.case.co-handler-added",
    "cityops.case.co-handling-answered",
    "cityops.case.co-handling-waived",
    "cityops.case.dispute-raised",
    "cityops.case.dispute-upheld",
    "cityops.case.dispute-rejected",
    "cityops.case.citizen-contacted",
    "cityops.catalogue.version-published",
    "cityops.incident.opened",
    "cityops.incident.retriggered",
    "cityops.incident.severity-changed",
    "cityops.incident.alarm-cleared",
    "cityops.incident.acknowledged",
    "cityops.incident.case-linked",
    "cityops.incident.confirmed-by-reports",
    "cityops.incident.dispatched",
    "cityops.incident.work-accepted",
    "cityops.incident.resolved",
    "cityops.incident.verified",
    "cityops.incident.rework-ordered",
    "cityops.incident.escalated",
    "cityops.incident.merged",
    "cityops.incident.closed",
    "cityops.sensor.registered",
    "cityops.sensor.alarm-raised",
    "cityops.sensor.alarm-severity-changed",
    "cityops.sensor.alarm-cleared",
    "cityops.sensor.went-silent",
    "cityops.sensor.came-back",
    "cityops.sensor.relocated",
    "cityops.escalation.opened",
    "cityops.escalation.paged",
    "cityops.escalation.page-delivered",
    "cityops.escalation.page-delivery-failed",
    "cityops.escalation.page-withdrawn",
    "cityops.escalation.acknowledged",
    "cityops.escalation.stopped",
)

# The citizen of the scenario, and what they typed: none of it may be published.
PHONE = "13912345678"
EMAIL = "wang.fang@example.cn"
NAME = "王芳"
HOME = "长宁路 88 弄 5 号 302 室"
TYPED = f"积水很深，请联系{NAME} {PHONE} {EMAIL}"
CANCEL_REASON = f"{NAME}说已经自己处理了"
SHANGHAI = timezone(timedelta(hours=8))
STAMP = {"correlation_id": "t:contract"}


def _aggregate_event_classes() -> set[type[DomainEvent]]:
    """The event classes the aggregates record (the library's ``Event`` and ``Created``
    bases are never recorded: each aggregate names its creation event)."""
    found: set[type[DomainEvent]] = set()
    modules = (core.case, core.case.catalogue, core.incident, core.paging, core.sensor, core.audit)
    for module in modules:
        for agg in vars(module).values():
            if not (inspect.isclass(agg) and issubclass(agg, Aggregate)):
                continue
            if agg.__module__ != module.__name__:
                continue
            found |= {
                cls
                for name, cls in vars(agg).items()
                if inspect.isclass(cls)
                and issubclass(cls, DomainEvent)
                and name not in ("Event", "Created")
            }
    return found


# -- a city in which every kind of event happens -----------------------------------------


def _case(personal: PersonalData, key: str, actor: str = "hotline:test") -> ServiceCase:
    citizen, token = personal.seal(Contact.parse(name=NAME, phone=PHONE, email=EMAIL, address=HOME))
    return ServiceCase.submit(
        case_id("hotline", key),
        channel="hotline",
        external_id=key,
        category="flooding",
        categories_version=3,
        description=TYPED,
        lon=121.42,
        lat=31.21,
        address=HOME,
        attributes={"water_depth": "knee", "caller": NAME},
        citizen_id=str(citizen),
        contact_token=token,
        actor=actor,
        **STAMP,
    )


def _assign(case: ServiceCase) -> None:
    case.assign(
        department_code="water-west",
        grid_code="310105001001001",
        district_code="310105",
        decision={"by": "policy", "rule": "jurisdiction", "department_type": "water"},
        due_at=utc(2026, 3, 4, 10),
        due_soon_at=utc(2026, 3, 4, 5),
        actor="system:intake-policy",
        reason="jurisdiction polygon",
        **STAMP,
    )


def _cases(personal: PersonalData, incident: Incident) -> list[ServiceCase]:
    citizen = f"citizen:{uuid4()}"
    long = _case(personal, "k-long", actor=citizen)
    long.suggest_duplicates(
        possible_duplicates=[str(uuid4())], actor="system:intake-policy", reason="near", **STAMP
    )
    long.accept(actor="system:intake-policy", reason="registered", **STAMP)
    long.await_manual_assignment(
        grid_code=None,
        district_code=None,
        decision={"by": "policy", "rule": "no_jurisdiction"},
        actor="system:intake-policy",
        reason="no water jurisdiction covers this place",
        **STAMP,
    )
    _assign(long)
    long.request_extension(hours=8, actor="department:d7", reason="pump on order", **STAMP)
    long.refuse_extension(actor="dispatcher:li", reason="not needed", **STAMP)
    long.request_extension(hours=4.5, actor="department:d7", reason="rain again", **STAMP)
    long.approve_extension(
        due_at=utc(2026, 3, 5, 10),
        due_soon_at=utc(2026, 3, 5, 6).astimezone(SHANGHAI),
        actor="dispatcher:li",
        reason="ok",
        **STAMP,
    )
    long.start(actor="department:d7", reason="on site", **STAMP)
    long.mark_due_soon(
        deadline_no=long.deadline_no, due_at=utc(2026, 3, 5, 10), actor="system:sla-clock", **STAMP
    )
    long.mark_overdue(
        deadline_no=long.deadline_no, due_at=utc(2026, 3, 5, 10), actor="system:sla-clock", **STAMP
    )
    link = {"rule_id": "flooding_near_water", "rule_version": 2, "distance_m": 42.5}
    long.link_incident(incident_id=str(incident.id), actor="system:urban-brain", **link, **STAMP)
    long.note_sensor_check(
        result="confirmed",
        sensors=["wl-contract"],
        rule_id="flooding_near_water",
        rule_version=2,
        actor="system:urban-brain",
        **STAMP,
    )
    long.resolve(reply="drain cleared", actor="department:d7", reason="", **STAMP)
    long.rate(
        rating=2,
        comment=f"{NAME}: still wet, call {PHONE}",
        revisit=True,
        due_at=utc(2026, 3, 9, 10),
        due_soon_at=utc(2026, 3, 9, 6),
        actor=citizen,
        **STAMP,
    )
    long.resolve_with_incident(
        incident_id=str(incident.id),
        reply="the city fixed it",
        actor="system:urban-brain",
        reason="incident resolved",
        **STAMP,
    )
    long.close(actor="system:sla-clock", reason="not rated in time", **STAMP)
    long.note_erasure(actor=citizen, reason=f"I am {NAME}, delete me", **STAMP)

    rejected = _case(personal, "k-rejected")
    rejected.reject(
        rejection="duplicate",
        duplicate_of=str(long.id),
        actor="dispatcher:li",
        reason="same place",
        **STAMP,
    )

    returned = _case(personal, "k-returned")
    returned.accept(actor="dispatcher:li", reason="registered", **STAMP)
    _assign(returned)
    returned.return_to_dispatch(actor="department:d7", reason="not ours", **STAMP)
    returned.cancel(actor=citizen, reason=CANCEL_REASON, **STAMP)

    rated = _case(personal, "k-rated")
    rated.accept(actor="dispatcher:li", reason="registered", **STAMP)
    _assign(rated)
    rated.resolve(reply="fixed", actor="department:d7", reason="", **STAMP)
    rated.rate(
        rating=5,
        comment="谢谢",
        revisit=False,
        due_at=None,
        due_soon_at=None,
        actor=citizen,
        solved=True,
        **STAMP,
    )
    return [long, rejected, returned, rated, *_shared_cases(personal)]


def _shared_cases(personal: PersonalData) -> list[ServiceCase]:
    """Co-handling, both ends of a dispute and a contact with the citizen."""
    shared = _case(personal, "k-shared")
    shared.accept(actor="dispatcher:li", reason="registered", **STAMP)
    _assign(shared)
    shared.contact_citizen(note=f"called {NAME} on {PHONE}", actor="department:d7", **STAMP)
    for unit, part in (("roads-west", "clear the gullies"), ("traffic-west", "close the lane")):
        shared.add_co_handler(
            department_code=unit, part=part, actor="dispatcher:li", reason="", **STAMP
        )
    shared.answer_co_handling(
        department_code="roads-west", feedback="gullies cleared", actor="department:r2", **STAMP
    )
    shared.waive_co_handling(
        departments=["traffic-west"], actor="dispatcher:li", reason="water gone", **STAMP
    )
    dispute = {"proposed_department_code": "housing-west", "arbitrate_by": utc(2026, 3, 4, 12)}
    shared.raise_dispute(reason="a private compound", actor="department:d7", **dispute, **STAMP)
    shared.reject_dispute(actor="dispatcher:li", reason="a public road", **STAMP)

    moved = _case(personal, "k-moved")
    moved.accept(actor="dispatcher:li", reason="registered", **STAMP)
    _assign(moved)
    moved.raise_dispute(reason="not a public drain", actor="department:d7", **dispute, **STAMP)
    moved.uphold_dispute(
        department_code="housing-west",
        decision={"by": "arbitration", "rule": "dispute_upheld", "disputed_by": "water-west"},
        due_at=utc(2026, 3, 5, 10),
        due_soon_at=utc(2026, 3, 5, 6),
        actor="dispatcher:li",
        reason="the estate's own drain",
        **STAMP,
    )
    return [shared, moved]


def _incidents(case: UUID) -> list[Incident]:
    reading = {"actor": "system:sensor-monitor", **STAMP}
    incident = operator_incident(uuid4(), "water on Changning Road", "major", None)
    incident.retrigger(severity="critical", value=70.0, reading_ts=1_772_415_000.5, **reading)
    incident.change_severity(severity="major", value=None, reading_ts=None, **reading)
    incident.clear(value=12, reading_ts=1_772_415_600.0, **reading)
    incident.acknowledge(actor="operator:zhang", reason="seen", **STAMP)
    incident.link_case(
        case_id=str(case),
        rule_id="flooding_near_water",
        rule_version=2,
        distance_m=42.5,
        actor="system:urban-brain",
        **STAMP,
    )
    incident.confirm_by_reports(
        severity="critical", reports=3, rule_version=2, actor="system:urban-brain", **STAMP
    )
    due = utc(2026, 3, 3, 10)
    incident.dispatch(
        department_code="water-west", due_at=due, actor="dispatcher:li", reason="", **STAMP
    )
    incident.accept_work(actor="department:d7", **STAMP)
    incident.escalate(level=1, next_at=None, actor="system:incident-clock", **STAMP)
    incident.resolve(feedback="pumped out", actor="department:d7", **STAMP)
    incident.order_rework(reason="still flooded", due_at=due, actor="operator:zhang", **STAMP)
    incident.accept_work(actor="department:d7", **STAMP)
    incident.resolve(feedback="drain fixed", actor="department:d7", **STAMP)
    incident.verify(note="dry", actor="operator:zhang", **STAMP)
    incident.close(reason="verified", actor="operator:zhang", **STAMP)

    merged = operator_incident(uuid4(), "reports on Changning Road", "minor", None)
    merged.merge_into(target_id=str(incident.id), actor="system:urban-brain", **STAMP)
    return [incident, merged]


def _sensor() -> Sensor:
    reading = {"actor": "system:sensor-monitor", **STAMP}
    sensor = Sensor(
        device_id="wl-contract",
        sensor_type="water_level",
        gateway_id="gw-t",
        lon=121.42,
        lat=31.21,
        grid_code="310105001001001",
        district_code="310105",
        department_code="water-west",
        actor="system:seed",
        correlation_id="t:seed",
    )
    assert sensor.id == sensor_id("wl-contract")
    rule = {"rule_id": "water_level_high", "rule_version": 1, "metric": "water_level"}
    first, seq = sensor.next_incident_id("water_level_high")
    sensor.raise_alarm(
        severity="major",
        value=62.0,
        reading_ts=T0.timestamp() + 0.25,
        incident_id=first.hex,  # as the monitor records it
        incident_seq=seq,
        **rule,
        **reading,
    )
    sensor.change_severity(
        severity="critical", value=80, reading_ts=1_772_415_010, **rule, **reading
    )
    sensor.clear_alarm(value=20.0, reading_ts=1_772_415_600, **rule, **reading)
    silent, seq = sensor.next_incident_id("device_silent")
    sensor.go_silent(
        reason="no data for 900 s",
        last_seen=None,
        incident_id=silent.hex,
        incident_seq=seq,
        **reading,
    )
    sensor.come_back(seen_at=1_772_420_000.0, **reading)
    sensor.relocate(
        lon=121.4301,
        lat=31.2102,
        grid_code="310105001001002",
        district_code="310105",
        department_code="water-west",
        coord_system="gcj02",
        located_at=1_772_420_100.0,
        moved_m=152.5,
        **reading,
    )
    return sensor


def _escalations() -> list[Escalation]:
    """An escalation paged, delivered, failed, withdrawn and acknowledged; one stopped."""
    paged = Escalation.open(
        "critical_alarm",
        f"incident:{uuid4()}",
        title="water on Changning Road",
        grid_code="310105001001001",
        district_code="310105",
        critical=True,
        started_at=utc(2026, 3, 2, 1, 30),
        policy_version=1,
        actor="system:pager",
        **STAMP,
    )
    pager = {"actor": "system:pager", **STAMP}
    keys = [str(uuid4()) for _ in range(3)]
    for key, channel in zip(keys, ("sms", "webhook", "email"), strict=True):
        paged.page(
            page_id=key,
            person="dispatcher:li",
            channel=channel,
            level="street",
            at=utc(2026, 3, 2, 1, 31),
            **pager,
        )
    paged.record_delivery(keys[0], attempt=1, **pager)
    paged.record_failure(keys[1], attempt=1, error="503", final=False, **pager)
    paged.acknowledge(page_id=keys[0], actor="dispatcher:li", **STAMP)
    paged.withdraw(keys[1], reason="escalation acknowledged", **pager)
    stopped = Escalation.open(
        "case_overdue",
        f"case:{uuid4()}/deadline-1",
        title="flooding k-long",
        grid_code=None,
        district_code="310105",
        critical=False,
        started_at=utc(2026, 3, 2, 1, 30),
        policy_version=1,
        **pager,
    )
    stopped.stop(reason="the case was resolved", **pager)
    return [paged, stopped]


@pytest.fixture(scope="module")
def city() -> CityApp:
    """Every kind of event, recorded on the in-memory store (and one audit read)."""
    app = CityApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    personal = PersonalData(InMemoryKeyStore(), PEPPER)
    incidents = _incidents(case_id("hotline", "k-long"))
    app.save(_sensor(), *incidents, *_cases(personal, incidents[0]), *_escalations())
    app.publish_catalogue(load_catalogue(), actor="system:seed", correlation_id="t:seed")
    record_read(
        app,
        reader="auditor-1",
        role="auditor",
        path="/api/v1/audit/cases",
        query=f"phone={PHONE}",
        actor="auditor:auditor-1",
        correlation_id="t:audit",
    )
    return app


@pytest.fixture(scope="module")
def notifications(city: CityApp) -> list[Any]:
    return list(city.recorder.select_notifications(start=1, limit=10_000))


@pytest.fixture(scope="module")
def records(notifications: list[Any]) -> list[tuple[Any, tuple[bytes, bytes, Any]]]:
    """(notification, Kafka key, value and headers) of each published event."""
    out = []
    for n in notifications:
        found = message(n)
        if found is not None:
            out.append((n, found))
    return out


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(contract.ASYNCAPI.read_text())
    return doc


# -- code, schemas and AsyncAPI are one ----------------------------------------------------


def test_every_recorded_event_class_is_published_or_withheld_by_name() -> None:
    assert set(contract.TYPES) | set(contract.NOT_PUBLISHED) == _aggregate_event_classes()
    assert not set(contract.TYPES) & set(contract.NOT_PUBLISHED)
    assert sorted(contract.TYPES.values()) == sorted(PUBLISHED_TYPES)
    kinds = {
        "case": "/cityops/cases",
        "incident": "/cityops/incidents",
        "sensor": "/cityops/sensors",
        "catalogue": "/cityops/catalogue",
        "escalation": "/cityops/escalations",
    }
    for cls, name in contract.TYPES.items():
        assert re.fullmatch(
            r"cityops\.(case|incident|sensor|catalogue|escalation)\.[a-z]+(-[a-z]+)*", name
        ), name
        assert contract.SOURCES[cls] == kinds[name.split(".")[1]]


def _json_type(field: str, annotation: str) -> dict[str, Any]:
    """What the schema must say of a field declared ``annotation`` on the event."""
    base = annotation.removesuffix(" | None")
    if field in contract.EPOCH_TIMES or base == "datetime":
        expected: dict[str, Any] = {"type": "string", "format": "date-time"}
    elif field in contract.IDS:
        expected = {"type": "string", "format": "uuid"}
    else:
        expected = {
            "str": {"type": "string"},
            "int": {"type": "integer"},
            "float": {"type": "number"},
            "bool": {"type": "boolean"},
            "dict[str, Any]": {"type": "object"},
            "list[str]": {"type": "array", "items": {"type": "string"}},
            "list[dict[str, Any]]": {"type": "array", "items": {"type": "object"}},
        }[base]
    if annotation.endswith(" | None"):
        expected = {**expected, "type": [expected["type"], "null"]}
    return expected


@pytest.mark.parametrize("cls", list(contract.TYPES), ids=list(contract.TYPES.values()))
def test_the_schema_of_a_type_declares_exactly_its_published_fields(cls: type) -> None:
    event_type = contract.TYPES[cls]
    schema = orjson.loads(contract.schema_file(event_type).read_bytes())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == contract.dataschema(event_type)
    assert f".v{contract.VERSION}.json" in schema["$id"]
    assert schema["type"] == "object"
    published = contract.fields(cls)
    assert list(schema["properties"]) == list(published)
    assert schema["required"] == list(published)
    annotations = inspect.get_annotations(cls)
    for field in published:
        declared = {
            k: {"type": v["type"]} if k == "items" else v  # an item's own fields: free
            for k, v in schema["properties"][field].items()
            if k in ("type", "format", "items")
        }
        assert declared == _json_type(field, annotations[field]), field
        assert schema["properties"][field].get("description"), field


def test_no_schema_without_a_type() -> None:
    files = {p.name for p in contract.SCHEMAS.glob("*")}
    expected = {contract.schema_file(t).name for t in contract.TYPES.values()}
    assert files == expected | {f"cloudevent.v{contract.VERSION}.json"}


def test_the_asyncapi_document_lists_every_type_with_its_schema(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["version"].split(".")[0] == str(contract.VERSION)
    assert asyncapi["defaultContentType"] == contract.CONTENT_TYPE
    (channel,) = asyncapi["channels"].values()
    assert channel["address"] == DOMAIN_EVENTS
    messages = asyncapi["components"]["messages"]
    types = set(contract.TYPES.values())
    assert set(messages) == types
    assert {ref["$ref"] for ref in channel["messages"].values()} == {
        f"#/components/messages/{t}" for t in types
    }
    (operation,) = asyncapi["operations"].values()
    assert operation["action"] == "send"
    assert {ref["$ref"] for ref in operation["messages"]} == {
        f"#/channels/domainEvents/messages/{t}" for t in types
    }
    trait = asyncapi["components"]["messageTraits"]["cloudEvent"]
    assert trait["contentType"] == contract.CONTENT_TYPE
    assert trait["headers"]["properties"]["content-type"]["const"] == contract.CONTENT_TYPE
    for cls, event_type in contract.TYPES.items():
        msg = messages[event_type]
        assert msg["name"] == event_type
        assert msg["traits"] == [{"$ref": "#/components/messageTraits/cloudEvent"}]
        envelope, specific = msg["payload"]["allOf"]
        assert envelope == {"$ref": f"./schemas/cloudevent.v{contract.VERSION}.json"}
        props = specific["properties"]
        assert props["type"] == {"const": event_type}
        assert props["source"] == {"const": contract.SOURCES[cls]}
        assert props["dataschema"] == {"const": contract.dataschema(event_type)}
        # Relative to the document (BASE_URI + asyncapi.yaml), the $ref is the dataschema.
        assert contract.BASE_URI + props["data"]["$ref"].removeprefix("./") == (
            contract.dataschema(event_type)
        )


# -- real events ---------------------------------------------------------------------------


def _payload_validator(asyncapi: dict[str, Any], event_type: str) -> Draft202012Validator:
    payload = asyncapi["components"]["messages"][event_type]["payload"]
    return contract.validator({"$id": contract.BASE_URI + "asyncapi.yaml", **payload})


def test_every_type_happens_in_the_scenario(records: list[Any]) -> None:
    seen = {orjson.loads(value)["type"] for _, (_, value, _) in records}
    assert seen == set(contract.TYPES.values())


def test_each_record_is_a_cloudevent_its_message_and_schema_accept(
    records: list[Any], asyncapi: dict[str, Any]
) -> None:
    for n, (key, value, headers) in records:
        assert headers == [("content-type", b"application/cloudevents+json")]
        assert key == str(n.originator_id).encode()  # the key of old
        event = from_structured(KafkaMessage(dict(headers), key, value), JSONFormat())
        assert event.get_specversion() == "1.0"
        assert event.get_id() == f"{n.originator_id}:{n.originator_version}"
        assert event.get_subject() == str(n.originator_id)
        assert event.get_datacontenttype() == "application/json"
        assert event.get_extension("logposition") == n.id
        assert event.get_extension("aggregateversion") == n.originator_version
        time = event.get_time()
        assert time is not None
        assert time.utcoffset() == timedelta(0)
        body = contract.validate(value)
        assert body["dataschema"] == contract.dataschema(body["type"])
        _payload_validator(asyncapi, body["type"]).validate(body)
        assert "_type_" not in value.decode()
        assert "core." not in value.decode()
        assert position_of(value) == n.id


def test_data_is_plain_json(records: list[Any]) -> None:
    by_type = {}
    for _, (_, value, _) in records:
        body = orjson.loads(value)
        by_type.setdefault(body["type"], body["data"])
    approved = by_type["cityops.case.extension-approved"]
    assert approved["due_soon_at"] == "2026-03-05T06:00:00Z"  # recorded at +08:00
    raised = by_type["cityops.sensor.alarm-raised"]
    assert raised["reading_ts"] == "2026-03-02T01:30:00.250000Z"
    assert str(UUID(raised["incident_id"])) == raised["incident_id"]  # recorded as hex
    assert by_type["cityops.sensor.went-silent"]["last_seen"] is None
    assert by_type["cityops.case.assigned"]["actor"] == "system:intake-policy"
    assert by_type["cityops.case.extension-refused"]["actor"] == "dispatcher"
    assert by_type["cityops.escalation.paged"]["person"] == "dispatcher"  # by role only


def test_a_redelivered_event_is_the_same_record(notifications: list[Any]) -> None:
    n = notifications[0]
    assert message(n) == message(n)


def test_no_personal_data_is_published(city: CityApp, records: list[Any]) -> None:
    case = city.repository.get(case_id("hotline", "k-long"))
    secrets = [PHONE, EMAIL, NAME, HOME, case.citizen_id, case.contact_token, "knee"]
    assert all(secrets), "the scenario seals a contact for a citizen"
    assert len(records) > 50
    for _, (key, value, headers) in records:
        readable = orjson.loads(value)
        text = value.decode() + orjson.dumps(readable).decode() + key.decode() + repr(headers)
        for secret in secrets:
            assert secret not in text, (readable["type"], secret)
        assert "citizen:" not in text
    # The stored events do hold every one of them (this scenario bypasses the desk's
    # screening of free text): the scan above had something to find.
    stored = "".join(
        orjson.dumps(orjson.loads(bytes(n.state))).decode()
        for n in city.recorder.select_notifications(1, 10_000)
    )
    assert all(secret in stored for secret in secrets)
    assert "citizen:" in stored


def test_the_audit_trails_reads_are_not_published(notifications: list[Any]) -> None:
    reads = [n for n in notifications if n.topic == "core.audit:AuditRead.Recorded"]
    assert len(reads) == 1
    assert message(reads[0]) is None


def test_the_validator_refuses_what_breaks_the_contract(records: list[Any]) -> None:
    _, (_, value, _) = records[0]
    good = orjson.loads(value)
    broken = [
        {**good, "time": "2026-03-02 01:30:00"},
        {**good, "specversion": "0.3"},
        {**good, "id": "not-an-id"},
        {**good, "data": {k: v for k, v in good["data"].items() if k != "actor"}},
        {**good, "data": {**good["data"], "lon": "121.4"}},
    ]
    for bad in broken:
        with pytest.raises(ValidationError):
            contract.validate(orjson.dumps(bad))


def test_the_relay_finds_its_position_in_records_from_before_the_contract() -> None:
    old = {"notification_id": 7, "aggregate_id": str(uuid4()), "event": {}}
    assert position_of(orjson.dumps(old)) == 7


class _Stray(Aggregate):
    @event("Happened")
    def happen(self, actor: str) -> None:
        pass


def test_an_event_class_the_contract_does_not_know_holds_the_relay_at_it() -> None:
    stray = _Stray()
    stray.happen(actor="test")
    happened = stray.collect_events()[-1]
    with pytest.raises(contract.UnmappedEventError):
        contract.cloudevent(happened, 1)

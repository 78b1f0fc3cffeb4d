"""The case workers on the real services: hotline intake and the SLA clock.

Intake: a hotline case sent twice (or redelivered after a restart or a SIGKILL) is one
case; a bad message goes to the dead letter with its reason and loses nothing else.
SLA clock: one due-soon and one overdue mark per deadline, across SIGKILLs and with two
clocks running at once; a case resolved in time gets no overdue mark.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import psycopg
import pytest
import yaml
from kafka import KafkaProducer, TopicPartition
from psycopg_pool import ConnectionPool

from cityops.bootstrap import city_app, city_layers, seed, service_desk
from core.app import CityApp
from core.case import ServiceCase, case_id
from core.case.commands import WaiveCoHandling
from core.case.desk import ServiceDesk, SubmitCase
from core.commands import CommandContext
from gis.locator import CityLocator
from infra import kafka as topics
from infra.hotline_schema import HotlineCase, encode
from infra.pgstore import make_pool
from infra.settings import Settings
from projections.case_queries import CaseFilter, CaseQueries
from tests.helpers.brokers import read_topic, topic_size
from tests.helpers.city import open_city
from tests.helpers.db import event_counts
from tests.helpers.waiting import wait_until
from tests.helpers.workers import in_threads, sigkill, start_worker, stop_all, threads
from workers.intake import CaseIntake

pytestmark = pytest.mark.integration

# Inside Xuhui (310104) of the generated demo city, away from district borders.
XUHUI = (121.47, 31.215)
SUBMITTED = "%ServiceCase.CaseSubmitted"
DUE_SOON = "%ServiceCase.CaseDueSoon"
OVERDUE = "%ServiceCase.CaseBecameOverdue"


# -- helpers -----------------------------------------------------------------------------


def hotline(external_id: str, **changes: Any) -> dict[str, Any]:
    """A valid hotline message (as a dict); ``changes`` override or add fields."""
    msg: dict[str, Any] = {
        "external_id": external_id,
        "source": "12345",
        "service_code": "road_damage",
        "description": "路面塌陷 / pothole",
        "location": {"lon": XUHUI[0], "lat": XUHUI[1]},
        "attributes": {"size": "medium"},
        "citizen": {"name": "李四", "phone": "+86 138-0013-8000"},
    }
    msg.update(changes)
    return msg


def produce(
    settings: Settings, producer: KafkaProducer, *messages: dict[str, Any] | bytes, key: bytes = b""
) -> None:
    """Send messages to the inbound topic: dicts as the contract says, bytes as they are."""
    topic = topics.Topics.of(settings).cases_inbound
    for m in messages:
        if isinstance(m, bytes):
            producer.send(topic, key=key or None, value=m)
        else:
            k, v = encode(HotlineCase.model_validate(m))
            producer.send(topic, key=key or k, value=v)
    producer.flush()


def hotline_case_id(external_id: str, source: str = "12345") -> UUID:
    return case_id("hotline", f"{source}:{external_id}")


POSITIONS = (
    "SELECT coalesce(sum(n), 0) FROM (SELECT max(notification_id) AS n FROM city_tracking"
    " WHERE application_name LIKE %s GROUP BY application_name) t"
)


def positions(conn: psycopg.Connection[Any], settings: Settings, group: str = "case-intake") -> int:
    """Sum of the intake's recorded next offsets over the inbound topic's partitions."""
    inbound = topics.Topics.of(settings).cases_inbound
    row = conn.execute(POSITIONS, (f"{group}|{inbound}|%",)).fetchone()
    return int(row[0]) if row else 0


def tracked(settings: Settings) -> int:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        return positions(conn, settings)


def first_commit_after(
    conn: psycopg.Connection[Any], settings: Settings, base: int, timeout: float = 60
) -> int:
    """Poll (tightly) until the intake records a position past ``base``; return it."""

    def past() -> int:
        now = positions(conn, settings)
        return now if now > base else 0

    return wait_until(past, timeout, f"intake progress past position {base}", interval=0.005)


@dataclass
class Intake:
    """An in-process intake worker whose counters the test can read."""

    worker: CaseIntake


@contextmanager
def intake_worker(settings: Settings) -> Iterator[Intake]:
    with open_city(settings) as city:
        producer = topics.make_producer(settings)
        worker = CaseIntake(settings, city.desk, producer)
        try:
            with threads(worker.run, join_s=20):
                yield Intake(worker)
        finally:
            producer.close()


def sigkill_alive(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, f"worker {proc.args!r} died on its own (rc {proc.returncode})"
    sigkill(proc)


@pytest.fixture
def seeded(settings: Settings) -> Settings:
    """Schema, topics and the demo city, as `cityops seed` leaves them."""
    seed(settings)
    return settings


# -- intake --------------------------------------------------------------------------------


def test_hotline_case_sent_twice_and_again_after_a_restart_is_one_case(
    seeded: Settings, unique: str
) -> None:
    settings = seeded
    ext = f"HL-{unique}"
    producer = topics.make_producer(settings)
    app = city_app(settings, pool_size=2)
    pool = make_pool(settings, max_size=2)
    try:
        # Twice from the hotline, and once the same id from another system (another case).
        produce(settings, producer, hotline(ext), hotline(ext), hotline(ext, source="wechat-gw"))
        with intake_worker(settings) as first:
            wait_until(
                lambda: sum(first.worker.counters.values()) == 3, what="three messages handled"
            )
            assert first.worker.counters == Counter(submitted=2, duplicates=1)

        produce(settings, producer, hotline(ext))  # redelivered after the worker restarted
        with intake_worker(settings) as second:
            wait_until(lambda: tracked(settings) == 4, what="the fourth message's position")
            wait_until(lambda: sum(second.worker.counters.values()) >= 1, what="the fourth message")
            # It resumed at its recorded position: only the new message, a duplicate.
            assert second.worker.counters == Counter(duplicates=1)

        cid = hotline_case_id(ext)
        submitted = event_counts(settings, SUBMITTED)
        assert submitted == {cid: 1, hotline_case_id(ext, "wechat-gw"): 1}
        assert topic_size(settings, topics.Topics.of(settings).deadletter) == 0

        desk = service_desk(settings, app, pool)
        case = desk.get(cid)
        assert case.external_id == f"12345:{ext}"
        assert case.category == "road_damage"
        assert (case.lon, case.lat) == XUHUI
        assert case.attributes == {"size": "medium"}
        assert case.submitted_by == "system:hotline:12345"
        # Dispatched by the responsibility catalogue: its road-surface entry names the
        # district's roads office, the unit the jurisdiction polygon would give.
        locator = CityLocator(city_layers(settings))
        place = locator.place(*XUHUI)
        assert place is not None
        assert place.district_code == "310104"
        assert case.status == "assigned"
        assert case.department_code == locator.department_for(*XUHUI, "roads") == "310104-roads"
        assert (case.grid_code, case.district_code) == (place.grid_code, place.district_code)
        assert case.dispatch is not None
        assert case.dispatch["rule"] == "catalogue"
        assert case.dispatch["catalogue_entry"] == "road-surface"
        assert case.due_at is not None
        assert case.deadline_no == 1
        # The caller's contact is sealed in the log and opens in clear for the desk.
        contact = desk.contact_of(case)
        assert contact is not None
        assert contact.phone == "+8613800138000"
        assert b"13800138000" not in orjson.dumps(
            [e.__dict__ for e in app.events.get(cid)], default=str
        )
    finally:
        pool.close()
        app.close()
        producer.close()


def test_bad_messages_go_to_the_dead_letter_and_nothing_else_is_lost(
    seeded: Settings, unique: str
) -> None:
    settings = seeded
    names = topics.Topics.of(settings)
    producer = topics.make_producer(settings)
    no_code = hotline(f"nc-{unique}")
    del no_code["service_code"]
    no_place = hotline(f"np-{unique}")
    del no_place["location"]
    # One key for everything: one partition, one batch with the good ones in between.
    key = f"batch-{unique}".encode()
    bad: dict[str, tuple[bytes, tuple[str, ...]]] = {
        "not_json": (b'{"external_id": "x-1", service_code', ("schema: message", "Invalid JSON")),
        "no_service_code": (orjson.dumps(no_code), ("schema: service_code", "Field required")),
        "unknown_code": (
            orjson.dumps(hotline(f"uc-{unique}", service_code="unicorn_sighting")),
            ("UnknownCategoryError", "unicorn_sighting"),
        ),
        "lat_95": (
            orjson.dumps(hotline(f"lat-{unique}", location={"lon": 121.47, "lat": 95})),
            ("schema: location.lat", "less than or equal to 90"),
        ),
        "extra_field": (
            orjson.dumps(hotline(f"ex-{unique}", priority="urgent")),
            ("schema: priority", "Extra inputs are not permitted"),
        ),
        "bad_phone": (
            orjson.dumps(hotline(f"ph-{unique}", citizen={"phone": "call me"})),
            ("InvalidContactError", "phone"),
        ),
        "no_location": (orjson.dumps(no_place), ("InvalidLocationError", "lat/long or an address")),
        "nul_in_text": (  # JSON allows it; PostgreSQL text (the read model) does not
            orjson.dumps(hotline(f"nul-{unique}", description="a\x00b")),
            ("InvalidTextError", "description: text must not contain NUL"),
        ),
        "missing_attribute": (
            orjson.dumps(hotline(f"fl-{unique}", service_code="flooding", attributes={})),
            ("InvalidAttributeError", "water_depth"),
        ),
    }
    good = [hotline(f"ok1-{unique}"), hotline(f"ok2-{unique}", address="徐汇区某路 1 号")]
    sequence: list[tuple[str, dict[str, Any] | bytes]] = [
        (name, raw) for name, (raw, _) in bad.items()
    ]
    sequence.insert(3, ("good", good[0]))
    sequence.append(("good", good[1]))
    try:
        produce(settings, producer, *(raw for _, raw in sequence), key=key)
        with intake_worker(settings) as intake:
            wait_until(
                lambda: sum(intake.worker.counters.values()) == len(sequence),
                what="every message handled",
            )
            assert intake.worker.counters == Counter(submitted=2, rejected=len(bad))
        # Each batch's dead letters were in Kafka before its position was committed.
        letters = [orjson.loads(r.value) for r in read_topic(settings, names.deadletter, len(bad))]
        assert len(letters) == len(bad)
        offsets = {
            name: i for i, (name, _) in enumerate(sequence) if name != "good"
        }  # one partition: offsets are positions in the sequence
        by_offset = {letter["offset"]: letter for letter in letters}
        assert sorted(by_offset) == sorted(offsets.values())
        partitions = {letter["partition"] for letter in letters}
        assert len(partitions) == 1
        for name, offset in offsets.items():
            letter = by_offset[offset]
            raw, fragments = bad[name]
            assert letter["source"] == "case-intake"
            assert letter["topic"] == names.cases_inbound
            assert letter["payload"] == raw.decode()
            for fragment in fragments:
                assert fragment in letter["reason"], (name, letter["reason"])
        # The good ones became cases, and nothing else did.
        assert event_counts(settings, SUBMITTED) == {
            hotline_case_id(f"ok1-{unique}"): 1,
            hotline_case_id(f"ok2-{unique}"): 1,
        }
        assert tracked(settings) == len(sequence)
    finally:
        producer.close()


class DiedBeforeCommitError(Exception):
    """The worker's process ends between its dead letters and its commit."""


def test_a_dead_letter_is_sent_before_the_position_past_it_is_committed(
    seeded: Settings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = seeded
    names = topics.Topics.of(settings)
    producer = topics.make_producer(settings)
    produce(settings, producer, b"{not json", hotline(f"ok-{unique}"), key=b"one-partition")
    records = read_topic(settings, names.cases_inbound, 2)
    assert len(records) == 2
    tp = TopicPartition(names.cases_inbound, records[0].partition)
    pool = make_pool(settings, max_size=2)
    app = city_app(settings, pool_size=2)
    worker = CaseIntake(settings, service_desk(settings, app, pool), producer)
    try:

        def dies(*args: Any, **kwargs: Any) -> None:
            raise DiedBeforeCommitError

        monkeypatch.setattr(worker.app, "record", dies)
        with pytest.raises(DiedBeforeCommitError):
            worker.process_partition(tp, records)
        # Nothing committed, but the dead letter is already in Kafka.
        assert tracked(settings) == 0
        assert event_counts(settings, SUBMITTED) == {}
        (letter,) = read_topic(settings, names.deadletter, 1)
        assert orjson.loads(letter.value)["offset"] == records[0].offset
        # Restarted, the worker does the batch again: the letter twice, the case once.
        monkeypatch.undo()
        worker.process_partition(tp, records)
        assert tracked(settings) == 2
        assert event_counts(settings, SUBMITTED) == {hotline_case_id(f"ok-{unique}"): 1}
        letters = [orjson.loads(r.value) for r in read_topic(settings, names.deadletter, 2)]
        assert len(letters) == 2
        assert {(x["topic"], x["partition"], x["offset"]) for x in letters} == {
            (names.cases_inbound, tp.partition, records[0].offset)
        }
    finally:
        producer.close()
        app.close()
        pool.close()


def test_sigkilled_intake_neither_loses_nor_doubles_cases(seeded: Settings, unique: str) -> None:
    settings = seeded
    producer = topics.make_producer(settings)
    total = 300
    ids = [f"K-{unique}-{i:04d}" for i in range(total)]
    chunks = [ids[:100], ids[100:200], ids[200:]]
    kills: list[tuple[int, int]] = []  # (positions committed, messages sent) at each kill
    proc = start_worker(settings, "intake")
    procs = [proc]
    conn = psycopg.connect(settings.database_url, autocommit=True)
    try:
        sent = 0
        for n, chunk in enumerate(chunks):
            base = positions(conn, settings)
            # Every tenth caller leaves a phone number: its key goes to the vault too.
            produce(
                settings,
                producer,
                *(
                    hotline(ext) if i % 10 == 0 else hotline(ext, citizen=None)
                    for i, ext in enumerate(chunk)
                ),
            )
            sent += len(chunk)
            if n == len(chunks) - 1:
                break
            # SIGKILL it right after its first commit of this chunk: the poll's other
            # partitions are being processed then (mid-stream, mid-transaction).
            kills.append((first_commit_after(conn, settings, base), sent))
            sigkill_alive(proc)
            proc = start_worker(settings, "intake")  # joins once the dead member's session expires
            procs.append(proc)
        wait_until(
            lambda: positions(conn, settings) == total, timeout=60, what=f"{total} positions"
        )
        submitted = event_counts(settings, SUBMITTED)
        assert len(submitted) == total
        assert set(submitted.values()) == {1}
        assert set(submitted) == {hotline_case_id(ext) for ext in ids}
        assigned = event_counts(settings, "%ServiceCase.CaseAssigned")
        assert len(assigned) == total
        assert set(assigned.values()) == {1}
        assert topic_size(settings, topics.Topics.of(settings).deadletter) == 0
        assert proc.poll() is None, "the last intake worker died"
        # Both kills came while a chunk was still being recorded (not between chunks).
        assert all(at < by for at, by in kills), kills
    finally:
        conn.close()
        stop_all(procs)
        producer.close()


# -- the SLA clock -------------------------------------------------------------------------

TINY_LIMIT_H = 0.002  # 7.2 s on the calendar clock: due soon after 5.76 s


def tiny_categories(tmp_path: Path) -> Path:
    """The packaged categories with fallen_tree's time limit cut to seconds."""
    doc = yaml.safe_load(
        resources.files("core.case").joinpath("categories.yaml").read_text(encoding="utf-8")
    )
    doc["version"] = 900
    (tree,) = (c for c in doc["categories"] if c["code"] == "fallen_tree")
    tree.update(time_limit=TINY_LIMIT_H, clock="calendar", duplicate_radius_m=0)
    path = tmp_path / "categories-tiny.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def submit(desk: ServiceDesk, ext: str, category: str, lon: float, lat: float) -> ServiceCase:
    attributes = {"size": "small"} if category == "road_damage" else {}
    return desk.submit(
        SubmitCase(
            channel="operator",
            external_id=ext,
            category=category,
            description="test",
            lon=lon,
            lat=lat,
            attributes=attributes,
        ),
        actor="user:test-operator",
        correlation_id=f"test:{ext}",
    )


def resolve_now(desk: ServiceDesk, case_id: UUID) -> None:
    """Resolve at once: a dispatcher first waives the catalogue's co-handlers' parts."""
    if desk.get(case_id).pending_co_handlers:
        waive = WaiveCoHandling("the test resolves at once")
        desk.execute(case_id, waive, CommandContext("user:disp", "t"))
    desk.resolve(case_id, reply="fixed", actor="user:dept", reason="done", correlation_id="t")


def test_sla_marks_once_per_deadline_across_kills_and_two_clocks(
    settings: Settings, tmp_path: Path, unique: str
) -> None:
    categories = tiny_categories(tmp_path)
    settings = settings.model_copy(update={"categories_file": categories, "sla_poll_s": 0.3})
    seed(settings)
    env = {"CITYOPS_CATEGORIES_FILE": str(categories), "CITYOPS_SLA_POLL_S": "0.3"}
    app: CityApp = city_app(settings, pool_size=2)
    pool: ConnectionPool = make_pool(settings, max_size=2)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with in_threads(settings, "projector"):
            desk = service_desk(settings, app, pool)
            # Points spread over the city; the radius is 0 anyway (no duplicate holds).
            points = [(121.43, 31.21), (121.47, 31.215), (121.50, 31.25), (121.44, 31.25)]
            late = [
                submit(desk, f"late-{unique}-{i}", "fallen_tree", *p).id
                for i, p in enumerate(points[:3])
            ]
            on_time = submit(desk, f"soon-{unique}", "fallen_tree", *points[3]).id
            early = submit(desk, f"early-{unique}", "fallen_tree", 121.46, 31.24).id
            normal = submit(desk, f"normal-{unique}", "road_damage", 121.51, 31.20).id
            for cid in (*late, on_time, early, normal):
                assert desk.get(cid).status == "assigned"
            first_due = desk.get(late[0]).due_at
            assert first_due is not None
            resolve_now(desk, early)

            # Two clocks at once while the due-soon marks fall due.
            procs += [start_worker(settings, "sla", **env), start_worker(settings, "sla", **env)]
            wait_until(
                lambda: len(event_counts(settings, DUE_SOON)) == 4,
                timeout=30,
                what="4 due-soon marks",
            )
            # Shortly before the deadline: kill both, resolve one case, restart two clocks.
            for p in procs:
                sigkill_alive(p)
            resolve_now(desk, on_time)
            left = first_due.timestamp() - time.time()
            assert left > 0, f"due-soon marks came {-left:.1f} s after the deadline: too slow"
            procs += [start_worker(settings, "sla", **env), start_worker(settings, "sla", **env)]

            queries = CaseQueries(pool)

            def overdue_listed() -> set[UUID]:
                return {r["case_id"] for r in queries.cases(CaseFilter(overdue=True))}

            wait_until(lambda: overdue_listed() == set(late), timeout=30, what="overdue list")
            # A few more polls of both clocks: would either write a second mark?
            time.sleep(1.0)
            for p in procs[2:]:
                assert p.poll() is None, "an SLA clock died"

            assert event_counts(settings, DUE_SOON) == dict.fromkeys((*late, on_time), 1)
            assert event_counts(settings, OVERDUE) == dict.fromkeys(late, 1)
            assert overdue_listed() == set(late)
            for cid in late:
                case = desk.get(cid)
                assert case.overdue
                assert case.due_soon_recorded == case.overdue_recorded == 1
                row = queries.case(cid)
                assert row is not None
                assert (row["due_soon_marked"], row["overdue_marked"]) == (1, 1)
            for cid in (on_time, early):
                assert desk.get(cid).status == "resolved"
                assert desk.get(cid).overdue_recorded == 0
            assert desk.get(early).due_soon_recorded == 0
            assert desk.get(normal).due_soon_recorded == 0
            assert queries.count(CaseFilter(overdue=False, case_ids=(on_time, early, normal))) == 3
    finally:
        stop_all(procs)
        pool.close()
        app.close()

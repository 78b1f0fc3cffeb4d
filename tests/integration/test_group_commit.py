"""Group commit on the real event store: concurrent saves share transactions, a
conflicting save still fails alone, and the log's order and hash chain hold."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cityops.bootstrap import city_app
from core.app import CityApp
from core.errors import ConcurrentUpdateError
from infra.audit_chain import verify
from infra.pgstore import FencedProcessRecorder
from infra.settings import Settings
from tests.helpers.builders import operator_incident

pytestmark = pytest.mark.integration

THREADS = 16
SAVES = 25  # per thread


@pytest.fixture
def app(settings: Settings) -> Iterator[CityApp]:
    city = city_app(settings.model_copy(update={"group_commit": True}), pool_size=4)
    try:
        yield city
    finally:
        city.close()


@pytest.fixture(autouse=True)
def tables(settings: Settings) -> None:
    city_app(settings, pool_size=1, create_tables=True).close()


def recorder(app: CityApp) -> FencedProcessRecorder:
    rec = app.recorder
    assert isinstance(rec, FencedProcessRecorder)
    assert rec.group is not None, "group commit is on by default"
    return rec


def test_concurrent_saves_share_transactions_and_the_log_holds(
    app: CityApp, settings: Settings
) -> None:
    group = recorder(app).group
    assert group is not None
    errors: list[BaseException] = []
    made: list[Any] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            for n in range(SAVES):
                incident = operator_incident(uuid.uuid4(), f"pothole {t}-{n}", "minor", None)
                incident.acknowledge(actor="operator:t", reason="seen", correlation_id="gc")
                app.save(incident)  # two events, one save
                with lock:
                    made.append(incident)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(made) == THREADS * SAVES
    # Fewer transactions than saves: saves arriving together were grouped.
    assert group.saves >= THREADS * SAVES
    assert group.groups < group.saves
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT originator_id, originator_version FROM city_events ORDER BY notification_id"
        ).fetchall()
        result = verify(conn, [])
    assert result.ok, str(result)
    # Every save's two events are stored once, next to each other, in version order.
    assert len(rows) == 2 * THREADS * SAVES
    assert len(set(rows)) == len(rows)
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        assert first[0] == second[0]
        assert (first[1], second[1]) == (1, 2)
    for incident in made:
        assert app.repository.get(incident.id).version == 2


def test_a_conflicting_save_fails_alone(app: CityApp) -> None:
    incident = operator_incident(uuid.uuid4(), "one incident", "minor", None)
    app.save(incident)
    copies = [app.repository.get(incident.id) for _ in range(8)]
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(copies) + 4)

    def change(copy: Any) -> None:
        copy.acknowledge(actor="operator:t", reason="seen", correlation_id="gc")
        start.wait()
        try:
            app.save_unless_changed(copy, what="incident")
            outcome = "saved"
        except ConcurrentUpdateError:
            outcome = "conflict"
        with lock:
            outcomes.append(outcome)

    def other() -> None:  # unrelated saves in the same groups
        start.wait()
        app.save(operator_incident(uuid.uuid4(), "another", "minor", None))
        with lock:
            outcomes.append("other")

    threads = [threading.Thread(target=change, args=(c,)) for c in copies]
    threads += [threading.Thread(target=other) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["conflict"] * 7 + ["other"] * 4 + ["saved"]
    assert app.repository.get(incident.id).version == 2


def test_a_save_takes_the_tables_lock_in_its_one_statement(
    app: CityApp, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ids of concurrent saves must commit in their order (followers read the log by
    # id): each save locks the table (EXCLUSIVE), which a plain INSERT's ROW EXCLUSIVE
    # lock, held here by an open transaction, does not let through.
    rec = recorder(app)
    statements: list[int] = []
    one_statement = rec._record_in_one_statement

    def counted(events: Any) -> Any:
        statements.append(len(events))
        return one_statement(events)

    monkeypatch.setattr(rec, "_record_in_one_statement", counted)
    saved = threading.Event()

    def save() -> None:
        app.save(operator_incident(uuid.uuid4(), "behind a lock", "minor", None))
        saved.set()

    with psycopg.connect(settings.database_url) as other:
        other.execute("LOCK TABLE city_events IN ROW EXCLUSIVE MODE")
        thread = threading.Thread(target=save)
        thread.start()
        assert not saved.wait(1.5), "the save did not wait for the table's lock"
        other.rollback()
    assert saved.wait(10)
    thread.join(10)
    assert statements == [1]  # one save, one statement


def test_tables_without_the_one_statement_function_are_saved_the_librarys_way(
    app: CityApp, settings: Settings
) -> None:
    # A database whose tables an older version created has no cityops_record_ function.
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("DROP FUNCTION cityops_record_city_events")
    incident = operator_incident(uuid.uuid4(), "an older database", "minor", None)
    app.save(incident)
    assert recorder(app)._record_function is False
    assert app.repository.get(incident.id).version == 1
    app.save(operator_incident(uuid.uuid4(), "and the next save", "minor", None))

"""Kept cases (``CITYOPS_CASES_KEPT``) on the real event store, with group commit: two
cities on one database stand for two API processes, each desk keeping what its own
commands left. A command on a case the other changed runs again on the stored case;
nothing is recorded twice, and the log's hash chain holds."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from uuid import UUID

import psycopg
import pytest

from cityops.bootstrap import seed
from core.case.commands import ContactCitizen, Resolve, Start
from core.case.desk import SubmitCase
from core.commands import CommandContext
from core.errors import ConcurrentUpdateError, IllegalTransitionError
from infra.audit_chain import verify
from infra.settings import Settings
from tests.helpers.city import City, open_city, places

pytestmark = pytest.mark.integration

CTX = CommandContext("department:test", "kept")


@pytest.fixture
def two(settings: Settings) -> Iterator[tuple[City, City, tuple[float, float]]]:
    seed(settings)
    lon, lat, _ = places(settings, 1)[0]
    with open_city(settings, pool_size=4) as here, open_city(settings, pool_size=4) as there:
        assert here.desk.recent is not None
        assert there.desk.recent is not None
        yield here, there, (lon, lat)


def submit(city: City, where: tuple[float, float], n: int) -> UUID:
    lon, lat = where
    case = city.desk.submit(
        SubmitCase(
            channel="operator",
            external_id=f"kept-{n}",
            category="road_damage",
            description=f"pothole {n}",
            lon=lon + n * 1e-5,
            lat=lat,
        ),
        "operator:test",
        f"kept-{n}",
    )
    assert case.status == "assigned", case.status
    return case.id


def chain_holds(settings: Settings) -> bool:
    with psycopg.connect(settings.database_url) as conn:
        return verify(conn, []).ok


def stored_events(settings: Settings, case_id: UUID) -> Counter[str]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT topic FROM city_events WHERE originator_id = %s", (case_id,)
        ).fetchall()
    return Counter(topic.rsplit(".", 1)[-1] for (topic,) in rows)


def test_a_command_on_a_case_changed_elsewhere_runs_on_the_stored_case(
    settings: Settings, two: tuple[City, City, tuple[float, float]]
) -> None:
    here, there, where = two
    case_id = submit(here, where, 1)
    there.desk.execute(case_id, ContactCitizen("called back"), CTX)
    started = here.desk.execute(case_id, Start(), CTX)  # its kept copy is a version behind
    assert started.version == there.desk.get(case_id).version
    assert stored_events(settings, case_id)["CaseStarted"] == 1

    there.desk.execute(case_id, Resolve("filled"), CTX)  # there's copy is behind: rerun
    with pytest.raises(IllegalTransitionError):
        here.desk.execute(case_id, Start(), CTX)
    events = stored_events(settings, case_id)
    assert (events["CaseStarted"], events["CaseResolved"], events["CitizenContacted"]) == (1, 1, 1)
    assert chain_holds(settings)


def test_the_same_command_from_both_at_once_is_recorded_once(
    settings: Settings, two: tuple[City, City, tuple[float, float]]
) -> None:
    here, there, where = two
    cases = [submit(here, where, n) for n in range(10, 30)]
    for case_id in cases:
        there.desk.get(case_id)  # a read keeps nothing: there loads the stored case
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def run(city: City, case_id: UUID) -> None:
        try:
            city.desk.execute(case_id, Resolve("filled"), CTX)
            outcome = "resolved"
        except (IllegalTransitionError, ConcurrentUpdateError) as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes[outcome] += 1

    threads = [
        threading.Thread(target=run, args=(city, case_id))
        for case_id in cases
        for city in (here, there)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes["resolved"] == len(cases), outcomes
    assert sum(outcomes.values()) == 2 * len(cases)
    for case_id in cases:
        assert stored_events(settings, case_id)["CaseResolved"] == 1
    assert chain_holds(settings)

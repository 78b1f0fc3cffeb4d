"""Database roles: the schema's owner seeds, a role in cityops_writer runs the rest.

The deployment of docker-compose.yml and of `cityops demo`: `cityops seed` creates the
tables as their owner (``admin_database_url``, here the test server's superuser); every
other process logs in as a member of ``cityops_writer``, which records events and writes
the views but may not rewrite the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from cityops.bootstrap import brain_follower, incident_desk, rebuild_projections, seed
from core.case.desk import SubmitCase
from infra.settings import Settings
from projections.case_queries import CaseQueries
from tests.helpers.city import open_city
from tests.helpers.db import checksums, project
from tests.helpers.web import bearer, served
from workers.sla_clock import SlaClock

pytestmark = pytest.mark.integration

ALL_RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")


@pytest.fixture
def as_app(settings: Settings) -> Iterator[Settings]:
    """Settings of a deployment: the superuser owns the schema (the admin URL), a fresh
    login role in cityops_writer is the application's (``database_url``)."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        # As deploy/timescaledb/100-cityops.sh does before the first seed.
        admin.execute(
            "DO $$ BEGIN CREATE ROLE cityops_writer NOLOGIN;"
            " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE cityops_writer").format(sql.Identifier(role))
        )
    parts = urlsplit(settings.database_url)
    try:
        yield settings.model_copy(
            update={
                "database_url": urlunsplit(
                    parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}")
                ),
                "admin_database_url": settings.database_url,
            }
        )
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def submit_cases(settings: Settings, count: int) -> list[str]:
    """Cases through the service desk, as the application's role; half of them assigned."""
    with open_city(settings) as city:
        app, desk, pool = city.app, city.desk, city.pool
        department = sorted(desk.locator.departments())[0]
        ids = []
        for i in range(count):
            case = desk.submit(
                SubmitCase("hotline", f"roles-{i}", "road_damage", f"hole {i}", address="Road"),
                actor="system:test",
                correlation_id=f"roles-{i}",
            )
            if i % 2:
                desk.assign(case.id, department, "dispatcher:d", "", f"roles-{i}")
            ids.append(str(case.id))
        # The urban brain and the SLA clock record what they do, with their positions.
        brain_follower(settings, app, pool).step()
        SlaClock(desk, CaseQueries(pool), incidents=incident_desk(settings, app)).tick()
        return ids


def test_the_application_role_runs_the_pipeline_but_cannot_rewrite_the_log(
    as_app: Settings,
) -> None:
    role = urlsplit(as_app.database_url).username
    result = seed(as_app)
    assert result["registered"] == as_app.sim_sensors  # recorded as the application's role
    with psycopg.connect(as_app.admin_database_url) as owner:
        tables = [
            name
            for (name,) in owner.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tableowner = current_user ORDER BY 1"
            )
        ]
        granted = {
            (name, right): owner.execute(
                "SELECT has_table_privilege(%s, %s, %s)", (role, name, right)
            ).fetchone()
            == (True,)
            for name in tables
            for right in ALL_RIGHTS
        }
        can_temp = owner.execute(
            "SELECT has_database_privilege(%s, current_database(), 'TEMP')", (role,)
        ).fetchone()
    assert {"city_events", "event_chain", "service_cases", "cases_tracking"} <= set(tables)
    # Every worker's table (views, positions, tracking, keys) is the role's to write...
    refused = {key for key, ok in granted.items() if not ok}
    assert refused == {
        ("city_events", "UPDATE"),
        ("city_events", "DELETE"),
        *(("event_chain", right) for right in ("INSERT", "UPDATE", "DELETE", "TRUNCATE")),
    }
    assert can_temp == (True,)  # the telemetry writer's COPY staging table

    ids = submit_cases(as_app, 6)
    project(as_app)
    live = checksums(as_app)
    assert live["service_cases"][0] == 6
    assert live["map_sensors"][0] == as_app.sim_sensors
    rebuild_projections(as_app)  # TRUNCATE of the views, DELETE of their positions
    assert checksums(as_app)["service_cases"][0] == 0
    project(as_app)
    assert checksums(as_app) == live

    with served(as_app) as client:
        response = client.get(f"/api/v1/cases/{ids[1]}", headers=bearer(as_app, "dispatcher"))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "assigned"
        listed = client.get("/open311/v2/requests.json")
        assert listed.status_code == 200, listed.text
        assert len(listed.json()) == 6

    with psycopg.connect(as_app.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
        for statement in (
            "UPDATE city_events SET topic = 'x'",
            "DELETE FROM city_events",
            "ALTER TABLE city_events DISABLE TRIGGER city_events_append_only",
            "DELETE FROM event_chain",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("TRUNCATE city_events")

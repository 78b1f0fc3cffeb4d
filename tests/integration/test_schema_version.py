"""infra.pgstore.apply_schema records the schema's version, upgrades an older database in
place and refuses one that a newer version of the code has upgraded."""

from __future__ import annotations

import logging

import psycopg
import pytest

from infra.pgstore import SCHEMA_VERSION, SchemaTooNewError, apply_schema, schema_version

pytestmark = pytest.mark.integration


def versions(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    return [int(v) for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY 1")]


def test_a_new_database_is_at_the_code_s_version_and_stays_there(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert schema_version(conn) is None
        apply_schema(conn)
        assert schema_version(conn) == SCHEMA_VERSION
        apply_schema(conn)  # every start applies it again: nothing new
        assert versions(conn) == [SCHEMA_VERSION]
        [(digest,)] = conn.execute("SELECT digest FROM schema_version").fetchall()
        assert len(str(digest)) == 64


def test_an_older_database_is_upgraded_in_place(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(database_url) as conn:
        apply_schema(conn)
        # As a database of the previous version looks: its row, and a table of this
        # version not there yet (created again by the upgrade).
        conn.execute("DELETE FROM schema_version")
        conn.execute(
            "INSERT INTO schema_version (version, digest, timescale) VALUES (%s, 'old', false)",
            (SCHEMA_VERSION - 1,),
        )
        conn.execute(
            "INSERT INTO readings (ts, device_id, metric, value, unit)"
            " VALUES (now(), 'wl-1', 'level', 1.5, 'cm')"
        )
        conn.execute("DROP TABLE replay_snapshot_service_cases")
        conn.commit()
        with caplog.at_level(logging.INFO, logger="infra.pgstore"):
            apply_schema(conn)
        assert versions(conn) == [SCHEMA_VERSION - 1, SCHEMA_VERSION]
        assert f"upgraded from version {SCHEMA_VERSION - 1}" in caplog.text
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (1,)
        row = conn.execute("SELECT to_regclass('replay_snapshot_service_cases')").fetchone()
        assert row is not None
        assert row[0] is not None


def test_a_database_from_before_the_versions_is_upgraded(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(database_url) as conn:
        apply_schema(conn)
        conn.execute("DROP TABLE schema_version")
        conn.commit()
        with caplog.at_level(logging.INFO, logger="infra.pgstore"):
            apply_schema(conn)
        assert versions(conn) == [SCHEMA_VERSION]
        assert "upgraded from a schema without a version" in caplog.text


def test_a_database_of_a_newer_code_is_refused_untouched(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        apply_schema(conn)
        conn.execute(
            "INSERT INTO schema_version (version, digest, timescale) VALUES (%s, 'new', false)",
            (SCHEMA_VERSION + 1,),
        )
        conn.execute("DROP TABLE replay_snapshot_service_cases")
        conn.commit()
        with pytest.raises(SchemaTooNewError, match=f"version {SCHEMA_VERSION + 1}"):
            apply_schema(conn)
        # Nothing of this version's schema was applied to it.
        row = conn.execute("SELECT to_regclass('replay_snapshot_service_cases')").fetchone()
        assert row == (None,)
        assert versions(conn) == [SCHEMA_VERSION, SCHEMA_VERSION + 1]

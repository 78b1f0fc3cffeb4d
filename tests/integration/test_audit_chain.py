"""Tamper evidence on the real log: the chain recomputed, rewrites found, guards hold."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql
from typer.testing import CliRunner

from cityops.bootstrap import city_app
from cityops.cli import app as cli
from core.app import CityApp
from infra.audit_chain import (
    GENESIS,
    Problem,
    Verification,
    checkpoint,
    link,
    load_or_create_key,
    read_checkpoints,
    record,
    verify,
)
from infra.settings import Settings
from tests.helpers.builders import sensor

pytestmark = pytest.mark.integration


@pytest.fixture
def city(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, CityApp]]:
    """A city log of 300 events recorded in several transactions; audit files in tmp."""
    settings = settings.model_copy(
        update={
            "audit_key_file": tmp_path / "audit" / "key.pem",
            "audit_checkpoint_file": tmp_path / "audit" / "checkpoints.jsonl",
        }
    )
    app = city_app(settings, pool_size=1, create_tables=True)
    try:
        record_events(app, 300, "a")
        yield settings, app
    finally:
        app.close()


def record_events(app: CityApp, count: int, prefix: str) -> None:
    for start in range(0, count, 50):
        specs = [sensor(f"{prefix}-{i}") for i in range(start, min(count, start + 50))]
        app.register_sensors(specs, actor="test", correlation_id=f"audit-{prefix}-{start}")


def check(settings: Settings, key: Ed25519PrivateKey | None = None, **kw: int) -> Verification:
    """Verify the log; with the checkpoint file only when given the key."""
    signed = read_checkpoints(settings.audit_checkpoint_file) if key else []
    with psycopg.connect(settings.database_url) as conn:
        return verify(conn, signed, public_key=key.public_key() if key else None, **kw)


def sign(settings: Settings) -> Ed25519PrivateKey:
    key = load_or_create_key(settings.audit_key_file)
    with psycopg.connect(settings.database_url) as conn:
        checkpoint(conn, key, settings.audit_checkpoint_file)
    return key


def positions(settings: Settings) -> list[int]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT notification_id FROM city_events ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def tamper(settings: Settings, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Run SQL as a superuser who switched the append-only triggers off."""
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        for sql, params in statements:
            conn.execute(sql, params)  # type: ignore[arg-type]


def relink_from(settings: Settings, position: int) -> None:
    """What a careful attacker does after an edit: recompute every later link."""
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        row = conn.execute(
            "SELECT hash FROM event_chain WHERE notification_id < %s"
            " ORDER BY notification_id DESC LIMIT 1",
            (position,),
        ).fetchone()
        previous = bytes(row[0]) if row else GENESIS
        events = conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM city_events WHERE notification_id >= %s ORDER BY 1",
            (position,),
        ).fetchall()
        for nid, originator, version, topic, state in events:
            previous = link(previous, record(nid, originator, version, topic, bytes(state)))
            conn.execute(
                "UPDATE event_chain SET hash = %s WHERE notification_id = %s", (previous, nid)
            )


ALTER = "UPDATE city_events SET state = convert_to('{\"x\": 1}', 'UTF8') WHERE notification_id = %s"
DELETE_EVENT = "DELETE FROM city_events WHERE notification_id = %s"
DELETE_LINK = "DELETE FROM event_chain WHERE notification_id = %s"


def test_the_recorded_log_verifies_with_the_database_s_own_chain(city) -> None:
    settings, _ = city
    ids = positions(settings)
    result = check(settings, batch=64)  # several fetches of the server-side cursor
    with psycopg.connect(settings.database_url) as conn:
        stored_head = conn.execute(
            "SELECT hash FROM event_chain ORDER BY notification_id DESC LIMIT 1"
        ).fetchone()
    assert stored_head is not None
    assert result.ok, str(result)
    assert (result.events, result.head_position) == (300, ids[-1])
    assert result.head_hash == bytes(stored_head[0])
    assert str(result).startswith(f"OK: 300 events, head {ids[-1]}")


def test_an_altered_event_is_named(city) -> None:
    settings, _ = city
    ids = positions(settings)
    tamper(settings, (ALTER, (ids[123],)))
    result = check(settings)
    assert (result.position, result.problem, result.events) == (ids[123], Problem.ALTERED, 123)


def test_a_deleted_event_is_named(city) -> None:
    settings, _ = city
    ids = positions(settings)
    tamper(settings, (DELETE_EVENT, (ids[77],)))
    result = check(settings)
    assert (result.position, result.problem) == (ids[77], Problem.MISSING)


def test_an_event_deleted_with_its_link_is_named(city) -> None:
    settings, _ = city
    ids = positions(settings)
    tamper(settings, (DELETE_EVENT, (ids[77],)), (DELETE_LINK, (ids[77],)))
    result = check(settings)
    assert (result.position, result.problem) == (ids[77], Problem.MISSING)
    assert f"the link of {ids[78]} names {ids[77]}" in result.detail


def test_an_event_deleted_with_its_link_and_the_hint_is_found_at_the_next_position(
    city,
) -> None:
    """The previous-position hint is outside the hash: rewritten, the hash still differs."""
    settings, _ = city
    ids = positions(settings)
    tamper(
        settings,
        (DELETE_EVENT, (ids[77],)),
        (DELETE_LINK, (ids[77],)),
        ("UPDATE event_chain SET prev_id = %s WHERE notification_id = %s", (ids[76], ids[78])),
    )
    result = check(settings)
    assert (result.position, result.problem) == (ids[78], Problem.ALTERED)
    assert f"between {ids[76]} and it were removed" in result.detail


def test_an_event_without_a_link_is_named(city) -> None:
    settings, _ = city
    ids = positions(settings)
    tamper(settings, (DELETE_LINK, (ids[5],)))
    assert (check(settings).position, check(settings).problem) == (ids[5], Problem.UNLINKED)


@pytest.mark.parametrize("how", ["notification ids", "contents"])
def test_reordered_events_are_named_at_the_first_moved_position(city, how: str) -> None:
    settings, _ = city
    ids = positions(settings)
    first, second = ids[40], ids[200]
    if how == "notification ids":
        swap = (
            ("UPDATE city_events SET notification_id = -1 WHERE notification_id = %s", (first,)),
            (
                "UPDATE city_events SET notification_id = %s WHERE notification_id = %s",
                (first, second),
            ),
            ("UPDATE city_events SET notification_id = %s WHERE notification_id = -1", (second,)),
        )
    else:
        swap = (
            (
                # (originator, version) is the primary key: swap what each row says.
                "UPDATE city_events a SET topic = b.topic, state = b.state"
                " FROM city_events b WHERE (a.notification_id, b.notification_id)"
                " IN ((%s, %s), (%s, %s))",
                (first, second, second, first),
            ),
        )
    tamper(settings, *swap)
    result = check(settings)
    assert (result.position, result.problem) == (first, Problem.ALTERED)


def test_a_consistent_rewrite_is_caught_by_the_signed_checkpoints(city) -> None:
    settings, app = city
    key = sign(settings)
    record_events(app, 100, "b")
    sign(settings)
    ids = positions(settings)
    assert check(settings, key).ok
    first_checkpoint, second_checkpoint = ids[299], ids[399]

    tamper(settings, (ALTER, (ids[350],)))
    relink_from(settings, ids[350])

    # The chain alone is fooled: stored links agree with the rewritten events.
    assert check(settings).ok
    result = check(settings, key)
    assert (result.position, result.problem) == (second_checkpoint, Problem.CHECKPOINT)
    assert f"after position {first_checkpoint}" in result.detail
    assert result.checkpoints == 1


def test_a_truncated_log_is_caught_by_a_checkpoint(city) -> None:
    settings, _ = city
    key = sign(settings)
    ids = positions(settings)
    tamper(
        settings,
        ("DELETE FROM city_events WHERE notification_id >= %s", (ids[250],)),
        ("DELETE FROM event_chain WHERE notification_id >= %s", (ids[250],)),
    )
    assert check(settings).ok
    result = check(settings, key)
    assert (result.position, result.problem) == (ids[-1], Problem.TRUNCATED)
    assert f"ends at position {ids[249]}" in result.detail


def test_a_forged_checkpoint_is_refused(city) -> None:
    settings, _ = city
    key = sign(settings)
    forger = Ed25519PrivateKey.generate()
    with psycopg.connect(settings.database_url) as conn:
        checkpoint(conn, forger, settings.audit_checkpoint_file)
    result = check(settings, key)
    assert (result.position, result.problem) == (positions(settings)[-1], Problem.SIGNATURE)


def test_new_events_after_a_checkpoint_still_verify(city) -> None:
    settings, app = city
    key = sign(settings)
    record_events(app, 60, "c")
    result = check(settings, key)
    assert result.ok, str(result)
    assert (result.events, result.checkpoints) == (360, 1)


@pytest.mark.parametrize("table", ["city_events", "event_chain"])
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {} SET notification_id = notification_id + 1000000",
        "DELETE FROM {}",
        "TRUNCATE {}",
    ],
)
def test_the_application_connection_cannot_rewrite_the_log(city, table, statement) -> None:
    settings, _ = city
    with (
        psycopg.connect(settings.database_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"),
    ):
        conn.execute(statement.format(table))
    assert check(settings).events == 300


def test_the_cli_exit_codes(city) -> None:
    settings, _ = city
    runner = CliRunner()
    env = {
        "CITYOPS_DATABASE_URL": settings.database_url,
        "CITYOPS_AUDIT_KEY_FILE": str(settings.audit_key_file),
        "CITYOPS_AUDIT_CHECKPOINT_FILE": str(settings.audit_checkpoint_file),
    }
    ids = positions(settings)

    done = runner.invoke(cli, ["audit", "verify"], env=env)
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"OK: 300 events, head {ids[-1]}")

    done = runner.invoke(cli, ["audit", "checkpoint"], env=env)
    assert done.exit_code == 0, done.output
    assert f"position {ids[-1]}" in done.output
    assert settings.audit_key_file.stat().st_mode & 0o077 == 0
    done = runner.invoke(cli, ["audit", "verify"], env=env)
    assert done.exit_code == 0, done.output
    assert "1 signed checkpoints confirmed" in done.output

    tamper(settings, (ALTER, (ids[9],)))
    done = runner.invoke(cli, ["audit", "verify"], env=env)
    assert done.exit_code == 1
    assert f"TAMPERED at position {ids[9]}: event altered" in done.output
    done = runner.invoke(cli, ["audit", "checkpoint"], env=env)
    assert done.exit_code == 1
    assert len(read_checkpoints(settings.audit_checkpoint_file)) == 1


def test_the_application_role_records_but_cannot_rewrite(city) -> None:
    """A login role in ``cityops_writer`` (the README's deployment) records events through
    the event store (which locks the table), and PostgreSQL itself refuses it the rest."""
    settings, _ = city
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE cityops_writer").format(sql.Identifier(role))
        )
    try:
        parts = urlsplit(settings.database_url)
        as_app = settings.model_copy(
            update={
                "database_url": urlunsplit(
                    parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}")
                )
            }
        )
        app = city_app(as_app, pool_size=1)
        try:
            record_events(app, 20, "as-app")
        finally:
            app.close()
        refused = [
            "UPDATE city_events SET topic = 'x'",
            "DELETE FROM city_events",
            "ALTER TABLE city_events DISABLE TRIGGER city_events_append_only",
            "SET session_replication_role = replica",
            "INSERT INTO event_chain (notification_id, hash) VALUES (999999, '\\x00')",
            "UPDATE event_chain SET hash = '\\x00'",
        ]
        with psycopg.connect(as_app.database_url, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)
            for statement in refused:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute("TRUNCATE city_events")
        assert check(settings).ok
        assert check(settings).events == 320
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

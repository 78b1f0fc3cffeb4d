"""Our pools' check of an idle connection (``infra.pgstore.check_idle_connection``) and
single statements in autocommit (``one_statement``), on the real PostgreSQL."""

from __future__ import annotations

import select
import time
from contextlib import closing
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from infra.pgstore import check_idle_connection, make_pool, one_statement
from infra.settings import Settings
from projections.queries import dict_rows

pytestmark = pytest.mark.integration


def backend_pid(pool: ConnectionPool) -> int:
    return int(dict_rows(pool, "SELECT pg_backend_pid() AS pid", [])[0]["pid"])


def terminate(settings: Settings, pid: int) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def wait_readable(conn: psycopg.Connection[Any], timeout: float = 10.0) -> None:
    ready, _, _ = select.select([conn.pgconn.socket], [], [], timeout)
    assert ready, "the server did not close the connection"


def asked_server(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The connections the full check (a round trip) is run on from now on."""
    asked: list[object] = []
    full = ConnectionPool.check_connection

    def counted(conn: psycopg.Connection[Any]) -> None:
        asked.append(conn)
        full(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counted))
    return asked


def test_a_live_idle_connection_passes_without_asking_the_server(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = asked_server(monkeypatch)
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("SELECT 1").fetchone()
        conn.rollback()
        check_idle_connection(conn)
        assert asked == []


def test_a_connection_the_server_ended_fails_the_check(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = asked_server(monkeypatch)
    with psycopg.connect(settings.database_url) as conn:
        terminate(settings, conn.info.backend_pid)
        wait_readable(conn)
        with pytest.raises(psycopg.OperationalError):
            check_idle_connection(conn)
        assert asked == [conn]


def test_a_closed_connection_fails_the_check(settings: Settings) -> None:
    conn = psycopg.connect(settings.database_url)
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        check_idle_connection(conn)


def test_the_pool_replaces_a_connection_the_server_ended(settings: Settings) -> None:
    with closing(make_pool(settings, min_size=1, max_size=1)) as pool:
        first = backend_pid(pool)
        with pool.connection() as conn:
            pass
        terminate(settings, first)
        wait_readable(conn)
        # No failed request: the check finds it dead and the pool connects anew.
        assert backend_pid(pool) != first


def test_one_statement_commits_and_gives_back_a_connection_in_transaction_mode(
    settings: Settings,
) -> None:
    table = f"one_statement_{int(time.time() * 1000)}"
    with closing(make_pool(settings, min_size=1, max_size=1)) as pool:
        with pool.connection() as conn:
            conn.execute(f"CREATE TABLE {table} (n int)")
        with one_statement(pool) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            # Each statement is its own transaction: nothing is left open.
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pool.connection() as conn:
            assert conn.autocommit is False
        with psycopg.connect(settings.database_url) as other:
            assert other.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
            other.execute(f"DROP TABLE {table}")

"""Where the log is, and how far each projection has read it (lag, catch-up, rebuild)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from projections.cases import CaseProjection
from projections.map import MapProjection

PROJECTIONS: tuple[str, ...] = (MapProjection.name, CaseProjection.name)


def head(conn: psycopg.Connection[Any]) -> int:
    """The last notification id of the city log (0 when empty)."""
    row = conn.execute("SELECT max(notification_id) FROM city_events").fetchone()
    return int((row[0] if row else None) or 0)


def position(conn: psycopg.Connection[Any], name: str) -> int:
    """The last notification id projection ``name`` has recorded (0 before the first)."""
    row = conn.execute(
        sql.SQL("SELECT max(notification_id) FROM {}").format(sql.Identifier(f"{name}_tracking"))
    ).fetchone()
    return int((row[0] if row else None) or 0)


def lags(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Events each projection still has to read."""
    top = head(conn)
    return {name: max(0, top - position(conn, name)) for name in PROJECTIONS}


def wait_for(
    pool: ConnectionPool, target: int, names: Iterable[str] = PROJECTIONS, timeout: float = 10.0
) -> bool:
    """Wait until projections ``names`` have written the log up to ``target``."""
    names = tuple(names)
    deadline = time.monotonic() + timeout
    while True:
        with pool.connection() as conn:
            if all(position(conn, name) >= target for name in names):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)

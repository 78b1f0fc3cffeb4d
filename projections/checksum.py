"""A checksum of each read model: rebuilt, replayed and live views are compared by it."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
from psycopg import sql

# Each view and its key (the rows are hashed in key order).
VIEWS = {
    "map_sensors": "device_id",
    "map_incidents": "incident_id",
    "service_cases": "case_id",
}
# Bookkeeping, not content: the map cache's change number differs between a live view
# and a rebuilt one by construction.
IGNORED = ("change_seq",)


def checksums(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, str]]:
    """Row count and an md5 over every row of each view (as JSON, bookkeeping dropped)."""
    out = {}
    for table, key in VIEWS.items():
        query = sql.SQL("SELECT (to_jsonb(t) - %s::text[])::text FROM {} t ORDER BY {}").format(
            sql.Identifier(table), sql.Identifier(key)
        )
        rows = conn.execute(query, (list(IGNORED),)).fetchall()
        digest = hashlib.md5(  # noqa: S324 - a checksum, not security
            "\n".join(r[0] for r in rows).encode()
        ).hexdigest()
        out[table] = (len(rows), digest)
    return out

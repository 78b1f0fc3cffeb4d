"""PostgreSQL key store of citizens' keys (``core.personal.KeyStore``).

Keys live in ``citizen_keys``, outside the event log. Erasure nulls the key and the
lookup hash in place, so the row records when the citizen was erased and nothing else.
"""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import Connection
from psycopg_pool import ConnectionPool

from infra.pgstore import one_statement


class PgKeyStore:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def find_or_create(self, lookup: str | None) -> tuple[UUID, bytes]:
        key = AESGCM.generate_key(bit_length=256)
        new_id = uuid.uuid4()
        with one_statement(self.pool) as conn:
            if lookup is None:
                conn.execute(
                    "INSERT INTO citizen_keys (citizen_id, key) VALUES (%s, %s)", (new_id, key)
                )
                return new_id, key
            # Two first reports by the same phone at once: one insert wins, both read it.
            row = conn.execute(
                "INSERT INTO citizen_keys (citizen_id, lookup, key) VALUES (%s, %s, %s) "
                "ON CONFLICT (lookup) DO UPDATE SET lookup = EXCLUDED.lookup "
                "RETURNING citizen_id, key",
                (new_id, lookup, key),
            ).fetchone()
        assert row is not None
        assert row[1] is not None
        return row[0], bytes(row[1])

    def ensure(self, citizen_id: UUID) -> bytes | None:
        # After an erasure the citizen gets a new key: what they file from now on is
        # readable again, what was sealed under the destroyed key stays unreadable.
        key = AESGCM.generate_key(bit_length=256)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO citizen_keys (citizen_id, key) VALUES (%s, %s) "
                "ON CONFLICT (citizen_id) DO UPDATE SET key = EXCLUDED.key "
                "WHERE citizen_keys.key IS NULL",
                (citizen_id, key),
            )
            return _stored_key(conn, citizen_id)

    def key(self, citizen_id: UUID) -> bytes | None:
        with one_statement(self.pool) as conn:
            return _stored_key(conn, citizen_id)

    def find(self, lookup: str) -> UUID | None:
        with one_statement(self.pool) as conn:
            row = conn.execute(
                "SELECT citizen_id FROM citizen_keys WHERE lookup = %s AND key IS NOT NULL",
                (lookup,),
            ).fetchone()
        return None if row is None else UUID(str(row[0]))

    def erase(self, citizen_id: UUID) -> bool:
        with one_statement(self.pool) as conn:
            cur = conn.execute(
                "UPDATE citizen_keys SET key = NULL, lookup = NULL, erased_at = now() "
                "WHERE citizen_id = %s AND key IS NOT NULL",
                (citizen_id,),
            )
            return cur.rowcount > 0


def _stored_key(conn: Connection[Any], citizen_id: UUID) -> bytes | None:
    """The citizen's key, None when there is none or it was erased."""
    row = conn.execute(
        "SELECT key FROM citizen_keys WHERE citizen_id = %s", (citizen_id,)
    ).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])

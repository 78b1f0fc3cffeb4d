"""API keys for machines (hotline systems, Open311 apps, gateways), kept as hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

API_KEY_PREFIX = "cok_"
# pg_notify channel: the id of a key just revoked (the API's caches drop it).
REVOKED_CHANNEL = "cityops_api_key_revoked"


@dataclass(frozen=True, slots=True)
class StoredKey:
    name: str
    role: str
    department: str | None
    key_hash: str
    revoked: bool


def hash_secret(secret: str) -> str:
    # The secret is 256 random bits: a plain hash is enough, no password stretching.
    return hashlib.sha256(secret.encode()).hexdigest()


class PgApiKeys:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def create(self, name: str, role: str, department: str | None = None) -> str:
        """Store a new key; return it in full (shown once, never stored)."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO api_keys (key_id, key_hash, name, role, department_code)"
                " VALUES (%s, %s, %s, %s, %s)",
                (key_id, hash_secret(secret), name, role, department),
            )
        return f"{API_KEY_PREFIX}{key_id}_{secret}"

    def lookup(self, key_id: str) -> StoredKey | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT name, role, department_code, key_hash, revoked_at IS NOT NULL"
                " FROM api_keys WHERE key_id = %s",
                (key_id,),
            ).fetchone()
        return None if row is None else StoredKey(*row)

    def revoke(self, name: str) -> int:
        """Revoke ``name``'s keys; running APIs hear of it when this commits."""
        with self.pool.connection() as conn, conn.transaction():
            revoked = conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL"
                " RETURNING key_id",
                (name,),
            ).fetchall()
            for (key_id,) in revoked:
                conn.execute("SELECT pg_notify(%s, %s)", (REVOKED_CHANNEL, key_id))
            return len(revoked)

"""Tamper evidence for the city log: the hash chain recomputed, and signed checkpoints.

The database extends ``event_chain`` as events are recorded (infra/audit.sql). Anyone
able to bypass the append-only triggers could also rewrite the chain, so the chain alone
proves little: ``verify`` recomputes it here from the raw event rows, and compares it
with Ed25519-signed checkpoints of the chain's head kept outside the database. A
consistent rewrite of events and links can then only go unnoticed after the last
checkpoint.

    hash(n) = sha256(hash(n-1) || record(n)),  hash(0) = 32 zero bytes,
    record  = int8(id) || uuid(originator) || int8(version)
              || int4(len(topic)) || topic (UTF-8) || int4(len(state)) || state
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.pq import TransactionStatus

GENESIS = bytes(32)
CHECKPOINT_FORMAT = "cityops-audit-checkpoint/1"

_HEAD = struct.Struct(">q16sqi")
_LEN = struct.Struct(">i")

# Events and links, each in log order by its own index (a join of the two would be
# sorted again on the server: the planner does not know a merge full join's order).
_EVENTS = (
    "SELECT notification_id, originator_id, originator_version, topic, state"
    " FROM city_events ORDER BY notification_id"
)
_LINKS = "SELECT notification_id, hash, prev_id FROM event_chain ORDER BY notification_id"


def record(
    notification_id: int, originator_id: UUID, version: int, topic: str, state: bytes
) -> bytes:
    """The canonical bytes of a stored event (``event_chain_record`` in audit.sql)."""
    name = topic.encode("utf-8")
    return (
        _HEAD.pack(notification_id, originator_id.bytes, version, len(name))
        + name
        + _LEN.pack(len(state))
        + state
    )


def link(previous: bytes, record_bytes: bytes) -> bytes:
    """The chain's next hash."""
    return hashlib.sha256(previous + record_bytes).digest()


# -- keys and signed checkpoints ------------------------------------------------------


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``; made on first use (0600), its public half beside it."""
    try:
        return _private_key(path.read_bytes(), path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two processes starting together must not both write a key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _private_key(path.read_bytes(), path)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_key_path(path).write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key


def public_key_path(key_path: Path) -> Path:
    """Where the public half of the signing key is written: ``<key>.pub``."""
    return key_path.with_name(key_path.name + ".pub")


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A verification key from a PEM file holding the public or the private key."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return _private_key(data, path).public_key()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def _private_key(data: bytes, path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short name of a key pair: the first 16 hex digits of sha256(raw public key)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the chain's hash at ``position`` was ``hash``."""

    position: int
    hash: bytes
    recorded_at: str
    signed_at: str
    key_id: str
    signature: bytes = field(repr=False)

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, canonical JSON."""
        body = {
            "format": CHECKPOINT_FORMAT,
            "position": self.position,
            "hash": self.hash.hex(),
            "recorded_at": self.recorded_at,
            "signed_at": self.signed_at,
            "key_id": self.key_id,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_line(self) -> str:
        body = json.loads(self.signed_bytes())
        body["signature"] = self.signature.hex()
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_line(cls, line: str) -> Checkpoint:
        body = json.loads(line)
        if body.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} line")
        return cls(
            position=int(body["position"]),
            hash=bytes.fromhex(body["hash"]),
            recorded_at=str(body["recorded_at"]),
            signed_at=str(body["signed_at"]),
            key_id=str(body["key_id"]),
            signature=bytes.fromhex(body["signature"]),
        )

    def problem(self, public_key: Ed25519PublicKey) -> str | None:
        """Why this checkpoint cannot be trusted with ``public_key``; None if it can."""
        expected = key_id(public_key)
        if self.key_id != expected:
            return f"signed by key {self.key_id}, expected key {expected}"
        try:
            public_key.verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            return "the signature does not match its content"
        return None


def sign_checkpoint(
    key: Ed25519PrivateKey,
    position: int,
    chain_hash: bytes,
    recorded_at: datetime | str,
    signed_at: datetime | None = None,
) -> Checkpoint:
    """A checkpoint of ``chain_hash`` at ``position``, signed with ``key``."""
    unsigned = Checkpoint(
        position=position,
        hash=chain_hash,
        recorded_at=recorded_at.isoformat() if isinstance(recorded_at, datetime) else recorded_at,
        signed_at=(signed_at or datetime.now(UTC)).isoformat(),
        key_id=key_id(key),
        signature=b"",
    )
    return replace(unsigned, signature=key.sign(unsigned.signed_bytes()))


def append_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Append one JSON line to the checkpoint file, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(checkpoint.to_line() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_checkpoints(path: Path) -> list[Checkpoint]:
    """The checkpoints of a file (none if it does not exist); a bad line is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    checkpoints = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            checkpoints.append(Checkpoint.from_line(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a checkpoint ({exc})") from None
    return checkpoints


def head(conn: psycopg.Connection[Any]) -> tuple[int, bytes, datetime] | None:
    """The stored chain's last link: position, hash, recorded_at (None if empty)."""
    row = conn.execute(
        "SELECT notification_id, hash, recorded_at FROM event_chain"
        " ORDER BY notification_id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else (row[0], bytes(row[1]), row[2])


def checkpoint(conn: psycopg.Connection[Any], key: Ed25519PrivateKey, path: Path) -> Checkpoint:
    """Sign the stored chain's current head and append it to the file at ``path``."""
    last = head(conn)
    if last is None:
        raise ValueError("the city log is empty: nothing to checkpoint")
    signed = sign_checkpoint(key, *last)
    append_checkpoint(path, signed)
    return signed


# -- verification ---------------------------------------------------------------------


class Problem(StrEnum):
    ALTERED = "event altered"
    MISSING = "event missing"
    UNLINKED = "event without a chain link"
    CHECKPOINT = "checkpoint mismatch"
    SIGNATURE = "checkpoint signature invalid"
    TRUNCATED = "log truncated"


@dataclass(frozen=True)
class Verification:
    """What ``verify`` found: OK up to the head, or the first position that is not."""

    events: int  # events whose links were recomputed and matched
    head_position: int  # the last matching position (0: none)
    head_hash: bytes
    checkpoints: int  # signed checkpoints confirmed
    position: int | None = None  # the first position where the history differs
    problem: Problem | None = None
    detail: str = ""
    head_recorded_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        if self.ok:
            return (
                f"OK: {self.events} events, head {self.head_position}"
                f" ({self.head_hash.hex()}), {self.checkpoints} signed checkpoints confirmed"
            )
        return f"TAMPERED at position {self.position}: {self.problem}: {self.detail}"


def verify(
    conn: psycopg.Connection[Any],
    checkpoints: Iterable[Checkpoint] | None = None,
    *,
    public_key: Ed25519PublicKey | None = None,
    batch: int = 10_000,
) -> Verification:
    """Recompute the chain from the stored events, in log order, ``batch`` rows at a time.

    Returns at the first position where the stored history differs from the chain, or
    from a signed checkpoint (whose signature ``public_key`` must confirm).
    """
    pending = sorted(checkpoints or (), key=lambda c: c.position)
    if pending and public_key is None:
        raise ValueError("checking signed checkpoints needs the public key")
    state = _Walk(pending, public_key)
    began_here = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction():
        # One snapshot for both cursors, or an event recorded between their openings
        # would look unlinked (a caller's own transaction keeps its isolation level).
        if began_here:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        with (
            conn.cursor(name="audit_events", binary=True) as events,
            conn.cursor(name="audit_links", binary=True) as links,
        ):
            events.itersize = links.itersize = batch
            events.execute(_EVENTS)
            links.execute(_LINKS)
            for row in _side_by_side(events, links):
                found = state.step(*row)
                if found is not None:
                    return found
        found = state.finish()
        if found is not None:
            return found
        recorded_at = None
        if state.position:
            at = conn.execute(
                "SELECT recorded_at FROM event_chain WHERE notification_id = %s",
                (state.position,),
            ).fetchone()
            recorded_at = None if at is None else at[0]
    return state.result(head_recorded_at=recorded_at)


_Row = tuple[int, UUID | None, int | None, str | None, bytes | None, bytes | None, int | None]


def _side_by_side(
    events: Iterable[tuple[Any, ...]], links: Iterable[tuple[Any, ...]]
) -> Iterator[_Row]:
    """Merge events and links by position: (id, event columns or Nones, the link's hash
    and previous position, or Nones)."""
    ev, ln = iter(events), iter(links)
    e, c = next(ev, None), next(ln, None)
    while e is not None or c is not None:
        if e is not None and (c is None or e[0] < c[0]):
            yield (*e, None, None)
            e = next(ev, None)
        elif c is not None and (e is None or c[0] < e[0]):
            yield (c[0], None, None, None, None, c[1], c[2])
            c = next(ln, None)
        elif e is not None and c is not None:
            yield (*e, c[1], c[2])
            e, c = next(ev, None), next(ln, None)


class _Walk:
    """The chain recomputed row by row, with the checkpoints met along the way."""

    def __init__(self, checkpoints: Sequence[Checkpoint], public_key: Ed25519PublicKey | None):
        self.checkpoints = checkpoints
        self.public_key = public_key
        self.next = 0  # index of the first checkpoint not yet reached
        self.confirmed_at = 0  # position of the last confirmed checkpoint
        self.hash = GENESIS
        self.position = 0
        self.events = 0

    def result(self, **kw: Any) -> Verification:
        return Verification(self.events, self.position, self.hash, self.next, **kw)

    def fail(self, position: int, problem: Problem, detail: str) -> Verification:
        return self.result(position=position, problem=problem, detail=detail)

    def step(
        self,
        notification_id: int,
        originator_id: UUID | None,
        version: int | None,
        topic: str | None,
        state: bytes | None,
        stored: bytes | None,
        previous: int | None = None,
    ) -> Verification | None:
        if self.next < len(self.checkpoints):
            passed = self.checkpoints[self.next]
            if passed.position < notification_id:
                return self.fail(
                    passed.position,
                    Problem.CHECKPOINT,
                    f"the signed position {passed.position} is no longer in the log"
                    f" (removed after position {self.position})",
                )
        if previous is not None and previous > self.position:
            # Each link names the position before it: an event deleted together with its
            # link is named exactly (notification ids may skip numbers legitimately).
            return self.fail(
                previous,
                Problem.MISSING,
                f"deleted with its chain link: the link of {notification_id} names {previous}"
                " as the event before it",
            )
        if originator_id is None or version is None or topic is None or state is None:
            return self.fail(
                notification_id, Problem.MISSING, "its chain link is there, the event is not"
            )
        if stored is None:
            return self.fail(notification_id, Problem.UNLINKED, "the chain has no link for it")
        computed = link(self.hash, record(notification_id, originator_id, version, topic, state))
        if computed != stored:
            detail = "its recomputed hash differs from the stored chain"
            if self.position and notification_id - self.position > 1:
                detail += f" (or events between {self.position} and it were removed)"
            return self.fail(notification_id, Problem.ALTERED, detail)
        self.hash, self.position = computed, notification_id
        self.events += 1
        return self._checkpoints_at(notification_id)

    def _checkpoints_at(self, position: int) -> Verification | None:
        while (
            self.next < len(self.checkpoints) and self.checkpoints[self.next].position == position
        ):
            signed = self.checkpoints[self.next]
            assert self.public_key is not None
            why = signed.problem(self.public_key)
            if why is not None:
                return self.fail(position, Problem.SIGNATURE, why)
            if signed.hash != self.hash:
                return self.fail(
                    position,
                    Problem.CHECKPOINT,
                    f"the chain differs from the hash signed at {signed.signed_at}:"
                    f" history rewritten after position {self.confirmed_at}"
                    " (the last signed position that still matches)",
                )
            self.confirmed_at = position
            self.next += 1
        return None

    def finish(self) -> Verification | None:
        if self.next < len(self.checkpoints):
            signed = self.checkpoints[self.next]
            return self.fail(
                signed.position,
                Problem.TRUNCATED,
                f"the log ends at position {self.position}; a checkpoint signed"
                f" position {signed.position}",
            )
        return None

"""Signed checkpoints of the log's hash chain: keys, lines, signatures (no database)."""

from __future__ import annotations

import hashlib
import stat
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infra.audit_chain import (
    GENESIS,
    Checkpoint,
    append_checkpoint,
    key_id,
    link,
    load_or_create_key,
    load_public_key,
    public_key_path,
    read_checkpoints,
    record,
    sign_checkpoint,
)

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def signed(key: Ed25519PrivateKey, position: int = 42) -> Checkpoint:
    return sign_checkpoint(key, position, hashlib.sha256(b"head").digest(), AT)


def test_record_matches_the_sql_layout() -> None:
    originator = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    got = record(7, originator, 3, "core.x:Ev", b'{"a":1}')
    assert got == (
        (7).to_bytes(8, "big")
        + originator.bytes
        + (3).to_bytes(8, "big")
        + (9).to_bytes(4, "big")
        + b"core.x:Ev"
        + (7).to_bytes(4, "big")
        + b'{"a":1}'
    )
    assert link(GENESIS, got) == hashlib.sha256(bytes(32) + got).digest()


def test_topic_length_counts_utf8_bytes() -> None:
    assert record(1, uuid.UUID(int=0), 1, "é", b"")[32:38] == b"\x00\x00\x00\x02\xc3\xa9"


def test_key_is_made_once_private_and_with_its_public_half(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "key.pem"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key_id(load_or_create_key(path)) == key_id(key)
    assert key_id(load_public_key(public_key_path(path))) == key_id(key)
    assert key_id(load_public_key(path)) == key_id(key)


def test_a_checkpoint_line_round_trips_and_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    cp = signed(key)
    again = Checkpoint.from_line(cp.to_line())
    assert again == cp
    assert again.problem(key.public_key()) is None
    assert again.recorded_at == AT.isoformat()


@pytest.mark.parametrize(
    "change",
    [
        {"position": 43},
        {"hash": hashlib.sha256(b"other").digest()},
        {"recorded_at": "2026-01-02T00:00:00+00:00"},
        {"signed_at": "2020-01-01T00:00:00+00:00"},
    ],
)
def test_an_edited_checkpoint_fails(change: dict[str, object]) -> None:
    key = Ed25519PrivateKey.generate()
    edited = replace(signed(key), **change)  # type: ignore[arg-type]
    assert edited.problem(key.public_key()) == "the signature does not match its content"


def test_a_tampered_signature_fails() -> None:
    key = Ed25519PrivateKey.generate()
    cp = signed(key)
    flipped = bytes([cp.signature[0] ^ 1]) + cp.signature[1:]
    assert replace(cp, signature=flipped).problem(key.public_key()) is not None


def test_a_checkpoint_signed_with_another_key_fails() -> None:
    mine, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    cp = signed(theirs)
    assert "signed by key" in (cp.problem(mine.public_key()) or "")
    # Even when the forger claims the right key id, the signature gives it away.
    forged = replace(cp, key_id=key_id(mine))
    forged = replace(forged, signature=theirs.sign(forged.signed_bytes()))
    assert forged.problem(mine.public_key()) == "the signature does not match its content"


def test_the_checkpoint_file_appends_lines(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "out" / "checkpoints.jsonl"
    assert read_checkpoints(path) == []
    first, second = signed(key, 10), signed(key, 20)
    append_checkpoint(path, first)
    append_checkpoint(path, second)
    assert read_checkpoints(path) == [first, second]
    assert len(path.read_text().splitlines()) == 2


def test_a_malformed_line_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.jsonl"
    append_checkpoint(path, signed(Ed25519PrivateKey.generate()))
    with path.open("a") as f:
        f.write('{"format": "something else"}\n')
    with pytest.raises(ValueError, match=r"checkpoints.jsonl:2"):
        read_checkpoints(path)

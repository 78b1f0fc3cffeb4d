"""The API key cache (pure logic): revocations pushed to it win over look-ups in flight."""

from __future__ import annotations

import pytest

from api.auth import ApiKeyVerifier, Unauthorized
from infra.apikeys import StoredKey, hash_secret

KEY_ID, SECRET = "0123456789ab", "s" * 43
KEY = f"cok_{KEY_ID}_{SECRET}"


class Store:
    """Stored keys, counting look-ups; ``during`` runs inside the next look-up."""

    def __init__(self) -> None:
        self.revoked = False
        self.lookups = 0
        self.during: list[ApiKeyVerifier] = []

    def lookup(self, key_id: str) -> StoredKey | None:
        self.lookups += 1
        row = StoredKey("hotline-a", "gateway", None, hash_secret(SECRET), self.revoked)
        for verifier in self.during:  # a revocation commits while this look-up runs
            self.revoked = True
            verifier.forget(key_id)
        self.during.clear()
        return row


def cached_then_revoked() -> tuple[Store, ApiKeyVerifier]:
    """A verifier that has verified (and cached) ``KEY``, revoked in the store since."""
    store = Store()
    verifier = ApiKeyVerifier(store.lookup, ttl=3600)
    verifier.verify(KEY)
    store.revoked = True
    return store, verifier


def test_a_key_is_looked_up_once_per_ttl() -> None:
    store = Store()
    verifier = ApiKeyVerifier(store.lookup, ttl=3600)
    for _ in range(3):
        assert verifier.verify(KEY).subject == "hotline-a"
    assert store.lookups == 1


def test_forget_makes_the_next_request_look_again() -> None:
    store, verifier = cached_then_revoked()
    verifier.forget(KEY_ID)
    with pytest.raises(Unauthorized, match="revoked"):
        verifier.verify(KEY)
    assert store.lookups == 2


def test_a_look_up_overtaken_by_a_revocation_is_not_cached() -> None:
    store = Store()
    verifier = ApiKeyVerifier(store.lookup, ttl=3600)
    store.during.append(verifier)
    # This look-up read the key before the revocation: it answers with what it read...
    assert verifier.verify(KEY).subject == "hotline-a"
    # ...but does not keep it: the next request sees the revocation.
    with pytest.raises(Unauthorized, match="revoked"):
        verifier.verify(KEY)


def test_forget_all_after_a_reconnect() -> None:
    _, verifier = cached_then_revoked()
    verifier.forget(None)
    with pytest.raises(Unauthorized):
        verifier.verify(KEY)

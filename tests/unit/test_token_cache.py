"""Verified bearer tokens are remembered until they expire (``api.auth.VerifiedTokens``):
the same verdict, an expired token still refused, another secret verifying afresh."""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import SecretStr

from api import auth
from api.auth import Unauthorized, VerifiedTokens, issue_token, verify_token
from infra.settings import Settings


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(auth, "VERIFIED", VerifiedTokens(size=3))
    return Settings(jwt_secret=SecretStr("a-test-secret-of-at-least-32-bytes!!"))


def test_a_token_verified_once_is_answered_from_the_cache(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = issue_token(settings, "alice", "department", department="310101-roads")
    first = verify_token(settings, token)
    assert (first.actor, first.department) == ("department:alice", "310101-roads")

    def no_decoding(*_: object, **__: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(jwt, "decode", no_decoding)
    assert verify_token(settings, token) is first


def test_an_expired_token_is_refused_though_it_was_cached(settings: Settings) -> None:
    token = issue_token(settings, "bob", "dispatcher", ttl_s=1)
    verify_token(settings, token)
    time.sleep(1.1)  # the token's own clock (PyJWT reads the real time)
    with pytest.raises(Unauthorized, match="token expired"):
        verify_token(settings, token)


def test_another_secret_verifies_afresh(settings: Settings) -> None:
    token = issue_token(settings, "carol", "operator")
    verify_token(settings, token)
    other = settings.model_copy(
        update={"jwt_secret": SecretStr("another-secret-of-32-bytes-or-more")}
    )
    with pytest.raises(Unauthorized, match="invalid token"):
        verify_token(other, token)


def test_the_cache_is_bounded(settings: Settings) -> None:
    tokens = [issue_token(settings, f"user-{i}", "operator") for i in range(5)]
    for token in tokens:
        verify_token(settings, token)
    assert len(auth.VERIFIED.entries) <= 3
    assert verify_token(settings, tokens[0]).subject == "user-0"

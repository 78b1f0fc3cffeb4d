"""``api.auth.RoleGate``, the dependency ``require(*roles)`` returns: the caller from a
bearer token or an API key, 401 without (or with another scheme), 403 for another role;
and the OpenAPI document still offers both schemes on every route it guards."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.requests import Request

from api.app import create_app
from api.auth import (
    ApiKeyVerifier,
    Forbidden,
    RoleGate,
    Unauthorized,
    issue_token,
    require,
)
from infra.apikeys import StoredKey, hash_secret
from infra.settings import Settings

SETTINGS = Settings(
    database_url="postgresql://nobody@127.0.0.1:1/none",
    jwt_secret=SecretStr("a-test-secret-of-at-least-32-bytes!!"),
)
KEY = "cok_k1_s3cret"


def request(headers: dict[str, str], query: str = "") -> Request:
    stored = StoredKey(
        name="gateway-7",
        role="gateway",
        department=None,
        key_hash=hash_secret("s3cret"),
        revoked=False,
    )
    verifier = ApiKeyVerifier(lambda key_id: stored if key_id == "k1" else None)
    app = SimpleNamespace(
        state=SimpleNamespace(container=SimpleNamespace(settings=SETTINGS, api_keys=verifier))
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/cases",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "app": app,
    }
    return Request(scope)


def let_through(gate: RoleGate, headers: dict[str, str], query: str = "") -> Any:
    # The API key header is the gate's one dependency: FastAPI passes what it read.
    return asyncio.run(gate(request(headers, query), headers.get("X-API-Key")))


def test_a_bearer_token_of_an_allowed_role_passes() -> None:
    token = issue_token(SETTINGS, "alice", "dispatcher")
    who = let_through(require("operator", "dispatcher"), {"Authorization": f"Bearer {token}"})
    assert who.actor == "dispatcher:alice"


def test_another_role_is_forbidden() -> None:
    token = issue_token(SETTINGS, "carol", "citizen")
    with pytest.raises(Forbidden, match="role citizen may not do this"):
        let_through(require("dispatcher"), {"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic YWxpY2U6cHc="}, {"Authorization": "Bearer"}],
    ids=["none", "another scheme", "no token"],
)
def test_no_bearer_token_and_no_key_is_unauthenticated(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized, match="authentication required"):
        let_through(require("dispatcher"), headers)


def test_an_invalid_token_is_refused() -> None:
    with pytest.raises(Unauthorized, match="invalid token"):
        let_through(require("dispatcher"), {"Authorization": "Bearer not.a.jwt"})


def test_an_api_key_in_the_header_or_the_query_passes() -> None:
    gate = require("gateway")
    assert let_through(gate, {"X-API-Key": KEY}).actor == "gateway:gateway-7"
    assert let_through(gate, {}, f"api_key={KEY}").via == "api_key"
    with pytest.raises(Unauthorized, match="unknown or revoked"):
        let_through(gate, {"X-API-Key": "cok_k1_wrong"})


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(lambda: None, SETTINGS)  # type: ignore[arg-type, return-value]


def test_the_document_offers_both_schemes_where_a_gate_guards(app: FastAPI) -> None:
    doc = app.openapi()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "JWT from `cityops token`",
    }
    assert schemes["APIKeyHeader"]["in"] == "header"
    both = [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert doc["paths"]["/api/v1/cases/{case_id}/resolve"]["post"]["security"] == both
    assert doc["paths"]["/api/v1/cases"]["post"]["security"] == both
    assert doc["paths"]["/api/v1/incidents"]["get"]["security"] == both  # a router's gate
    assert "security" not in doc["paths"]["/healthz"]["get"]

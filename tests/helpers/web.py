"""Tokens and Authorization headers; the API app behind a ``TestClient``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.testclient import TestClient

from api.auth import issue_token
from cityops.bootstrap import api_app
from infra.settings import Settings


def auth_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bearer(
    settings: Settings, role: str = "operator", subject: str | None = None, **kw: str
) -> dict[str, str]:
    """An Authorization header with a token of ``role`` (subject defaults to the role)."""
    return auth_header(issue_token(settings, subject or f"test-{role}", role, **kw))


def dev_token(base: str, role: str, department: str | None = None) -> str:
    """A token from the development sign-in of the server at ``base``."""
    body = {"role": role} if department is None else {"role": role, "department_code": department}
    got = httpx.post(f"{base}/api/v1/auth/dev-token", json=body, timeout=10)
    got.raise_for_status()
    return str(got.json()["access_token"])


@contextmanager
def served(
    settings: Settings, as_role: str | None = None, raise_errors: bool = False
) -> Iterator[TestClient]:
    """The API app on ``settings`` behind a ``TestClient`` (server errors answered as 500
    unless ``raise_errors``); with ``as_role``, every request carries a token of it."""
    # From loopback, as a caller on this machine (the development sign-in answers only there).
    with TestClient(
        api_app(settings), raise_server_exceptions=raise_errors, client=("127.0.0.1", 50000)
    ) as client:
        if as_role is not None:
            client.headers.update(bearer(settings, as_role))
        yield client


@dataclass
class Api:
    """A served app and its settings: GETs as a role."""

    settings: Settings
    client: TestClient

    def get(self, path: str, role: str | None = "operator", **params: Any) -> Any:
        headers = self.headers(role) if role else {}
        return self.client.get(path, params=params, headers=headers)

    def headers(self, role: str) -> dict[str, str]:
        return bearer(self.settings, role)

"""The development sign-in of the operations-center page (POST /api/v1/auth/dev-token):
staff roles, a department's token for a known department only, nothing in production."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from cityops.bootstrap import seed
from infra.settings import Environment, Settings
from tests.helpers.db import fresh_settings
from tests.helpers.web import auth_header, served

pytestmark = pytest.mark.integration

LOGIN = "/api/v1/auth/dev-token"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app in development over a freshly seeded database."""
    data_dir = tmp_path_factory.mktemp("city") / "city"
    with fresh_settings(data_dir, environment=Environment.DEVELOPMENT, dev_login=True) as settings:
        seed(settings)
        with served(settings) as running:
            yield running


def me(client: TestClient, token: str) -> dict[str, Any]:
    got = client.get("/api/v1/auth/me", headers=auth_header(token))
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


def a_department(client: TestClient) -> str:
    """A department the city knows, as the page's picker lists them."""
    operator = client.post(LOGIN, json={"role": "operator"}).json()["access_token"]
    listed = client.get("/api/v1/departments", headers=auth_header(operator))
    assert listed.status_code == 200, listed.text
    return str(listed.json()["departments"][0]["code"])


@pytest.mark.parametrize("role", ["operator", "dispatcher", "auditor"])
def test_staff_roles_sign_in(client: TestClient, role: str) -> None:
    got = client.post(LOGIN, json={"role": role})
    assert got.status_code == 200, got.text
    assert got.json()["department"] is None
    who = me(client, got.json()["access_token"])
    assert (who["role"], who["department"]) == (role, None)


def test_no_body_is_an_operator(client: TestClient) -> None:
    got = client.post(LOGIN)
    assert got.status_code == 200, got.text
    assert me(client, got.json()["access_token"])["role"] == "operator"


def test_a_known_department_gets_a_department_token(client: TestClient) -> None:
    code = a_department(client)
    got = client.post(LOGIN, json={"role": "department", "department_code": code})
    assert got.status_code == 200, got.text
    assert (got.json()["role"], got.json()["department"]) == ("department", code)
    who = me(client, got.json()["access_token"])
    assert (who["role"], who["department"]) == ("department", code)
    # The token works its own queue only.
    auth = auth_header(got.json()["access_token"])
    assert client.get(f"/api/v1/departments/{code}/queue", headers=auth).status_code == 200
    other = client.get("/api/v1/departments/no-such-dept/queue", headers=auth)
    assert other.status_code == 403, other.text


def test_an_unknown_department_is_refused(client: TestClient) -> None:
    got = client.post(LOGIN, json={"role": "department", "department_code": "no-such-dept"})
    assert got.status_code == 422, got.text
    assert "no-such-dept" in got.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"role": "department"},
        {"role": "department", "department_code": ""},
        {"role": "operator", "department_code": "310101-water"},
        {"role": "citizen"},
        {"role": "gateway"},
    ],
)
def test_malformed_logins_are_refused(client: TestClient, body: dict[str, Any]) -> None:
    got = client.post(LOGIN, json=body)
    assert got.status_code == 422, got.text


def test_production_has_no_dev_login(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    container = client.app.state.container  # type: ignore[attr-defined]
    production = Settings(
        environment=Environment.PRODUCTION,
        dev_login=False,
        database_url=container.settings.database_url,
        kafka_bootstrap="kafka.internal:9092",
        mqtt_host="mqtt.internal",
        mqtt_password="p" * 32,
        jwt_secret=SecretStr("j" * 40),
        pii_pepper=SecretStr("q" * 40),
    )
    monkeypatch.setattr(container, "settings", production)
    code = next(iter(container.desk.locator.departments()))
    for body in ({"role": "operator"}, {"role": "department", "department_code": code}):
        got = client.post(LOGIN, json=body)
        assert got.status_code == 404, got.text

"""Fixtures: real services for integration tests, one fresh database and topic set per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityops.services import create_database, drop_database
from infra.settings import Settings

SERVICES = ("CITYOPS_DATABASE_URL", "CITYOPS_KAFKA_BOOTSTRAP", "CITYOPS_MQTT_HOST")


def _services_present() -> bool:
    return all(os.environ.get(k) for k in SERVICES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _services_present():
        return
    if os.environ.get("CITYOPS_REQUIRE_SERVICES"):
        raise pytest.UsageError("CITYOPS_REQUIRE_SERVICES is set but the services are not")
    skip = pytest.mark.skip(reason="no services: run the tests with scripts/test.sh")
    for item in items:
        if "integration" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end over HTTP with every worker running")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def database_url(unique: str) -> Iterator[str]:
    """A fresh database on the test PostgreSQL server, dropped afterwards."""
    base = os.environ["CITYOPS_DATABASE_URL"]
    name = f"t_{unique}"
    yield create_database(base, name)
    drop_database(base, name)


@pytest.fixture
def settings(database_url: str, unique: str, tmp_path: Path) -> Settings:
    """Settings pointing at the real services, isolated by database and topic prefix."""
    return Settings(
        database_url=database_url,
        kafka_topic_prefix=f"t{unique}.",
        mqtt_share_group=f"bridge-{unique}",
        mqtt_client_id=f"bridge-{unique}",
        data_dir=tmp_path / "city",
        sim_sensors=40,
        monitor_silence_check_s=0.5,
    )


def bearer(
    settings: Settings, role: str = "operator", subject: str | None = None, **kw: str
) -> dict[str, str]:
    """An Authorization header with a token of ``role`` (subject defaults to the role)."""
    from api.auth import issue_token

    return {
        "Authorization": f"Bearer {issue_token(settings, subject or f'test-{role}', role, **kw)}"
    }

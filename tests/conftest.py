"""Fixtures: real services for integration tests, one fresh database and topic set per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import Settings
from tests.helpers.db import fresh_database, isolated_settings

SERVICES = ("CITYOPS_DATABASE_URL", "CITYOPS_KAFKA_BOOTSTRAP", "CITYOPS_MQTT_HOST")

# Every test calls the API from one address, far more often than any client should: the
# per-address rate limits are off unless a test turns them on (tests/integration/
# test_wire_security.py does), here and in the processes the tests start.
os.environ.setdefault("CITYOPS_RATE_LIMIT_PUBLIC", "0")
os.environ.setdefault("CITYOPS_RATE_LIMIT_LOGIN", "0")
# The tests' city is the small generated one (6 districts), here and in the processes
# they start, whatever the shell says; a test that wants Shanghai asks for it
# (Settings(city="shanghai"), tests/unit/test_shanghai.py).
os.environ["CITYOPS_CITY"] = "generated"


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


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def database_url(unique: str) -> Iterator[str]:
    """A fresh database on the test PostgreSQL server, dropped afterwards."""
    with fresh_database(f"t_{unique}") as url:
        yield url


@pytest.fixture
def settings(database_url: str, unique: str, tmp_path: Path) -> Settings:
    """Settings pointing at the real services, isolated by database and topic prefix."""
    return isolated_settings(database_url, unique, tmp_path / "city", monitor_silence_check_s=0.5)

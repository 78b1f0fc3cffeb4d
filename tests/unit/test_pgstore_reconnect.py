"""The event store's pool reconnects as ``make_pool`` pools do: a reconnection gives up
after ``RECONNECT_S`` and the next one starts at once; connecting has a timeout.

Nothing connects: the pools are built closed.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.pgstore import (
    CONNECT_TIMEOUT_S,
    RECONNECT_S,
    CityPostgresFactory,
    eventstore_env,
)
from infra.settings import Settings


@pytest.fixture
def factory() -> Any:
    settings = Settings(database_url="postgresql://cityops@db.invalid:5432/cityops")
    made = CityPostgresFactory(eventstore_env(settings, 2))
    try:
        yield made
    finally:
        made.close()


def test_the_event_store_pool_reconnects_promptly(factory: Any) -> None:
    pool = factory.datastore.pool
    assert pool.reconnect_timeout == RECONNECT_S
    assert pool.kwargs["connect_timeout"] == CONNECT_TIMEOUT_S
    checked: list[bool] = []
    pool.check = lambda: checked.append(True)
    # What psycopg_pool calls once a reconnection has given up.
    pool.reconnect_failed()
    assert checked == [True]

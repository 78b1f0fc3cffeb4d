"""Prometheus metrics: the log's head and each projection's position and lag.

Values are read from PostgreSQL at scrape time (a custom collector), so every API
process reports the same figures without shared multiprocess state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool

from api.deps import ContainerDep
from projections.positions import PROJECTIONS, head, position

router = APIRouter(tags=["health"])


class ProjectionCollector(Collector):
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Any]:
        with self.pool.connection() as conn:
            top = head(conn)
            positions = {name: position(conn, name) for name in PROJECTIONS}
        yield GaugeMetricFamily(
            "cityops_log_head", "Last notification id of the city event log", value=top
        )
        pos = GaugeMetricFamily(
            "cityops_projection_position",
            "Last notification id a projection has written",
            labels=["projection"],
        )
        lag = GaugeMetricFamily(
            "cityops_projection_lag_events",
            "Events of the log a projection has still to write",
            labels=["projection"],
        )
        for name, at in positions.items():
            pos.add_metric([name], at)
            lag.add_metric([name], max(0, top - at))
        yield pos
        yield lag


@router.get("/metrics", include_in_schema=False)
def metrics(c: ContainerDep) -> Response:
    """Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProjectionCollector(c.pool))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

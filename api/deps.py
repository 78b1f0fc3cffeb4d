"""Typed dependencies: what routes get from the lifespan's container."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from core.app import CityApp
from core.case.desk import ServiceDesk
from core.incident.desk import IncidentDesk
from infra.settings import Settings
from projections.case_queries import CaseQueries
from projections.queries import ReadModels

if TYPE_CHECKING:
    from api.auth import ApiKeyVerifier
    from api.services import ChangeHub, TelemetryIntake
    from projections.runner import SqlProjection


@dataclass
class Container:
    settings: Settings
    pool: ConnectionPool
    city: CityApp
    read: ReadModels
    hub: ChangeHub
    desk: ServiceDesk
    cases: CaseQueries
    api_keys: ApiKeyVerifier
    incidents: IncidentDesk | None = None
    telemetry: TelemetryIntake | None = None
    probes: dict[str, Callable[[], tuple[bool, str]]] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    # the read models' projections, for rebuilding the city as of an instant
    projections: list[SqlProjection] = field(default_factory=list)


def correlation() -> str:
    """The correlation id of one HTTP command."""
    return f"http:{uuid.uuid4()}"


def container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c


# The dependencies below are async, though they only read the container: FastAPI runs a
# plain ``def`` dependency in the thread pool, a hand-off per request for nothing.


async def container_dep(request: Request) -> Container:
    return container(request)


ContainerDep = Annotated[Container, Depends(container_dep)]


async def read_models(request: Request) -> ReadModels:
    return container(request).read


async def city(request: Request) -> CityApp:
    return container(request).city


async def desk(request: Request) -> ServiceDesk:
    return container(request).desk


async def incident_desk(request: Request) -> IncidentDesk:
    desk = container(request).incidents
    assert desk is not None, "the container has no incident desk"
    return desk


async def case_queries(request: Request) -> CaseQueries:
    return container(request).cases


ReadDep = Annotated[ReadModels, Depends(read_models)]
CityDep = Annotated[CityApp, Depends(city)]
DeskDep = Annotated[ServiceDesk, Depends(desk)]
CasesDep = Annotated[CaseQueries, Depends(case_queries)]
IncidentDeskDep = Annotated[IncidentDesk, Depends(incident_desk)]

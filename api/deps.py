"""Typed dependencies: what routes get from the lifespan's container."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from psycopg_pool import ConnectionPool

from cityops.settings import Settings
from core.app import CityApp
from projections.queries import ReadModels

if TYPE_CHECKING:
    from api.live import ChangeHub


@dataclass
class Container:
    settings: Settings
    pool: ConnectionPool
    city: CityApp
    read: ReadModels
    hub: ChangeHub
    probes: dict[str, Callable[[], tuple[bool, str]]] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)


def container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c


ContainerDep = Annotated[Container, Depends(container)]


def read_models(request: Request) -> ReadModels:
    return container(request).read


def city(request: Request) -> CityApp:
    return container(request).city


ReadDep = Annotated[ReadModels, Depends(read_models)]
CityDep = Annotated[CityApp, Depends(city)]

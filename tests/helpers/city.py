"""The seeded cities several test files build: the service desk over a seeded database,
a flooded place with its incident and linked reports, the cases API of one module."""

from __future__ import annotations

import itertools
import math
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import shapely
from fastapi.testclient import TestClient
from httpx import Response
from psycopg_pool import ConnectionPool

from cityops.bootstrap import (
    city_app,
    city_layers,
    projections,
    run_in_thread,
    run_projector,
    seed,
    service_desk,
)
from core.app import CityApp
from core.case.desk import ServiceDesk
from core.sensor import SensorSpec
from infra.pgstore import make_pool
from infra.settings import Settings
from projections.runner import ProjectionWorker
from tests.helpers.builders import M_PER_DEG, flood_alarm, link_as_brain, offset, prepare, report
from tests.helpers.db import fresh_settings
from tests.helpers.waiting import wait_until
from tests.helpers.web import bearer, served


def city_with(settings: Settings, specs: Iterable[SensorSpec]) -> CityApp:
    """A city app (its tables created) over the schema and topics, ``specs`` registered."""
    app = city_app(settings, pool_size=2, create_tables=True)
    prepare(settings, app, specs)
    return app


@dataclass
class City:
    """The city's app and service desk over a pool."""

    pool: ConnectionPool
    app: CityApp
    desk: ServiceDesk


@contextmanager
def open_city(settings: Settings, pool_size: int = 2) -> Iterator[City]:
    """The app and the service desk on ``settings``; closed afterwards."""
    pool = make_pool(settings, max_size=pool_size)
    app = city_app(settings, pool_size=pool_size)
    try:
        yield City(pool, app, service_desk(settings, app, pool))
    finally:
        app.close()
        pool.close()


def places(settings: Settings, n: int) -> list[tuple[float, float, str]]:
    """``n`` grid-cell centres at least 3 km apart (lon, lat, district)."""
    grid = city_layers(settings).grid
    out: list[tuple[float, float, str]] = []
    for row in grid.itertuples():
        c = row.geometry.centroid
        if all(math.dist((c.x, c.y), (x, y)) * M_PER_DEG > 3_000 for x, y, _ in out):
            out.append((c.x, c.y, str(row.district_code)))
        if len(out) == n:
            return out
    raise AssertionError("the test city is too small")


@dataclass
class FloodedPlace:
    """A water sensor's alarm, its incident, two citizens' reports linked to it by the
    brain's rules, the read models caught up; the API served."""

    city: City
    client: TestClient
    worker: ProjectionWorker
    lon: float
    lat: float
    water: str
    incident: UUID
    cases: list[UUID]


@contextmanager
def flooded_place(
    settings: Settings, device: str, key: str, alarm: Callable[[City, str], UUID] | None = None
) -> Iterator[FloodedPlace]:
    """The seeded city with ``device`` (of the water department) at a grid cell's centre,
    its incident opened by ``alarm(city, device)`` (by default ``flood_alarm``), and
    reports ``<key>0``, ``<key>1`` 60 m apart nearby."""
    seed(settings)
    with open_city(settings) as city:
        lon, lat, _ = places(settings, 1)[0]
        water = city.desk.locator.department_for(lon, lat, "water")
        assert water is not None
        city.app.register_sensors(
            [SensorSpec(device, "water_level", "gw-t", lon, lat, None, None, water)],
            actor="test",
            correlation_id="t",
        )
        incident = alarm(city, device) if alarm else flood_alarm(city.app, device)
        cases = [report(city.desk, f"{key}{i}", *offset(lon, lat, 60 * i, 30)) for i in range(2)]
        worker = ProjectionWorker(city.app, settings.database_url, projections())
        try:
            worker.catch_up()
            link_as_brain(city.app, city.pool, cases)
            worker.catch_up()
            with served(settings, raise_errors=True) as client:
                yield FloodedPlace(city, client, worker, lon, lat, water, incident, cases)
        finally:
            worker.close()


# -- the cases API of one module ----------------------------------------------------------

REQUESTS = "/open311/v2/requests.json"


def _lattice(
    area: Any, step: float = 0.0065, margin: float = 0.0035
) -> Iterator[tuple[float, float]]:
    """Points well inside ``area``, about 600 m apart (more than any duplicate radius)."""
    minx, miny, maxx, maxy = area.bounds
    inner = area.buffer(-margin)
    y = miny + margin
    while y <= maxy - margin:
        x = minx + margin
        while x <= maxx - margin:
            if inner.contains(shapely.Point(x, y)):
                yield round(x, 6), round(y, 6)
            x += step
        y += step


class World:
    """A seeded city behind a ``TestClient``, with its projector running."""

    def __init__(self, settings: Settings, client: TestClient, pool: ConnectionPool) -> None:
        self.settings = settings
        self.client = client
        self.pool = pool
        self.layers = city_layers(settings)
        self.districts = {
            str(d.district_code): d.geometry for d in self.layers.districts.itertuples()
        }
        self.departments = {
            str(j.department_code): str(j.name) for j in self.layers.jurisdictions.itertuples()
        }
        self._points = {code: _lattice(area) for code, area in self.districts.items()}
        self._any_district = itertools.cycle(sorted(self.districts))
        self.projector: tuple[threading.Thread, threading.Event] | None = None

    # -- places and callers

    def point(self, district: str | None = None) -> tuple[float, float]:
        """A fresh (lon, lat) inside ``district`` (any district by default)."""
        return next(self._points[district or next(self._any_district)])

    def centre(self, district: str = "310101") -> tuple[float, float]:
        """A point inside ``district``, for requests that must store nothing."""
        p = self.districts[district].representative_point()
        return round(p.x, 6), round(p.y, 6)

    def headers(
        self, role: str, subject: str | uuid.UUID | None = None, department: str | None = None
    ) -> dict[str, str]:
        kw = {"department": department} if department else {}
        return bearer(self.settings, role, None if subject is None else str(subject), **kw)

    def citizen(self, citizen_id: uuid.UUID) -> dict[str, str]:
        return self.headers("citizen", citizen_id)

    def dept(self, code: str) -> dict[str, str]:
        return self.headers("department", f"staff-{code}", department=code)

    # -- HTTP shortcuts

    def post311(self, fields: dict[str, str], headers: dict[str, str] | None = None) -> Response:
        return self.client.post(REQUESTS, data=fields, headers=headers or {})

    def file(self, fields: dict[str, str], headers: dict[str, str]) -> str:
        """File an Open311 request that must be accepted; its id."""
        response = self.post311(fields, headers)
        assert response.status_code == 201, response.text
        [created] = response.json()
        return str(created["service_request_id"])

    def case(self, case_id: str, role: str = "dispatcher", **kw: Any) -> dict[str, Any]:
        headers = kw.pop("headers", None) or self.headers(role)
        response = self.client.get(f"/api/v1/cases/{case_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def command(
        self, case_id: str, name: str, headers: dict[str, str], body: dict[str, Any] | None = None
    ) -> Response:
        return self.client.post(f"/api/v1/cases/{case_id}/{name}", json=body or {}, headers=headers)

    def public(self, request_id: str) -> dict[str, Any]:
        response = self.client.get(f"/open311/v2/requests/{request_id}.json")
        assert response.status_code == 200, response.text
        [one] = response.json()
        return dict(one)

    def listed(self, **params: Any) -> list[dict[str, Any]]:
        response = self.client.get(REQUESTS, params=params)
        assert response.status_code == 200, response.text
        return list(response.json())

    # -- the database

    def scalar(self, query: str, *params: Any) -> Any:
        with self.pool.connection() as conn:
            row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def cases_in_store(self) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM city_events WHERE topic LIKE %s",
                "%ServiceCase.CaseSubmitted",
            )
        )

    def cases_in_read_model(self) -> int:
        return int(self.scalar("SELECT count(*) FROM service_cases"))

    def caught_up(self) -> bool:
        return bool(
            self.scalar(
                "SELECT coalesce((SELECT max(notification_id) FROM city_events), 0)"
                " <= coalesce((SELECT max(notification_id) FROM cases_tracking), 0)"
            )
        )

    def sync(self) -> None:
        """Wait until the case read model has every recorded event."""
        wait_until(self.caught_up, timeout=20, what="the case projection to catch up")

    # -- the projector

    def start_projector(self) -> None:
        assert self.projector is None
        self.projector = run_in_thread(lambda s: run_projector(self.settings, s), "projector")

    def stop_projector(self) -> None:
        if self.projector is not None:
            thread, stop = self.projector
            stop.set()
            thread.join(15)
            self.projector = None


@contextmanager
def served_city(data_dir: Path, **changes: Any) -> Iterator[World]:
    """A fresh database, seeded; the API app over it and the projector; dropped after.
    ``changes``: settings of the test's own (a categories file, ...)."""
    with fresh_settings(data_dir, **changes) as settings:
        seed(settings)
        pool = make_pool(settings, max_size=2)
        try:
            with served(settings) as client:
                world = World(settings, client, pool)
                world.start_projector()
                try:
                    yield world
                finally:
                    world.stop_projector()
        finally:
            pool.close()

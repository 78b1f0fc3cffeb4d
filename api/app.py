"""FastAPI app factory; the lifespan builds and closes what routes need."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import orjson
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api import (
    audit,
    cases,
    errors,
    health,
    incidents,
    live,
    map,
    metrics,
    ogc,
    open311,
    ops,
    pages,
    replay,
    scorecards,
    security,
    sensors,
    session,
    telemetry,
    tiles,
)
from api.auth import STAFF_READ, require
from api.deps import Container
from infra.settings import Settings

MAX_BODY_BYTES = 64 * 1024


def layer_geojson(gdf: Any, id_column: str) -> dict[str, Any]:
    """A reference layer as a GeoJSON dict with stable feature ids."""
    doc: dict[str, Any] = orjson.loads(gdf.to_json(drop_id=True))
    for feature in doc["features"]:
        feature["id"] = feature["properties"][id_column]
    doc.pop("crs", None)  # RFC 7946: WGS84 is implied
    return doc


# gc.set_threshold for the API processes: young generation, then how many collections of
# each generation before the next older one is collected.
YOUNG_OLD_GC = (20_000, 20, 20)


def create_app(container: Container | Callable[[], Container], settings: Settings) -> FastAPI:
    """The app over ``container``, or over what ``container()`` builds at startup.

    The composition root (``cityops.bootstrap.api_app``) passes a factory, so that each
    server process opens its own pool and connections in its lifespan.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        c = container() if callable(container) else container
        app.state.container = c
        await c.hub.start()
        # What startup built (settings, reference layers, the app) lives as long as the
        # process: moved out of the collector's reach, it is not rescanned in every full
        # collection (those pauses were most of the map's tail latency).
        gc.freeze()
        # A young collection every 20,000 new objects rather than 700: a request's objects
        # are mostly freed by then, so fewer are scanned and passed on to older
        # generations (about 3 % of a case command's CPU in bench/bench_cases.py).
        before = gc.get_threshold()
        gc.set_threshold(*YOUNG_OLD_GC)
        try:
            yield
        finally:
            gc.set_threshold(*before)  # a test's app leaves its process as it found it
            await c.hub.stop()
            tokens = getattr(app.state, "map_tokens", None)
            if tokens is not None:
                await tokens.aclose()
            c.city.close()
            if c.telemetry is not None:
                c.telemetry.producer.close()
            c.pool.close()

    app = FastAPI(
        title="CityOps API",
        version="0.1.0",
        description=(
            "CityOps: service cases (12345 / Open311) and the management network's sensors,"
            " incidents and live map. Authenticate with a bearer token (`cityops token`) or"
            " an API key (`cityops apikey`, header X-API-Key)."
        ),
        lifespan=lifespan,
        # No OpenTelemetry here (the API exports Prometheus metrics at /metrics): off, so
        # FastAPI does not ask on every request whether a provider was configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)

    security.install(app, settings, MAX_BODY_BYTES)

    staff = [Depends(require(*STAFF_READ))]
    # Public: health probes and metrics, the Open311 reads (open311 checks its own POST), the
    # login; the case routes check their own roles. The case routes come first: a request's
    # route is found by trying the routes in order, and the case commands are the busiest.
    # No other route's path overlaps theirs (tests/unit/test_route_order.py).
    for module in (cases, health, metrics, open311, session, telemetry):
        app.include_router(
            module.router, responses=security.documented_limits(settings, module.router.prefix)
        )
    for module in (sensors, incidents, map, live, scorecards, ops):
        app.include_router(module.router, dependencies=staff)
    # Audit routes, the OGC APIs (public reference layers, staff-only live ones) and the
    # pages (each caller's own) check their own roles.
    for module in (audit, replay, ogc, tiles, pages):
        app.include_router(
            module.router, responses=security.documented_limits(settings, module.router.prefix)
        )

    static = resources.files("api").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")))

    return app

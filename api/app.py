"""FastAPI app factory; the lifespan builds and closes what routes need."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import (
    audit,
    cases,
    errors,
    health,
    incidents,
    live,
    map,
    metrics,
    open311,
    ops,
    replay,
    scorecards,
    sensors,
    session,
    telemetry,
)
from api.auth import STAFF_READ, ApiKeyVerifier, require
from api.deps import Container
from api.probes import kafka_probe, tcp_probe
from cityops.settings import Settings

MAX_BODY_BYTES = 64 * 1024


class BodyLimit:
    """413 for bodies over ``max_bytes``: by Content-Length, and counted while streaming.

    Counting matters: a chunked request has no Content-Length to check up front. The
    413 raised while reading reaches the app's error handlers like any HTTP error.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        too_large = f"request body larger than {self.max_bytes} bytes"
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await errors.respond(request, 413, too_large)(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, too_large)
            return message

        await self.app(scope, counting_receive, send)


def layer_geojson(gdf: Any, id_column: str) -> dict[str, Any]:
    """A reference layer as a GeoJSON dict with stable feature ids."""
    doc: dict[str, Any] = orjson.loads(gdf.to_json(drop_id=True))
    for feature in doc["features"]:
        feature["id"] = feature["properties"][id_column]
    doc.pop("crs", None)  # RFC 7946: WGS84 is implied
    return doc


def build_container(settings: Settings) -> Container:
    from api.live import ChangeHub
    from api.telemetry import TelemetryIntake
    from cityops import kafka
    from cityops.apikeys import PgApiKeys
    from cityops.bootstrap import (
        DeviceRegistry,
        city_app,
        city_layers,
        incident_desk,
        service_desk,
    )
    from cityops.pgstore import make_pool
    from projections.case_queries import CaseQueries
    from projections.queries import ReadModels
    from sensors.senml import Limits

    pool = make_pool(settings)
    read = ReadModels(pool)
    layers = city_layers(settings)
    city = city_app(settings, pool_size=settings.db_pool_size)
    case_queries = CaseQueries(pool)
    telemetry = TelemetryIntake(
        kafka.make_producer(settings, linger_ms=0),
        kafka.Topics.of(settings),
        DeviceRegistry(city),
        Limits.from_settings(settings),
    )
    probes = {
        "kafka": kafka_probe(settings.kafka_bootstrap),
        "mqtt": tcp_probe(settings.mqtt_host or "127.0.0.1", settings.mqtt_port),
    }
    api_keys = ApiKeyVerifier(PgApiKeys(pool).lookup)
    return Container(
        settings=settings,
        pool=pool,
        city=city,
        read=read,
        hub=ChangeHub(settings.database_url, read, case_queries, on_key_revoked=api_keys.forget),
        desk=service_desk(settings, city, pool, layers, case_queries),
        cases=case_queries,
        incidents=incident_desk(settings, city),
        api_keys=api_keys,
        telemetry=telemetry,
        probes=probes,
        layers={
            "districts": layer_geojson(layers.districts, "district_code"),
            "grid": layer_geojson(
                layers.grid[["grid_code", "district_code", "geometry"]], "grid_code"
            ),
        },
    )


def create_app(settings: Settings, container: Container | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        c = container or build_container(settings)
        app.state.container = c
        await c.hub.start()
        # What startup built (settings, reference layers, the app) lives as long as the
        # process: moved out of the collector's reach, it is not rescanned in every full
        # collection (those pauses were most of the map's tail latency).
        gc.freeze()
        try:
            yield
        finally:
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
    )
    errors.install(app)

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    staff = [Depends(require(*STAFF_READ))]
    # Public: health probes and metrics, the Open311 reads (open311 checks its own POST), the login.
    for module in (health, metrics, open311, session, cases, telemetry):
        app.include_router(module.router)
    for module in (sensors, incidents, map, live, scorecards, ops):
        app.include_router(module.router, dependencies=staff)
    # Audit routes check their own roles (and record each read).
    for module in (audit, replay):
        app.include_router(module.router)

    static = resources.files("api").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")))

    return app


def app_from_env() -> FastAPI:
    """The app from ``CITYOPS_*`` settings: for ``uvicorn --factory`` with several workers."""
    return create_app(Settings())

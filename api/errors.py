"""Error translation at the HTTP boundary: JSON with a clear message, never a trace.

Open311 routes answer in the GeoReport v2 error format, ``[{"code": ..., "description":
...}]``; the OGC API in OGC's, ``{"code": "NotFound", "description": ...}``; the project's
own API answers ``{"detail": ...}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.case.desk import DuplicateSubmissionError
from core.errors import ConcurrentUpdateError, DomainError, IllegalTransitionError, NotFoundError
from infra.pgstore import DATABASE_UNAVAILABLE, describe

log = logging.getLogger(__name__)

OPEN311_PREFIX = "/open311/"
OGC_PREFIX = "/ogc"


def respond(
    request: Request,
    status: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error response in the format of the API the request went to."""
    if request.url.path.startswith(OPEN311_PREFIX):
        return JSONResponse([{"code": status, "description": detail}], status, headers=headers)
    if request.url.path == OGC_PREFIX or request.url.path.startswith(f"{OGC_PREFIX}/"):
        code = HTTPStatus(status).phrase.title().replace(" ", "")
        return JSONResponse({"code": code, "description": detail}, status, headers=headers)
    return JSONResponse({"detail": detail, **extra}, status, headers=headers)


def status_of(exc: DomainError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, IllegalTransitionError | DuplicateSubmissionError | ConcurrentUpdateError):
        return 409
    return 422


# Seconds a client is told to wait when the database is down (a restart takes a few).
DATABASE_RETRY_AFTER_S = 5
DATABASE_UNAVAILABLE_DETAIL = "database unavailable, retry later"


def install_database_unavailable(app: FastAPI) -> None:
    """503 with Retry-After while the database is down or restarting (psycopg's
    OperationalError, psycopg_pool's PoolTimeout, the event store's own types); the
    pools reconnect by themselves, so the API recovers without a restart."""

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning(
            "%s %s: database unavailable (%s)", request.method, request.url.path, describe(exc)
        )
        return respond(
            request,
            503,
            DATABASE_UNAVAILABLE_DETAIL,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    for kind in DATABASE_UNAVAILABLE:
        app.add_exception_handler(kind, unavailable)


def install(app: FastAPI) -> None:
    install_database_unavailable(app)

    @app.exception_handler(DomainError)
    async def domain(request: Request, exc: DomainError) -> JSONResponse:
        status = status_of(exc)
        if request.url.path.startswith(OPEN311_PREFIX) and status == 422:
            status = 400  # GeoReport v2 reports every bad request as 400
        return respond(request, status, str(exc))

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return respond(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        if request.url.path.startswith(OPEN311_PREFIX):
            text = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in errors
            )
            return respond(request, 400, text or "invalid request")
        return respond(request, 422, "invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return respond(request, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(request, 500, "internal error")

"""The error answers of the OpenAPI document: what a route may answer besides success.

Every error is JSON, in the format of the API the route belongs to (``api.errors``
writes them): the project's own API answers ``{"detail": ...}`` (request validation
adds ``errors``), Open311 ``[{"code", "description"}]`` and the OGC API ``{"code",
"description"}``. A router or a route names the statuses it may answer, e.g.
``APIRouter(responses=errors(401, 403, 422, 503))``; a route's own ``responses=`` adds
to its router's.

The project's own routers name 422 wherever a route takes parameters: FastAPI would
otherwise document its own validation body (``detail`` as a list), which this API does
not send. (Open311 and OGC routes answer request validation with 400; FastAPI still
lists its 422 for them, an answer they never give.)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Responses = dict[int | str, dict[str, Any]]

WHY: dict[int | str, str] = {
    400: "A parameter the route cannot use, or a body that is not text (UTF-8)",
    401: "No credentials, or invalid ones",
    403: "The caller's role, department or ownership does not allow this",
    404: "No such object",
    409: "The object's state does not allow this now, or it changed meanwhile",
    413: "The request body is too large",
    415: "A body of a media type the route does not read",
    422: "The request does not fit the route's parameters or body, or the domain refuses it",
    503: "The database is unavailable: retry after Retry-After seconds",
    "4XX": "Another client error, in the same format",
}


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, query, path or header, then names")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """An error of the project's own API."""

    detail: str = Field(description="what went wrong")
    errors: list[FieldError] | None = Field(
        default=None, description="request validation only: each part of the request at fault"
    )


class GeoReportError(BaseModel):
    """One error of the Open311 GeoReport v2 API (its answers are a list of them)."""

    code: int = Field(description="the HTTP status")
    description: str


class OgcException(BaseModel):
    """An error of the OGC API – Features (an OGC exception)."""

    code: str = Field(description="e.g. InvalidParameterValue, NotFound")
    description: str


def _documented(model: Any, statuses: tuple[int | str, ...]) -> Responses:
    return {status: {"model": model, "description": WHY[status]} for status in statuses}


def errors(*statuses: int) -> Responses:
    """``responses=`` for routes of the project's own API."""
    return _documented(ErrorBody, statuses)


def open311_errors(*statuses: int | str) -> Responses:
    """``responses=`` for Open311 routes."""
    return _documented(list[GeoReportError], statuses)


def ogc_errors(*statuses: int | str) -> Responses:
    """``responses=`` for OGC API routes."""
    return _documented(OgcException, statuses)


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag``, for a 304: RFC 9110's weak comparison
    against any listed tag, or ``*``."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)

"""Telemetry over HTTP for gateways that cannot speak MQTT: the same contract and path.

The body is what the MQTT topic would carry (SenML or the plain object); it is decoded
by the same ``core.sensor.senml.decode`` and forwarded to ``cityops.telemetry`` once Kafka
has acknowledged it (202), or dead-lettered with its reason (422).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from api.auth import Principal, require
from api.concurrency import in_thread
from api.deps import Container, ContainerDep
from api.responses import ErrorBody, errors

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])

_SENML_RECORD = {
    "type": "object",
    "properties": {
        **{key: {"type": "string"} for key in ("bn", "bu", "n", "u")},
        **{key: {"type": "number"} for key in ("bt", "bv", "t", "v")},
        "bver": {"type": "integer"},
    },
}
_PLAIN = {
    "type": "object",
    "required": ["metrics"],
    "properties": {
        "ts": {"type": ["string", "number"], "description": "ISO 8601 or epoch seconds"},
        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
        "units": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
# The route reads the raw bytes (the MQTT payload contract), so FastAPI cannot see its body.
TELEMETRY_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "description": "a SenML pack (RFC 8428) or the plain object",
                "anyOf": [{"type": "array", "items": _SENML_RECORD}, _PLAIN],
            }
        }
    },
}

LOCATION_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "description": "where the device is; stored in WGS-84",
                "type": "object",
                "required": ["lon", "lat"],
                "additionalProperties": False,
                "properties": {
                    "lon": {"type": "number", "minimum": -180, "maximum": 180},
                    "lat": {"type": "number", "minimum": -90, "maximum": 90},
                    "coord_system": {
                        "type": "string",
                        "enum": ["wgs84", "gcj02", "bd09"],
                        "default": "wgs84",
                    },
                    "ts": {"type": ["string", "number"], "description": "ISO 8601 or epoch s"},
                },
            }
        }
    },
}

Gateway = Annotated[Principal, Depends(require("gateway"))]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Awaitable[JSONResponse]])


class Rejected(ErrorBody):
    reason: str | None = Field(
        default=None, description="a rejected payload's reason code (core.sensor.senml)"
    )


def _intake(path: str, body: dict[str, Any]) -> Callable[[Endpoint], Endpoint]:
    """A gateway's POST: ``body`` the MQTT payload it stands for, 202 or 422 with a reason."""
    return router.post(
        path,
        status_code=202,
        openapi_extra={"requestBody": body},
        responses={
            **errors(401, 403, 413, 503),
            422: {
                "model": Rejected,
                "description": "The request does not fit the route, or the payload is rejected",
            },
        },
    )


@_intake("/{device_id}", TELEMETRY_BODY)
async def post_telemetry(
    who: Gateway, c: ContainerDep, device_id: str, request: Request
) -> JSONResponse:
    """One message from a device of the calling gateway (the gateway is the key's name)."""
    return await _accept(c, who, device_id, request, "telemetry")


@_intake("/{device_id}/location", LOCATION_BODY)
async def post_location(
    who: Gateway, c: ContainerDep, device_id: str, request: Request
) -> JSONResponse:
    """Where a device of the calling gateway is, in WGS-84, GCJ-02 or BD-09 (what the MQTT
    topic ``cityops/<gateway>/<device>/location`` carries); answers the WGS-84 position."""
    return await _accept(c, who, device_id, request, "location")


async def _accept(
    c: Container, who: Principal, device_id: str, request: Request, channel: str
) -> JSONResponse:
    if c.telemetry is None:
        return JSONResponse({"detail": "telemetry intake is not configured"}, status_code=503)
    payload = await request.body()
    status, body = await in_thread(c.telemetry.accept, who.subject, device_id, payload, channel)
    return JSONResponse(body, status_code=status)

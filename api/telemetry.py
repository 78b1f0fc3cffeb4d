"""Telemetry over HTTP for gateways that cannot speak MQTT: the same contract and path.

The body is what the MQTT topic would carry (SenML or the plain object); it is decoded
by the same ``core.sensor.senml.decode`` and forwarded to ``cityops.telemetry`` once Kafka
has acknowledged it (202), or dead-lettered with its reason (422).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.auth import Principal, require
from api.deps import ContainerDep

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])

Gateway = Annotated[Principal, Depends(require("gateway"))]


@router.post("/{device_id}", status_code=202)
async def post_telemetry(
    who: Gateway, c: ContainerDep, device_id: str, request: Request
) -> JSONResponse:
    """One message from a device of the calling gateway (the gateway is the key's name)."""
    if c.telemetry is None:
        return JSONResponse({"detail": "telemetry intake is not configured"}, status_code=503)
    payload = await request.body()
    status, body = await run_in_threadpool(c.telemetry.accept, who.subject, device_id, payload)
    return JSONResponse(body, status_code=status)

"""Telemetry over HTTP for gateways that cannot speak MQTT: the same contract and path.

The body is what the MQTT topic would carry (SenML or the plain object); it is decoded
by the same ``core.sensor.senml.decode`` and forwarded to ``cityops.telemetry`` once Kafka
has acknowledged it (202), or dead-lettered with its reason (422).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.auth import Principal, require
from api.deps import ContainerDep
from core.sensor.senml import Limits, RejectedPayload, deadletter_record, decode
from infra.kafka import Topics

router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])

Gateway = Annotated[Principal, Depends(require("gateway"))]


class TelemetryIntake:
    """Decode and forward one gateway message; the producer is the API's own."""

    def __init__(
        self,
        producer: Any,
        topics: Topics,
        gateway_of: Callable[[str], str | None],
        limits: Limits,
    ) -> None:
        self.producer = producer
        self.topics = topics
        self.gateway_of = gateway_of
        self.limits = limits

    def accept(self, gateway_id: str, device_id: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        owner = self.gateway_of(device_id)
        if owner is not None and owner != gateway_id:
            # A gateway speaks for its own devices only.
            return 403, {"detail": f"device {device_id!r} is not a device of {gateway_id}"}
        topic = f"cityops/{gateway_id}/{device_id}/telemetry"
        now = time.time()
        try:
            message = decode(topic, payload, now, self.gateway_of, self.limits)
        except RejectedPayload as rejected:
            record = deadletter_record("http", topic, payload, rejected, now)
            self.producer.send(self.topics.deadletter, key=b"http", value=record).get(timeout=10)
            return 422, {"detail": str(rejected), "reason": rejected.reason_code}
        self.producer.send(
            self.topics.telemetry, key=message.device_id.encode(), value=message.to_json()
        ).get(timeout=10)
        return 202, {"device_id": message.device_id, "readings": len(message.readings)}


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

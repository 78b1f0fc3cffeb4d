"""What the routes use besides the desks, built once per process by the composition root.

- ``ChangeHub``: one LISTEN connection per API process; the map projection's
  ``pg_notify`` changes fan out to every connected browser (``api.live``), and API key
  revocations reach the key cache.
- ``TelemetryIntake``: telemetry over HTTP (``api.telemetry``), decoded by the same
  ``core.sensor.senml.decode`` as MQTT and forwarded to ``cityops.telemetry`` once Kafka
  has acknowledged it, or dead-lettered with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
import psycopg

from api.concurrency import in_thread
from api.presenters import summary
from core.sensor.senml import Limits, RejectedPayload, deadletter_record, decode
from gis.china import to_wgs84_named
from infra.apikeys import REVOKED_CHANNEL
from infra.kafka import Topics
from infra.pgstore import DATABASE_UNAVAILABLE, describe
from projections.case_queries import CaseQueries
from projections.map import NOTIFY_CHANNEL
from projections.queries import ReadModels, feature

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ChangeHub:
    """Fans database notifications out to subscribers' queues (bounded, drop-oldest)."""

    database_url: str = field(repr=False)
    read: ReadModels
    cases: CaseQueries | None = None
    queue_size: int = 1_000
    # Told the id of each API key revoked, and None (forget all) on each (re)connect,
    # when revocations may have been missed.
    on_key_revoked: Callable[[str | None], None] | None = None
    subscribers: set[asyncio.Queue[dict[str, Any]]] = field(init=False, default_factory=set)
    task: asyncio.Task[None] | None = field(init=False, default=None)

    async def start(self) -> None:
        self.task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if self.on_key_revoked is not None:
                        await conn.execute(f"LISTEN {REVOKED_CHANNEL}")
                        self.on_key_revoked(None)
                    async for note in conn.notifies():
                        if note.channel == REVOKED_CHANNEL:
                            if self.on_key_revoked is not None:
                                self.on_key_revoked(note.payload)
                            continue
                        try:
                            change = orjson.loads(note.payload)
                            await self._dispatch(change)
                        except (ValueError, KeyError, TypeError):
                            log.warning("ignoring malformed change notice %r", note.payload)
            except asyncio.CancelledError:
                raise
            except DATABASE_UNAVAILABLE as exc:
                # The database is down or restarting: one line per attempt, no trace.
                log.warning("live listener lost its connection (%s); reconnecting", describe(exc))
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("live listener failed; reconnecting")
                await asyncio.sleep(1.0)

    async def _dispatch(self, change: dict[str, Any]) -> None:
        if not self.subscribers or change.get("layer") is None:
            return
        if change["layer"] == "incidents":
            feature = await in_thread(self.read.incident, UUID(change["id"]))
        elif change["layer"] == "cases":
            feature = (
                None
                if self.cases is None
                else await in_thread(self._case_feature, UUID(change["id"]))
            )
        else:
            feature = await in_thread(self.read.sensor_by_id, UUID(change["sensor_id"]))
        if feature is None:
            return
        message = {"layer": change["layer"], "event": change.get("event"), "feature": feature}
        for queue in list(self.subscribers):
            if queue.full():
                # A slow browser loses the oldest change, never blocks the others.
                queue.get_nowait()
            queue.put_nowait(message)

    def _case_feature(self, case_id: UUID) -> dict[str, Any] | None:
        assert self.cases is not None
        row = self.cases.case(case_id)
        if row is None or row["lon"] is None:
            return None
        return feature({**summary(row), "lon": row["lon"], "lat": row["lat"]}, "case_id")

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.queue_size)
        self.subscribers.add(queue)
        try:
            yield queue
        finally:
            self.subscribers.discard(queue)


@dataclass(eq=False)
class TelemetryIntake:
    """Decode and forward one gateway message; the producer is the API's own."""

    producer: Any
    topics: Topics
    gateway_of: Callable[[str], str | None]
    limits: Limits

    def accept(
        self, gateway_id: str, device_id: str, payload: bytes, channel: str = "telemetry"
    ) -> tuple[int, dict[str, Any]]:
        """Decode ``payload`` as the MQTT topic ``cityops/<gateway>/<device>/<channel>``
        would carry it (``telemetry`` or ``location``), forward or dead-letter it."""
        owner = self.gateway_of(device_id)
        if owner is not None and owner != gateway_id:
            # A gateway speaks for its own devices only.
            return 403, {"detail": f"device {device_id!r} is not a device of {gateway_id}"}
        topic = f"cityops/{gateway_id}/{device_id}/{channel}"
        now = time.time()
        try:
            message = decode(topic, payload, now, self.gateway_of, self.limits, to_wgs84_named)
        except RejectedPayload as rejected:
            record = deadletter_record("http", topic, payload, rejected, now)
            self.producer.send(self.topics.deadletter, key=b"http", value=record).get(timeout=10)
            return 422, {"detail": str(rejected), "reason": rejected.reason_code}
        self.producer.send(
            self.topics.telemetry, key=message.device_id.encode(), value=message.to_json()
        ).get(timeout=10)
        if message.location is not None:
            where = message.location
            return 202, {"device_id": message.device_id, "lon": where.lon, "lat": where.lat}
        return 202, {"device_id": message.device_id, "readings": len(message.readings)}

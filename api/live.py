"""Live push: server-sent events of sensor and incident changes.

The map projection calls ``pg_notify`` in the transaction that changes a row; one
LISTEN connection per API process fans the changes out to every connected browser.
The same connection hears API key revocations and tells the key cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import orjson
import psycopg
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette.sse import EventSourceResponse

from api.cases import summary
from api.deps import ContainerDep
from infra.apikeys import REVOKED_CHANNEL
from projections.case_queries import CaseQueries
from projections.map import NOTIFY_CHANNEL
from projections.queries import ReadModels, feature

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["live"])


class ChangeHub:
    """Fans database notifications out to subscribers' queues (bounded, drop-oldest)."""

    def __init__(
        self,
        database_url: str,
        read: ReadModels,
        cases: CaseQueries | None = None,
        queue_size: int = 1_000,
        on_key_revoked: Callable[[str | None], None] | None = None,
    ) -> None:
        self.cases = cases
        # Told the id of each API key revoked, and None (forget all) on each (re)connect,
        # when revocations may have been missed.
        self.on_key_revoked = on_key_revoked
        self.database_url = database_url
        self.read = read
        self.queue_size = queue_size
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.task: asyncio.Task[None] | None = None

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
            except Exception:
                log.exception("live listener lost its connection; reconnecting")
                await asyncio.sleep(1.0)

    async def _dispatch(self, change: dict[str, Any]) -> None:
        if not self.subscribers or change.get("layer") is None:
            return
        if change["layer"] == "incidents":
            feature = await run_in_threadpool(self.read.incident, UUID(change["id"]))
        elif change["layer"] == "cases":
            feature = (
                None
                if self.cases is None
                else await run_in_threadpool(self._case_feature, UUID(change["id"]))
            )
        else:
            feature = await run_in_threadpool(self.read.sensor_by_id, UUID(change["sensor_id"]))
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


@router.get("/live")
async def live(request: Request, c: ContainerDep) -> EventSourceResponse:
    """Server-sent events: ``change`` messages with the layer and the current feature."""

    async def stream() -> AsyncIterator[dict[str, str]]:
        async with c.hub.subscribe() as queue:
            yield {"event": "hello", "data": "{}"}
            while not await request.is_disconnected():
                try:
                    message = await asyncio.wait_for(queue.get(), timeout=15.0)
                except TimeoutError:
                    continue
                yield {"event": "change", "data": orjson.dumps(message).decode()}

    return EventSourceResponse(stream(), ping=15)

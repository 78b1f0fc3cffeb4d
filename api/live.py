"""Live push: server-sent events of sensor and incident changes.

The map projection calls ``pg_notify`` in the transaction that changes a row; one
LISTEN connection per API process fans the changes out to every connected browser.
The same connection hears API key revocations and tells the key cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from api.deps import ContainerDep

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["live"])


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

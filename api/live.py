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
from fastapi import APIRouter, Request, Response
from sse_starlette.sse import EventSourceResponse

from api.deps import ContainerDep
from api.responses import errors

log = logging.getLogger(__name__)
# Staff only: the app includes the router behind the staff roles (401, 403).
router = APIRouter(prefix="/api/v1", tags=["live"], responses=errors(401, 403, 503))


@router.get(
    "/live",
    # The answer is an event stream, not JSON (the class only shapes the document).
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "itemSchema": {
                        "type": "object",
                        "required": ["event", "data"],
                        "properties": {
                            "event": {"enum": ["hello", "change"]},
                            "data": {"type": "string", "contentMediaType": "application/json"},
                        },
                    }
                }
            },
            "description": "server-sent events: one hello, then change events",
        }
    },
)
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

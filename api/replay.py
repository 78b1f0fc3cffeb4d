"""Time travel: the city's map as of any instant, and the changes in a window,
computed from the log (``projections.replay``).

Open to auditors and the operations center; each successful read is recorded in the
city log (``core.audit.record_read``) like the other audit reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse

from api.audit_reads import record_audit_read
from api.auth import Principal, require
from api.deps import ContainerDep, correlation
from api.responses import errors
from projections import replay

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=errors(401, 403, 422, 503))

Reader = Annotated[Principal, Depends(require("auditor", "operator"))]
DEFAULT_PAGE = 10_000


def _bad(exc: replay.ReplayError) -> HTTPException:
    return HTTPException(422, str(exc))


@router.get("/city", summary="The city's map as of an instant or a log position")
def city_as_of(
    c: ContainerDep,
    who: Reader,
    request: Request,
    at: Annotated[datetime | None, Query(description="ISO 8601 instant with a zone")] = None,
    position: Annotated[int | None, Query(description="a log position instead of at")] = None,
) -> Response:
    """Incidents open, sensors with their state, open cases and grid load, as they were:
    ``{"position", "recorded_at", "at", "checkpoint", "replayed_events", "layers":
    {"incidents", "sensors", "cases", "grid"}}``, each layer a GeoJSON FeatureCollection."""
    if (at is None) == (position is None):
        raise HTTPException(422, "give exactly one of at (an instant) or position")
    with c.pool.connection() as conn:
        try:
            where = (
                replay.at_instant(conn, at)
                if at is not None
                else replay.at_position(conn, position)  # type: ignore[arg-type]
            )
            conn.commit()
        except replay.ReplayError as exc:
            raise _bad(exc) from None
        doc = replay.city_at(
            conn, c.city.mapper, c.projections, where, grid=c.layers.get("grid"), requested=at
        )
    record_audit_read(c, who, request, correlation())
    return Response(doc, media_type="application/json")


@router.get(
    "/city/changes",
    summary="The events of a window, streamed as NDJSON",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "description": "a window line, one event line per event, an end line",
        }
    },
)
def city_changes(
    c: ContainerDep,
    who: Reader,
    request: Request,
    start: Annotated[datetime | None, Query(alias="from", description="instant, exclusive")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="instant, inclusive")] = None,
    from_position: int | None = None,
    to_position: int | None = None,
    after: Annotated[int | None, Query(description="cursor: the last position received")] = None,
    limit: Annotated[int, Query(description=f"events per page, at most {replay.MAX_PAGE}")] = (
        DEFAULT_PAGE
    ),
) -> StreamingResponse:
    """The window (from, to] as NDJSON: a ``window`` header line, one ``event`` line per
    event (personal data dropped), an ``end`` line whose ``next_after`` is the cursor of
    the next page (null when the window is done)."""
    if (start is None) == (from_position is None) or (end is None) == (to_position is None):
        raise HTTPException(422, "give from (or from_position) and to (or to_position)")
    with c.pool.connection() as conn:
        try:
            lo = (
                replay.at_instant(conn, start, strict=False)
                if start is not None
                else replay.at_position(conn, from_position)
                if from_position
                else replay.Position(0, None)
            )
            hi = (
                replay.at_instant(conn, end)
                if end is not None
                else replay.at_position(conn, to_position)  # type: ignore[arg-type]
            )
            window = replay.Window.check(lo, hi, after, limit, replay.MAX_WINDOW)
        except replay.ReplayError as exc:
            raise _bad(exc) from None
        finally:
            conn.rollback()
    record_audit_read(c, who, request, correlation())

    def lines() -> Iterator[bytes]:
        with c.pool.connection() as conn:
            yield from replay.changes(conn, window)

    return StreamingResponse(lines(), media_type="application/x-ndjson")

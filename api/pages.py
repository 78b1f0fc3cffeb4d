"""The notification center: the caller's pages, and acknowledging one.

A page is in-app the moment the pager records it; this router reads the pages view
(``projections.pages``, kept by the pager) and records acknowledgements on the
``Escalation`` aggregate (``core.paging.desk``): acknowledging any page of an escalation
stops it for everyone. Roles: ``api.permissions.PAGE_READERS`` and
``PAGE_ACKNOWLEDGERS``; a person acknowledges their own pages only.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from api.auth import Principal, require
from api.concurrency import in_thread
from api.deps import ContainerDep, correlation
from api.permissions import PAGE_ACKNOWLEDGERS, PAGE_READERS, authorize_page
from api.responses import errors
from core.commands import CommandContext
from core.paging.desk import PagerDesk
from core.paging.policy import load_paging_policy
from projections.pages import PageQueries

router = APIRouter(prefix="/api/v1", tags=["pages"], responses=errors(401, 403, 422, 503))


def _desk(request: Request) -> PagerDesk:
    """The paging desk over the app's city log (built once per app)."""
    desk: PagerDesk | None = getattr(request.app.state, "pager_desk", None)
    if desk is None:
        c = request.app.state.container
        desk = PagerDesk(c.city, load_paging_policy(c.settings.paging_policy_file))
        request.app.state.pager_desk = desk
    return desk


def _page(row: dict[str, Any]) -> dict[str, Any]:
    """A page as the API shows it: times as RFC 3339 text, ids as text."""
    return {
        key: value.isoformat() if hasattr(value, "isoformat") else value
        for key, value in {
            **row,
            "page_id": str(row["page_id"]),
            "escalation_id": str(row["escalation_id"]),
        }.items()
    }


@router.get("/me/pages")
def my_pages(
    who: Annotated[Principal, Depends(require(*PAGE_READERS))],
    c: ContainerDep,
    open_only: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """The caller's pages, newest first (``open_only``: of escalations still open)."""
    rows = PageQueries(c.pool).pages_of(who.actor, open_only=open_only, limit=limit)
    return {"person": who.actor, "pages": [_page(r) for r in rows]}


@router.post("/pages/{page_id}/acknowledge", responses=errors(404, 409))
async def acknowledge_page(
    who: Annotated[Principal, Depends(require(*PAGE_ACKNOWLEDGERS))],
    c: ContainerDep,
    desk: Annotated[PagerDesk, Depends(_desk)],
    page_id: uuid.UUID,
) -> dict[str, Any]:
    """Acknowledge one of your pages: its escalation stops paging anyone (409 once ended)."""
    row = await in_thread(PageQueries(c.pool).page, page_id)
    if row is None:
        raise HTTPException(404, f"unknown page {page_id}")
    authorize_page(who, row["person"])
    escalation = await in_thread(
        desk.acknowledge,
        row["escalation_id"],
        str(page_id),
        CommandContext(who.actor, correlation()),
    )
    return {
        "page_id": str(page_id),
        "escalation_id": str(escalation.id),
        "status": escalation.status,
        "acknowledged_by": escalation.acknowledged_by,
    }

"""Time travel (issue 5): the city's map as of any instant, and the changes in a window,
computed from the log."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])

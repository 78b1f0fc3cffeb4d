"""Audit reads (issue 5): each aggregate's history, its state at a version or instant, and
an incident's causal trace. Read-only; every read is itself recorded."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])

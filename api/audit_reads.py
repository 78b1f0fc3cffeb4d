"""Every read of the audit trail is itself recorded in the city log (实时留痕)."""

from __future__ import annotations

from fastapi import Request

from api.auth import Principal
from api.deps import Container
from core.audit import record_read


def record_audit_read(
    c: Container, who: Principal, request: Request, correlation_id: str
) -> dict[str, str]:
    """Record this audit read in the city log (chained like every event); the answer
    names the record."""
    read = record_read(
        c.city,
        reader=who.subject,
        role=who.role,
        path=request.url.path,
        query=request.url.query,
        actor=who.actor,
        correlation_id=correlation_id,
    )
    return {"id": str(read.id), "correlation_id": correlation_id}

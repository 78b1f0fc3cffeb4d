"""Who am I, and the development login of the operations-center page."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from api.auth import PrincipalDep, issue_token
from api.deps import ContainerDep
from cityops.settings import Environment

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class DevLogin(BaseModel):
    role: Literal["operator", "dispatcher", "auditor"] = "operator"


@router.get("/me")
def me(who: PrincipalDep) -> dict[str, Any]:
    """The caller as the API sees them."""
    return {
        "subject": who.subject,
        "role": who.role,
        "department": who.department,
        "via": who.via,
        "actor": who.actor,
    }


@router.post("/dev-token")
def dev_token(c: ContainerDep, body: DevLogin | None = None) -> dict[str, Any]:
    """Development only: a staff token without a login, for the demo's page."""
    settings = c.settings
    if settings.environment is not Environment.DEVELOPMENT or not settings.dev_login:
        raise HTTPException(404, "not found")
    role = (body or DevLogin()).role
    return {
        "access_token": issue_token(settings, f"demo-{role}", role),
        "token_type": "bearer",
        "role": role,
        "expires_in": settings.token_ttl_s,
    }

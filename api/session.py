"""Who am I, and the development login of the operations-center page."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict
from typing import Any, Literal, Self

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field, model_validator

from api.auth import PrincipalDep, issue_token
from api.deps import ContainerDep
from api.responses import errors
from infra.settings import Environment

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class DevLogin(BaseModel):
    role: Literal["operator", "dispatcher", "department", "auditor"] = "operator"
    department_code: str | None = Field(
        default=None, min_length=1, max_length=64, description="the department's code"
    )

    @model_validator(mode="after")
    def _department_with_its_code(self) -> Self:
        if (self.role == "department") != (self.department_code is not None):
            raise ValueError("department_code goes with the department role, and only with it")
        return self


@router.get("/me", responses=errors(401, 503))
def me(who: PrincipalDep) -> dict[str, Any]:
    """The caller as the API sees them."""
    return {**asdict(who), "actor": who.actor}


def from_loopback(request: Request) -> bool:
    """Whether the caller is on this machine (the peer's address; behind a proxy, the
    address uvicorn's ``--forwarded-allow-ips`` lets it read from the proxy's headers)."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.post("/dev-token", responses=errors(400, 404, 413, 422))
def dev_token(c: ContainerDep, request: Request, body: DevLogin | None = None) -> dict[str, Any]:
    """Development only, from this machine only: a staff token without a login, for the
    demo's page. Anywhere else the route does not exist (404)."""
    settings = c.settings
    if settings.environment is not Environment.DEVELOPMENT or not settings.dev_login:
        raise HTTPException(404, "not found")
    if not from_loopback(request):
        raise HTTPException(404, "not found")
    login = body or DevLogin()
    code = login.department_code
    # The same departments cases and incidents are dispatched to.
    if code is not None and code not in c.desk.locator.departments():
        raise HTTPException(422, f"unknown department {code!r}")
    subject = f"demo-{login.role}" if code is None else f"demo-{code}"
    return {
        "access_token": issue_token(settings, subject, login.role, department=code),
        "token_type": "bearer",
        "role": login.role,
        "department": code,
        "expires_in": settings.token_ttl_s,
    }

"""Liveness and readiness."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ContainerDep
from projections.positions import lags

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "A dependency does not answer: the same checks, ready false",
        }
    },
)
def readyz(c: ContainerDep) -> JSONResponse:
    """Each dependency answers: PostgreSQL, Kafka, MQTT, and each projection's lag."""
    checks: dict[str, Any] = {}
    ok = True
    t0 = time.perf_counter()
    try:
        with c.pool.connection() as conn:
            conn.execute("SELECT 1")
            lag = lags(conn)
        checks["postgres"] = {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1)}
        for name, events in lag.items():
            checks[f"projection_{name}"] = {"ok": True, "lag_events": events}
    except Exception as exc:  # a readiness probe reports, it does not raise
        ok = False
        checks["postgres"] = {"ok": False, "error": type(exc).__name__}
    for name, probe in c.probes.items():
        good, detail = probe()
        ok = ok and good
        checks[name] = {"ok": good, "detail": detail}
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

"""Liveness and readiness."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from psycopg import sql

from api.deps import ContainerDep

router = APIRouter(tags=["health"])


PROJECTIONS = ("map", "cases")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(c: ContainerDep) -> JSONResponse:
    """Each dependency answers: PostgreSQL, Kafka, MQTT, and each projection's lag."""
    checks: dict[str, Any] = {}
    ok = True
    t0 = time.perf_counter()
    try:
        with c.pool.connection() as conn:
            conn.execute("SELECT 1")
            head = conn.execute("SELECT max(notification_id) FROM city_events").fetchone()
            seen = {
                name: conn.execute(
                    sql.SQL("SELECT max(notification_id) FROM {}").format(
                        sql.Identifier(f"{name}_tracking")
                    )
                ).fetchone()
                for name in PROJECTIONS
            }
        last = (head[0] if head else None) or 0
        checks["postgres"] = {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1)}
        for name, pos in seen.items():
            lag = max(0, last - ((pos[0] if pos else None) or 0))
            checks[f"projection_{name}"] = {"ok": True, "lag_events": lag}
    except Exception as exc:  # a readiness probe reports, it does not raise
        ok = False
        checks["postgres"] = {"ok": False, "error": type(exc).__name__}
    for name, probe in c.probes.items():
        good, detail = probe()
        ok = ok and good
        checks[name] = {"ok": good, "detail": detail}
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

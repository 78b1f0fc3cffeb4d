"""`cityops demo` from nothing: embedded services, every worker, incidents within a minute."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cityops.services import free_port
from tests.helpers.waiting import poll
from tests.helpers.web import auth_header
from tests.helpers.workers import cityops, stop_session, wait_http_ready

pytestmark = pytest.mark.e2e


def test_demo_shows_incidents_within_a_minute(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    port = free_port()
    proc = cityops(
        "demo",
        "--port",
        str(port),
        "--kafka-port",
        str(free_port()),
        "--mqtt-port",
        str(free_port()),
        "--state-dir",
        str(tmp_path / "demo"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def output() -> str:
        return proc.stdout.read().decode()  # type: ignore[union-attr]

    try:
        wait_http_ready(base, proc, 60, output=output)  # seeding: embedded PostgreSQL, the city
        ready_at = time.monotonic()

        def since_ready(seconds: float) -> float:
            """What is left of ``seconds`` after the demo was ready."""
            return seconds - (time.monotonic() - ready_at)

        # The demo runs in development: the page's sign-in hands out an operator token.
        login = httpx.post(f"{base}/api/v1/auth/dev-token", timeout=5)
        assert login.status_code == 200, login.text
        auth = auth_header(login.json()["access_token"])
        assert httpx.get(f"{base}/api/v1/incidents", timeout=5).status_code == 401

        def listed(path: str, key: str, **params: str) -> list:
            got = httpx.get(f"{base}/api/v1/{path}", headers=auth, params=params, timeout=10)
            return list(got.json()[key])

        incidents = poll(lambda: listed("incidents", "features"), bool, since_ready(60), interval=2)
        assert incidents, "no incident within a minute of the demo being ready"
        # Citizens file cases (Open311 and the hotline topic) through the same pipeline.
        cases = poll(lambda: listed("cases", "cases"), bool, since_ready(90), interval=2)
        assert cases, "no service case within 90 s of the demo being ready"
        assert {c["channel"] for c in cases} <= {"open311", "hotline"}
        assert {f["properties"]["category"] for f in incidents} >= {"flooding"}

        # The urban brain links the citizens' flooding reports to the flooded sensors.
        def most_linked() -> int:
            features = listed("incidents", "features", status="open")
            return max((f["properties"]["linked_cases"] for f in features), default=0)

        linked = poll(most_linked, bool, since_ready(150), interval=3)
        assert linked, "no citizen report linked to an incident within 150 s of ready"
        page = httpx.get(base + "/", timeout=5)
        assert page.status_code == 200
        assert "CityOps" in page.text
    finally:
        stop_session(proc, 60, signal.SIGINT)
    # The simulated devices said where they are (in GCJ-02) and the bridge took every
    # message: the demo's gateways send nothing the contract refuses.
    log = output()
    assert "rejected MQTT message" not in log, log[-3_000:]
    # Ctrl-C stopped every child: nothing of this demo still listens.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/healthz", timeout=2)

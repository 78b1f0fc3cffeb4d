"""`cityops demo` from nothing: embedded services, every worker, incidents within a minute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cityops.services import free_port

pytestmark = pytest.mark.e2e


def test_demo_shows_incidents_within_a_minute(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cityops",
            "demo",
            "--port",
            str(port),
            "--kafka-port",
            str(free_port()),
            "--mqtt-port",
            str(free_port()),
            "--state-dir",
            str(tmp_path / "demo"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # seeding: embedded PostgreSQL, city generation
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            time.sleep(1)
        ready_at = time.monotonic()
        # The demo runs in development: the page's sign-in hands out an operator token.
        login = httpx.post(f"{base}/api/v1/auth/dev-token", timeout=5)
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assert httpx.get(f"{base}/api/v1/incidents", timeout=5).status_code == 401
        incidents: list = []
        while time.monotonic() - ready_at < 60 and not incidents:
            time.sleep(2)
            got = httpx.get(f"{base}/api/v1/incidents", headers=auth, timeout=5)
            incidents = got.json()["features"]
        assert incidents, "no incident within a minute of the demo being ready"
        # Citizens file cases (Open311 and the hotline topic) through the same pipeline.
        cases: list = []
        while time.monotonic() - ready_at < 90 and not cases:
            got = httpx.get(f"{base}/api/v1/cases", headers=auth, timeout=5)
            cases = got.json()["cases"]
            time.sleep(0 if cases else 2)
        assert cases, "no service case within 90 s of the demo being ready"
        assert {c["channel"] for c in cases} <= {"open311", "hotline"}
        assert {f["properties"]["category"] for f in incidents} >= {"flooding"}
        # The urban brain links the citizens' flooding reports to the flooded sensors.
        linked = 0
        while time.monotonic() - ready_at < 150 and not linked:
            got = httpx.get(
                f"{base}/api/v1/incidents", headers=auth, params={"status": "open"}, timeout=10
            )
            linked = max(
                (f["properties"]["linked_cases"] for f in got.json()["features"]), default=0
            )
            time.sleep(0 if linked else 3)
        assert linked, "no citizen report linked to an incident within 150 s of ready"
        page = httpx.get(base + "/", timeout=5)
        assert page.status_code == 200
        assert "CityOps" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    # Ctrl-C stopped every child: nothing of this demo still listens.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/healthz", timeout=2)

"""The operations center's live stack for browser tests and screenshots.

``demo_stack`` runs ``cityops demo`` as a subprocess against the running services (a
fresh database, its own topic prefix and MQTT share group), so every worker is real and
the browser talks to the API exactly as a user's would. ``map_stack`` serves only the
API over a database filled with map rows (bench/bench_map.py ``fill``), for the
frame-time measurement with 10,000 sensors and 5,000 incidents.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cityops.services import free_port
from infra.settings import Settings
from tests.helpers.db import fresh_database
from tests.helpers.workers import CITYOPS, api_server, http_process

SERVICES = ("CITYOPS_DATABASE_URL", "CITYOPS_KAFKA_BOOTSTRAP", "CITYOPS_MQTT_HOST")
CHROMIUM = os.environ.get("CITYOPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]


def missing_requirements() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not all(os.environ.get(k) for k in SERVICES):
        return "no services: run the tests with scripts/test.sh"
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian package chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@dataclass(frozen=True)
class Stack:
    base: str
    env: dict[str, str]
    state_dir: Path

    @property
    def database_url(self) -> str:
        return self.env["CITYOPS_DATABASE_URL"]

    @property
    def settings(self) -> Settings:
        """The settings the stack's processes read from ``env``."""
        prefix = "CITYOPS_"
        return Settings(
            **{
                k.removeprefix(prefix).lower(): v
                for k, v in self.env.items()
                if k.startswith(prefix)
            }
        )


def _env(run: str, url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CITYOPS_DATABASE_URL": url,
            "CITYOPS_KAFKA_TOPIC_PREFIX": f"web{run}.",
            "CITYOPS_MQTT_SHARE_GROUP": f"bridge-web{run}",
            "CITYOPS_MQTT_CLIENT_ID": f"bridge-web{run}",
            "CITYOPS_DATA_DIR": str(state_dir / "city"),
            "CITYOPS_ENVIRONMENT": "development",
            "CITYOPS_DEV_LOGIN": "true",
            "CITYOPS_LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    env.pop("CITYOPS_ADMIN_DATABASE_URL", None)
    return env


@contextmanager
def demo_stack(
    state_dir: Path,
    *,
    simulator: bool = False,
    rate: float = 20.0,
    sensors: int = 400,
    **extra_env: str,
) -> Iterator[Stack]:
    """``cityops demo`` on the running services and a fresh database, until exit;
    ``extra_env``: more CITYOPS_* settings for it."""
    run = uuid.uuid4().hex[:8]
    with fresh_database(f"web_{run}") as url:
        state_dir.mkdir(parents=True, exist_ok=True)
        env = _env(run, url, state_dir, CITYOPS_SIM_SENSORS=str(sensors), **extra_env)
        port = free_port()
        argv = [
            *CITYOPS,
            "demo",
            "--port",
            str(port),
            "--simulator" if simulator else "--no-simulator",
            "--rate",
            str(rate),
            "--state-dir",
            str(state_dir),
        ]
        log = state_dir / "demo.log"
        demo = http_process(argv, port, env, log, timeout=120, stop=signal.SIGINT, stop_timeout=40)
        with demo as base:
            yield Stack(base, env, state_dir)


@contextmanager
def map_stack(state_dir: Path, *, sensors: int, incidents: int) -> Iterator[Stack]:
    """The API alone over ``sensors`` map sensors and ``incidents`` open incidents."""
    from bench.bench_map import fill

    run = uuid.uuid4().hex[:8]
    with fresh_database(f"webmap_{run}") as url:
        state_dir.mkdir(parents=True, exist_ok=True)
        env = _env(run, url, state_dir)
        try:
            settings = Settings(
                database_url=url, data_dir=state_dir / "city", kafka_topic_prefix=f"web{run}."
            )
            fill(settings, sensors, incidents)
            # Only the API runs (no brokers' workers): alive is enough.
            with api_server(
                env, state_dir / "api.log", "--log-level", "warning", "--no-access-log"
            ) as base:
                yield Stack(base, env, state_dir)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)

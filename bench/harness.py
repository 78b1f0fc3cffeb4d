"""What the benchmarks share: the services, a database of their own, the API under uvicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack

import httpx

from cityops.services import create_database, drop_database, free_port, throwaway_services
from infra.settings import Settings

# The generated demo city the benchmarks share (generated once, then reused).
BENCH_CITY = "var/bench-city"


def services(stack: ExitStack) -> str:
    """The URL of the PostgreSQL server: ``CITYOPS_DATABASE_URL``'s, or that of throwaway
    services (PostgreSQL, Kafka, MQTT) started now and stopped when ``stack`` closes."""
    if not os.environ.get("CITYOPS_DATABASE_URL"):
        os.environ.update(stack.enter_context(throwaway_services("cityops-bench-")))
    return os.environ["CITYOPS_DATABASE_URL"]


def database(stack: ExitStack, name: str, *, keep: bool = False) -> str:
    """A new database ``name`` on the services' server, its URL; dropped when ``stack``
    closes (after what was entered into it later, the API among them) unless ``keep``."""
    server = services(stack)
    url = create_database(server, name)
    if not keep:
        stack.callback(drop_database, server, name)
    return url


def bench_settings(database_url: str, **env: str) -> Settings:
    """Settings on ``database_url`` and the bench city, warnings only, ``env`` besides; set
    in this process's environment, so that the processes it starts read them too."""
    os.environ.update(
        {
            "CITYOPS_DATABASE_URL": database_url,
            "CITYOPS_DATA_DIR": BENCH_CITY,
            "CITYOPS_LOG_LEVEL": "WARNING",
            **env,
        }
    )
    return Settings()


def fresh_settings(
    stack: ExitStack, database_prefix: str, topic_prefix: str = "", **env: str
) -> Settings:
    """``bench_settings`` on a new database ``<database_prefix>_<run>`` (dropped when
    ``stack`` closes), topics prefixed ``<topic_prefix><run>.`` when a prefix is given."""
    run = uuid.uuid4().hex[:8]
    if topic_prefix:
        env = {"CITYOPS_KAFKA_TOPIC_PREFIX": f"{topic_prefix}{run}.", **env}
    return bench_settings(database(stack, f"{database_prefix}_{run}"), **env)


def start_api(
    stack: ExitStack, workers: int, factory: str = "cityops.bootstrap:app_from_env"
) -> tuple[subprocess.Popen[bytes], str]:
    """The API under uvicorn with ``workers`` processes on the environment's settings, and
    its base URL once it answers (60 s at most); stopped when ``stack`` closes."""
    port = free_port()
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=dict(os.environ),
        start_new_session=True,  # its own process group, workers included
    )
    stack.callback(stop_process, api)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    return api, base


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM; if uvicorn has not stopped in 30 s, SIGKILL its whole process group."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

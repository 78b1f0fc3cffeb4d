"""``cityops demo``: start what is not given from outside, seed, then run every process.

Processes are supervised by honcho: their output is multiplexed with a name prefix, and
Ctrl-C (or any child exiting) stops them all; then the embedded services stop.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from honcho.manager import Manager
from psycopg import sql

from cityops.cli import command_line
from cityops.services import (
    free_port,
    running,
    start_embedded_postgres,
    start_kafka,
    start_mqtt,
)
from infra.settings import Settings


def _reset_kafka_positions(settings: Settings) -> None:
    """The embedded broker keeps its log in memory: a new one starts every topic at 0.

    Positions recorded against the previous broker would skip the new messages, so they
    are dropped. Nothing recorded in PostgreSQL is lost or repeated by this.
    """
    from infra.pgstore import make_pool

    pool = make_pool(settings, max_size=1)
    try:
        with pool.connection() as conn, conn.transaction():
            conn.execute("DELETE FROM telemetry_positions")
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE application_name LIKE %s").format(
                    sql.Identifier("city_tracking")
                ),
                ("%|cityops.%",),
            )
    finally:
        pool.close()


APP_ROLE = "cityops_app"


def _app_role_url(owner_url: str, role: str = APP_ROLE) -> str:
    """Make ``role`` a login member of ``cityops_writer`` (idempotent); return its URL.

    The embedded server trusts local connections, so the role has no password.
    """
    with psycopg.connect(owner_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT cityops_writer TO {}").format(sql.Identifier(role)))
    parts = urlsplit(owner_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}@{host}"))


def run_demo(
    settings: Settings,
    *,
    port: int,
    simulator: bool,
    rate: float,
    state_dir: Path,
    kafka_port: int,
    mqtt_port: int,
    scenario: str | None = None,
) -> int:
    from cityops.bootstrap import seed
    from simulations.city import ensure_city
    from simulations.library import get_entry
    from simulations.staff import demo_time_files

    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    with running([]) as services:
        overrides: dict[str, str] = {}
        embedded_db = not settings.database_url
        if embedded_db:
            services.append(start_embedded_postgres(state_dir / "pg"))
            os.environ.pop("CITYOPS_ADMIN_DATABASE_URL", None)  # its superuser owns all
        fresh_broker = not settings.kafka_bootstrap
        if fresh_broker:
            services.append(start_kafka(logs, kafka_port or free_port()))
        if not settings.mqtt_host:
            # Every simulated gateway logs in as itself, so the broker needs the city's
            # gateway ids: the city first (seed below loads it as it is).
            os.environ.setdefault("CITYOPS_DATA_DIR", str(state_dir / "city"))
            gateways = ensure_city(Settings()).sensors["gateway_id"].unique()
            services.append(start_mqtt(logs, mqtt_port or free_port(), gateways=gateways))
        for svc in services:
            overrides.update(svc.env)
        overrides.setdefault("CITYOPS_DATA_DIR", str(state_dir / "city"))
        if simulator and not (settings.categories_file or settings.correlation_file):
            # Deadlines in minutes, for the simulated staff (README, "Simulated staff").
            overrides.update(
                demo_time_files(settings, state_dir / "time-limits", settings.demo_time_scale)
            )
        overrides["CITYOPS_API_PORT"] = str(port)
        overrides["CITYOPS_SIM_RATE"] = str(rate)
        if scenario:  # the gateway and citizen simulators play it together
            overrides["CITYOPS_SIM_SCENARIO"] = scenario
        os.environ.update(overrides)
        effective = Settings()
        result = seed(effective)
        if fresh_broker:
            _reset_kafka_positions(effective)
        owner = ""
        if embedded_db:
            # Seeded as the superuser (the owner); the processes run as a login role in
            # cityops_writer, which cannot rewrite the log (README, "Database roles").
            owner = f"    schema owner     {effective.database_url}\n"
            os.environ["CITYOPS_DATABASE_URL"] = _app_role_url(effective.database_url)
            effective = Settings()
        played = get_entry(effective.sim_scenario)
        print(
            "\nCityOps demo\n"
            f"  operations center  http://{effective.api_host}:{effective.api_port}/\n"
            f"  API docs           http://{effective.api_host}:{effective.api_port}/docs\n"
            f"  PostgreSQL         {effective.database_url}\n"
            f"{owner}"
            f"  Kafka              {effective.kafka_bootstrap}\n"
            f"  MQTT               {effective.mqtt_host}:{effective.mqtt_port}"
            f" (MQTT {'5' if effective.mqtt_protocol == 5 else '3.1.1'})\n"
            f"  city               {effective.data_dir} ({result['sensors']} sensors)\n"
            f"  scenario           {effective.sim_scenario}: {played.title_en} {played.title_zh}\n"
            f"  logs               {logs}\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        manager = Manager()
        env = dict(os.environ)
        procs = [
            "api",
            "projector",
            "telemetry",
            "bridge",
            "intake",
            "sla",
            "relay",
            "brain",
            "notifier",
            "pager",
        ]
        if simulator:
            procs += ["simulate", "citizens", "staff"]
        for name in procs:
            manager.add_process(name, command_line(name), env=env)
        manager.loop()
        return int(manager.returncode or 0)

"""The ``cityops`` command: the demo, and each worker alone against external services."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from cityops.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None


def _logging() -> None:
    logging.basicConfig(
        level=os.environ.get("CITYOPS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kafka", "pgserver", "pyogrio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_until_signal(worker: Callable[[threading.Event], None]) -> None:
    """Run a worker in the foreground; SIGTERM/SIGINT stop it cleanly."""
    stop = threading.Event()

    def _stop(*_: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker(stop)


@app.command()
def seed() -> None:
    """Create schemas and topics, generate or load the city, register its sensors."""
    from cityops.bootstrap import seed as do_seed

    _logging()
    result = do_seed(_settings())
    typer.echo(f"seeded: {result}")


@app.command()
def writer(group: str = "telemetry-writer") -> None:
    """Telemetry writer: Kafka -> readings table."""
    from cityops.bootstrap import run_writer

    _logging()
    settings = _settings()
    _run_until_signal(lambda stop: run_writer(settings, stop, group_id=group))


@app.command()
def monitor(group: str = "sensor-monitor") -> None:
    """Sensor monitor: Kafka -> rules -> Sensor and Incident events."""
    from cityops.bootstrap import run_monitor

    _logging()
    settings = _settings()
    _run_until_signal(lambda stop: run_monitor(settings, stop, group_id=group))


@app.command()
def bridge(client_id: Annotated[str | None, typer.Option()] = None) -> None:
    """MQTT -> Kafka bridge (MQTT v5 shared subscription)."""
    from cityops.bootstrap import run_bridge

    _logging()
    settings = _settings()
    _run_until_signal(lambda stop: run_bridge(settings, stop, client_id=client_id))


@app.command()
def projector(rebuild: bool = False) -> None:
    """Map projection: event store -> read models (``--rebuild`` replays from zero)."""
    from cityops.bootstrap import run_projector

    _logging()
    settings = _settings()
    _run_until_signal(lambda stop: run_projector(settings, stop, rebuild=rebuild))


@app.command()
def simulate(
    rate: Annotated[float | None, typer.Option(help="messages per second")] = None,
    duration: Annotated[float | None, typer.Option(help="seconds; default: forever")] = None,
    scenario: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Gateway simulator: the demo city's sensors publishing SenML over MQTT."""
    from cityops.bootstrap import run_simulator

    _logging()
    settings = _settings()
    _run_until_signal(
        lambda stop: run_simulator(settings, stop, rate=rate, duration=duration, scenario=scenario)
    )


@app.command()
def api() -> None:
    """The HTTP API and the operations-center page."""
    import uvicorn

    from api.app import create_app

    _logging()
    settings = _settings()
    uvicorn.run(
        create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning"
    )


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="HTTP port of the operations center")] = 8000,
    simulator: Annotated[bool, typer.Option(help="run the gateway simulator")] = True,
    rate: Annotated[float, typer.Option(help="simulated messages per second")] = 200.0,
    state_dir: Annotated[Path, typer.Option(help="where the demo keeps its data")] = Path(
        "var/demo"
    ),
    kafka_port: Annotated[int, typer.Option(help="embedded Kafka-protocol broker port")] = 9092,
    mqtt_port: Annotated[int, typer.Option(help="embedded MQTT broker port")] = 1883,
) -> None:
    """Everything on embedded defaults: brokers, PostgreSQL, workers, simulator, API.

    External services instead: set CITYOPS_DATABASE_URL, CITYOPS_KAFKA_BOOTSTRAP or
    CITYOPS_MQTT_HOST and the demo uses them rather than starting its own.
    """
    from cityops.demo import run_demo

    _logging()
    settings = _settings()
    sys.exit(
        run_demo(
            settings,
            port=port,
            simulator=simulator,
            rate=rate,
            state_dir=state_dir,
            kafka_port=kafka_port,
            mqtt_port=mqtt_port,
        )
    )


def command_line(*args: str) -> str:
    """The shell command that runs ``cityops ARGS`` with this interpreter."""
    return shlex.join([sys.executable, "-m", "cityops", *args])

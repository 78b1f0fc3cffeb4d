"""The ``cityops`` command: the demo, and each worker alone against external services."""

from __future__ import annotations

import inspect
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cityops.cli import audit as audit_cli
from cityops.cli import replay as replay_cli
from infra.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.add_typer(audit_cli.app, name="audit")
app.add_typer(replay_cli.app, name="replay")


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


@dataclass(frozen=True)
class _Option:
    """A worker command's one option: its parameter and the runner's keyword for it."""

    name: str
    annotation: Any
    default: object
    keyword: str


# The worker commands, in the order ``--help`` lists them: each runs
# ``cityops.bootstrap.run_<name>(settings, stop, ...)`` in the foreground until a signal.
_WORKERS: tuple[tuple[str, str, _Option | None], ...] = (
    (
        "writer",
        "Telemetry writer: Kafka -> readings table.",
        _Option("group", str, "telemetry-writer", "group_id"),
    ),
    (
        "monitor",
        "Sensor monitor: Kafka -> rules -> Sensor and Incident events.",
        _Option("group", str, "sensor-monitor", "group_id"),
    ),
    (
        "telemetry",
        "Writer and monitor on one Kafka consumer: each record fetched and parsed once.",
        _Option("group", str, "telemetry", "group_id"),
    ),
    (
        "bridge",
        "MQTT -> Kafka bridge (MQTT v5 shared subscription).",
        _Option("client_id", Annotated[str | None, typer.Option()], None, "client_id"),
    ),
    (
        "projector",
        "Map projection: event store -> read models (``--rebuild`` replays from zero).",
        _Option("rebuild", bool, False, "rebuild"),
    ),
    (
        "intake",
        "Case intake: Kafka cityops.cases.inbound (hotline systems) -> service cases.",
        _Option("group", str, "case-intake", "group_id"),
    ),
    (
        "relay",
        "Domain-events relay: every recorded event to Kafka cityops.domain-events, once.",
        None,
    ),
    (
        "brain",
        "Urban brain: correlate citizen reports with sensor incidents (one per problem).",
        None,
    ),
    (
        "notifier",
        "Tell citizens their case was resolved (CITYOPS_NOTIFY_BACKEND: log or smtp).",
        None,
    ),
    ("sla", "SLA clock: due-soon and overdue marks on cases; escalation of late incidents.", None),
    (
        "pager",
        "Escalation and paging: who is paged when (CITYOPS_PAGING_POLICY_FILE), then delivered.",
        None,
    ),
    (
        "maintain",
        "TimescaleDB's policies (compression, retention, aggregate refreshes), run when due.",
        None,
    ),
)


def _add_worker_command(name: str, doc: str, option: _Option | None) -> None:
    def command(**given: object) -> None:
        import cityops.bootstrap

        run = getattr(cityops.bootstrap, f"run_{name}")
        _logging()
        settings = _settings()
        options = {} if option is None else {option.keyword: given[option.name]}
        _run_until_signal(lambda stop: run(settings, stop, **options))

    params = (
        []
        if option is None
        else [
            inspect.Parameter(
                option.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=option.default,
                annotation=option.annotation,
            )
        ]
    )
    # typer reads the command's options from its signature.
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__doc__ = doc
    app.command(name)(command)


for _name, _doc, _option in _WORKERS:
    _add_worker_command(_name, _doc, _option)


@app.command()
def token(
    role: Annotated[
        str, typer.Option(help="operator, dispatcher, department, auditor, gateway, citizen")
    ],
    subject: Annotated[
        str | None, typer.Option(help="who (user name; citizens: see --phone)")
    ] = None,
    department: Annotated[
        str | None, typer.Option(help="department code (role department)")
    ] = None,
    phone: Annotated[str | None, typer.Option(help="citizen: find or create by phone")] = None,
    ttl: Annotated[int | None, typer.Option(help="seconds of validity")] = None,
) -> None:
    """Print a signed bearer token (JWT) for a person."""
    from api.auth import issue_token

    settings = _settings()
    if role == "citizen" and subject is None:
        if phone is None:
            raise typer.BadParameter("a citizen token needs --phone (or a citizen id as --subject)")
        subject = str(_citizen_id(settings, phone))
    if subject is None:
        raise typer.BadParameter("--subject is required")
    try:
        typer.echo(issue_token(settings, subject, role, department, ttl))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _citizen_id(settings: Settings, phone: str) -> object:
    from cityops.bootstrap import personal_data
    from core.personal import Contact
    from infra.pgstore import make_pool

    pool = make_pool(settings, max_size=1)
    try:
        personal = personal_data(settings, pool)
        return personal.keys.find_or_create(personal.lookup_of(Contact.parse(phone=phone)))[0]
    finally:
        pool.close()


@app.command()
def apikey(
    name: Annotated[str, typer.Option(help="the machine, e.g. hotline-12345 or gw-0001")],
    role: Annotated[str, typer.Option(help="gateway, operator, citizen (an Open311 app), ...")],
    department: Annotated[str | None, typer.Option()] = None,
    revoke: Annotated[bool, typer.Option(help="revoke every key of this name instead")] = False,
) -> None:
    """Create (or revoke) an API key for a machine; the key is printed once."""
    from api.auth import ROLES
    from infra.apikeys import PgApiKeys
    from infra.pgstore import make_pool

    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}")
    pool = make_pool(_settings(), max_size=1)
    try:
        keys = PgApiKeys(pool)
        if revoke:
            typer.echo(f"revoked {keys.revoke(name)} key(s) of {name}")
        else:
            typer.echo(keys.create(name, role, department))
    finally:
        pool.close()


@app.command("erase-citizen")
def erase_citizen(
    phone: Annotated[str | None, typer.Option()] = None,
    citizen_id: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Erase one citizen's personal data (PIPL): their cases then read [erased]."""
    import uuid

    from cityops.bootstrap import city_app, service_desk
    from infra.pgstore import make_pool
    from projections.case_queries import CaseQueries

    settings = _settings()
    pool = make_pool(settings, max_size=2)
    city = city_app(settings, pool_size=2)
    try:
        desk = service_desk(settings, city, pool)
        if citizen_id is not None:
            found: uuid.UUID | None = uuid.UUID(citizen_id)
        elif phone is not None:
            found = desk.personal.citizen_for(phone=phone)
        else:
            raise typer.BadParameter("give --phone or --citizen-id")
        if found is None:
            typer.echo("no such citizen (or already erased)")
            raise typer.Exit(1)
        noted = desk.erase_citizen(
            found, CaseQueries(pool).case_ids_of_citizen, "operator:cli", f"cli:{uuid.uuid4()}"
        )
        typer.echo(f"erased citizen {found}; noted on {noted} case(s)")
    finally:
        city.close()
        pool.close()


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
def citizens(
    duration: Annotated[float | None, typer.Option(help="seconds; default: forever")] = None,
) -> None:
    """Citizen simulator: cases over Open311 (HTTP) and the hotline topic (Kafka)."""
    from cityops.bootstrap import run_citizens

    _logging()
    settings = _settings()
    _run_until_signal(lambda stop: run_citizens(settings, stop, duration=duration))


@app.command()
def staff(
    duration: Annotated[float | None, typer.Option(help="seconds; default: forever")] = None,
) -> None:
    """Simulated staff: dispatchers, departments, inspectors and revisit calls over HTTP."""
    from cityops.bootstrap import run_staff

    _logging()
    settings = _settings()
    _run_until_signal(lambda stop: run_staff(settings, stop, duration=duration))


@app.command()
def api() -> None:
    """The HTTP API and the operations-center page."""
    import uvicorn

    from cityops.bootstrap import api_app

    _logging()
    settings = _settings()
    uvicorn.run(
        api_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning"
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
    scenario: Annotated[
        str | None, typer.Option(help="scenario to play (see --list-scenarios)")
    ] = None,
    list_scenarios: Annotated[
        bool, typer.Option("--list-scenarios", help="list the scenarios and exit")
    ] = False,
) -> None:
    """Everything on embedded defaults: brokers, PostgreSQL, workers, simulator, API.

    External services instead: set CITYOPS_DATABASE_URL, CITYOPS_KAFKA_BOOTSTRAP or
    CITYOPS_MQTT_HOST and the demo uses them rather than starting its own.
    """
    from cityops.cli.demo import run_demo
    from simulations.library import get_entry, scenario_table

    if list_scenarios:
        typer.echo(scenario_table())
        raise typer.Exit()
    if scenario is not None:
        try:
            get_entry(scenario)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--scenario") from None
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
            scenario=scenario,
        )
    )


def command_line(*args: str) -> str:
    """The shell command that runs ``cityops ARGS`` with this interpreter."""
    return shlex.join([sys.executable, "-m", "cityops", *args])

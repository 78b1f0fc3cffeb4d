"""Rule backtesting over PostgreSQL: load a window read-only, replay it (``core.backtest.rules``).

One read-only REPEATABLE READ transaction sees one snapshot of the readings and the
city log; nothing is written anywhere. Readings and the log's events stream through
server-side cursors, so a long window does not have to fit in memory (the scratch
cases, incidents and sensors rebuilt for the correlation rules do).

The sensor rules' window is by reading time; the correlation rules' window is by the
time the log recorded the triggering case or incident (``event_chain.recorded_at``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from core.app import CityApp
from core.backtest.rules import (
    AlarmEvent,
    BacktestReport,
    CorrelationOutcome,
    CorrelationReplay,
    ReplayStats,
    StoredReading,
    compare_episodes,
    initial_states,
    live_episodes,
    replay_rules,
)
from core.brain.correlation import SYSTEM_BRAIN, CorrelationPolicy, PolicyError, load_policy
from core.case import ServiceCase
from core.incident import Incident
from core.sensor import Sensor
from core.sensor.rules import RulesError, RuleSet, load_rules
from gis.crs import distance_m

MAX_WINDOW = timedelta(days=31)

REGISTERED = get_topic(Sensor.Registered)  # type: ignore[attr-defined]
ALARM_TOPICS = {
    get_topic(Sensor.AlarmRaised): "raised",  # type: ignore[attr-defined]
    get_topic(Sensor.AlarmSeverityChanged): "severity_changed",  # type: ignore[attr-defined]
    get_topic(Sensor.AlarmCleared): "cleared",  # type: ignore[attr-defined]
}
INCIDENT_OPENED = get_topic(Incident.Opened)  # type: ignore[attr-defined]
# The aggregates the correlation asks about, and the events the brain records.
AGGREGATE_TOPICS = [f"{get_topic(cls)}.%" for cls in (ServiceCase, Incident, Sensor)]
DECISION_TOPICS = [
    get_topic(e)
    for e in (
        Incident.Opened,  # type: ignore[attr-defined]
        Incident.CaseLinked,  # type: ignore[attr-defined]
        Incident.ConfirmedByReports,  # type: ignore[attr-defined]
        Incident.MergedInto,  # type: ignore[attr-defined]
        ServiceCase.LinkedToIncident,  # type: ignore[attr-defined]
        ServiceCase.SensorsChecked,  # type: ignore[attr-defined]
    )
]


class BacktestError(ValueError):
    """The backtest cannot run as asked (bad window, unreadable or invalid rules)."""


@dataclass(frozen=True, slots=True)
class BacktestRequest:
    start: datetime
    end: datetime
    rules: Path | None = None  # default: the packaged core/sensor/rules.yaml
    correlation: Path | None = None  # default: the packaged core/brain/correlation.yaml


def check_window(start: datetime, end: datetime, now: datetime | None = None) -> None:
    """Refuse a window the backtest cannot or should not run over."""
    now = now or datetime.now(UTC)
    if start.tzinfo is None or end.tzinfo is None:
        raise BacktestError("--from and --to need a time zone (e.g. 2025-11-21T08:00:00Z)")
    if start >= end:
        raise BacktestError(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
    if start > now:
        raise BacktestError(f"--from ({start.isoformat()}) is in the future")
    if end - start > MAX_WINDOW:
        raise BacktestError(f"the window is longer than {MAX_WINDOW.days} days; split it")


def _state(raw: Any) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(bytes(raw))
    return data


def _sensor_types(conn: psycopg.Connection[Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(device id -> sensor type, sensor aggregate id -> device id) from registrations."""
    types: dict[str, str] = {}
    devices: dict[str, str] = {}
    for originator, raw in conn.execute(
        "SELECT originator_id, state FROM city_events WHERE topic = %s", [REGISTERED]
    ):
        state = _state(raw)
        types[state["device_id"]] = state["sensor_type"]
        devices[str(originator)] = state["device_id"]
    return types, devices


def _alarm_events(
    conn: psycopg.Connection[Any], devices: dict[str, str], end: float
) -> list[AlarmEvent]:
    out = []
    for originator, topic, raw in conn.execute(
        "SELECT originator_id, topic, state FROM city_events WHERE topic = ANY(%s)"
        " AND (convert_from(state, 'UTF8')::jsonb ->> 'reading_ts')::float8 < %s"
        " ORDER BY notification_id",
        [list(ALARM_TOPICS), end],
    ):
        state = _state(raw)
        out.append(
            AlarmEvent(
                kind=ALARM_TOPICS[topic],
                device_id=devices.get(str(originator), str(originator)),
                rule_id=state["rule_id"],
                rule_version=int(state["rule_version"]),
                severity=state.get("severity"),
                value=float(state["value"]),
                reading_ts=float(state["reading_ts"]),
                incident_id=state.get("incident_id"),
            )
        )
    return out


def _opened(conn: psycopg.Connection[Any], incident_hexes: list[str]) -> set[str]:
    """Which of these incidents (hex ids) were opened as sensor alarms."""
    if not incident_hexes:
        return set()
    rows = conn.execute(
        "SELECT originator_id FROM city_events WHERE topic = %s AND originator_id = ANY(%s)"
        " AND convert_from(state, 'UTF8')::jsonb ->> 'kind' = 'sensor_alarm'",
        [INCIDENT_OPENED, incident_hexes],
    ).fetchall()
    return {r[0].hex for r in rows}


def _readings(
    conn: psycopg.Connection[Any], start: datetime, end: datetime
) -> Iterator[StoredReading]:
    with conn.cursor(name="backtest_readings") as cur:
        cur.itersize = 5_000
        cur.execute(
            "SELECT extract(epoch FROM ts)::float8, device_id, metric, value FROM readings"
            " WHERE ts >= %s AND ts < %s ORDER BY ts, device_id, metric",
            [start, end],
        )
        for ts, device_id, metric, value in cur:
            yield StoredReading(float(ts), device_id, metric, float(value))


def _positions(conn: psycopg.Connection[Any], start: datetime, end: datetime) -> tuple[int, int]:
    """The log positions of the window: first recorded at or after ``start``, last before
    ``end`` (first > last when nothing was recorded in it)."""
    row = conn.execute(
        "SELECT (SELECT min(notification_id) FROM event_chain WHERE recorded_at >= %s),"
        " (SELECT max(notification_id) FROM event_chain WHERE recorded_at < %s)",
        [start, end],
    ).fetchone()
    assert row is not None
    last = int(row[1] or 0)
    return (last + 1 if row[0] is None else int(row[0])), last


def _replay_correlation(
    conn: psycopg.Connection[Any],
    start: datetime,
    end: datetime,
    policy: CorrelationPolicy,
    ruleset: RuleSet,
) -> CorrelationOutcome:
    first, last = _positions(conn, start, end)
    replay = CorrelationReplay(
        policy,
        alarm_categories={rule.id: rule.category for rule in ruleset.rules},
        distance_m=distance_m,
        start=first,
        end=last,
    )
    # Decoding only: an in-memory application has the live one's mapper and transcoder.
    scratch = CityApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        with conn.cursor(name="backtest_events") as cur:
            cur.itersize = 5_000
            # Up to the window's end, every event of the aggregates asked about; after it,
            # the brain's decisions on the window's triggers it recorded late.
            cur.execute(
                "SELECT notification_id, originator_id, originator_version, topic, state"
                " FROM city_events WHERE topic LIKE ANY(%s) AND (notification_id <= %s"
                " OR (topic = ANY(%s)"
                " AND convert_from(state, 'UTF8')::jsonb ->> 'actor' = %s))"
                " ORDER BY notification_id",
                [AGGREGATE_TOPICS, last, DECISION_TOPICS, SYSTEM_BRAIN],
            )
            for position, originator, version, topic, state in cur:
                stored = StoredEvent(originator, version, topic, bytes(state))
                replay.feed(position, scratch.mapper.to_domain_event(stored))
    finally:
        scratch.close()
    return replay.outcome()


def run_backtest(database_url: str, request: BacktestRequest) -> BacktestReport:
    """Replay the chosen rules over the window, read-only; report the differences."""
    check_window(request.start, request.end)
    try:
        ruleset = load_rules(request.rules)
    except OSError as exc:
        raise BacktestError(f"cannot read the rules file: {exc}") from None
    except (RulesError, ValueError) as exc:  # yaml errors are ValueErrors too
        raise BacktestError(f"invalid rules file: {exc}") from None
    try:
        policy = load_policy(request.correlation)
    except OSError as exc:
        raise BacktestError(f"cannot read the correlation file: {exc}") from None
    except PolicyError as exc:
        raise BacktestError(str(exc)) from None
    start_s, end_s = request.start.timestamp(), request.end.timestamp()
    with psycopg.connect(database_url, autocommit=False) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            types, devices = _sensor_types(conn)
            events = _alarm_events(conn, devices, end_s)
            opened = _opened(conn, sorted({e.incident_id for e in events if e.incident_id}))
            live, at_start = live_episodes(events, start_s, end_s, opened)
            stats = ReplayStats()
            backtest = replay_rules(
                ruleset,
                types,
                _readings(conn, request.start, request.end),
                initial_states(ruleset, types, at_start),
                stats,
            )
            correlation = _replay_correlation(conn, request.start, request.end, policy, ruleset)
        finally:
            conn.rollback()
    matched, differs, missing, extra = compare_episodes(live, backtest)
    return BacktestReport(
        window_from=request.start.isoformat(),
        window_to=request.end.isoformat(),
        rules_version=ruleset.version,
        live_rules_versions=sorted({e.rule_version for e in live}),
        initial_state="alarms active at --from rebuilt from the log; pending repeat counts zero",
        readings=stats.readings,
        unknown_device_readings=stats.unknown_device_readings,
        matched=matched,
        severity_differs=differs,
        would_not_have_opened=missing,
        would_have_opened=extra,
        correlation=correlation,
    )

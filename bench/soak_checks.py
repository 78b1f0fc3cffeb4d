"""What the soak reads back: positions and lags while it runs, the accounting at the end.

While it runs (every few seconds): the log's head and each projection's position (lag in
events, and in seconds since the oldest event not yet projected was recorded); each
Kafka consumer's stored positions against the topic's end offsets (writer and monitor on
the telemetry topic, case intake on the inbound cases); the urban brain's and the
relay's backlog in the log.

At the end, from PostgreSQL and Kafka (nothing here writes, except the rebuild):

- readings: messages the simulator had PUBACKed against distinct (device, ts) stored,
  rows against distinct (device, metric, ts), messages stored with fewer readings than
  their sensor type has, telemetry the pipeline dead-lettered;
- cases: per channel, acknowledged (Open311 2xx, hotline records Kafka acknowledged)
  against ``CaseSubmitted`` events and dead letters, duplicates by (channel, external id);
- alarms and incidents: every alarm's incident recorded, no alarm raised twice without
  a clear, no sensor incident without its alarm; the brain's links recorded on both
  sides, none twice; the backtest (``infra.backtest``) of the stored readings and the
  log against what the rules would have done;
- the relay: every published event of the log on ``cityops.domain-events`` once;
- the views: checksums (``projections.checksum``) of the live views, then of the views
  rebuilt from the log by a fresh projector.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
import psycopg
from eventsourcing.utils import get_topic
from kafka import KafkaConsumer, TopicPartition

from cityops.bootstrap import rebuild_projections, run_projector
from core.case import ServiceCase
from core.incident import Incident
from core.sensor import Sensor
from core.sensor.telemetry import SENSOR_TYPES
from infra import domain_events
from infra.backtest import BacktestRequest, run_backtest
from infra.kafka import Topics
from infra.settings import Settings
from projections.checksum import checksums
from projections.positions import PROJECTIONS, head, position
from workers.brain import CORRELATION_EVENTS
from workers.relay import RELAY_NAME, position_of

WRITER_GROUP = "telemetry-writer"
MONITOR_GROUP = "sensor-monitor"
INTAKE_GROUP = "case-intake"
BRAIN = "urban-brain"
PROBE_GATEWAY = "gw-bench"  # bench.mqtt_load's gateway: the readiness probe's messages

T_REGISTERED = get_topic(Sensor.Registered)  # type: ignore[attr-defined]
T_RAISED = get_topic(Sensor.AlarmRaised)  # type: ignore[attr-defined]
T_CLEARED = get_topic(Sensor.AlarmCleared)  # type: ignore[attr-defined]
T_SILENT = get_topic(Sensor.WentSilent)  # type: ignore[attr-defined]
T_BACK = get_topic(Sensor.CameBack)  # type: ignore[attr-defined]
T_OPENED = get_topic(Incident.Opened)  # type: ignore[attr-defined]
T_RETRIGGERED = get_topic(Incident.Retriggered)  # type: ignore[attr-defined]
T_CASE_LINKED = get_topic(Incident.CaseLinked)  # type: ignore[attr-defined]
T_LINKED_TO = get_topic(ServiceCase.LinkedToIncident)  # type: ignore[attr-defined]
T_SUBMITTED = get_topic(ServiceCase.CaseSubmitted)  # type: ignore[attr-defined]
CORRELATION_TOPICS = [get_topic(cls) for cls in CORRELATION_EVENTS]


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection: each statement sees what is committed now."""
    return psycopg.connect(url, autocommit=True)


# -- Kafka ----------------------------------------------------------------------------------


class KafkaView:
    """End offsets and whole-topic reads, outside any consumer group.

    Tansu reports a partition's end offset at the start of its last record batch, not
    after its last record (1 for one batch of 1,000 records): the true end is found by
    reading that last batch, as ``workers.relay`` does for the partitions' tails.
    """

    def __init__(self, settings: Settings) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="cityops-soak",
            enable_auto_commit=False,
            group_id=None,
        )

    def partitions(self, topic: str) -> list[TopicPartition]:
        found = self.consumer.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, p) for p in sorted(found)]

    def end_offsets(self, topic: str, polls: int = 3) -> dict[int, int]:
        """Per partition, the offset after its last record (from at most ``polls`` reads of
        the last batch: while producers write, a lower bound)."""
        tps = self.partitions(topic)
        reported = self.consumer.end_offsets(tps)
        out = {tp.partition: int(reported[tp]) for tp in tps}
        live = [tp for tp in tps if reported[tp] > 0]
        if not live:
            return out
        self.consumer.assign(live)
        for tp in live:
            self.consumer.seek(tp, reported[tp] - 1)
        for _ in range(polls):
            got = self.consumer.poll(timeout_ms=200, max_records=100_000)
            if not got:
                break
            for tp, records in got.items():
                out[tp.partition] = max(out[tp.partition], records[-1].offset + 1)
        self.consumer.unsubscribe()
        return out

    def read_all(self, topic: str, timeout_s: float = 120.0) -> list[Any]:
        """Every record of ``topic`` (meant for a topic nobody writes to any more)."""
        ends = self.end_offsets(topic, polls=20)
        tps = self.partitions(topic)
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(self.consumer.position(tp) < ends[tp.partition] for tp in tps):
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {topic} took longer than {timeout_s:.0f} s")
            for records in self.consumer.poll(timeout_ms=500, max_records=5_000).values():
                out.extend(records)
        self.consumer.unsubscribe()
        return out

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def _tracked(conn: psycopg.Connection[Any], group: str, topic: str) -> dict[int, int]:
    rows = conn.execute(
        "SELECT application_name, max(notification_id) FROM city_tracking"
        " WHERE application_name LIKE %s GROUP BY 1",
        (f"{group}|{topic}|%",),
    ).fetchall()
    return {int(name.rsplit("|", 1)[1]): int(pos) for name, pos in rows}


def consumers(
    conn: psycopg.Connection[Any], kafka: KafkaView, topics: Topics
) -> dict[str, dict[str, int]]:
    """Per Kafka consumer: records it still has to read (``lag``, its stored positions
    against the ends) and records it has read (``read``, its positions added up)."""
    telemetry = kafka.end_offsets(topics.telemetry)
    inbound = kafka.end_offsets(topics.cases_inbound)
    writer = dict(
        conn.execute(
            "SELECT partition, next_offset FROM telemetry_positions"
            " WHERE consumer = %s AND topic = %s",
            (WRITER_GROUP, topics.telemetry),
        ).fetchall()
    )
    monitor = _tracked(conn, MONITOR_GROUP, topics.telemetry)
    intake = _tracked(conn, INTAKE_GROUP, topics.cases_inbound)

    def figures(ends: dict[int, int], at: dict[int, int]) -> dict[str, int]:
        lag = sum(max(0, end - at.get(p, 0)) for p, end in ends.items())
        return {"lag": lag, "read": sum(at.values())}

    return {
        "writer": figures(telemetry, writer),
        "monitor": figures(telemetry, monitor),
        "intake": figures(inbound, intake),
    }


# -- the log --------------------------------------------------------------------------------


def log_lags(conn: psycopg.Connection[Any]) -> dict[str, float]:
    """Head; the slowest projection's lag in events and seconds; brain and relay backlogs."""
    top = head(conn)
    behind = min(position(conn, name) for name in PROJECTIONS)
    seconds = 0.0
    if behind < top:
        row = conn.execute(
            "SELECT extract(epoch FROM clock_timestamp() - recorded_at) FROM event_chain"
            " WHERE notification_id > %s ORDER BY notification_id LIMIT 1",
            (behind,),
        ).fetchone()
        seconds = float(row[0]) if row else 0.0
    brain_row = conn.execute(
        "SELECT max(notification_id) FROM city_tracking WHERE application_name = %s", (BRAIN,)
    ).fetchone()
    brain_at = int((brain_row[0] if brain_row else None) or 0)
    brain_row = conn.execute(
        "SELECT count(*) FROM city_events WHERE notification_id > %s AND topic = ANY(%s)",
        (brain_at, CORRELATION_TOPICS),
    ).fetchone()
    relay_row = conn.execute(
        "SELECT notification_id FROM relay_positions WHERE name = %s", (RELAY_NAME,)
    ).fetchone()
    relay_at = int(relay_row[0]) if relay_row else 0
    return {
        "head": top,
        "projection_events": top - behind,
        "projection_s": seconds,
        "brain_backlog": int(brain_row[0]) if brain_row else 0,
        "relay_backlog": max(0, top - relay_at),
    }


def _events(conn: psycopg.Connection[Any], topic: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(notification id, aggregate id, event body) of every event of ``topic``, in order."""
    rows = conn.execute(
        "SELECT notification_id, originator_id::text, convert_from(state, 'UTF8')::jsonb"
        " FROM city_events WHERE topic = %s ORDER BY notification_id",
        (topic,),
    ).fetchall()
    return [(int(n), str(o), dict(s)) for n, o, s in rows]


# -- dead letters ---------------------------------------------------------------------------


def deadletters(records: list[Any]) -> dict[str, Any]:
    """Dead letters by source and reason, each counted once however often it was sent.

    A worker's record is named by the (topic, partition, offset) it refused, the MQTT
    bridge's by topic and payload; the readiness probe's (an unregistered device of the
    bench gateway) are left out.
    """
    seen: set[tuple[Any, ...]] = set()
    by_reason: Counter[str] = Counter()
    telemetry = 0
    hotline_offsets: set[tuple[str, int, int]] = set()
    for r in records:
        body = orjson.loads(r.value)
        source = str(body.get("source", "?"))
        if source == "mqtt":
            if f"/{PROBE_GATEWAY}/" in str(body.get("topic", "")):
                continue
            key: tuple[Any, ...] = (source, body.get("topic"), body.get("payload"))
        else:
            key = (source, body.get("topic"), body.get("partition"), body.get("offset"))
        if key in seen:
            continue
        seen.add(key)
        by_reason[f"{source}: {body.get('reason')}"] += 1
        if source in ("mqtt", "telemetry-writer", "sensor-monitor"):
            telemetry += 1
        if source == INTAKE_GROUP:
            hotline_offsets.add((str(body["topic"]), int(body["partition"]), int(body["offset"])))
    return {
        "records": len(records),
        "distinct": len(seen),
        "by_reason": dict(by_reason),
        "telemetry": telemetry,
        "hotline": len(hotline_offsets),
    }


# -- readings -------------------------------------------------------------------------------


def readings(
    conn: psycopg.Connection[Any], simulator: dict[str, Any], dead: dict[str, Any]
) -> dict[str, Any]:
    """PUBACKed messages against what ``readings`` holds; lost and duplicated."""
    types = list(SENSOR_TYPES)
    counts = [len(SENSOR_TYPES[t]) for t in types]
    row = conn.execute(
        "WITH types AS (SELECT * FROM unnest(%s::text[], %s::int[]) AS t(sensor_type, n)),"
        " devices AS (SELECT s ->> 'device_id' AS device_id, s ->> 'sensor_type' AS sensor_type"
        "   FROM (SELECT convert_from(state, 'UTF8')::jsonb AS s FROM city_events"
        "         WHERE topic = %s) r),"
        " msgs AS (SELECT device_id, ts, count(*) AS c, count(DISTINCT metric) AS m"
        "   FROM readings GROUP BY device_id, ts)"
        " SELECT count(*), coalesce(sum(c), 0), coalesce(sum(c - m), 0),"
        "   count(*) FILTER (WHERE m < coalesce(n, 0)), count(*) FILTER (WHERE n IS NULL)"
        " FROM msgs LEFT JOIN devices USING (device_id) LEFT JOIN types USING (sensor_type)",
        (types, counts, T_REGISTERED),
    ).fetchone()
    assert row is not None
    stored, rows, duplicate_rows, partial, unknown = (int(v) for v in row)
    acked = simulator.get("acked")
    published = simulator.get("published")
    lost = None if acked is None else max(0, int(acked) - stored - dead["telemetry"])
    return {
        "simulator": simulator,
        "stored_messages": stored,
        "rows": rows,
        "duplicate_rows": duplicate_rows,
        "partial_messages": partial,
        "unknown_device_messages": unknown,
        "deadlettered": dead["telemetry"],
        "lost": lost,
        # Exact when every published message was acknowledged: then nothing stored can
        # be an unacknowledged one standing in for a lost acknowledged one.
        "exact": acked is not None and published == acked,
        "stored_not_acked": 0 if acked is None else max(0, stored - int(acked)),
        "stored_never_published": 0 if published is None else max(0, stored - int(published)),
    }


# -- events ---------------------------------------------------------------------------------


def cases(
    conn: psycopg.Connection[Any], citizens: dict[str, Any], dead: dict[str, Any]
) -> dict[str, dict[str, int]]:
    """Per channel: acknowledged submissions against recorded cases and dead letters."""
    submitted = _events(conn, T_SUBMITTED)
    keys = Counter((s["channel"], s["external_id"]) for _, _, s in submitted)
    out = {}
    for channel, acked_key, dead_n in (
        ("open311", "open311_accepted", 0),
        ("hotline", "hotline_acked", dead["hotline"]),
    ):
        mine = {k: n for k, n in keys.items() if k[0] == channel}
        recorded = len(mine)
        acked = int(citizens.get(acked_key, 0))
        out[channel] = {
            "acknowledged": acked,
            "recorded": recorded,
            "deadlettered": dead_n,
            "lost": max(0, acked - recorded - dead_n),
            "duplicates": sum(n - 1 for n in mine.values()),
            "unacknowledged": max(0, recorded + dead_n - acked),
        }
    return out


def alarms(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Sensor alarms and silences against the incidents they opened or re-triggered."""
    opened = {agg: body for _, agg, body in _events(conn, T_OPENED)}
    retriggered = Counter(agg for _, agg, _ in _events(conn, T_RETRIGGERED))
    # Per (sensor, rule): the raise/clear sequence must alternate, starting with a raise.
    sequence: list[tuple[int, str, str, str]] = []
    refs: Counter[str] = Counter()
    without = 0
    for n, agg, body in _events(conn, T_RAISED):
        sequence.append((n, agg, body["rule_id"], "raise"))
        incident = _uuid_text(body["incident_id"])
        refs[incident] += 1
        without += incident not in opened
    for n, agg, body in _events(conn, T_CLEARED):
        sequence.append((n, agg, body["rule_id"], "clear"))
    silent = _events(conn, T_SILENT)
    for n, agg, body in silent:
        sequence.append((n, agg, "silence", "raise"))
        incident = _uuid_text(body["incident_id"])
        refs[incident] += 1
        without += incident not in opened
    for n, agg, _ in _events(conn, T_BACK):
        sequence.append((n, agg, "silence", "clear"))
    active: dict[tuple[str, str], bool] = {}
    twice = 0
    for _, agg, rule, what in sorted(sequence):
        raised = what == "raise"
        twice += raised and active.get((agg, rule), False)
        active[(agg, rule)] = raised
    sensor_kinds = ("sensor_alarm", "device_silent")
    sensor_incidents = [i for i, body in opened.items() if body.get("kind") in sensor_kinds]
    return {
        "raised": sum(1 for s in sequence if s[3] == "raise" and s[2] != "silence"),
        "opened": sum(1 for i in sensor_incidents if opened[i]["kind"] == "sensor_alarm"),
        "silent": len(silent),
        "silent_opened": sum(1 for i in sensor_incidents if opened[i]["kind"] == "device_silent"),
        "retriggered": sum(retriggered.values()),
        "without_incident": without,
        "raised_twice": twice,
        # A sensor incident is referenced by its opening alarm and each re-trigger.
        "orphans": sum(1 for i in sensor_incidents if refs[i] == 0),
        "reference_mismatch": sum(
            1 for i in sensor_incidents if refs[i] != 1 + retriggered.get(i, 0)
        ),
        "incidents_by_kind": dict(Counter(str(b.get("kind")) for b in opened.values())),
    }


def _uuid_text(value: str) -> str:
    """An aggregate id as PostgreSQL prints a uuid (events hold hex or dashed text)."""
    return str(uuid.UUID(value))


def brain(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """The urban brain's links: each on both aggregates, none twice."""
    incident_side = Counter(
        (agg, _uuid_text(body["case_id"])) for _, agg, body in _events(conn, T_CASE_LINKED)
    )
    case_side = Counter(
        (_uuid_text(body["incident_id"]), agg) for _, agg, body in _events(conn, T_LINKED_TO)
    )
    opened = _events(conn, T_OPENED)
    return {
        "links": len(incident_side),
        "duplicate_links": sum(n - 1 for n in incident_side.values())
        + sum(n - 1 for n in case_side.values()),
        "one_sided_links": len(set(incident_side) ^ set(case_side)),
        "report_incidents": sum(1 for _, _, b in opened if b.get("kind") == "citizen_reports"),
    }


def relay(conn: psycopg.Connection[Any], topic: str, records: list[Any]) -> dict[str, Any]:
    """Every event of the log the contract publishes on the domain-events topic, once."""
    ids = Counter(position_of(r.value) for r in records)
    withheld = [get_topic(cls) for cls in domain_events.NOT_PUBLISHED]
    logged = {
        int(n)
        for (n,) in conn.execute(
            "SELECT notification_id FROM city_events WHERE NOT topic = ANY(%s)", (withheld,)
        )
    }
    return {
        "topic": topic,
        "records": len(records),
        "events": len(logged),
        "missing": len(logged - set(ids)),
        "duplicates": sum(n - 1 for n in ids.values()),
        "unknown": len(set(ids) - logged),
    }


def backtest(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    """The rules and the correlation replayed over the stored window, against the log."""
    t0 = time.monotonic()
    report = run_backtest(settings.database_url, BacktestRequest(start, end))
    corr = report.correlation
    diffs = (
        {} if corr is None else {k: (len(d.missing), len(d.extra)) for k, d in corr.diffs.items()}
    )
    summary = (
        f"{report.readings:,} readings; alarms matched {len(report.matched)},"
        f" severity differs {len(report.severity_differs)}, shifted"
        f" {sum(1 for m in report.matched if m.time_shift_s)},"
        f" live only {len(report.would_not_have_opened)},"
        f" backtest only {len(report.would_have_opened)}; correlation "
        + (
            "-"
            if corr is None
            else ", ".join(f"{k} missing {m} extra {x}" for k, (m, x) in diffs.items())
            + f", {corr.not_applied} not applied"
        )
        + f": {'identical' if report.identical else 'DIFFERENT'}"
    )
    return {
        "seconds": time.monotonic() - t0,
        "alarms_identical": report.alarms_identical,
        "identical": report.identical,
        "summary": summary,
        "report": report.to_json(),
    }


# -- views ----------------------------------------------------------------------------------


def views(settings: Settings, timeout_s: float) -> dict[str, Any]:
    """Checksums of the live views, then of the views a fresh projector rebuilds."""
    with connect(settings.database_url) as conn:
        live = checksums(conn)
        top = head(conn)
    rebuild_projections(settings)
    stop = threading.Event()
    thread = threading.Thread(target=run_projector, args=(settings, stop), daemon=True)
    t0 = time.monotonic()
    thread.start()
    caught_up = False
    try:
        with connect(settings.database_url) as conn:
            while time.monotonic() - t0 < timeout_s:
                if all(position(conn, name) >= top for name in PROJECTIONS):
                    caught_up = True
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - t0
            rebuilt = checksums(conn)
    finally:
        stop.set()
        thread.join(60)
    return {
        "live": {k: list(v) for k, v in live.items()},
        "rebuilt": {k: list(v) for k, v in rebuilt.items()},
        "rebuild_s": elapsed,
        "caught_up": caught_up,
        "equal": caught_up and live == rebuilt,
    }

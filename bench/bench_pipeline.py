"""End-to-end ingest benchmark: MQTT -> bridge -> Kafka -> writer -> PostgreSQL.

3 data points per message (SenML: water_level, battery, temperature), every service on
this machine. The load comes from raw-socket publisher processes (:mod:`bench.mqtt_load`:
pre-encoded QoS 1 PUBLISHes, open loop, each message stamped with its scheduled time, at
most the broker's Receive Maximum unacknowledged), so the load generator takes a small,
measured share of the CPU it competes for.

Per offered rate it reports: commits per 10 s window and the overall sustained rate
(rows / 3 from the first publish to the last commit); lost, partial and duplicated
readings, counted in PostgreSQL against every (device, ts) the publishers sent;
publish -> commit p50/p99; the CPU time per message of every process (bridges, writers,
monitor, Tansu, all of PostgreSQL, Mosquitto, the publishers) from /proc; and, once per
invocation, each leg alone (:mod:`bench.legs`) and end to end as a share of the slowest.

    python -m bench.bench_pipeline --rate 10000 --duration 60
    python -m bench.bench_pipeline --rate 1000 --duration 10 --skip-legs
    python -m bench.bench_pipeline --sweep --rates 2000,4000,8000 --duration 30 --json
    python -m bench.bench_pipeline --rate 4000 --profile prof/   # py-spy of each worker

Uses the services named by CITYOPS_* variables if CITYOPS_DATABASE_URL is set (their
processes are found on this host by listening port or name, or reported as not
measured), otherwise starts its own (throwaway PostgreSQL cluster, Mosquitto, Tansu).
Each run gets a fresh topic prefix and share group and an emptied readings table; the
workers are started as ``python -m cityops bridge|telemetry`` (``writer`` and ``monitor``
with ``--no-combined``), warmed up with each device once per bridge (not counted), and
stopped after the run. ``--json`` prints every figure as one JSON object, last on stdout.
"""

from __future__ import annotations

import argparse
import ast
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import pipeline_db as db
from bench import procstat
from bench.harness import services
from bench.legs import Leg, run_legs
from bench.mqtt_load import LoadPlan, Publisher, device_names, drop_session, publisher_command
from bench.pipeline_report import print_curve, print_legs_summary, print_run
from bench.pyspy import Profile, finish_profiles, profiler_pids, start_profiles
from cityops.bootstrap import city_app
from cityops.services import full_access_mqtt_params
from core.sensor import SensorSpec
from infra import kafka as topics
from infra.pgstore import apply_schema, make_pool
from infra.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RATES = "2000,4000,6000,8000,10000,12000,15000"
PUBLISHER_STARTUP_S = 2.0  # publishers import and connect before their first message
PROBE_TIMEOUT_S = 90.0
WARMUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
GATEWAY = "gw-bench"
# ``cityops writer`` alone, or ``cityops telemetry`` (its writer's counters come first).
_WRITER_STOPPED = re.compile(r"telemetry (?:writer|consumer) stopping: (?:writer )?(\{.*?\})")
_BRIDGE_STOPPED = re.compile(r"MQTT bridge \S+ stopped: (\{.*\})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=10_000, help="offered msg/s (all publishers)")
    ap.add_argument("--duration", type=float, default=60, help="seconds of load per run")
    ap.add_argument("--devices", type=int, default=2_000)
    ap.add_argument("--bridges", type=int, default=1)
    ap.add_argument("--writers", type=int, default=1)
    ap.add_argument("--publishers", type=int, default=1, help="publisher processes")
    ap.add_argument(
        "--monitor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the sensor monitor on the same stream",
    )
    ap.add_argument(
        "--combined",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="writer and monitor as one `cityops telemetry` process per writer"
        " (--no-combined: one process each, two consumer groups)",
    )
    ap.add_argument("--drain-timeout", type=float, default=300, help="s to wait for the backlog")
    ap.add_argument("--stall-timeout", type=float, default=60, help="s without a commit: stop")
    ap.add_argument("--skip-legs", action="store_true", help="do not measure each leg alone")
    ap.add_argument("--leg-messages", type=int, default=50_000, help="messages per leg")
    ap.add_argument("--sweep", action="store_true", help="one run per rate of --rates")
    ap.add_argument("--rates", default=DEFAULT_RATES, help="offered msg/s of the sweep")
    ap.add_argument("--json", action="store_true", help="print all figures as JSON, last")
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR", help="py-spy into DIR")
    ap.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--pin-publisher", default=None, metavar="CPU[,CPU]", help="publisher CPUs")
    ap.add_argument("--inflight", type=int, default=1000, help="publisher's own in-flight limit")
    ap.add_argument("--tick-ms", type=float, default=5.0, help="publisher's least send interval")
    ap.add_argument("--settle", type=float, default=3.0, help="s after warm-up before the load")
    ap.add_argument("--log-dir", type=Path, default=None, help="worker logs (default: temp)")
    return ap.parse_args(argv)


@dataclass
class Bench:
    """What every run of one invocation shares."""

    args: argparse.Namespace
    settings: Settings
    device_prefix: str
    devices: list[str]
    log_dir: Path
    legs: list[Leg] = field(default_factory=list)


@dataclass
class Worker:
    """One pipeline process: ``python -m cityops <command>``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    client_id: str | None = None


# -- setup -------------------------------------------------------------------------------


def prepare(args: argparse.Namespace, settings: Settings) -> Bench:
    """Schema, the bench's devices registered under the bench gateway, a log directory."""
    pool = make_pool(settings, max_size=1)
    with pool.connection() as conn:
        apply_schema(conn)
        conn.commit()
    pool.close()
    prefix = f"wl-b{uuid.uuid4().hex[:6]}-"
    devices = device_names(prefix, args.devices)
    app = city_app(settings, pool_size=2, create_tables=True)
    specs = [
        SensorSpec(d, "water_level", GATEWAY, 121.47, 31.23, None, None, None) for d in devices
    ]
    app.register_sensors(specs, actor="bench", correlation_id="bench")
    app.close()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="cityops-bench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    return Bench(args, settings, prefix, devices, log_dir)


def run_settings(bench: Bench, run_id: str) -> Settings:
    """The bench's settings with this run's topic prefix and share group."""
    return bench.settings.model_copy(
        update={"kafka_topic_prefix": f"bench{run_id}.", "mqtt_share_group": f"bench{run_id}"}
    )


def reset(settings: Settings) -> None:
    """Empty readings; create this run's topics."""
    with db.connect(settings.database_url) as conn:
        conn.execute("TRUNCATE readings")
    topics.ensure_topics(settings)


# -- workers -------------------------------------------------------------------------------


def start_workers(bench: Bench, settings: Settings, run_id: str) -> list[Worker]:
    """The bridges, writers and monitor, each logging to its own file."""
    env = {
        **os.environ,
        "CITYOPS_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "CITYOPS_MQTT_SHARE_GROUP": settings.mqtt_share_group,
        "CITYOPS_LOG_LEVEL": "INFO",  # the workers log their counters when they stop
    }
    plan: list[tuple[str, list[str], str | None]] = []
    for i in range(bench.args.bridges):
        bridge_id = f"bench{run_id}-bridge{i}"
        plan.append((f"bridge-{i}", ["bridge", "--client-id", bridge_id], bridge_id))
    if bench.args.monitor and bench.args.combined:
        plan += [(f"telemetry-{i}", ["telemetry"], None) for i in range(bench.args.writers)]
    else:
        plan += [(f"writer-{i}", ["writer"], None) for i in range(bench.args.writers)]
        if bench.args.monitor:
            plan.append(("monitor", ["monitor"], None))
    workers = []
    for name, command, client_id in plan:
        log = bench.log_dir / f"{run_id}-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cityops", *command],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        workers.append(Worker(name, proc, log, client_id))
    return workers


def check_alive(workers: list[Worker]) -> None:
    """Raise with the end of its log if a worker has exited."""
    for w in workers:
        if w.proc.poll() is not None:
            tail = "\n".join(w.log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"{w.name} exited with {w.proc.returncode}:\n{tail}")


def stop_workers(workers: list[Worker]) -> None:
    """SIGTERM every worker, then wait (kill after STOP_TIMEOUT_S)."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.terminate()
    for w in workers:
        try:
            w.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(10)


def _logged_dict(log: Path, pattern: re.Pattern[str]) -> dict[str, Any] | None:
    found = pattern.findall(log.read_text(errors="replace")) if log.exists() else []
    try:
        return ast.literal_eval(found[-1]) if found else None
    except (ValueError, SyntaxError):
        return None


def worker_counters(workers: list[Worker]) -> tuple[int | None, dict[str, int]]:
    """The writers' skipped duplicates and the bridges' counters, as they logged them."""
    skipped: int | None = None
    bridges: dict[str, int] = {}
    for w in workers:
        if w.name.startswith(("writer", "telemetry")):
            counters = _logged_dict(w.log, _WRITER_STOPPED)
            if counters is not None:
                skipped = (skipped or 0) + int(counters.get("duplicates", 0))
        elif w.name.startswith("bridge"):
            for key, value in (_logged_dict(w.log, _BRIDGE_STOPPED) or {}).items():
                if isinstance(value, int):
                    bridges[key] = bridges.get(key, 0) + value
    return skipped, bridges


def end_bridge_sessions(settings: Settings, workers: list[Worker]) -> None:
    """Remove the stopped bridges' persistent sessions, which would queue later runs' load."""
    for w in workers:
        if w.client_id:
            drop_session(
                settings.mqtt_host or "127.0.0.1",
                settings.mqtt_port,
                w.client_id,
                version=5 if settings.mqtt_protocol == 5 else 4,
                username=settings.mqtt_username,
                password=settings.mqtt_password,
            )


# -- warm-up -------------------------------------------------------------------------------


def publish_now(settings: Settings, devices: list[str]) -> dict[str, Any]:
    """One message per device, unpaced, from this process; the publisher's result."""
    login = full_access_mqtt_params(settings)
    plan = LoadPlan(
        host=settings.mqtt_host or "127.0.0.1",
        port=settings.mqtt_port,
        devices=devices,
        count=len(devices),
        rate=0,
        start_at=time.time(),
        version=5 if settings.mqtt_protocol == 5 else 4,
        ack_timeout_s=30,
        username=login.username,
        password=login.password,
    )
    return Publisher(plan).run()


def probe(bench: Bench, settings: Settings, conn: Any, workers: list[Worker]) -> float:
    """Publish one message until the pipeline stores it; the seconds that took."""
    start = time.monotonic()
    device = bench.devices[0]
    while time.monotonic() - start < PROBE_TIMEOUT_S:
        check_alive(workers)
        result = publish_now(settings, [device])
        if result["ack_reasons"].get("0x10"):  # no bridge subscribed yet: dropped
            time.sleep(0.5)
            continue
        ts = db.since_ts(result["t0_us"])
        until = time.monotonic() + 5
        while time.monotonic() < until:
            query = "SELECT 1 FROM readings WHERE device_id = %s AND ts = %s"
            if conn.execute(query, (device, ts)).fetchone():
                return time.monotonic() - start
            time.sleep(0.25)
    raise RuntimeError(f"the pipeline stored no probe message in {PROBE_TIMEOUT_S:.0f} s")


def warm_up_rounds(devices: list[str], bridges: int) -> list[list[str]]:
    """One round per bridge, each of 1 (mod bridges) messages: every device meets every bridge.

    The broker hands a shared subscription's messages to its members in turn, so with
    rounds of that length device i goes to bridge (i + round) mod bridges.
    """
    pad = (1 - len(devices)) % bridges
    return [devices + devices[:pad] for _ in range(bridges)]


def warm_up(bench: Bench, settings: Settings, conn: Any, workers: list[Worker]) -> str:
    """Probe; then each device once per bridge (caches, aggregates); then settle."""
    probe_s = probe(bench, settings, conn, workers)
    start = time.monotonic()
    rounds = warm_up_rounds(bench.devices, bench.args.bridges)
    results = [publish_now(settings, devices) for devices in rounds]
    since, want = db.since_ts(results[0]["t0_us"]), 3 * sum(len(r) for r in rounds)
    stored = 0
    while time.monotonic() - start < WARMUP_TIMEOUT_S:
        check_alive(workers)
        stored = db.rows_since(conn, since)
        if stored >= want:
            break
        time.sleep(0.5)
    warm_s = time.monotonic() - start
    time.sleep(bench.args.settle)
    return (
        f"first message stored after {probe_s:.1f} s; each device once per bridge:"
        f" {stored:,} of {want:,} rows in {warm_s:.1f} s;"
        f" then {bench.args.settle:.0f} s to settle (not counted)"
    )


# -- processes to measure ------------------------------------------------------------------


def _is_local(host: str | None) -> bool:
    if not host or host in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def service_groups(settings: Settings) -> list[procstat.Group]:
    """Mosquitto, Tansu and PostgreSQL (every process of the cluster), found on this host."""
    kafka_host, _, kafka_port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    pg = urlsplit(settings.database_url)
    specs = [
        ("mosquitto", settings.mqtt_host, settings.mqtt_port, ("mosquitto", "amqtt")),
        ("tansu", kafka_host, int(kafka_port or 9092), ("tansu",)),
        ("postgres", pg.hostname, pg.port or 5432, ("postgres",)),
    ]
    groups = []
    for name, host, port, names in specs:
        if _is_local(host):
            groups.append(procstat.find_service(name, port, names))
        else:
            groups.append(procstat.Group(name, [], f"on {host}: not measured"))
    return groups


def worker_groups(workers: list[Worker]) -> list[procstat.Group]:
    return [procstat.Group(w.name, [w.proc.pid], f"pid {w.proc.pid}") for w in workers]


# -- the load ------------------------------------------------------------------------------


def _pins(bench: Bench) -> list[int]:
    spec = bench.args.pin_publisher
    return [int(cpu) for cpu in spec.split(",")] if spec else []


def start_publishers(
    bench: Bench, settings: Settings, rate: float, start_at: float, run_id: str
) -> list[subprocess.Popen[bytes]]:
    """One process per publisher, each with every n-th device and rate / n."""
    args, pins = bench.args, _pins(bench)
    n = args.publishers
    count = round(rate / n * args.duration)
    procs = []
    for k in range(n):
        command = publisher_command(
            settings.mqtt_host or "127.0.0.1", settings.mqtt_port, settings.mqtt_protocol
        )
        command += ["--rate", repr(rate / n), "--count", str(count), "--start-at", repr(start_at)]
        command += ["--device-prefix", bench.device_prefix, "--devices", str(args.devices)]
        command += ["--index", str(k), "--stride", str(n), "--inflight", str(args.inflight)]
        command += ["--tick-ms", str(args.tick_ms), "--ack-timeout", str(args.drain_timeout)]
        if pins:
            command += ["--pin", str(pins[k % len(pins)])]
        with open(bench.log_dir / f"{run_id}-publisher-{k}.log", "wb") as err:
            procs.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=err))
    return procs


def wait_publishers(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> list[dict[str, Any]]:
    results = []
    for k, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"publisher {k} failed with exit code {proc.returncode}")
        results.append(json.loads(out))
    return results


@dataclass
class Measured:
    """Raw measurements of one load: publisher results, CPU samples, drain."""

    publishers: list[dict[str, Any]]
    samples: list[procstat.Sample]
    walls: list[float]
    drain: db.Drain
    groups: list[procstat.Group]
    profile: dict[str, list[tuple[str, int, float]]]


def load(
    bench: Bench,
    settings: Settings,
    rate: float,
    conn: Any,
    workers: list[Worker],
    run_id: str,
) -> Measured:
    """Run the publishers; sample CPU at start, end of publishing and when drained."""
    args = bench.args
    groups = worker_groups(workers) + service_groups(settings)
    start_at = time.time() + PUBLISHER_STARTUP_S
    with ExitStack() as stack:
        procs = start_publishers(bench, settings, rate, start_at, run_id)
        stack.callback(_kill_all, procs)
        profiles = start_profiling(bench, workers, run_id, groups)
        time.sleep(max(0.0, start_at - time.time()))
        baseline = db.rows_inserted_total(conn)
        samples, walls = [procstat.sample(groups)], [time.time()]
        results = wait_publishers(procs, args.duration + args.drain_timeout + 120)
        samples.append(procstat.sample(groups))
        walls.append(time.time())
        sent = sum(r["sent"] for r in results)
        since = db.since_ts(min(r["t0_us"] for r in results))
        drain = db.wait_for_rows(
            conn, 3 * sent, since, baseline, args.drain_timeout, args.stall_timeout
        )
        samples.append(procstat.sample(groups))
        walls.append(time.time())
        tops = finish_profiles(profiles)
    return Measured(results, samples, walls, drain, groups, tops)


def start_profiling(
    bench: Bench, workers: list[Worker], run_id: str, groups: list[procstat.Group]
) -> list[Profile]:
    """py-spy on every worker if --profile; the profilers join ``groups`` as tools."""
    args = bench.args
    if not args.profile:
        return []
    targets = {w.name: w.proc.pid for w in workers}
    profiles = start_profiles(args.profile / run_id, targets, args.duration, args.profile_rate)
    groups.append(procstat.Group("py-spy", profiler_pids(profiles), "profilers", "tool"))
    return profiles


def _kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- figures -------------------------------------------------------------------------------


def publisher_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The publishers' results added up (the window and lags: the largest)."""
    sent = sum(r["sent"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    wall = max(r["wall_s"] for r in results)
    reasons: dict[str, int] = {}
    for r in results:
        for code, n in r["ack_reasons"].items():
            reasons[code] = reasons.get(code, 0) + n
    return {
        "sent": sent,
        "acked": sum(r["acked"] for r in results),
        "unacked": sum(r["unacked"] for r in results),
        "ack_reasons": reasons,
        "window": max(r["window"] for r in results),
        "receive_maximum": min(r["receive_maximum"] for r in results),
        "blocked_episodes": sum(r["blocked_episodes"] for r in results),
        "blocked_s": max(r["blocked_s"] for r in results),
        "tcp_blocked_episodes": sum(r["tcp_blocked_episodes"] for r in results),
        "tcp_blocked_s": max(r["tcp_blocked_s"] for r in results),
        "lag_p99_ms": max(r["lag_p99_ms"] for r in results),
        "lag_max_ms": max(r["lag_max_ms"] for r in results),
        "cpu_s": cpu,
        "cpu_us_per_msg": cpu / sent * 1e6 if sent else 0.0,
        "cpu_share_of_machine": cpu / (wall * (os.cpu_count() or 1)),
        "errors": [r["error"] for r in results if r["error"]],
        "cpus": sorted({cpu for r in results for cpu in r["cpus"]}),
    }


def cpu_figures(m: Measured, messages: float, publishers: dict[str, Any]) -> dict[str, Any]:
    """CPU per group from load start to drained; µs per committed message."""
    ncpu = os.cpu_count() or 1
    whole = procstat.cpu_delta(m.samples[0], m.samples[2])
    during = procstat.cpu_delta(m.samples[0], m.samples[1])
    load_s = m.walls[1] - m.walls[0]

    def row(name: str, cpu_s: float, cpu_load_s: float, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "cpu_s": cpu_s,
            "cpu_load_s": cpu_load_s,
            "us_per_msg": cpu_s / messages * 1e6 if messages else None,
            "share_of_machine_load": cpu_load_s / (load_s * ncpu) if load_s > 0 else None,
            **extra,
        }

    groups = [
        row(
            g.name,
            whole[g.name],
            during[g.name],
            kind=g.kind,
            note=g.note,
            processes=m.samples[1].processes[g.name],
        )
        for g in m.groups
    ]
    pipeline = [g for g in groups if g["kind"] == "pipeline"]
    total = row(
        "pipeline total",
        sum(g["cpu_s"] for g in pipeline),
        sum(g["cpu_load_s"] for g in pipeline),
        note="all of the above except tools",
    )
    pub = row("publishers", publishers["cpu_s"], publishers["cpu_s"], note="own /proc/self/stat")
    pub["us_per_msg"] = publishers["cpu_us_per_msg"]
    pub["share_of_machine_load"] = publishers["cpu_share_of_machine"]
    return {
        "interval_s": m.walls[2] - m.walls[0],
        "load_s": load_s,
        "cpus": ncpu,
        "groups": groups,
        "pipeline_total": total,
        "publishers": pub,
    }


def window_figures(conn: Any, since: Any, load_end_s: float) -> list[dict[str, Any]]:
    return [
        {
            "start_s": w.start_s,
            "span_s": w.span_s,
            "rows": w.rows,
            "msg_per_s": w.msg_per_s,
            "points_per_s": w.points_per_s,
            "during_load": w.start_s < load_end_s,
        }
        for w in db.windows(conn, since)
    ]


def fractions(bench: Bench, sustained: float | None) -> dict[str, float | None]:
    """End to end over the slowest leg: with the pipeline's clients, and with any client."""
    own = [leg.msg_per_s for leg in bench.legs if leg.pipeline_client and leg.msg_per_s]
    every = [leg.msg_per_s for leg in bench.legs if leg.msg_per_s]
    if sustained is None:
        return {}
    result: dict[str, float | None] = {}
    if own:
        result[f"slowest leg with the pipeline's clients ({min(own):,.0f} msg/s)"] = (
            sustained / min(own)
        )
    if every and min(every) != min(own or [0.0]):
        result[f"slowest leg of all ({min(every):,.0f} msg/s)"] = sustained / min(every)
    return result


def figures(bench: Bench, conn: Any, m: Measured) -> dict[str, Any]:
    """Everything one run reports except its identity and the workers' counters."""
    expected = [
        db.Expected(
            device_names(bench.device_prefix, bench.args.devices, k, bench.args.publishers),
            r["t0_us"],
            r["period_num"],
            r["period_den"],
            r["sent"],
        )
        for k, r in enumerate(m.publishers)
    ]
    t0_us = min(r["t0_us"] for r in m.publishers)
    since = db.since_ts(t0_us)
    integrity = db.integrity(conn, expected, since)
    span = db.commit_span(conn, since)
    messages = integrity["rows"] / 3
    sustained_span = span[1] - t0_us / 1e6 if span else None
    sustained = messages / sustained_span if sustained_span else None
    pubs = publisher_summary(m.publishers)
    load_end_s = max(r["sent_at"] for r in m.publishers) - t0_us / 1e6
    return {
        "publishers": m.publishers,
        "publisher_summary": pubs,
        "drain": asdict(m.drain),
        "integrity": integrity,
        "windows": window_figures(conn, since, load_end_s),
        "sustained": {
            "msg_per_s": sustained,
            "points_per_s": sustained * 3 if sustained else None,
            "span_s": sustained_span,
        },
        "latency": db.latency(conn, since),
        "cpu": cpu_figures(m, messages, pubs),
        "fraction_of_slowest_leg": fractions(bench, sustained),
        "profile": {name: [list(row) for row in rows] for name, rows in m.profile.items()},
    }


# -- one run -------------------------------------------------------------------------------


def run_once(bench: Bench, rate: float) -> dict[str, Any]:
    """Fresh topics and table, workers started, warmed up, loaded, drained, measured."""
    run_id = uuid.uuid4().hex[:6]
    settings = run_settings(bench, run_id)
    reset(settings)
    args = bench.args
    workers = start_workers(bench, settings, run_id)
    try:
        with db.connect(settings.database_url) as conn:
            warmup = warm_up(bench, settings, conn, workers)
            measured = load(bench, settings, rate, conn, workers, run_id)
            check_alive(workers)
            result = figures(bench, conn, measured)
    finally:
        stop_workers(workers)
        end_bridge_sessions(settings, workers)
    skipped, bridges = worker_counters(workers)
    return {
        "run_id": run_id,
        "offered_msg_s": rate,
        "duration_s": args.duration,
        "devices": args.devices,
        "topic_prefix": settings.kafka_topic_prefix,
        "share_group": settings.mqtt_share_group,
        "processes": {
            "bridges": args.bridges,
            "writers": args.writers,
            "monitor": args.monitor,
            "combined": args.monitor and args.combined,
            "publishers": args.publishers,
        },
        "warmup": warmup,
        "writer_skipped_duplicates": skipped,
        "bridge_counters": bridges,
        "logs": str(bench.log_dir),
        "profile_dir": str(args.profile / run_id) if args.profile else "",
        **result,
    }


def run_all(bench: Bench, rates: list[float]) -> list[dict[str, Any]]:
    """One run per rate; a run that fails is reported and the sweep goes on."""
    runs = []
    for rate in rates:
        print(f"\nrunning {rate:,.0f} msg/s for {bench.args.duration:.0f} s ...", flush=True)
        try:
            run = run_once(bench, rate)
        except RuntimeError as exc:
            print(f"  run failed: {exc}", flush=True)
            runs.append({"offered_msg_s": rate, "error": str(exc)})
            continue
        print_run(run)
        runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")] if args.sweep else [args.rate]
    with ExitStack() as stack:
        services(stack)
        bench = prepare(args, Settings())
        print(f"worker and publisher logs: {bench.log_dir}")
        if not args.skip_legs:
            print("legs alone:", flush=True)
            bench.legs = run_legs(bench.settings, args.leg_messages)
        runs = run_all(bench, rates)
    good = [run for run in runs if "error" not in run]
    if args.sweep and bench.legs:
        print_legs_summary([asdict(leg) for leg in bench.legs])
    if args.sweep and good:
        print_curve(good)
    if args.json:
        print(json.dumps(report(args, bench, runs), default=str))


def report(args: argparse.Namespace, bench: Bench, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON object: configuration, legs, runs and (for a sweep) the curve."""
    curve = [
        {
            "offered_msg_s": run["offered_msg_s"],
            "sustained_msg_s": run["sustained"]["msg_per_s"],
            "sustained_points_s": run["sustained"]["points_per_s"],
            "lost": run["integrity"]["lost"],
            "duplicates": run["integrity"]["duplicates"],
            "p50_s": run["latency"]["p50_s"],
            "p99_s": run["latency"]["p99_s"],
            "cpu_us_per_msg_total": run["cpu"]["pipeline_total"]["us_per_msg"],
            "publisher_cpu_share": run["publisher_summary"]["cpu_share_of_machine"],
            "drain": run["drain"]["outcome"],
        }
        for run in runs
        if "error" not in run
    ]
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {
        "config": config,
        "legs": [asdict(leg) for leg in bench.legs],
        "runs": runs,
        "curve": curve if args.sweep else [],
    }


if __name__ == "__main__":
    main()

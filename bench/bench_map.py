"""Map layer requests under an open-loop load: latency per layer, with or without the cache.

Fills a throwaway database with ``--sensors`` map sensors and ``--incidents`` open
incidents spread over the demo city (rows written directly, as the map projection
would), starts the API under uvicorn with ``--workers`` and sends ``--rate`` requests/s
for ``--seconds`` at a constant arrival rate: each request leaves on schedule whether or
not the earlier ones have answered, and its latency counts from that scheduled moment.
The mix is a live map's: random ~2 km x 2 km viewports of the sensors and incidents
layers (some filtered), grid viewports, and a few whole layers. Meanwhile a thread
changes a few incidents (one closes, one opens) and advances the map's position once a
second, in one transaction as the projection does, so cached layers go stale and are
refreshed as in real life.

    python bench/bench_map.py               # layers served from the in-memory cache
    python bench/bench_map.py --no-cache    # every request queries PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from fastapi import FastAPI

if not __package__:  # run as a file: python bench/bench_map.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.auth import issue_token
from bench import procstat
from bench.harness import fresh_settings, start_api
from cityops.bootstrap import city_layers
from infra.pgstore import apply_schema
from infra.settings import Settings
from projections.runner import TRACKING_NAME

TARGET_P99_MS = 20.0
VIEW_KM = 2.0
KM_PER_DEG_LAT = 111.2
SENSOR_TYPES = ("water_level", "pm25", "manhole_tilt", "streetlight_power")
CATEGORY = {
    "water_level": "flooding",
    "pm25": "air_pollution",
    "manhole_tilt": "manhole_cover",
    "streetlight_power": "streetlight_out",
}
SEVERITIES = ("warning", "minor", "major", "critical")
STAGES = ("reported", "dispatched", "accepted", "resolved")
# (kind, weight): what a map client asks for while people pan and zoom.
MIX = (
    ("sensors bbox", 44),
    ("incidents bbox", 40),
    ("grid bbox", 10),
    ("grid whole", 2),
    ("districts", 1),
    ("sensors whole", 1),
    ("incidents whole", 2),
)


def app_without_cache() -> FastAPI:
    """The API with the map cache off: for ``uvicorn --factory`` under ``--no-cache``."""
    import api.map
    from cityops.bootstrap import app_from_env

    api.map.CACHE_LAYERS = False
    return app_from_env()


@dataclass(frozen=True, slots=True)
class Extent:
    west: float
    south: float
    east: float
    north: float


# -- data ----------------------------------------------------------------------------------


def fill(settings: Settings, sensors: int, incidents: int, seed: int = 7) -> Extent:
    """Map rows spread over the demo city's grid cells, and the map's tracking row."""
    grid = city_layers(settings).grid
    cells = [
        (str(code), str(district), geom.bounds)
        for code, district, geom in zip(
            grid.grid_code, grid.district_code, grid.geometry, strict=True
        )
    ]
    rng = random.Random(seed)

    def place() -> tuple[float, float, str, str]:
        code, district, (w, s, e, n) = rng.choice(cells)
        return rng.uniform(w, e), rng.uniform(s, n), code, district

    def spread(n: int) -> Iterator[tuple[int, str, float, float, str, str]]:
        """``n`` rows' (index, sensor type, lon, lat, grid code, district): at random
        places, the sensor types in turn."""
        for i in range(n):
            lon, lat, code, district = place()
            yield i, SENSOR_TYPES[i % len(SENSOR_TYPES)], lon, lat, code, district

    now = time.time()
    with psycopg.connect(settings.database_url) as conn:
        apply_schema(conn)
        with conn.cursor() as cur:
            with cur.copy(
                "COPY map_sensors (device_id, sensor_id, sensor_type, gateway_id, lon, lat,"
                " grid_code, district_code, department_code, state, alarms, updated_at, version)"
                " FROM STDIN"
            ) as copy:
                for i, kind, lon, lat, code, district in spread(sensors):
                    state = rng.choices(("normal", "alarm", "silent"), (90, 7, 3))[0]
                    copy.write_row(
                        (
                            f"{kind[:2]}-{i:06d}",
                            uuid.uuid4(),
                            kind,
                            f"gw-{i // 200:03d}",
                            lon,
                            lat,
                            code,
                            district,
                            f"{district}-water",
                            state,
                            '{"high": "major"}' if state == "alarm" else "{}",
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                            1,
                        )
                    )
            with cur.copy(
                "COPY map_incidents (incident_id, kind, title, category, severity, status,"
                " alarm_status, acknowledged, device_id, rule_id, rule_version, metric,"
                " last_value, trigger_count, lon, lat, grid_code, district_code,"
                " department_code, opened_at, updated_at, version, stage) FROM STDIN"
            ) as copy:
                for i, kind, lon, lat, code, district in spread(incidents):
                    opened = time.gmtime(now - rng.uniform(0, 2 * 86_400))
                    copy.write_row(
                        (
                            uuid.uuid4(),
                            "sensor_alarm",
                            f"{CATEGORY[kind]} near {code}",
                            CATEGORY[kind],
                            rng.choice(SEVERITIES),
                            "open",
                            "active",
                            False,
                            f"{kind[:2]}-{i:06d}",
                            "high",
                            1,
                            "level",
                            round(rng.uniform(0, 3), 3),
                            1,
                            lon,
                            lat,
                            code,
                            district,
                            f"{district}-water",
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", opened),
                            time.strftime("%Y-%m-%dT%H:%M:%SZ", opened),
                            1,
                            rng.choice(STAGES),
                        )
                    )
        conn.execute(
            "INSERT INTO map_tracking (application_name, notification_id) VALUES (%s, 1)",
            (TRACKING_NAME,),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE map_sensors, map_incidents")
    w, s, e, n = grid.total_bounds
    return Extent(float(w), float(s), float(e), float(n))


def churn(database_url: str, stop: threading.Event, interval: float = 1.0) -> None:
    """Once per ``interval``: a few incidents change, one closes, one opens, position + 1."""
    rng = random.Random(13)
    with psycopg.connect(database_url) as conn:
        while not stop.wait(interval):
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT incident_id FROM map_incidents WHERE status = 'open'"
                    " ORDER BY random() LIMIT 6"
                )
            ]
            for incident_id in ids[:5]:
                conn.execute(
                    "UPDATE map_incidents SET severity = %s, stage = %s, last_value = %s,"
                    " trigger_count = trigger_count + 1, updated_at = now(),"
                    " version = version + 1 WHERE incident_id = %s",
                    (rng.choice(SEVERITIES), rng.choice(STAGES), rng.uniform(0, 3), incident_id),
                )
            conn.execute(
                "UPDATE map_incidents SET status = 'closed', stage = 'closed', closed_at = now(),"
                " updated_at = now(), version = version + 1 WHERE incident_id = %s",
                (ids[5],),
            )
            conn.execute(
                "INSERT INTO map_incidents (incident_id, kind, title, category, severity,"
                " status, alarm_status, acknowledged, trigger_count, lon, lat, grid_code,"
                " district_code, opened_at, updated_at, version)"
                " SELECT %s, kind, title, category, 'major', 'open', 'active', false, 1,"
                " lon + 0.0005, lat, grid_code, district_code, now(), now(), 1"
                " FROM map_incidents WHERE incident_id = %s",
                (uuid.uuid4(), ids[0]),
            )
            conn.execute(
                "UPDATE map_tracking SET notification_id = notification_id + 1"
                " WHERE application_name = %s",
                (TRACKING_NAME,),
            )
            conn.commit()


# -- load ----------------------------------------------------------------------------------


def viewport(rng: random.Random, city: Extent) -> str:
    """About 2 km x 2 km, inside the city."""
    dlat = VIEW_KM * rng.uniform(0.8, 1.2) / KM_PER_DEG_LAT
    dlon = dlat / 0.855  # cos(31.2 deg)
    w = rng.uniform(city.west, city.east - dlon)
    s = rng.uniform(city.south, city.north - dlat)
    return f"{w:.6f},{s:.6f},{w + dlon:.6f},{s + dlat:.6f}"


def request_for(kind: str, rng: random.Random, city: Extent) -> str:
    layer, _, shape = kind.partition(" ")
    params = []
    if shape == "bbox":
        params.append(f"bbox={viewport(rng, city)}")
        if layer != "grid" and rng.random() < 0.2:
            params.append(
                rng.choice(["state=alarm", "sensor_type=water_level"])
                if layer == "sensors"
                else rng.choice(["severity=critical", "stage=dispatched", "category=flooding"])
            )
    query = f"?{'&'.join(params)}" if params else ""
    return f"/api/v1/map/layers/{layer}{query}"


@dataclass
class Results:
    latency: dict[str, list[float]]
    size: dict[str, list[int]]
    lag: list[float]
    errors: dict[str, int]
    elapsed: float
    sent: int


async def drive(
    base: str,
    token: str,
    rate: float,
    warmup: float,
    seconds: float,
    city: Extent,
    on_start: Callable[[], None] = lambda: None,
) -> Results:
    """``warmup`` then ``seconds`` of requests at ``rate``; only the second part counts.

    One session throughout: the measured part starts on warm connections.
    """
    rng = random.Random(2)
    kinds, weights = zip(*MIX, strict=True)
    skip = int(rate * warmup)
    n = skip + int(rate * seconds)
    plan = [(kind, request_for(kind, rng, city)) for kind in rng.choices(kinds, weights, k=n)]
    latency: dict[str, list[float]] = defaultdict(list)
    size: dict[str, list[int]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    lag: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(limit=1_000)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as client:
        loop = asyncio.get_running_loop()

        async def one(kind: str, path: str, due: float, counted: bool) -> None:
            if counted:
                lag.append(loop.time() - due)
            try:
                async with client.get(path, headers=headers) as r:
                    body = await r.read()
                    ok = r.status == 200 and body.startswith(b'{"type":"FeatureCollection"')
                    problem = "" if ok else f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            if not counted:
                return
            if problem:
                errors[problem] += 1
            else:
                latency[kind].append(loop.time() - due)
                size[kind].append(len(body))

        tasks = set()
        begin = loop.time() + 0.05
        start = begin + warmup
        for i, (kind, path) in enumerate(plan):
            due = begin + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == skip:  # off the loop: reading /proc takes a few milliseconds
                loop.run_in_executor(None, on_start)
            task = asyncio.create_task(one(kind, path, due, i >= skip))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))
        elapsed = loop.time() - start
    return Results(dict(latency), dict(size), lag, dict(errors), elapsed, n - skip)


class CpuMeter:
    """CPU time over the measured window: the host's, the API's process group's, ours."""

    def __init__(self, api_group: int) -> None:
        self.api_group = api_group
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.start: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.wall = 0.0

    def sample(self) -> tuple[float, float, float]:
        ticks = procstat.HostTicks.now()
        host = (ticks.busy + ticks.steal) / self.ticks
        api = 0.0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == self.api_group:  # field 5, pgrp
                api += (int(stat[11]) + int(stat[12])) / self.ticks  # utime + stime
        return host, api, time.process_time()

    def begin(self) -> None:
        self.start = self.sample()
        self.wall = time.monotonic()

    def report(self) -> str:
        wall = time.monotonic() - self.wall
        host, api, client = (b - a for a, b in zip(self.start, self.sample(), strict=True))
        cores = os.cpu_count() or 1
        return (
            f"CPU over the run: host {host / wall / cores:.0%} busy of {cores} cores;"
            f" API workers {api / wall:.2f} cores, load client {client / wall:.2f} cores,"
            f" the rest (PostgreSQL, anything else on the host) {(host - api - client) / wall:.2f}"
        )


# -- report --------------------------------------------------------------------------------


def quantiles(values: list[float]) -> tuple[float, float, float, float]:
    v = sorted(values)

    def at(q: float) -> float:
        return v[min(len(v) - 1, int(q * len(v)))] * 1000

    return at(0.50), at(0.90), at(0.99), v[-1] * 1000


def report(r: Results, args: argparse.Namespace, churned: int) -> bool:
    done = sum(len(v) for v in r.latency.values())
    errors = sum(r.errors.values())
    mode = "without the cache" if args.no_cache else "with the cache"
    print(
        f"map layers {mode}: {args.sensors:,} sensors, {args.incidents:,} open incidents,"
        f" uvicorn workers {args.workers}, {os.cpu_count()} cores shared by client, API and"
        " PostgreSQL"
    )
    print(
        f"  offered {args.rate:,.0f} requests/s for {args.seconds:.0f} s (open loop):"
        f" {done:,} of {r.sent:,} answered in {r.elapsed:.1f} s = {done / r.elapsed:,.1f}/s,"
        f" errors {errors} {r.errors or ''}"
    )
    p50, _, p99, top = quantiles(r.lag)
    print(
        f"  client send lag p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {top:.1f} ms;"
        f" map position advanced {churned} times during the run (each time incidents changed)"
    )
    print(f"  {'layer':<16}{'n':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'avg KB':>9}")
    everything: list[float] = []
    for kind, _ in MIX:
        values = r.latency.get(kind, [])
        everything += values
        if values:
            sizes = r.size[kind]
            row = "".join(f"{x:>9.1f}" for x in quantiles(values))
            print(f"  {kind:<16}{len(values):>7}{row}{sum(sizes) / len(sizes) / 1024:>9.0f}")
    if not everything:
        print("  no answers")
        return False
    row = "".join(f"{x:>9.1f}" for x in quantiles(everything))
    print(f"  {'all':<16}{len(everything):>7}{row}")
    p99 = quantiles(everything)[2]
    met = p99 <= TARGET_P99_MS and errors == 0 and done / r.elapsed >= 0.98 * args.rate
    print(
        f"  target p99 <= {TARGET_P99_MS:.0f} ms at {args.rate:,.0f}/s, no errors:"
        f" {'met' if met else 'NOT met'} (p99 {p99:.1f} ms)"
    )
    return met


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--incidents", type=int, default=5_000)
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load not counted")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--no-cache", action="store_true", help="every request queries PostgreSQL")
    ap.add_argument(
        "--churn", type=float, default=1.0, help="seconds between incident changes (0: none)"
    )
    args = ap.parse_args()

    with ExitStack() as stack:
        settings = fresh_settings(stack, "bench_map", "bench", CITYOPS_DB_POOL_SIZE="8")
        t0 = time.perf_counter()
        city = fill(settings, args.sensors, args.incidents)
        print(
            f"filled {args.sensors:,} sensors and {args.incidents:,} incidents"
            f" in {time.perf_counter() - t0:.1f} s"
        )
        factory = (
            "bench.bench_map:app_without_cache"
            if args.no_cache
            else "cityops.bootstrap:app_from_env"
        )
        api, base = start_api(stack, args.workers, factory)
        token = issue_token(settings, "bench-map", "operator")
        stop = threading.Event()
        updater = threading.Thread(
            target=churn, args=(settings.database_url, stop, args.churn), daemon=True
        )
        if args.churn > 0:
            updater.start()
        cpu = CpuMeter(api.pid)
        before = _position(settings)
        try:
            results = asyncio.run(
                drive(base, token, args.rate, args.warmup, args.seconds, city, cpu.begin)
            )
            usage = cpu.report()
            advanced = _position(settings) - before
        finally:
            stop.set()
            if updater.is_alive():
                updater.join(10)
        report(results, args, advanced)
        print(f"  {usage}")


def _position(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row: Any = conn.execute("SELECT max(notification_id) FROM map_tracking").fetchone()
        return int(row[0] or 0)


if __name__ == "__main__":
    main()

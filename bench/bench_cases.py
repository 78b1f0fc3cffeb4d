"""Service-case commands through the HTTP API against the PostgreSQL event store.

Each case is three commands over HTTP, as the people doing them would send them:
submit (operator, bearer token; half with a citizen's phone, which is sealed), dispatch
(dispatcher: register, and the policy assigns the jurisdiction's department) and
resolve (the department). The API runs under uvicorn with ``--workers``; the client
is asyncio + httpx with ``--concurrency`` cases in flight. Prints cases/s end to end and
latency percentiles per command.

    python bench/bench_cases.py --cases 3000 --workers 2 --concurrency 48
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import psycopg

if not __package__:  # run as a file: python bench/bench_cases.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.auth import issue_token
from bench.harness import fresh_settings, start_api
from cityops.bootstrap import city_layers, seed

Headers = dict[str, str]


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    v = sorted(values)

    def at(q: float) -> float:
        return v[min(len(v) - 1, int(q * len(v)))] * 1000

    return (
        f"p50 {at(0.50):.1f} ms, p90 {at(0.90):.1f} ms, p99 {at(0.99):.1f} ms,"
        f" max {v[-1] * 1000:.1f} ms"
    )


async def call(
    client: aiohttp.ClientSession, path: str, body: dict[str, object], headers: Headers
) -> dict[str, object]:
    async with client.post(path, json=body, headers=headers) as r:
        data: dict[str, object] = await r.json()
        if r.status >= 400:
            raise RuntimeError(f"{path}: HTTP {r.status} {data}")
        return data


async def one_case(
    client: aiohttp.ClientSession,
    tokens: dict[str, Headers],
    point: tuple[float, float],
    n: int,
    lat: dict[str, list[float]],
) -> None:
    body: dict[str, object] = {
        "category": "road_damage",
        "description": f"pothole #{n}",
        "lon": point[0],
        "lat": point[1],
        "attributes": {"size": "small"},
    }
    if n % 2 == 0:
        body["contact"] = {"name": "Li Lei", "phone": f"139{n:08d}"}
    t0 = time.perf_counter()
    case = await call(client, "/api/v1/cases", body, tokens["operator"])
    lat["submit"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    case = await call(
        client, f"/api/v1/cases/{case['case_id']}/accept", {"reason": "ok"}, tokens["dispatcher"]
    )
    lat["dispatch"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    await call(
        client,
        f"/api/v1/cases/{case['case_id']}/resolve",
        {"reply": "repaired"},
        tokens[f"department:{case['department_code']}"],
    )
    lat["resolve"].append(time.perf_counter() - t0)


async def drive(
    base: str, tokens: dict[str, Headers], points: list[tuple[float, float]], cases: int, conc: int
) -> tuple[float, dict[str, list[float]], int]:
    lat: dict[str, list[float]] = {"submit": [], "dispatch": [], "resolve": []}
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(cases):
        queue.put_nowait(n)
    # aiohttp: httpx's client used more CPU than the API it measured on these 2 cores.
    connector = aiohttp.TCPConnector(limit=conc)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    await one_case(client, tokens, points[n % len(points)], n, lat)
                except (aiohttp.ClientError, RuntimeError) as exc:
                    errors += 1
                    if errors <= 3:
                        print(f"error: {exc!r}", file=sys.stderr)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return time.perf_counter() - t0, lat, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=3_000)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--concurrency", type=int, default=48, help="cases in flight")
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()

    with ExitStack() as stack:
        settings = fresh_settings(
            stack,
            "bench",
            "bench",
            CITYOPS_CASES_AUTO_ACCEPT="false",  # the dispatcher's command dispatches
            CITYOPS_DB_POOL_SIZE="8",
        )
        seed(settings)
        layers = city_layers(settings)
        rng = random.Random(7)
        points = []
        for geom in layers.grid.geometry.sample(500, random_state=7):
            c = geom.representative_point()
            points.append((c.x + rng.uniform(-1e-4, 1e-4), c.y + rng.uniform(-1e-4, 1e-4)))
        tokens = {
            "operator": bearer(issue_token(settings, "bench-op", "operator")),
            "dispatcher": bearer(issue_token(settings, "bench-disp", "dispatcher")),
        }
        for code in layers.jurisdictions.department_code:
            tok = issue_token(settings, f"bench-{code}", "department", department=str(code))
            tokens[f"department:{code}"] = bearer(tok)
        _, base = start_api(stack, args.workers)
        asyncio.run(drive(base, tokens, points, args.warmup, min(args.concurrency, 16)))
        elapsed, lat, errors = asyncio.run(
            drive(base, tokens, points, args.cases, args.concurrency)
        )
        done = len(lat["resolve"])
        print(
            f"cases: {done} of {args.cases} completed ({errors} errors) in {elapsed:.1f} s:"
            f" {done / elapsed:,.0f} cases/s, {3 * done / elapsed:,.0f} commands/s"
            f" (uvicorn workers {args.workers}, concurrency {args.concurrency}, 2 cores shared"
            " by client, API and PostgreSQL)"
        )
        for name, values in lat.items():
            print(f"  {name:<9} {percentiles(values)}")
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM city_events WHERE topic LIKE %s",
                ("%ServiceCase.CaseResolved",),
            ).fetchone()
        print(f"  CaseResolved events stored: {row[0] if row else 0}")


if __name__ == "__main__":
    main()

"""Service-case commands through the HTTP API against the PostgreSQL event store.

Each case is three commands over HTTP, as the people doing them would send them:
submit (operator, bearer token; half with a citizen's phone, which is sealed), dispatch
(dispatcher: register, and the policy assigns the jurisdiction's department) and
resolve (the department). The API runs under uvicorn with ``--workers``; the client
is asyncio + aiohttp with ``--concurrency`` cases in flight. Prints cases/s end to end and
latency percentiles per command.

``--in-process THREADS``: the same three commands with no HTTP, ``ServiceDesk`` straight
on the event store from that many threads (group commit shares their transactions).
``--json``: the figures as one JSON object, printed last.

CPU time per command, from /proc over the measured run: the API (uvicorn and its
workers), PostgreSQL (the cluster's processes) and this client. Less noisy than the rates
when something else runs on the machine. ``--profile DIR``: py-spy on each API worker
for ``--profile-seconds`` of the measured run (flame graph and raw stacks per worker;
``--profile-gil``: only the thread holding the GIL, the workers' Python work).
``--no-audit-chain``: drops the log's hash-chain trigger (infra/audit.sql) in the
throwaway database, to measure what it costs; the append-only guards stay.

    python bench/bench_cases.py --cases 3000 --workers 2 --concurrency 48
    python bench/bench_cases.py --cases 3000 --in-process 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import psycopg

if not __package__:  # run as a file: python bench/bench_cases.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.auth import issue_token
from bench import procstat
from bench.harness import fresh_settings, start_api
from bench.pyspy import finish_profiles, start_profiles
from cityops.bootstrap import as_owner, city_app, city_layers, seed, service_desk
from core.case.commands import Accept, Resolve
from core.case.desk import ServiceDesk, SubmitCase
from core.commands import CommandContext
from core.personal import Contact
from infra.pgstore import make_pool
from infra.settings import Settings

Headers = dict[str, str]


def bearer(token: str) -> Headers:
    return {"Authorization": f"Bearer {token}"}


def quantiles_ms(values: list[float]) -> dict[str, float]:
    v = sorted(values)

    def at(q: float) -> float:
        return round(v[min(len(v) - 1, int(q * len(v)))] * 1000, 1)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(v[-1] * 1000, 1)}


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    q = quantiles_ms(values)
    return f"p50 {q['p50']} ms, p90 {q['p90']} ms, p99 {q['p99']} ms, max {q['max']} ms"


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


def in_process(
    desk: ServiceDesk, points: list[tuple[float, float]], cases: int, threads: int
) -> tuple[float, dict[str, list[float]], int]:
    """The three commands of each case through the desk, ``threads`` at a time."""
    lat: dict[str, list[float]] = {"submit": [], "dispatch": [], "resolve": []}
    errors = 0
    lock = threading.Lock()
    next_case = iter(range(cases))

    def one(n: int) -> None:
        lon, lat_ = points[n % len(points)]
        contact = Contact.parse(name="Li Lei", phone=f"139{n:08d}") if n % 2 == 0 else Contact()
        cmd = SubmitCase(
            channel="operator",
            external_id=f"bench-{n}-{time.monotonic_ns()}",
            category="road_damage",
            description=f"pothole #{n}",
            lon=lon,
            lat=lat_,
            attributes={"size": "small"},
            contact=contact,
        )
        t0 = time.perf_counter()
        case = desk.submit(cmd, "operator:bench", f"bench:{n}")
        t1 = time.perf_counter()
        case = desk.execute(case.id, Accept("ok"), CommandContext("dispatcher:bench", f"b:{n}"))
        t2 = time.perf_counter()
        desk.execute(case.id, Resolve("repaired"), CommandContext("department:bench", f"b:{n}"))
        t3 = time.perf_counter()
        with lock:
            lat["submit"].append(t1 - t0)
            lat["dispatch"].append(t2 - t1)
            lat["resolve"].append(t3 - t2)

    def worker() -> None:
        nonlocal errors
        while True:
            with lock:
                n = next(next_case, None)
            if n is None:
                return
            try:
                one(n)
            except Exception as exc:  # counted and shown; the run goes on
                with lock:
                    errors += 1
                    if errors <= 3:
                        print(f"error: {exc!r}", file=sys.stderr)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - t0, lat, errors


def run_in_process(
    settings: Settings, points: list[tuple[float, float]], cases: int, warmup: int, threads: int
) -> tuple[
    float,
    dict[str, list[float]],
    int,
    tuple[dict[str, float], procstat.HostTicks],
    tuple[dict[str, float], procstat.HostTicks],
]:
    """The run's figures, and the CPU samples before and after it (the warm-up not in)."""
    groups = cpu_groups(settings, None)
    with (
        closing(city_app(settings, pool_size=max(2, threads))) as app,
        closing(make_pool(settings, max_size=max(2, threads))) as pool,
    ):
        desk = service_desk(settings, app, pool)
        in_process(desk, points, warmup, min(threads, 4))
        before = cpu_sample(groups)
        elapsed, lat, errors = in_process(desk, points, cases, threads)
        return elapsed, lat, errors, before, cpu_sample(groups)


def api_workers(api_pid: int) -> dict[str, int]:
    """The uvicorn worker processes under ``api_pid``, by name (``worker-0``, ...)."""
    table = procstat.scan()
    pids = procstat.tree([api_pid], table) - {api_pid}
    workers = []
    for pid in sorted(pids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            workers.append(pid)
    return {f"worker-{i}": pid for i, pid in enumerate(workers)}


def cpu_groups(settings: Settings, api_pid: int | None) -> list[procstat.Group]:
    """The API's process tree and PostgreSQL's (by its port)."""
    groups = [] if api_pid is None else [procstat.Group("api", [api_pid])]
    port = urlsplit(settings.database_url).port or 5432
    groups.append(procstat.find_service("postgres", port, ("postgres",)))
    return groups


def cpu_sample(groups: list[procstat.Group]) -> tuple[dict[str, float], procstat.HostTicks]:
    """CPU seconds so far of each group, and of this process alone as ``client`` (its
    tree would hold the API, which it started); and the host's ticks."""
    own = os.times()
    return {
        **procstat.sample(groups).cpu_s,
        "client": own.user + own.system,
    }, procstat.HostTicks.now()


def host_note(
    before: procstat.HostTicks, after: procstat.HostTicks
) -> tuple[str, dict[str, float]]:
    """How busy the machine was, and how much time its hypervisor took (steal): a run
    with much steal is slower in every figure, CPU per command too."""
    shares = before.shares(after)
    return f"machine busy {shares['busy']:.0%}, steal {shares['steal']:.0%}", shares


def drop_audit_chain(settings: Settings) -> None:
    """The log without its hash chain: only the trigger that extends it goes (as the
    tables' owner, who alone may drop it)."""
    with psycopg.connect(as_owner(settings).database_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER city_events_chain ON city_events")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=3_000)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--concurrency", type=int, default=48, help="cases in flight")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument(
        "--in-process", type=int, default=0, metavar="THREADS", help="no HTTP: the desk itself"
    )
    ap.add_argument("--json", action="store_true", help="the figures as JSON, printed last")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy on each API worker")
    ap.add_argument("--profile-seconds", type=float, default=15.0)
    ap.add_argument(
        "--profile-gil", action="store_true", help="py-spy samples only the thread holding the GIL"
    )
    ap.add_argument(
        "--no-audit-chain", action="store_true", help="drop the hash chain's trigger first"
    )
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
        if args.no_audit_chain:
            drop_audit_chain(settings)
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
        if args.in_process:
            elapsed, lat, errors, before, after = run_in_process(
                settings, points, args.cases, args.warmup, args.in_process
            )
            how = f"in process, {args.in_process} threads, no HTTP"
        else:
            api, base = start_api(stack, args.workers)
            asyncio.run(drive(base, tokens, points, args.warmup, min(args.concurrency, 16)))
            groups = cpu_groups(settings, api.pid)
            profiles = []
            if args.profile:
                targets = api_workers(api.pid)
                profiles = start_profiles(
                    args.profile, targets, args.profile_seconds, gil=args.profile_gil
                )
            before = cpu_sample(groups)
            elapsed, lat, errors = asyncio.run(
                drive(base, tokens, points, args.cases, args.concurrency)
            )
            after = cpu_sample(groups)
            for name, rows in finish_profiles(profiles).items():
                print(f"  py-spy {name} (self time): {args.profile / name}.svg")
                for function, _, share in rows[:10]:
                    print(f"    {share:6.1%}  {function}")
            how = (
                f"uvicorn workers {args.workers}, concurrency {args.concurrency}, 2 cores"
                " shared by client, API and PostgreSQL"
            )
        done = len(lat["resolve"])
        cpu_ms = {
            k: round(1000 * (after[0][k] - v) / max(1, 3 * done), 3) for k, v in before[0].items()
        }
        machine, host = host_note(before[1], after[1])
        print(
            f"cases: {done} of {args.cases} completed ({errors} errors) in {elapsed:.1f} s:"
            f" {done / elapsed:,.0f} cases/s, {3 * done / elapsed:,.0f} commands/s ({how})"
        )
        for name, values in lat.items():
            print(f"  {name:<9} {percentiles(values)}")
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM city_events WHERE topic LIKE %s",
                ("%ServiceCase.CaseResolved",),
            ).fetchone()
        print(f"  CaseResolved events stored: {row[0] if row else 0}")
        print(
            "  CPU per command: "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu_ms.items())
            + f" (audit chain {'off' if args.no_audit_chain else 'on'}; {machine})"
        )
        if args.json:
            figures = {
                "mode": "in_process" if args.in_process else "http",
                "threads": args.in_process or None,
                "workers": None if args.in_process else args.workers,
                "concurrency": None if args.in_process else args.concurrency,
                "group_commit": settings.group_commit,
                "audit_chain": not args.no_audit_chain,
                "cases": done,
                "errors": errors,
                "seconds": round(elapsed, 2),
                "cases_per_s": round(done / elapsed, 1),
                "commands_per_s": round(3 * done / elapsed, 1),
                "latency_ms": {k: quantiles_ms(v) for k, v in lat.items() if v},
                "cpu_ms_per_command": cpu_ms,
                "machine": host,
            }
            print(json.dumps(figures))


if __name__ == "__main__":
    main()

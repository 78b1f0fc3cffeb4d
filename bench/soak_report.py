"""The soak run's pure parts: the kill schedule, memory growth and its verdict, the table.

Memory is sampled as RSS per logical process (``writer``, ``api``, ...), whose pid changes
when it is killed and restarted. Growth is measured only between consecutive samples of
the same pid, and not in a new process's first ``settle_s`` (imports, caches and pools
filling are not a leak): the slope of a stretch of the run is the sum of those rises over
the sum of the time they span. A process "still grows" when the last third's slope is
above a floor and at least half the first third's; it "levels off" when it started
growing and the last third's slope fell below that.

    points = [RssPoint(t=0.0, pid=7, rss_kib=50_000), RssPoint(t=60.0, pid=7, rss_kib=51_024)]
    growth = rss_growth(points, start=0.0, end=60.0)   # Growth(whole=1.0, ...) MiB/min
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

SETTLE_S = 30.0  # a restarted process's first seconds do not count towards growth
FLOOR_MIB_PER_MIN = 1.0  # slopes below this are allocator noise, not growth
STILL_GROWING = "still growing"
LEVELS_OFF = "levels off"
STEADY = "steady"
UNKNOWN = "n/a"


# -- kills ----------------------------------------------------------------------------------


def kill_schedule(
    seed: int, start: float, end: float, every_s: float, victims: Sequence[str]
) -> list[tuple[float, str]]:
    """(time, victim) pairs from ``start`` to ``end``: intervals drawn uniformly from
    [0.5, 1.5] x ``every_s``, victims uniformly from ``victims``; the same for one seed."""
    if every_s <= 0 or not victims:
        return []
    rng = random.Random(seed)
    out = []
    t = start + rng.uniform(0.5, 1.5) * every_s
    while t < end:
        out.append((t, rng.choice(list(victims))))
        t += rng.uniform(0.5, 1.5) * every_s
    return out


# -- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RssPoint:
    """One sample of one logical process: when (s since the load began), pid, RSS."""

    t: float
    pid: int
    rss_kib: int
    born: float = float("-inf")  # when this pid was started (s since the load began)


@dataclass(frozen=True)
class Growth:
    """MiB per minute over the measured window, its first third and its last third."""

    whole: float | None
    first: float | None
    last: float | None
    verdict: str


def slope(
    points: Iterable[RssPoint], start: float, end: float, settle_s: float = SETTLE_S
) -> float | None:
    """MiB/min of RSS between ``start`` and ``end``, from same-pid consecutive samples only
    (none of a pid younger than ``settle_s``); None when no such pair lies in the window."""
    rise_kib = 0.0
    span_s = 0.0
    before: RssPoint | None = None
    for p in sorted(points, key=lambda p: p.t):
        if p.t > end:
            break
        if p.t < start or p.t - p.born < settle_s:
            before = None
            continue
        if before is not None and before.pid == p.pid and p.t > before.t:
            rise_kib += p.rss_kib - before.rss_kib
            span_s += p.t - before.t
        before = p
    if span_s <= 0:
        return None
    return rise_kib / 1024 / (span_s / 60)


def verdict(first: float | None, last: float | None, floor: float = FLOOR_MIB_PER_MIN) -> str:
    """Whether growth levels off: the last third against the floor and the first third."""
    if last is None:
        return UNKNOWN
    if last > floor and (first is None or last >= 0.5 * first):
        return STILL_GROWING
    if first is not None and first > floor:
        return LEVELS_OFF
    return STEADY


def rss_growth(
    points: Sequence[RssPoint],
    start: float,
    end: float,
    settle_s: float = SETTLE_S,
    floor: float = FLOOR_MIB_PER_MIN,
) -> Growth:
    """Slopes of the whole window, its first and last thirds, and the verdict."""
    third = (end - start) / 3
    first = slope(points, start, start + third, settle_s)
    last = slope(points, end - third, end, settle_s)
    return Growth(slope(points, start, end, settle_s), first, last, verdict(first, last, floor))


# -- the table ------------------------------------------------------------------------------


def _n(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.1f}"


def print_report(report: dict[str, Any]) -> None:
    """The soak's figures as text tables (the same dict that ``--json`` prints)."""
    cfg, drain = report["config"], report["drain"]
    print(
        f"\n== soak: {report['load_s'] / 60:.1f} min of {cfg['scenario']} at"
        f" {cfg['rate_factor']:g}x ({report['sim_rate']:,.0f} msg/s,"
        f" {report['cases_rate']:g} everyday cases/s), a kill every ~{cfg['kill_every_s']:g} s"
        f" (seed {cfg['seed']}); drain {drain['outcome']} in {drain['seconds']:.0f} s"
    )
    _print_readings(report["readings"])
    _print_events(report["events"])
    _print_lag(report["lag"])
    _print_views(report["views"])
    _print_processes(report["processes"])
    _print_kills(report["kills"])
    for problem in report["problems"]:
        print(f"  ** {problem}")
    print(f"  verdict: {'PASS' if report['ok'] else 'FAIL'}  (logs: {report['logs']})")


def _print_readings(r: dict[str, Any]) -> None:
    published, acked, refused = (
        _n(r["simulator"].get(k)) for k in ("published", "acked", "rejected")
    )
    print(
        f"  readings: simulator published {published} messages, broker PUBACKed {acked}"
        f" (refused {refused}); stored {r['stored_messages']:,} messages = {r['rows']:,} rows"
    )
    print(
        f"    lost {_n(r['lost'])}{'' if r['exact'] else ' (at least)'},"
        f" duplicated rows {r['duplicate_rows']:,}, partial messages {r['partial_messages']:,},"
        f" stored but not acked {r['stored_not_acked']:,},"
        f" dead-lettered telemetry {r['deadlettered']:,};"
        f" the writer's last run skipped {_n(r['writer_skipped_duplicates'])} redelivered"
        " readings"
    )


def _print_events(e: dict[str, Any]) -> None:
    print("  events:")
    for channel, c in e["cases"].items():
        print(
            f"    {channel:8} cases acknowledged {c['acknowledged']:,},"
            f" recorded {c['recorded']:,}, dead-lettered {c['deadlettered']:,}:"
            f" lost {c['lost']:,}, duplicated {c['duplicates']:,},"
            f" recorded without an acknowledgement {c['unacknowledged']:,}"
        )
    a = e["alarms"]
    print(
        f"    alarms raised {a['raised']:,} -> sensor incidents opened {a['opened']:,},"
        f" re-triggered {a['retriggered']:,}; silences {a['silent']:,} -> incidents"
        f" {a['silent_opened']:,}; alarms without incident {a['without_incident']:,}, raised"
        f" twice without a clear {a['raised_twice']:,}, incidents without their alarm"
        f" {a['orphans']:,}, references that do not add up {a['reference_mismatch']:,}"
    )
    b = e["brain"]
    print(
        f"    urban brain: {b['links']:,} case links, duplicated {b['duplicate_links']:,},"
        f" recorded on one side only {b['one_sided_links']:,};"
        f" {b['report_incidents']:,} incidents opened by citizen reports"
    )
    bt = e.get("backtest")
    if bt:
        print(f"    backtest over the stored readings: {bt['summary']} ({bt['seconds']:.0f} s)")
    relay = e["relay"]
    print(
        f"    relay to {relay['topic']}: {relay['records']:,} records for {relay['events']:,}"
        f" events: missing {relay['missing']:,}, duplicated {relay['duplicates']:,}"
    )


def _print_lag(lag: dict[str, Any]) -> None:
    for phase in ("load", "drain"):
        p = lag[phase]
        print(
            f"  projection lag ({phase}): worst {_n(p['events'])} events,"
            f" {_n(p['seconds'], ',.1f')} s behind the log; consumer lag worst"
            f" {', '.join(f'{k} {v:,}' for k, v in p['consumers'].items()) or '-'}"
        )


def _print_views(v: dict[str, Any]) -> None:
    same = "equal" if v["equal"] else "DIFFER"
    print(f"  views rebuilt from the log ({v['rebuild_s']:.0f} s) {same} to the live views:")
    for table, (rows, digest) in v["live"].items():
        rebuilt = v["rebuilt"].get(table)
        mark = "" if rebuilt == [rows, digest] else f"  rebuilt: {rebuilt}"
        print(f"    {table:14} {rows:7,} rows {digest}{mark}")


def _print_processes(procs: list[dict[str, Any]]) -> None:
    print(
        f"  {'process':11} {'restarts':>8} {'RSS start':>10} {'RSS end':>9}"
        f" {'MiB/min':>8} {'first':>7} {'last':>7}  verdict"
    )
    for p in procs:
        g = p["growth"]
        print(
            f"  {p['name']:11} {p['restarts']:>8} {_mib(p['rss_start_kib']):>10}"
            f" {_mib(p['rss_end_kib']):>9} {_n(g['whole'], '.2f'):>8}"
            f" {_n(g['first'], '.2f'):>7} {_n(g['last'], '.2f'):>7}  {g['verdict']}"
            + ("" if p["kind"] == "pipeline" else f" ({p['kind']})")
        )
    for p in procs:
        if p["kind"] == "service" and p.get("note"):
            print(f"    {p['name']}: {p['note']}")


def _print_kills(kills: list[dict[str, Any]]) -> None:
    if not kills:
        print("  kills: none")
        return
    text = ", ".join(f"{k['process']} at {k['t']:.0f} s" for k in kills)
    print(f"  kills ({len(kills)}): {text}")

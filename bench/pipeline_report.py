"""Text tables of the ingest benchmark's results (the same dicts that ``--json`` prints)."""

from __future__ import annotations

from typing import Any


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def print_run(run: dict[str, Any]) -> None:
    """Everything measured in one run at one offered rate."""
    procs = run["processes"]
    print(
        f"\n== offered {run['offered_msg_s']:,.0f} msg/s for {run['duration_s']:.0f} s:"
        f" {procs['bridges']} bridge(s), {procs['writers']} writer(s),"
        f" monitor {'on' if procs['monitor'] else 'off'}"
        f"{' (with the writer: cityops telemetry)' if procs.get('combined') else ''},"
        f" {procs['publishers']} publisher(s),"
        f" {run['devices']:,} devices (topic prefix {run['topic_prefix']})"
    )
    print(f"  warm-up: {run['warmup']}")
    _print_publishers(run["publisher_summary"])
    _print_integrity(run)
    _print_windows(run["windows"])
    _print_rates(run)
    _print_cpu(run["cpu"])
    if run.get("profile"):
        _print_profile(run["profile"], run.get("profile_dir", ""))


def _print_publishers(pub: dict[str, Any]) -> None:
    print(
        f"  publishers: sent {pub['sent']:,}, acked {pub['acked']:,}"
        f" (PUBACK reasons {pub['ack_reasons'] or {'0x00': pub['acked']}}),"
        f" window {pub['window']:,} (broker Receive Maximum {pub['receive_maximum']:,}"
        f"{', i.e. none set' if pub['receive_maximum'] == 65535 else ''})"
    )
    print(
        f"    held back by the window {pub['blocked_episodes']:,} times, {pub['blocked_s']:.2f} s"
        f" in all; by TCP {pub['tcp_blocked_episodes']:,} times, {pub['tcp_blocked_s']:.2f} s;"
        f" batch start behind schedule p99 {pub['lag_p99_ms']:.1f} ms,"
        f" max {pub['lag_max_ms']:.1f} ms"
    )
    share = pub["cpu_share_of_machine"]
    flag = "" if share < 0.05 else "  ** above the 5 % target **"
    print(
        f"    publisher CPU {pub['cpu_s']:.2f} s = {pub['cpu_us_per_msg']:.1f} µs/msg,"
        f" {share:.1%} of the machine (on CPUs {pub['cpus']}){flag}"
    )
    for error in pub["errors"]:
        print(f"    publisher error: {error}")


def _print_integrity(run: dict[str, Any]) -> None:
    integ, drain = run["integrity"], run["drain"]
    verdict = "no loss" if integ["lost"] == 0 else f"{integ['lost']:,} LOST"
    dup = "no duplicate" if integ["duplicates"] == 0 else f"{integ['duplicates']:,} DUPLICATES"
    print(
        f"  stored: {integ['rows']:,} rows = {integ['rows'] / 3:,.0f} messages of"
        f" {integ['expected']:,} expected: {verdict}, {dup}"
        f" ({integ['partial']:,} partial, {integ['unexpected']:,} unexpected);"
        f" {drain['outcome']} {drain['waited_s']:.1f} s after the last publish"
    )
    skipped = run["writer_skipped_duplicates"]
    bridges = run["bridge_counters"]
    print(
        f"    writer skipped duplicates: {_num(skipped)};"
        f" bridges: received {_num(bridges.get('received'))},"
        f" rejected {_num(bridges.get('rejected_total'))},"
        f" Kafka errors {_num(bridges.get('kafka_errors'))}"
    )


def _print_windows(windows: list[dict[str, Any]]) -> None:
    print("  commits per 10 s window (from the first scheduled publish):")
    print(f"    {'window':>13} {'msg/s':>9} {'points/s':>10}")
    for w in windows:
        label = f"{w['start_s']:.0f}-{w['start_s'] + w['span_s']:.1f} s"
        tail = "" if w["during_load"] else "  (after the last publish)"
        print(f"    {label:>13} {w['msg_per_s']:>9,.0f} {w['points_per_s']:>10,.0f}{tail}")


def _print_rates(run: dict[str, Any]) -> None:
    sus, lat, frac = run["sustained"], run["latency"], run["fraction_of_slowest_leg"]
    print(
        f"  sustained end to end: {_num(sus['msg_per_s'])} msg/s ="
        f" {_num(sus['points_per_s'])} data points/s"
        f" (first publish to last commit {_num(sus['span_s'], '.1f')} s)"
    )
    print(
        f"  publish -> commit: p50 {_ms(lat['p50_s'])}, p99 {_ms(lat['p99_s'])},"
        f" max {_ms(lat['max_s'])}"
    )
    for label, value in frac.items():
        if value is not None:
            print(f"  end to end / {label}: {value:.0%}")


def _print_cpu(cpu: dict[str, Any]) -> None:
    print(
        f"  CPU from load start to drained ({cpu['interval_s']:.1f} s; % of the machine"
        f" during the {cpu['load_s']:.1f} s of load, {cpu['cpus']} CPUs):"
    )
    print(f"    {'process':<16} {'procs':>5} {'CPU s':>8} {'µs/msg':>8} {'% load':>7}  found")
    for g in [*cpu["groups"], cpu["pipeline_total"], cpu["publishers"]]:
        print(
            f"    {g['name']:<16} {_num(g.get('processes'), 'd'):>5} {g['cpu_s']:>8.2f}"
            f" {_num(g['us_per_msg'], ',.1f'):>8} {_num(g['share_of_machine_load'], '.1%'):>7}"
            f"  {g.get('note', '')}"
        )


def _print_profile(profile: dict[str, list[list[Any]]], directory: str) -> None:
    print(f"  py-spy (flame graphs and collapsed stacks in {directory}), top self time:")
    print("    (a profiled run is slower: the py-spy row above is what the profilers took)")
    for name, rows in profile.items():
        print(f"    {name}:")
        for func, samples, share in rows:
            print(f"      {share:6.1%} {samples:>7,}  {func}")


def print_legs_summary(legs: list[dict[str, Any]]) -> None:
    """Each leg alone (printed once, before the runs' figures)."""
    print("\nlegs alone (same services):")
    for leg in legs:
        rate = _num(leg["msg_per_s"])
        note = f"  ({leg['note']})" if leg["note"] else ""
        print(f"  {leg['name']:<55} {rate:>9} msg/s{note}")


def print_curve(runs: list[dict[str, Any]]) -> None:
    """The sweep: one line per offered rate."""
    print("\nsweep (same services; fresh topics, share group and readings table per rate):")
    head = (
        f"  {'offered':>8} {'sustained':>9} {'points/s':>9} {'lost':>8} {'dup':>6}"
        f" {'p50':>9} {'p99':>9} {'µs/msg':>8} {'pub CPU':>7}  drain"
    )
    print(head)
    for run in runs:
        integ, lat, sus = run["integrity"], run["latency"], run["sustained"]
        total = run["cpu"]["pipeline_total"]["us_per_msg"]
        print(
            f"  {run['offered_msg_s']:>8,.0f} {_num(sus['msg_per_s']):>9}"
            f" {_num(sus['points_per_s']):>9} {integ['lost']:>8,} {integ['duplicates']:>6,}"
            f" {_ms(lat['p50_s']):>9} {_ms(lat['p99_s']):>9} {_num(total, ',.1f'):>8}"
            f" {run['publisher_summary']['cpu_share_of_machine']:>7.1%}  {run['drain']['outcome']}"
        )

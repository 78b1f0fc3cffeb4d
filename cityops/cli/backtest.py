"""``cityops audit backtest``: re-run a rules version over a stored window, read-only."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError

from core.backtest.rules import AlarmEpisode, BacktestReport, CorrelationOutcome, Decision
from infra.backtest import BacktestError, BacktestRequest, run_backtest
from infra.settings import Settings


def _instant(text: str, name: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 instant: {text!r}", param_hint=name) from None


def _line(ep: AlarmEpisode) -> str:
    at = datetime.fromtimestamp(ep.raised_at).astimezone().isoformat(timespec="seconds")
    return f"  {at} {ep.device_id} {ep.rule_id} v{ep.rule_version} {ep.severity} ({ep.value:g})"


def _summary(report: BacktestReport) -> str:
    out = [
        f"window {report.window_from} .. {report.window_to}: {report.readings} readings",
        f"rules v{report.rules_version} against live v"
        + ",".join(str(v) for v in report.live_rules_versions or [report.rules_version]),
        f"matched {len(report.matched)}, severity differs {len(report.severity_differs)},"
        f" would not have opened {len(report.would_not_have_opened)},"
        f" would have opened additionally {len(report.would_have_opened)}",
    ]
    if report.would_not_have_opened:
        out.append("would not have opened:")
        out.extend(_line(e) for e in report.would_not_have_opened)
    if report.would_have_opened:
        out.append("would have opened additionally:")
        out.extend(_line(e) for e in report.would_have_opened)
    if report.severity_differs:
        out.append("severity differs (live -> backtest):")
        out.extend(
            f"{_line(m.live)} -> {m.backtest.severity}/{m.backtest.peak_severity}"
            for m in report.severity_differs
        )
    if report.correlation is not None:
        out.extend(_correlation(report.correlation))
    out.append("identical" if report.identical else "differences found")
    return "\n".join(out)


def _decision(d: Decision) -> str:
    version = "" if d.rule_version is None else f"v{d.rule_version}"
    rule = f" ({' '.join(x for x in (d.rule_id, version) if x)})" if d.rule_id or version else ""
    what = {
        "link": f"case {d.subject} -> incident {d.outcome}",
        "cluster": f"incident {d.subject} opened by reports, {d.outcome}",
        "sensor_check": f"case {d.subject}: {d.outcome}",
        "confirmation": f"incident {d.subject} confirmed by reports -> {d.outcome}",
        "merge": f"incident {d.subject} merged into {d.outcome}",
    }[d.kind]
    return f"{what}{rule}"


def _correlation(c: CorrelationOutcome) -> list[str]:
    out = [
        f"correlation v{c.version} against live v"
        + (",".join(str(v) for v in c.live_versions) or "-")
        + f": {c.triggers} cases accepted / incidents opened replayed"
    ]
    for kind, d in c.diffs.items():
        out.append(f"{kind}: same {len(d.same)}, missing {len(d.missing)}, extra {len(d.extra)}")
        out.extend(f"  missing: {_decision(x)}" for x in d.missing)
        out.extend(f"  extra: {_decision(x)}" for x in d.extra)
    if c.not_applied:
        out.append(f"{c.not_applied} recorded events did not fit the replayed state")
    out.extend(f"correlator refused: {e}" for e in c.errors)
    return out


def backtest_command(
    from_: Annotated[str, typer.Option("--from", help="window start, ISO 8601 with zone")],
    to: Annotated[str, typer.Option("--to", help="window end (exclusive), ISO 8601 with zone")],
    rules: Annotated[
        Path | None,
        typer.Option(help="sensor rules YAML (default: the live core/sensor/rules.yaml)"),
    ] = None,
    correlation: Annotated[
        Path | None,
        typer.Option(help="correlation rules YAML (default: the live core/brain/correlation.yaml)"),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="print the full report as JSON")] = False,
) -> None:
    """Re-run sensor and correlation rules over a stored window; compare with what happened."""
    request = BacktestRequest(
        _instant(from_, "--from"), _instant(to, "--to"), rules=rules, correlation=correlation
    )
    try:
        settings = Settings()
    except ValidationError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None
    try:
        report = run_backtest(settings.database_url, request)
    except BacktestError as exc:
        typer.echo(f"backtest: {exc}", err=True)
        raise typer.Exit(2) from None
    if json:
        typer.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(_summary(report))

"""``cityops audit backtest``: re-run a rules version over a stored window, read-only."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError

from cityops.backtest import BacktestError, BacktestRequest, run_backtest
from cityops.settings import Settings
from core.backtest import AlarmEpisode, BacktestReport


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
    out.append(f"links recorded in the window: {len(report.links_recorded)}")
    if report.correlation_note:
        out.append(f"note: {report.correlation_note}")
    out.append("identical" if report.alarms_identical else "differences found")
    return "\n".join(out)


def backtest_command(
    from_: Annotated[str, typer.Option("--from", help="window start, ISO 8601 with zone")],
    to: Annotated[str, typer.Option("--to", help="window end (exclusive), ISO 8601 with zone")],
    rules: Annotated[
        Path | None, typer.Option(help="sensor rules YAML (default: the live core/rules.yaml)")
    ] = None,
    correlation: Annotated[
        Path | None,
        typer.Option(help="correlation rules YAML (default: the live core/correlation.yaml)"),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="print the full report as JSON")] = False,
) -> None:
    """Re-run sensor rules over stored readings and compare with the incidents recorded."""
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

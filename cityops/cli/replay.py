"""``cityops replay``: the city's map as of an instant, or the changes in a window.

cityops replay --at 2025-11-21T08:00:00Z --out city.json   # the map then (GeoJSON)
cityops replay --position 120000                            # the same, by log position
cityops replay --from T1 --to T2 [--out changes.ndjson]     # the window, NDJSON
cityops replay --snapshot [--every 20000]                   # take missing checkpoints
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import psycopg

app = typer.Typer(add_completion=False, help=__doc__)


def _instant(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{raw!r} is not an ISO 8601 instant") from None


@app.callback(invoke_without_command=True)
def replay(
    at: Annotated[str | None, typer.Option(help="ISO 8601 instant with a zone")] = None,
    position: Annotated[int | None, typer.Option(help="a log position instead of --at")] = None,
    start: Annotated[str | None, typer.Option("--from", help="window start (exclusive)")] = None,
    end: Annotated[str | None, typer.Option("--to", help="window end (inclusive)")] = None,
    out: Annotated[Path | None, typer.Option(help="file to write (default: stdout)")] = None,
    snapshot: Annotated[bool, typer.Option(help="take the checkpoints missing")] = False,
    every: Annotated[int | None, typer.Option(help="events between checkpoints")] = None,
) -> None:
    """Replay the city's views from the log (see the examples above)."""
    import orjson
    import psycopg

    from cityops.bootstrap import city_app, city_layers, projections
    from infra.settings import Settings
    from projections import replay as engine

    modes = sum((at is not None or position is not None, start is not None, snapshot))
    if modes != 1 or (at is not None and position is not None):
        raise typer.BadParameter("give one of --at/--position, --from/--to, or --snapshot")
    settings = Settings()
    app_ = city_app(settings, pool_size=1)
    try:
        if snapshot:
            taken = engine.snapshot_up_to_head(
                settings.database_url,
                app_.mapper,
                projections(),
                every=every or engine.SNAPSHOT_EVERY,
            )
            with psycopg.connect(settings.database_url) as conn:
                storage = engine.snapshot_storage(conn)
            typer.echo(f"checkpoints taken: {len(taken)} {taken[-3:]}; storage: {storage}")
            return
        sink: IO[bytes] = out.open("wb") if out else sys.stdout.buffer
        try:
            with psycopg.connect(settings.database_url) as conn:
                if start is not None:
                    _window(conn, _instant(start), _instant(end), sink)
                    return
                moment = _instant(at)
                where = (
                    engine.at_instant(conn, moment)
                    if moment is not None
                    else engine.at_position(conn, position or 0)
                )
                conn.commit()
                cells = city_layers(settings).grid[["grid_code", "district_code", "geometry"]]
                grid = orjson.loads(cells.to_json(drop_id=True))
                sink.write(
                    engine.city_at(
                        conn, app_.mapper, projections(), where, grid=grid, requested=moment
                    )
                )
                sink.write(b"\n")
        except engine.ReplayError as exc:
            typer.echo(f"replay: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            if out:
                sink.close()
    finally:
        app_.close()


def _window(
    conn: psycopg.Connection[Any], lo: datetime | None, hi: datetime | None, sink: IO[bytes]
) -> None:
    """Every page of the window, one after the other (the header once, the end once)."""
    import orjson

    from projections import replay as r

    if hi is None:
        raise typer.BadParameter("--from needs --to")
    start = r.at_instant(conn, lo, strict=False) if lo else r.Position(0, None)
    window = r.Window.check(start, r.at_instant(conn, hi), None, r.MAX_PAGE, r.MAX_WINDOW)
    conn.commit()
    events = 0
    while True:
        lines = r.changes(conn, window)
        header = next(lines)
        if events == 0 and window.after == start.position:
            sink.write(header)
        nxt = None
        for chunk in lines:
            if chunk.startswith(b'{"kind":"end"'):
                end = orjson.loads(chunk)
                events += end["events"]
                nxt = end["next_after"]
                break
            sink.write(chunk)
        if nxt is None:
            sink.write(orjson.dumps({"kind": "end", "events": events, "next_after": None}) + b"\n")
            return
        window = r.Window(window.start, window.end, nxt, window.limit)

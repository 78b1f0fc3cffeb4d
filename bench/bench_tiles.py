"""Vector tiles of a city-sized grid and sensor fleet: time per tile cold, warm and revalidated.

Generates the demo city with ``--cell-m`` cells (25 m: 116,640 cells) once into
``var/bench-city-<cell>m``, fills a throwaway database's sensors read model with
``--sensors`` rows spread over it (written directly, as the map projection would:
``bench.bench_map.fill``), starts the API under uvicorn with one worker (so that a tile's
later requests meet the cache its first one filled) and asks for every tile of the city
(as the tilesets' limits give them) at each of ``--zooms``, one request at a time over a
kept-alive connection:

- cold: the first request of each tile (the API renders it: the grid from its index in
  memory, the sensors from one range query);
- warm: ``--rounds`` more requests of each (the grid's tiles come from the cache; the
  sensors' after one query of the tile's signature);
- 304: ``--rounds`` requests with the tile's ETag in If-None-Match.

Times are the client's, request sent to body read. Bytes are the MVT bodies'; features
are counted by decoding them (``mapbox_vector_tile``), outside the timing. The very first
tile request, which builds the grid's index, is reported on its own.

    python bench/bench_tiles.py                              # 25 m cells, z14
    python bench/bench_tiles.py --zooms 13,14,15 --json      # one JSON object last
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import mapbox_vector_tile
import morecantile
import yaml

if not __package__:  # run as a file: python bench/bench_tiles.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.auth import issue_token
from bench.bench_map import fill
from bench.harness import fresh_settings, start_api
from infra.settings import Settings
from simulations.city import CITY_YAML, generate_city

WMQ = morecantile.tms.get("WebMercatorQuad")
LAYERS = ("grid", "sensors")


def bench_city(cell_m: float) -> Path:
    """The demo city with ``cell_m`` cells, generated on first use."""
    data_dir = Path(f"var/bench-city-{cell_m:g}m")
    manifest = data_dir / CITY_YAML
    if manifest.is_file() and yaml.safe_load(manifest.read_text()).get("cell_m") == cell_m:
        return data_dir
    defaults = Settings()
    started = time.perf_counter()
    layers = generate_city(
        defaults.city_seed, defaults.sim_sensors, data_dir, fmt="gpkg", cell_m=cell_m
    )
    print(f"generated {len(layers.grid):,} cells in {time.perf_counter() - started:.1f} s")
    return data_dir


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest rank: with few values, p99 is the slowest one."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_get(client: httpx.Client, path: str, headers: dict[str, str]) -> tuple[float, Any]:
    started = time.perf_counter()
    answer = client.get(path, headers=headers)
    body = answer.content
    return (time.perf_counter() - started) * 1000, (answer, body)


def tiles_of(client: httpx.Client, layer: str) -> dict[int, list[tuple[int, int]]]:
    """The (row, column) of every tile the layer's tileset offers, by tile matrix."""
    doc = client.get(f"/ogc/collections/{layer}/tiles/WebMercatorQuad").raise_for_status().json()
    return {
        int(lim["tileMatrix"]): [
            (row, col)
            for row in range(lim["minTileRow"], lim["maxTileRow"] + 1)
            for col in range(lim["minTileCol"], lim["maxTileCol"] + 1)
        ]
        for lim in doc["tileMatrixSetLimits"]
    }


def run_layer(
    client: httpx.Client, layer: str, z: int, tiles: list[tuple[int, int]], rounds: int
) -> dict[str, Any]:
    paths = [f"/ogc/collections/{layer}/tiles/WebMercatorQuad/{z}/{r}/{c}" for r, c in tiles]
    cold: list[float] = []
    sizes: list[int] = []
    features: list[int] = []
    etags: dict[str, str] = {}
    empty = 0
    for path in paths:
        ms, (answer, body) = timed_get(client, path, {})
        if answer.status_code not in (200, 204):
            raise RuntimeError(f"{path}: HTTP {answer.status_code} {answer.text[:200]}")
        cold.append(ms)
        etags[path] = answer.headers["etag"]
        if answer.status_code == 204:
            empty += 1
            continue
        sizes.append(len(body))
        decoded = mapbox_vector_tile.decode(body)
        features.append(len(decoded[layer]["features"]))
    warm: list[float] = []
    revalidated: list[float] = []
    for _ in range(rounds):
        for path in paths:
            warm.append(timed_get(client, path, {})[0])
        for path in paths:
            ms, (answer, _) = timed_get(client, path, {"If-None-Match": etags[path]})
            if answer.status_code != 304:
                raise RuntimeError(f"{path}: HTTP {answer.status_code} to If-None-Match")
            revalidated.append(ms)

    def stats(values: Sequence[float]) -> dict[str, float]:
        return {
            "p50": round(quantile(values, 0.5), 2),
            "p99": round(quantile(values, 0.99), 2),
            "max": round(max(values), 2),
        }

    return {
        "zoom": z,
        "tiles": len(paths),
        "empty": empty,
        "cold_ms": stats(cold),
        "warm_ms": stats(warm),
        "not_modified_ms": stats(revalidated),
        "bytes": {**stats(sizes), "mean": round(sum(sizes) / len(sizes))} if sizes else {},
        "features": {**stats(features), "mean": round(sum(features) / len(features))}
        if features
        else {},
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"vector tiles: {result['cells']:,} grid cells ({result['cell_m']:g} m),"
        f" {result['sensors']:,} sensors, 1 uvicorn worker; client, API and PostgreSQL"
        " on the same machine"
    )
    print(f"  first tile request (builds the grid's index): {result['first_ms']:,.0f} ms")
    print(
        f"  {'layer':<8}{'z':>3}{'tiles':>6}{'204':>5}  {'cold p50/p99 ms':>17}"
        f"  {'warm p50/p99':>14}  {'304 p50/p99':>13}  {'KB p50/max':>12}  {'features p50/max':>17}"
    )
    for row in result["runs"]:
        b, f = row["bytes"], row["features"]
        kb = f"{b['p50'] / 1024:.0f}/{b['max'] / 1024:.0f}" if b else "-"
        feats = f"{f['p50']:,.0f}/{f['max']:,.0f}" if f else "-"
        print(
            f"  {row['layer']:<8}{row['zoom']:>3}{row['tiles']:>6}{row['empty']:>5}"
            f"  {row['cold_ms']['p50']:>8.1f}/{row['cold_ms']['p99']:<8.1f}"
            f"  {row['warm_ms']['p50']:>6.2f}/{row['warm_ms']['p99']:<7.2f}"
            f"  {row['not_modified_ms']['p50']:>6.2f}/{row['not_modified_ms']['p99']:<6.2f}"
            f"  {kb:>12}  {feats:>17}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell-m", type=float, default=25.0, help="25 m gives 116,640 cells")
    ap.add_argument("--sensors", type=int, default=100_000)
    ap.add_argument("--zooms", default="14", help="comma-separated tile matrices")
    ap.add_argument("--rounds", type=int, default=5, help="warm and 304 requests per tile")
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    args = ap.parse_args()
    zooms = [int(z) for z in args.zooms.split(",")]

    data_dir = bench_city(args.cell_m)
    with ExitStack() as stack:
        settings = fresh_settings(
            stack,
            "bench_tiles",
            CITYOPS_DATA_DIR=str(data_dir),
            # The generated city of ``bench_city``: the default (real Shanghai) would
            # replace it with its own 9,350 cells.
            CITYOPS_CITY="generated",
            CITYOPS_RATE_LIMIT_PUBLIC="0",  # a map client's tile requests, not an abuser's
        )
        started = time.perf_counter()
        city = fill(settings, args.sensors, 0)
        print(f"filled {args.sensors:,} sensors in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        _, base = start_api(stack, 1)
        print(f"API answering after {time.perf_counter() - started:.1f} s")
        token = issue_token(settings, "bench-tiles", "operator")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            centre = WMQ.tile((city.west + city.east) / 2, (city.south + city.north) / 2, 18)
            first, (answer, _) = timed_get(
                client, f"/ogc/collections/grid/tiles/WebMercatorQuad/18/{centre.y}/{centre.x}", {}
            )
            if answer.status_code != 200:
                raise RuntimeError(f"first tile: HTTP {answer.status_code} {answer.text[:200]}")
            offered = {layer: tiles_of(client, layer) for layer in LAYERS}
            runs = []
            for z in zooms:
                for layer in LAYERS:
                    if z not in offered[layer]:
                        print(f"  {layer} has no tiles at z{z}: skipped")
                        continue
                    tiles = offered[layer][z]
                    runs.append({"layer": layer, **run_layer(client, layer, z, tiles, args.rounds)})
        cells = int(yaml.safe_load((data_dir / CITY_YAML).read_text())["counts"]["grid_cells"])
        result = {
            "cell_m": args.cell_m,
            "cells": cells,
            "sensors": args.sensors,
            "first_ms": round(first, 1),
            "runs": runs,
        }
        report(result)
        if args.json:
            print(json.dumps(result))


if __name__ == "__main__":
    main()

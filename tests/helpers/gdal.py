"""GDAL's command-line tools (Debian's gdal-bin) run from a test, with a deadline."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GDAL_TIMEOUT = 120  # seconds; ogr2ogr pages through a whole collection over HTTP


def run_gdal(*command: str, env: Mapping[str, str] | None = None) -> str:
    """Run ``command`` (``ogrinfo ...``, ``ogr2ogr ...``); its output, once it has succeeded."""
    done = subprocess.run(
        list(command),
        env=env,
        capture_output=True,
        text=True,
        timeout=GDAL_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def ogr2ogr_geojson(
    out: Path, source: str, *args: str, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``source`` converted by ``ogr2ogr`` (with ``args``) to GeoJSON in ``out``, parsed."""
    run_gdal("ogr2ogr", "-f", "GeoJSON", str(out), source, *args, env=env)
    return dict(json.loads(out.read_text()))

"""The page's vector tile decoder (api/static/vendor/mvt.js, built by scripts/web.sh) reads
the grid's tiles as ``mapbox_vector_tile`` does.

The bundle is imported by Node, as the page imports it (an ES module exporting
``VectorTile`` and ``PbfReader``), and decodes tiles ``projections.tiles`` renders from a
small lattice of cells made here: every feature's properties and rings, in tile units,
must be those the Python decoder reads. Needs Node (it runs scripts/web.sh too).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import mapbox_vector_tile
import morecantile
import pytest
import shapely

from projections.tiles import PolygonTiles, TileId

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "api" / "static" / "vendor" / "mvt.js"
WMQ = morecantile.tms.get("WebMercatorQuad")

# What vtiles.js does with the bundle: each polygon's properties and its rings' points.
DECODE = """
const { VectorTile, PbfReader } = await import(process.argv[1]);
const bytes = new Uint8Array(require('fs').readFileSync(process.argv[2]));
const layer = new VectorTile(new PbfReader(bytes)).layers.grid;
const out = { extent: layer.extent, features: [] };
for (let i = 0; i < layer.length; i++) {
  const f = layer.feature(i);
  out.features.push({
    type: f.type,
    properties: { ...f.properties },
    rings: f.loadGeometry().map((ring) => ring.map((p) => [p.x, p.y])),
  });
}
console.log(JSON.stringify(out));
"""


def lattice(west: float, south: float, step: float, n: int) -> PolygonTiles:
    """``n`` x ``n`` square cells of ``step`` degrees from (west, south)."""
    cells, props = [], []
    for i in range(n):
        for j in range(n):
            x, y = west + i * step, south + j * step
            cells.append(shapely.box(x, y, x + step, y + step))
            props.append({"grid_code": f"C{i:02d}{j:02d}", "district_code": f"D{i // 4}"})
    return PolygonTiles("grid", cells, props, (12, 18))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None:
        pytest.skip("no Node.js: the bundle is built and read with it")
    built = subprocess.run(["bash", "scripts/web.sh"], cwd=REPO, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert BUNDLE.is_file(), "scripts/web.sh did not write api/static/vendor/mvt.js"
    # Node reads a .js file outside a "type": "module" package as CommonJS: a copy as .mjs.
    copy = tmp_path_factory.mktemp("bundle") / "mvt.mjs"
    copy.write_bytes(BUNDLE.read_bytes())
    return copy


def node_decode(bundle: Path, body: bytes, tmp: Path) -> dict[str, Any]:
    tile = tmp / "tile.mvt"
    tile.write_bytes(body)
    ran = subprocess.run(
        [
            "node",
            "--input-type=commonjs",
            "-e",
            f"(async () => {{{DECODE}}})()",
            str(bundle),
            str(tile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    decoded: dict[str, Any] = json.loads(ran.stdout)
    return decoded


def python_rings(geometry: dict[str, Any]) -> list[list[list[int]]]:
    """The rings of a decoded (Multi)Polygon, each closed as the MVT's ClosePath closes it."""
    polygons = geometry["coordinates"]
    if geometry["type"] == "Polygon":
        polygons = [polygons]
    return [[list(p) for p in ring] for polygon in polygons for ring in polygon]


@pytest.mark.parametrize("z", [12, 15])
def test_the_bundle_decodes_a_grid_tile_as_mapbox_vector_tile_does(
    bundle: Path, tmp_path: Path, z: int
) -> None:
    cells = lattice(121.40, 31.20, 0.004, 12)
    centre = WMQ.tile(121.424, 31.224, z)
    at = TileId(z, centre.y, centre.x)
    body = cells.render(at, cells.tag(at)).body
    assert body, "the lattice meets the tile"
    ours = node_decode(bundle, body, tmp_path)
    theirs = mapbox_vector_tile.decode(body, None, {"y_coord_down": True})["grid"]
    assert ours["extent"] == theirs["extent"] == 4096
    assert len(ours["features"]) == len(theirs["features"]) > 0
    for mine, expected in zip(ours["features"], theirs["features"], strict=True):
        assert mine["type"] == 3  # a polygon
        assert mine["properties"] == expected["properties"]
        assert mine["rings"] == python_rings(expected["geometry"]), mine["properties"]
    codes = {f["properties"]["grid_code"] for f in ours["features"]}
    indexes, _ = cells.features(at)
    assert codes == {cells.properties[i]["grid_code"] for i in indexes}

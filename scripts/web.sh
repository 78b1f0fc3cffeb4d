#!/usr/bin/env bash
# The page's vendored browser modules: installs web/package-lock.json's exact packages
# (npm ci) and bundles web/mvt.js (the Mapbox Vector Tile decoder) into
# api/static/vendor/mvt.js with esbuild. Skipped while that bundle is newer than the lock
# file, web/package.json and web/mvt.js. Without the bundle the page still works: it loads
# whole GeoJSON layers instead of vector tiles, and says so in the console.
set -euo pipefail
cd "$(dirname "$0")/.."

out=api/static/vendor/mvt.js
inputs=(web/package-lock.json web/package.json web/mvt.js)

fresh=1
[ -s "$out" ] || fresh=0
for f in "${inputs[@]}"; do
  [ "$fresh" -eq 1 ] && [ "$out" -nt "$f" ] || fresh=0
done
if [ "$fresh" -eq 1 ]; then
  echo "web: $out is up to date"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "web: npm is missing: install Node.js 20 with npm (Debian: apt-get install nodejs npm)," >&2
  echo "     then run scripts/web.sh again to build $out" >&2
  exit 1
fi

# --ignore-scripts: no package runs code at install; esbuild's binary comes in its
# platform package (@esbuild/linux-x64 and the like), not from its postinstall.
(cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
mkdir -p "$(dirname "$out")"
(cd web && npm run --silent bundle)
echo "web: built $out"

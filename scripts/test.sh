#!/usr/bin/env bash
# The test command: install what is missing, start throwaway PostgreSQL, Mosquitto and a
# Kafka-protocol broker on free loopback ports, run ruff, mypy and pytest, stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the operations center's browser tests; a CJK font so its Chinese labels render.
. scripts/debs.sh
install_debs "the tests" postgresql postgresql-15-postgis-3 mosquitto mosquitto-clients chromium fonts-wqy-microhei gdal-bin
# Debian starts a system mosquitto / postgresql on install; ours run on their own ports.
# TimescaleDB, built once from its source tarball when one is found (else its tests skip).
bash scripts/timescaledb.sh

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
# The page's vector tile decoder (npm packages, bundled into api/static/vendor/).
command -v npm >/dev/null || install_debs "the page's vector tile decoder" nodejs npm
echo "== web"; bash scripts/web.sh

echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy core infra workers sensors projections api gis simulations cityops bench
echo "== pytest"
exec .venv/bin/python -m cityops.testenv -- .venv/bin/pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# The test command: install what is missing, start throwaway PostgreSQL, Mosquitto and a
# Kafka-protocol broker on free loopback ports, run ruff, mypy and pytest, stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# chromium: the operations center's browser tests; a CJK font so its Chinese labels render.
for pkg in postgresql postgresql-15-postgis-3 mosquitto chromium fonts-wqy-microhei; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts a system mosquitto / postgresql on install; ours run on their own ports.
# TimescaleDB, built once from its source tarball when one is found (else its tests skip).
bash scripts/timescaledb.sh

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'

echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy core infra workers sensors projections api gis simulations cityops bench
echo "== pytest"
exec .venv/bin/python -m cityops.testenv -- .venv/bin/pytest -q -p no:cacheprovider "$@"

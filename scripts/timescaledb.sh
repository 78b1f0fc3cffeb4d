#!/usr/bin/env bash
# Installs the TimescaleDB extension into the Debian PostgreSQL 15 when it is missing,
# built once from a source tarball. Idempotent: does nothing when it is installed.
#
# Tarball, first found: $CITYOPS_TIMESCALEDB_SOURCE; timescaledb-*.tar.gz in
# <repo>/../shared/vendor/; the same beside the checkout that origin names (a clone's
# origin is the main checkout). None found: says so and exits 0 (the Timescale tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
# sha256 of each tarball this script accepts, by file name.
declare -A KNOWN_SHA256=(
  [timescaledb-2.28.3.tar.gz]=ec2f7de0ba53a473c01e0a57e09053898c6b1f7487228caff0f1d31c8cb2dedb
)

installed() {
  [ -x "$PG_CONFIG" ] || return 1
  local share lib
  share=$("$PG_CONFIG" --sharedir) && lib=$("$PG_CONFIG" --pkglibdir) || return 1
  [ -f "$share/extension/timescaledb.control" ] && [ -f "$lib/timescaledb.so" ]
}

if installed; then
  exit 0
fi

newest_in() {  # newest timescaledb-*.tar.gz in folder $1 (by version), or nothing
  [ -d "$1" ] || return 0
  local newest
  newest=$(find "$1" -maxdepth 1 -name 'timescaledb-*.tar.gz' -printf '%f\n' 2>/dev/null \
    | sort -V | tail -n 1)
  [ -z "$newest" ] || echo "$(cd "$1" && pwd)/$newest"
}

source_tarball() {
  if [ -n "${CITYOPS_TIMESCALEDB_SOURCE:-}" ]; then
    echo "$CITYOPS_TIMESCALEDB_SOURCE"
    return
  fi
  local found origin
  found=$(newest_in "$repo/../shared/vendor")
  if [ -z "$found" ]; then
    origin=$(git -C "$repo" remote get-url origin 2>/dev/null || true)
    origin=${origin#file://}
    if [ -n "$origin" ] && [ -d "$origin" ]; then
      found=$(newest_in "$(cd "$origin" && pwd)/../shared/vendor")
    fi
  fi
  echo "$found"
}

tarball=$(source_tarball)
if [ -z "$tarball" ]; then
  echo "TimescaleDB: not installed and no source tarball found; the Timescale tests will be" \
    "skipped (set CITYOPS_TIMESCALEDB_SOURCE=/path/to/timescaledb-X.Y.Z.tar.gz, or put it" \
    "in ../shared/vendor/, and run scripts/timescaledb.sh)"
  exit 0
fi
if [ ! -f "$tarball" ]; then
  echo "TimescaleDB: $tarball does not exist" >&2
  exit 1
fi

name=$(basename "$tarball")
actual=$(sha256sum "$tarball" | cut -d' ' -f1)
expected=${KNOWN_SHA256[$name]:-}
if [ -n "$expected" ] && [ "$actual" != "$expected" ]; then
  echo "TimescaleDB: $tarball has sha256 $actual, expected $expected: not building it" >&2
  exit 1
fi
[ -n "$expected" ] || echo "TimescaleDB: $name is not a known tarball (sha256 $actual); building it as given"

. "$repo/scripts/debs.sh"
install_debs "the TimescaleDB build" postgresql-server-dev-15 cmake gcc make

work=$(mktemp -d -t cityops-timescaledb-XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "TimescaleDB: building $name once (about two minutes on two cores)"
start=$SECONDS
tar xzf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n 1)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Each step only after the one before it succeeded (set -e does not apply left of ||).
{ cd "$src" &&
  ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DGENERATE_DOWNGRADE_SCRIPT=OFF -DCMAKE_BUILD_TYPE=Release -DPG_CONFIG="$PG_CONFIG" &&
  cd build &&
  make -j"$(nproc 2>/dev/null || echo 2)" &&
  $SUDO make install
} >"$work/build.log" 2>&1 || {
  trap - EXIT  # keep the build tree for a look
  tail -n 40 "$work/build.log" >&2
  echo "TimescaleDB: the build failed (last lines above; all of it in $work/build.log)" >&2
  exit 1
}
cd "$repo"
if ! installed; then
  echo "TimescaleDB: make install finished but the extension is not in $("$PG_CONFIG" --sharedir)" >&2
  exit 1
fi
echo "TimescaleDB: installed $name in $((SECONDS - start)) s"

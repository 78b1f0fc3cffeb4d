"""Start the real services the tests need, run a command against them, stop them.

    python -m cityops.testenv -- pytest -q

Exports CITYOPS_DATABASE_URL, CITYOPS_KAFKA_BOOTSTRAP, CITYOPS_MQTT_HOST/PORT/PROTOCOL, and
CITYOPS_TIMESCALEDB (1 when the PostgreSQL server preloads TimescaleDB, else 0).
"""

from __future__ import annotations

import os
import subprocess
import sys

from cityops.services import throwaway_services


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python -m cityops.testenv -- COMMAND...", file=sys.stderr)
        return 2
    with throwaway_services() as env:
        print("services: " + " ".join(f"{k}={v}" for k, v in sorted(env.items())), flush=True)
        return subprocess.run(argv, env={**os.environ, **env}, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Start the real services the tests need, run a command against them, stop them.

    python -m cityops.testenv -- pytest -q

Exports CITYOPS_DATABASE_URL, CITYOPS_KAFKA_BOOTSTRAP, CITYOPS_MQTT_HOST/PORT/PROTOCOL,
CITYOPS_TIMESCALEDB (1 when the PostgreSQL server preloads TimescaleDB, else 0), and the
Mosquitto logins (it lets no client in anonymously): the bridge's as
CITYOPS_MQTT_USERNAME/PASSWORD (every process's own), the gateway simulator's as
CITYOPS_SIM_MQTT_USERNAME/PASSWORD, and a full-access test account's as
CITYOPS_TEST_MQTT_USERNAME/PASSWORD for the tests' own clients.
"""

from __future__ import annotations

import os
import subprocess
import sys

from cityops.services import throwaway_services


def _shown(name: str, value: str) -> str:
    secret = name.endswith(("_PASSWORD", "_SECRET"))
    return f"{name}={'(set)' if secret else value}"


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python -m cityops.testenv -- COMMAND...", file=sys.stderr)
        return 2
    with throwaway_services() as env:
        # Passwords go to the command's environment only, never to the output.
        print("services: " + " ".join(_shown(k, v) for k, v in sorted(env.items())), flush=True)
        return subprocess.run(argv, env={**os.environ, **env}, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Start the real services the tests need, run a command against them, stop them.

    python -m cityops.testenv -- pytest -q

Exports CITYOPS_DATABASE_URL, CITYOPS_KAFKA_BOOTSTRAP, CITYOPS_MQTT_HOST/PORT/PROTOCOL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cityops.services import running, start_kafka, start_mosquitto, start_postgres_cluster


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python -m cityops.testenv -- COMMAND...", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="cityops-test-"))
    os.chmod(workdir, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    with running([]) as services:
        services.append(start_postgres_cluster(workdir))
        services.append(start_mosquitto(workdir))
        services.append(start_kafka(workdir))
        pg, mqtt, kafka = services
        env = dict(os.environ)
        env.update(
            CITYOPS_DATABASE_URL=pg.url,
            CITYOPS_KAFKA_BOOTSTRAP=kafka.url,
            CITYOPS_MQTT_HOST="127.0.0.1",
            CITYOPS_MQTT_PORT=mqtt.url.rsplit(":", 1)[1],
            CITYOPS_MQTT_PROTOCOL=mqtt.extra.get("protocol", "5"),
            CITYOPS_TEST_WORKDIR=str(workdir),
        )
        print(
            f"services: postgres={pg.url} mqtt={mqtt.url} kafka={kafka.url} logs={workdir}",
            flush=True,
        )
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

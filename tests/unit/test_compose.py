"""The production-shaped stack: docker-compose.yml, Dockerfile, deploy/.

No Docker engine runs on the project's machines, so the files are parsed and checked
here; ``docker compose config`` validates them too wherever a Compose v2 client exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from sensors.bridge import TOPIC_FILTER

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
MOSQUITTO = DEPLOY / "mosquitto"

INFRASTRUCTURE = ("kafka", "timescaledb", "mosquitto")
APP = (
    "seed",
    "api",
    "bridge",
    "writer",
    "monitor",
    "projector",
    "intake",
    "sla",
    "relay",
    "brain",
    "notifier",
    "pager",
    "simulator",
    "citizens",
)
LONG_RUNNING_APP = tuple(name for name in APP if name != "seed")
# Each app service runs the subcommand of its name (the gateway simulator: `simulate`).
SUBCOMMANDS = frozenset("simulate" if name == "simulator" else name for name in APP)
SECRETS = (
    "POSTGRES_PASSWORD",
    "CITYOPS_DB_PASSWORD",
    "CITYOPS_APP_DB_PASSWORD",
    "MQTT_BRIDGE_PASSWORD",
    "MQTT_SIMULATOR_PASSWORD",
    "CITYOPS_JWT_SECRET",
    "CITYOPS_PII_PEPPER",
)
DEPENDS_ON_CONDITIONS = frozenset(
    {"service_started", "service_healthy", "service_completed_successfully"}
)

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# --- helpers ---------------------------------------------------------------------------


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, enough for this file (no nesting)."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = env.get(name)
        if op in (":-", ":?"):
            present = present or None
        if present is not None:
            return present
        if op is not None and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op is not None else ""

    parts = value.split("$$")  # $$ is a literal $
    return "$".join(_VARIABLE.sub(substitute, part) for part in parts)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of the two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    assert cmd, "no command"
    return cmd.split() if isinstance(cmd, str) else [str(part) for part in cmd]


def healthcheck_test(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """``{dependency: condition}``; the short list form means ``service_started``."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def mosquitto_directives(path: Path) -> dict[str, list[str]]:
    """``{option: [value, ...]}`` of a mosquitto.conf, comments dropped."""
    directives: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            directives.setdefault(key, []).append(value.strip())
    return directives


class Acl:
    """A mosquitto acl_file: grants before any ``user`` line, patterns, per-user grants."""

    def __init__(self, text: str) -> None:
        self.anonymous: list[tuple[str, str]] = []
        self.patterns: list[tuple[str, str]] = []
        self.users: dict[str, list[tuple[str, str]]] = {}
        current: list[tuple[str, str]] = self.anonymous
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            if keyword == "user":
                current = self.users.setdefault(rest.strip(), [])
            elif keyword in ("topic", "pattern"):
                words = rest.split(" ", 1)
                grant = (words[0], words[1].strip()) if len(words) == 2 else ("readwrite", rest)
                (current if keyword == "topic" else self.patterns).append(grant)
            else:
                raise AssertionError(f"unexpected ACL line: {line!r}")

    def allows(self, username: str, access: str, topic: str) -> bool:
        """Whether ``username`` may ``read`` (subscribe) or ``write`` (publish) ``topic``."""
        grants = [
            (kind, pattern.replace("%u", username)) for kind, pattern in self.patterns
        ] + self.users.get(username, [])
        return any(
            kind in (access, "readwrite") and acl_matches(pattern, topic)
            for kind, pattern in grants
        )


def acl_matches(acl_topic: str, topic: str) -> bool:
    """Mosquitto's ACL match; a wildcard in ``topic`` (a filter) needs one in the ACL."""
    acl_levels, levels = acl_topic.split("/"), topic.split("/")
    for i, acl_level in enumerate(acl_levels):
        if acl_level == "#":
            return True
        if i >= len(levels):
            return False
        if acl_level == "+":
            if levels[i] == "#":
                return False
            continue
        if acl_level != levels[i]:
            return False
    return len(acl_levels) == len(levels)


def compose_client() -> tuple[list[str] | None, str]:
    """The Compose v2 command line, or None and why there is none."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"], ""
    standalone = shutil.which("docker-compose")
    if standalone:
        probe = subprocess.run(
            [standalone, "version", "--short"], capture_output=True, text=True, timeout=30
        )
        version = probe.stdout.strip().lstrip("v")
        if probe.returncode == 0 and version.split(".")[0] >= "2":
            return [standalone], ""
        return None, (
            f"docker-compose {version or '?'} is Compose v1, which predates parts of the "
            "Compose Specification used here (top-level `name`); no `docker compose` plugin"
        )
    if docker:
        return None, "the docker client has no `compose` plugin (`docker compose version` failed)"
    return None, "no docker client with the compose plugin and no docker-compose v2 installed"


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def acl() -> Acl:
    return Acl((MOSQUITTO / "acl").read_text(encoding="utf-8"))


# --- the compose file ------------------------------------------------------------------


def test_is_a_compose_specification_file(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose Specification has no `version:` key"
    assert set(compose["volumes"]) >= {"kafka-data", "timescaledb-data", "mosquitto-data"}


def test_every_required_service_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = set(INFRASTRUCTURE + APP) - set(services)
    assert not missing


@pytest.mark.parametrize("name", INFRASTRUCTURE)
def test_infrastructure_has_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"{name} has no healthcheck, so depends_on cannot wait for it"
    assert not check.get("disable", False)
    assert healthcheck_test(services[name]) not in ("", "NONE")
    assert services[name].get("restart") in ("unless-stopped", "always")


def test_kafka_runs_in_kraft_mode_without_zookeeper(services: dict[str, dict[str, Any]]) -> None:
    assert not [name for name in services if "zookeeper" in name.lower()]
    assert not [s for s in services.values() if "zookeeper" in str(s.get("image", "")).lower()]
    kafka = services["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node_id}@")
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert interpolate(env["KAFKA_NUM_PARTITIONS"], {}) == "4"
    assert not any(key.startswith("KAFKA_ZOOKEEPER") for key in env)
    check = healthcheck_test(kafka)
    assert "kafka-topics.sh" in check
    assert "--bootstrap-server localhost:9092" in check
    assert "--list" in check


def test_kafka_and_the_app_agree_on_partitions(services: dict[str, dict[str, Any]]) -> None:
    broker = interpolate(environment(services["kafka"])["KAFKA_NUM_PARTITIONS"], {})
    app = interpolate(environment(services["seed"])["CITYOPS_KAFKA_PARTITIONS"], {})
    assert broker == app == "4"


def test_timescaledb_image_has_postgis_and_the_init_script_creates_both(
    services: dict[str, dict[str, Any]],
) -> None:
    db = services["timescaledb"]
    assert str(db["image"]).startswith("timescale/timescaledb-ha:pg16")
    assert "pg_isready" in healthcheck_test(db)
    env = environment(db)
    assert any(v.startswith(env["PGDATA"]) for v in _volume_targets(db, kind="volume"))
    init = [v for v in db["volumes"] if ":/docker-entrypoint-initdb.d/" in v]
    assert init, "no init script mounted"
    source = ROOT / init[0].split(":")[0]
    assert source.is_file(), source
    script = source.read_text(encoding="utf-8")
    assert "CREATE EXTENSION IF NOT EXISTS timescaledb" in script
    assert "CREATE EXTENSION IF NOT EXISTS postgis" in script
    assert "CITYOPS_DB_PASSWORD" in env
    assert "CITYOPS_APP_DB_PASSWORD" in env


def test_the_init_script_creates_the_application_roles(
    services: dict[str, dict[str, Any]],
) -> None:
    """The owner `cityops` for the schema, `cityops_app` in cityops_writer (the
    group infra/audit.sql grants its rights to) for every other process."""
    init = next(v for v in services["timescaledb"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    script = (ROOT / init.split(":")[0]).read_text(encoding="utf-8")
    assert ': "${CITYOPS_APP_DB_PASSWORD:?' in script
    assert "CREATE ROLE cityops_writer NOLOGIN" in script
    assert re.search(
        r"CREATE ROLE cityops_app LOGIN PASSWORD %L IN ROLE cityops_writer', :'app_password'",
        script,
    )
    assert "ALTER DATABASE %I OWNER TO cityops'" in script
    audit = (ROOT / "infra" / "audit.sql").read_text(encoding="utf-8")
    assert "REVOKE UPDATE, DELETE ON city_events FROM cityops_writer" in audit


def _volume_targets(service: dict[str, Any], kind: str) -> list[str]:
    """Container paths of a service's named volumes (``kind="volume"``) or bind mounts."""
    targets = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        is_bind = source.startswith((".", "/"))
        if is_bind == (kind == "bind"):
            targets.append(target)
    return targets


def test_api_publishes_8000_and_checks_readiness(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    targets = [str(port).rsplit(":", 1)[-1] for port in api["ports"]]
    assert "8000" in targets
    published = [interpolate(str(port), {}).split(":")[0] for port in api["ports"]]
    assert "8000" in published
    check = healthcheck_test(api)
    assert "urllib" in check
    assert "/readyz" in check


@pytest.mark.parametrize("name", APP)
def test_every_app_service_reaches_the_external_services(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    env = environment(services[name])
    secrets = dict.fromkeys(SECRETS, "s3cret")
    assert env["CITYOPS_ENVIRONMENT"] == "production"
    url = interpolate(env["CITYOPS_DATABASE_URL"], secrets)
    assert re.fullmatch(r"postgresql://cityops_app:s3cret@timescaledb:5432/cityops", url), url
    assert env["CITYOPS_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["CITYOPS_MQTT_HOST"] == "mosquitto"
    assert env["CITYOPS_MQTT_PORT"] == "1883"
    assert env["CITYOPS_MQTT_PROTOCOL"] == "5"
    # infra.settings refuses production MQTT without a password.
    assert interpolate(env["CITYOPS_MQTT_PASSWORD"], secrets) == "s3cret"
    assert env["CITYOPS_DATA_DIR"] == "/data/city"


@pytest.mark.parametrize("name", APP)
def test_every_app_command_is_a_cityops_subcommand(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services[name]
    assert command(service)[0] in SUBCOMMANDS
    assert "entrypoint" not in service, "the image's ENTRYPOINT is `cityops`"
    assert service["image"] == services["api"]["image"], "one image for every process"


def test_the_app_subcommands_are_all_used(services: dict[str, dict[str, Any]]) -> None:
    assert {command(services[name])[0] for name in APP} == SUBCOMMANDS


def test_seed_runs_once_after_the_infrastructure_is_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    seed = services["seed"]
    assert seed.get("restart") == "no"
    assert depends_on(seed) == dict.fromkeys(INFRASTRUCTURE, "service_healthy")
    # The only writer of the reference data; everyone else mounts it read-only.
    assert "/data/city" in _volume_targets(seed, kind="volume")
    assert not any(v.endswith(":ro") for v in seed["volumes"])


@pytest.mark.parametrize("name", LONG_RUNNING_APP)
def test_long_running_services_wait_for_healthy_infrastructure_and_the_seed(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    deps = depends_on(services[name])
    for infra in INFRASTRUCTURE:
        assert deps.get(infra) == "service_healthy", infra
    assert deps.get("seed") == "service_completed_successfully"
    assert services[name].get("restart") in ("unless-stopped", "always", "on-failure")
    assert all(v.endswith(":ro") for v in services[name].get("volumes", []))


def test_every_dependency_exists_with_a_known_condition(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} -> {dependency}"


def test_workers_scale_out(services: dict[str, dict[str, Any]]) -> None:
    for name in ("bridge", "writer"):
        assert services[name]["deploy"]["replicas"] >= 2, name
    for name in APP:
        # A fixed container name or host port would stop `--scale` from working.
        assert "container_name" not in services[name], name
        if name != "api":
            assert "ports" not in services[name], name


def test_simulator_and_bridge_use_their_own_mqtt_accounts(
    services: dict[str, dict[str, Any]], acl: Acl
) -> None:
    bridge = environment(services["bridge"])
    simulator = environment(services["simulator"])
    assert bridge["CITYOPS_MQTT_USERNAME"] == "cityops-bridge"
    assert simulator["CITYOPS_MQTT_USERNAME"] == "cityops-simulator"
    assert "MQTT_BRIDGE_PASSWORD" in bridge["CITYOPS_MQTT_PASSWORD"]
    assert "MQTT_SIMULATOR_PASSWORD" in simulator["CITYOPS_MQTT_PASSWORD"]
    entrypoint = (MOSQUITTO / "entrypoint.sh").read_text(encoding="utf-8")
    for user in ("cityops-bridge", "cityops-simulator", "cityops-health"):
        assert user in acl.users, user
        assert f'mosquitto_passwd -b "$passwd_tmp" {user}' in entrypoint, user


def _strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML document (comments are not values)."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_secrets_are_required_and_nothing_is_silently_empty(compose: dict[str, Any]) -> None:
    variables = [
        match
        for value in _strings(compose)
        for match in _VARIABLE.finditer(value.replace("$$", ""))
    ]
    assert variables
    for match in variables:
        assert match["op"] is not None, f"{match[0]} would be empty when unset"
        if match["name"] in SECRETS:
            assert match["op"] == ":?", f"{match[0]}: a secret has no default"
    used = {m["name"] for m in variables if m["op"] == ":?"}
    assert used == set(SECRETS)
    example = (DEPLOY / "env.example").read_text(encoding="utf-8")
    for name in SECRETS:
        assert re.search(rf"^{name}=$", example, re.MULTILINE), f"{name} not in env.example"


def test_missing_secret_is_refused_by_interpolation(services: dict[str, dict[str, Any]]) -> None:
    url = environment(services["api"])["CITYOPS_DATABASE_URL"]
    with pytest.raises(KeyError, match="CITYOPS_APP_DB_PASSWORD"):
        interpolate(url, {})
    admin = environment(services["seed"])["CITYOPS_ADMIN_DATABASE_URL"]
    with pytest.raises(KeyError, match="CITYOPS_DB_PASSWORD"):
        interpolate(admin, {})


def test_only_the_seed_connects_as_the_owner(services: dict[str, dict[str, Any]]) -> None:
    """The tables' owner may rewrite the log; no long-running process is it."""
    secrets = dict.fromkeys(SECRETS, "s3cret")
    seed = environment(services["seed"])
    admin = interpolate(seed["CITYOPS_ADMIN_DATABASE_URL"], secrets)
    assert admin == "postgresql://cityops:s3cret@timescaledb:5432/cityops"
    assert "CITYOPS_DB_PASSWORD" in seed["CITYOPS_ADMIN_DATABASE_URL"]
    for name in LONG_RUNNING_APP:
        env = environment(services[name])
        assert "CITYOPS_ADMIN_DATABASE_URL" not in env, name
        assert "CITYOPS_DB_PASSWORD" not in env["CITYOPS_DATABASE_URL"], name
        user = interpolate(env["CITYOPS_DATABASE_URL"], secrets).split("//")[1].split(":")[0]
        assert user == "cityops_app", name
    for name, service in services.items():
        if name not in ("seed", "timescaledb"):
            assert not any("CITYOPS_DB_PASSWORD" in v for v in _strings(service)), name


# --- mosquitto -------------------------------------------------------------------------


def test_mosquitto_cannot_drop_qos1_messages_or_admit_anonymous_clients() -> None:
    conf = mosquitto_directives(MOSQUITTO / "mosquitto.conf")
    # With Mosquitto's default queue limit a slow subscriber missed 63 % of readings.
    assert conf["max_queued_messages"] == ["0"]
    assert conf["max_inflight_messages"] == ["0"]
    assert conf.get("max_queued_bytes", ["0"]) == ["0"]
    assert conf["allow_anonymous"] == ["false"]
    assert conf["persistence"] == ["true"]
    assert conf["listener"] == ["1883"]
    assert conf["password_file"]
    assert conf["acl_file"]


def test_mosquitto_entrypoint_writes_the_files_the_config_names(
    services: dict[str, dict[str, Any]],
) -> None:
    conf = mosquitto_directives(MOSQUITTO / "mosquitto.conf")
    entrypoint = (MOSQUITTO / "entrypoint.sh").read_text(encoding="utf-8")
    auth_dir = re.search(r"^auth_dir=(\S+)$", entrypoint, re.MULTILINE)
    assert auth_dir
    assert conf["password_file"] == [f"{auth_dir[1]}/passwd"]
    assert conf["acl_file"] == [f"{auth_dir[1]}/acl"]
    assert 'exec /usr/sbin/mosquitto -c "$conf_dir/mosquitto.conf"' in entrypoint
    mosquitto = services["mosquitto"]
    assert str(mosquitto["image"]).startswith("eclipse-mosquitto:2")
    mount = next(v for v in mosquitto["volumes"] if v.startswith("./deploy/mosquitto:"))
    target = mount.split(":")[1]
    assert command(mosquitto)[-1] == f"{target}/entrypoint.sh"
    health_file = re.search(r"^health_file=(\S+)$", entrypoint, re.MULTILINE)
    assert health_file
    assert health_file[1] in healthcheck_test(mosquitto)


def test_acl_confines_each_gateway_to_its_own_topics(acl: Acl) -> None:
    assert ("write", "cityops/%u/+/telemetry") in acl.patterns
    assert ("write", "cityops/%u/+/status") in acl.patterns
    assert not acl.anonymous, "grants before the first `user` line apply to anonymous clients"
    assert all(kind == "write" for kind, _ in acl.patterns), "gateways only publish"
    assert acl.allows("gw-0042", "write", "cityops/gw-0042/wl-0007/telemetry")
    assert acl.allows("gw-0042", "write", "cityops/gw-0042/wl-0007/status")
    assert not acl.allows("gw-0042", "write", "cityops/gw-0043/wl-0007/telemetry")
    assert not acl.allows("gw-0042", "write", "cityops/gw-0042/wl-0007/commands")
    assert not acl.allows("gw-0042", "read", "cityops/gw-0042/wl-0007/telemetry")
    assert not acl.allows("gw-0042", "read", "cityops/#")


def test_acl_lets_the_bridges_share_one_subscription(
    services: dict[str, dict[str, Any]], acl: Acl
) -> None:
    group = environment(services["bridge"])["CITYOPS_MQTT_SHARE_GROUP"]
    assert ("read", "$share/+/cityops/#") in acl.users["cityops-bridge"]
    assert acl.allows("cityops-bridge", "read", f"$share/{group}/{TOPIC_FILTER}")
    assert acl.allows("cityops-bridge", "read", TOPIC_FILTER)  # MQTT 3.1.1
    assert acl.allows("cityops-bridge", "read", "cityops/gw-1/wl-1/telemetry")
    assert not acl.allows("cityops-bridge", "read", "$SYS/broker/uptime")
    assert acl.allows("cityops-simulator", "write", "cityops/gw-9/wl-9/telemetry")
    assert not acl.allows("cityops-simulator", "read", "cityops/#")
    assert acl.users["cityops-health"] == [("read", "$SYS/broker/uptime")]


def test_sample_password_file_holds_hashes_only() -> None:
    lines = (MOSQUITTO / "gateways.passwd.example").read_text(encoding="utf-8").splitlines()
    assert lines
    for line in lines:
        # mosquitto_passwd's PBKDF2-SHA512 format, never a clear-text password.
        assert re.fullmatch(r"[^:\s]+:\$7\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", line), line


# --- Dockerfile ------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_cityops_image() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert lines[stages[-1]] == "FROM python:3.11-slim"
    web, lines = lines[: stages[-1]], lines[stages[-1] :]  # the bundle's stage; the image's
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "runs as root"
    assert users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["cityops"]' in lines
    assert not [line for line in lines if line.startswith("HEALTHCHECK")]
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ")]
    first_copy = lines[copies[0]]
    assert "pyproject.toml" in first_copy, "dependencies are installed before the source"
    source = lines.index("COPY . .")
    # The page's decoder from the web stage, into the source before it is installed.
    bundle = "COPY --from=web /src/api/static/vendor/mvt.js api/static/vendor/mvt.js"
    assert lines[copies[-1]] == bundle
    install = next(
        i for i, line in enumerate(lines) if line.startswith("RUN pip install --no-deps .")
    )
    assert source < copies[-1] < install
    assert re.fullmatch(r"FROM node:20\S* AS web", web[0]), web[0]
    runs = " ".join(line for line in web if line.startswith("RUN "))
    assert "npm ci --ignore-scripts" in runs  # as scripts/web.sh: no install scripts
    assert "npm run --silent bundle" in runs  # web/package.json's esbuild command
    dockerignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert {".env", ".venv", ".git"} <= set(dockerignore)
    assert {"web/node_modules", "api/static/vendor"} <= set(dockerignore)  # built, not copied


def test_constraints_agree_with_the_pins_in_pyproject() -> None:
    """deploy/constraints.txt must be regenerated (deploy/lock-constraints.sh) on a bump."""

    def normalize(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = {}
    for requirement in project["project"]["dependencies"]:
        name, _, version = requirement.partition("==")
        pins[normalize(name.split("[")[0])] = version.strip()
    constraints = {}
    for line in (DEPLOY / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            constraints[normalize(name)] = version
    stale = {
        name: (version, constraints.get(name))
        for name, version in pins.items()
        if constraints.get(name) != version
    }
    assert not stale, f"pyproject vs constraints.txt: {stale}"


# --- a real Compose implementation, where there is one -----------------------------------


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    client, reason = compose_client()
    if client is None:
        pytest.skip(reason)
    env_file = tmp_path / "secrets.env"
    env_file.write_text("".join(f"{name}=s3cret\n" for name in SECRETS), encoding="utf-8")
    # Only the test's env file: not the developer's shell or .env.
    env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    base = [*client, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]

    def config(with_env: Path) -> subprocess.CompletedProcess[str]:
        """``compose config -q`` with only ``with_env`` as the env file."""
        return subprocess.run(
            [*base, "--env-file", str(with_env), "config", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    result = config(env_file)
    assert result.returncode == 0, result.stderr

    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    refused = config(empty)
    assert refused.returncode != 0
    assert "see deploy/env.example" in refused.stderr

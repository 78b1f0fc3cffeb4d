"""All configuration, from the environment (prefix ``CITYOPS_``), validated at start."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from limits import parse_many
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


DEV_JWT_SECRET = "dev-only-jwt-secret-do-not-use-in-production"  # noqa: S105
DEV_PII_PEPPER = "dev-only-pii-pepper-do-not-use-in-production"


class Settings(BaseSettings):
    """One settings object for every process; each reads what it needs."""

    model_config = SettingsConfigDict(env_prefix="CITYOPS_", extra="ignore")

    environment: Environment = Environment.DEVELOPMENT

    # PostgreSQL: the event store, the telemetry store and the read models.
    # An empty URL means "start the embedded PostgreSQL" (demo only).
    database_url: str = ""
    db_pool_size: int = Field(default=4, ge=1, le=64)
    # Saves of HTTP commands arriving together share one transaction (infra/group_commit.py).
    group_commit: bool = True
    # How long a caller waits for a pooled connection before PoolTimeout (the API's 503).
    db_pool_wait_s: float = Field(default=10.0, gt=0, le=300)
    # TCP keepalive on the connections to PostgreSQL (our pools) and to Kafka: a peer
    # gone silent (a cable, a firewall dropping the flow) is found within about
    # idle + 3 x idle / 3 = 2 x idle seconds, not the kernel's two hours.
    tcp_keepalive_idle_s: int = Field(default=30, ge=1, le=7200)

    # Kafka (any Kafka-protocol broker). Empty means "start the embedded broker".
    kafka_bootstrap: str = ""
    # Prefix of every topic and consumer-group name (isolates tests and tenants).
    kafka_topic_prefix: str = ""
    kafka_partitions: int = Field(default=4, ge=1, le=256)
    # Small poll interval: consumer groups join within seconds on Tansu and on Kafka.
    kafka_max_poll_interval_ms: int = Field(default=10_000, ge=1_000)
    # Telemetry consumers (writer, monitor): a fetch waits for this much data or this long.
    kafka_fetch_min_bytes: int = Field(default=256 * 1024, ge=1)
    kafka_fetch_max_wait_ms: int = Field(default=100, ge=0, le=10_000)

    # MQTT broker. Empty host means "start the embedded broker".
    mqtt_host: str = ""
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    # This process's MQTT account: compose gives each service its own (deploy/mosquitto/acl);
    # the embedded broker's bridge account is exported under these names.
    mqtt_username: str = ""
    mqtt_password: str = Field(default="", repr=False)
    # The gateway simulator's account where every process reads one environment (the demo,
    # the test environment), whose CITYOPS_MQTT_USERNAME is the bridge's. Empty: the
    # simulator logs in as CITYOPS_MQTT_USERNAME, as under compose.
    sim_mqtt_username: str = ""
    sim_mqtt_password: str = Field(default="", repr=False)
    # Set: every simulated gateway logs in as itself (username = gateway id) with a password
    # derived from this secret (simulations.gateways.gateway_password), which is how the
    # embedded Mosquitto registers them (cityops.services). Demo and tests only.
    sim_gateway_secret: SecretStr | None = None
    # 5 uses a shared subscription so several bridges share the load; 3 (3.1.1) for amqtt.
    mqtt_protocol: int = Field(default=5)
    mqtt_share_group: str = "cityops-bridge"
    # The bridge's MQTT client id; its persistent session (with the QoS 1 messages queued
    # while it was down) belongs to that id. Empty: "cityops-bridge-<hostname>".
    # A session remembers its subscriptions: change the share group with a new id.
    mqtt_client_id: str = ""

    # HTTP API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    # Origins a browser may call the API from (comma-separated, e.g.
    # "https://gis.example.org"); empty: CORS closed, only the app's own page.
    cors_origins: str = ""
    # Requests per client address, in the `limits` notation ("120/minute",
    # "10/second; 500/hour"); "0": no limit. Public: Open311, the OGC API and the sign-in
    # routes; login: the sign-in routes, on top of the public limit.
    rate_limit_public: str = "1200/minute"
    rate_limit_login: str = "20/minute"

    # Access control: JWT bearer tokens (HS256) issued by `cityops token`; API keys for
    # machines from `cityops apikey`. The development defaults are public: production
    # refuses them.
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_issuer: str = "cityops"
    jwt_audience: str = "cityops-api"
    token_ttl_s: int = Field(default=8 * 3600, ge=60)
    # Development only: the operations-center page gets an operator token without a login.
    dev_login: bool = True
    # Keyed hash that finds a citizen by phone/email without storing either in clear.
    pii_pepper: SecretStr = SecretStr(DEV_PII_PEPPER)

    # Service cases: categories file (default: the packaged core/case/categories.yaml) and
    # whether intake registers and dispatches cases at once (else a dispatcher does).
    categories_file: Path | None = None
    # The responsibility catalogue dispatch reads first (default: the packaged
    # core/case/catalogue.yaml); where it names no unit, the jurisdiction polygons.
    catalogue_file: Path | None = None
    cases_auto_accept: bool = True
    # Cases a process keeps as its last command left them, so that the next command on
    # one runs without loading it (core/case/desk.py ServiceDesk.execute); 0 keeps none.
    cases_kept: int = Field(default=2_000, ge=0, le=1_000_000)
    # The urban brain: correlation rules and incident time limits (default: the packaged
    # core/brain/correlation.yaml); events per projector transaction.
    correlation_file: Path | None = None
    projector_batch: int = Field(default=2_000, ge=1, le=100_000)
    sla_poll_s: float = Field(default=5.0, gt=0)
    # Resolution notices to citizens: "log" only logs them; "smtp" emails (SMS is logged).
    notify_backend: Literal["log", "smtp"] = "log"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_sender: str = "12345@cityops.local"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    # Escalation and paging (`cityops pager`): the policy (default: the packaged
    # core/paging/policy.yaml), how often the pager looks, the secret webhook pages are
    # signed with (unset: webhook pages fail, never go unsigned), and the HTTP SMS gateway
    # (empty: SMS pages are logged). Email pages go the notifier's way (CITYOPS_NOTIFY_BACKEND).
    paging_policy_file: Path | None = None
    pager_poll_s: float = Field(default=5.0, gt=0)
    pager_webhook_secret: SecretStr | None = None
    sms_gateway_url: str = ""
    sms_gateway_token: SecretStr | None = None
    # The citizen simulator: everyday reports per second, and the API it files to.
    cases_sim_rate: float = Field(default=0.2, ge=0)
    sim_api_url: str = ""  # default: http://<api_host>:<api_port>

    # Reference data: generated demo city lives here (GeoJSON / GeoPackage / YAML).
    data_dir: Path = Path("var/city")
    city_seed: int = 42
    # Which city to generate there: real Shanghai (16 districts), or "generated", a small
    # synthetic one (6 rectangular districts; what the tests use).
    city: Literal["shanghai", "generated"] = "shanghai"
    rules_file: Path | None = None  # default: the packaged core/sensor/rules.yaml

    # Ingestion limits.
    max_payload_bytes: int = Field(default=16_384, ge=256)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    max_past_age_s: float = Field(default=7 * 86_400.0, ge=0)

    # TimescaleDB (when the server has it): raw readings' chunks are compressed once
    # older than this many hours and dropped once older than this many days (0: kept
    # forever; the continuous aggregates are kept either way). Retention must outlast the
    # aggregates' refresh window (max_past_age_s plus a margin).
    readings_compress_after_hours: int = Field(default=24, ge=1)
    readings_retention_days: int = Field(default=90, ge=0)
    # `cityops maintain` runs TimescaleDB's policy jobs itself when due (the server's
    # background workers fail them on this PostgreSQL): off leaves them to the server.
    timescale_jobs: bool = True
    timescale_jobs_poll_s: float = Field(default=15.0, gt=0)

    # Worker batching.
    writer_batch_max: int = Field(default=5_000, ge=1)
    writer_poll_ms: int = Field(default=200, ge=1)
    monitor_silence_check_s: float = Field(default=5.0, gt=0)
    # A device's reported position (MQTT .../location) this far from where it is on the
    # map moves it (a Relocated event); nearer is the fix's own scatter, and changes nothing.
    relocation_min_m: float = Field(default=10.0, ge=0)

    # Simulator.
    sim_rate: float = Field(default=200.0, gt=0, description="messages per second")
    # When they come online, the simulated devices say where they are, in this system
    # (as a Chinese GNSS module or map SDK gives it); "" sends no positions.
    sim_location_coord_system: Literal["", "wgs84", "gcj02", "bd09"] = "gcj02"
    sim_scenario: str = "rainstorm"
    sim_sensors: int = Field(default=2_000, ge=4)
    # `cityops demo`: every time limit (cases, incidents) this many times shorter, so the
    # simulated staff's day of work, late work and escalations show in minutes; 1: real
    # time. Not applied when CITYOPS_CATEGORIES_FILE or CITYOPS_CORRELATION_FILE is set.
    demo_time_scale: float = Field(default=120.0, ge=1)

    # Tamper evidence (`cityops audit`): the Ed25519 key that signs checkpoints of the
    # log's hash chain (made with mode 0600 on first use, its public half beside it as
    # <file>.pub) and the JSON-lines file the signed checkpoints are appended to. Both
    # live outside the database: keep them where the database's administrators cannot
    # write.
    audit_key_file: Path = Path("var/audit/signing-key.pem")
    audit_checkpoint_file: Path = Path("var/audit/checkpoints.jsonl")

    # The replay's snapshots, computed from the log every this many events.
    replay_snapshot_every: int = Field(default=20_000, ge=100)
    # The operations center's base map. Unset: districts and grid cells drawn as
    # vectors only (works offline). A deployment with its own tile server sets an XYZ URL,
    # e.g. http://tiles.internal/{z}/{x}/{y}.png (the page requests nothing else outside).
    map_tile_url: str | None = None
    # The role that owns the schema and the tables (`cityops seed` creates them
    # and the log's guards as it). Every other process connects with CITYOPS_DATABASE_URL
    # as a member of `cityops_writer`, which may not rewrite the log nor drop its guards
    # (README, "Database roles"). Empty: CITYOPS_DATABASE_URL is also the owner.
    admin_database_url: str = ""

    @field_validator("rate_limit_public", "rate_limit_login")
    @classmethod
    def _rate_limit_notation(cls, value: str) -> str:
        if value.strip() not in ("", "0"):
            parse_many(value)  # ValueError names the part it cannot read
        return value

    def tcp_keepalive(self) -> tuple[int, int, int]:
        """TCP keepalive as (idle, interval, count): the first probe after ``idle`` s of
        silence, then one every ``interval`` s, the connection dropped after ``count``
        unanswered (``infra.pgstore.keepalives``, ``infra.kafka.socket_options``)."""
        idle = self.tcp_keepalive_idle_s
        return idle, max(1, idle // 3), 3

    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @model_validator(mode="after")
    def _retention_outlasts_late_readings(self) -> Self:
        days = self.readings_retention_days
        if days and days * 86_400 < self.max_past_age_s + 2 * 86_400:
            # A refresh over dropped raw chunks would empty the aggregates' buckets there.
            raise ValueError(
                "CITYOPS_READINGS_RETENTION_DAYS must be 0 or at least 2 days more than "
                "CITYOPS_MAX_PAST_AGE_S (the aggregates' refresh window)"
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Self:
        if self.environment is Environment.PRODUCTION:
            missing = [
                name
                for name, value in (
                    ("CITYOPS_DATABASE_URL", self.database_url),
                    ("CITYOPS_KAFKA_BOOTSTRAP", self.kafka_bootstrap),
                    ("CITYOPS_MQTT_HOST", self.mqtt_host),
                )
                if not value
            ]
            if missing:
                raise ValueError("production needs external services; set " + ", ".join(missing))
            if self.mqtt_host and not self.mqtt_password:
                raise ValueError("production MQTT needs CITYOPS_MQTT_PASSWORD")
            for name, secret, dev in (
                ("CITYOPS_JWT_SECRET", self.jwt_secret, DEV_JWT_SECRET),
                ("CITYOPS_PII_PEPPER", self.pii_pepper, DEV_PII_PEPPER),
            ):
                value = secret.get_secret_value()
                if value == dev or len(value) < 32:
                    raise ValueError(f"production needs {name}: at least 32 random characters")
            if self.dev_login:
                raise ValueError("CITYOPS_DEV_LOGIN must be false in production")
        return self

-- CityOps tables besides the event store (which the eventsourcing library creates).
-- Idempotent: applied at every start by `cityops seed` and the workers.

-- Raw telemetry (not domain events). A hypertable when TimescaleDB is present.
CREATE TABLE IF NOT EXISTS readings (
    ts        timestamptz      NOT NULL,
    device_id text             NOT NULL,
    metric    text             NOT NULL,
    value     double precision NOT NULL,
    unit      text             NOT NULL,
    -- When the writer's transaction began: publish-to-commit latency and ingest lag.
    ingested_at timestamptz    NOT NULL DEFAULT now()
);
-- Added after the first release: databases created before it gain the column here.
ALTER TABLE readings ADD COLUMN IF NOT EXISTS ingested_at timestamptz NOT NULL DEFAULT now();
-- One row per (device, metric, time): the transport is at-least-once (an MQTT
-- redelivery, a producer retry), the table is exactly-once. Includes ts, as
-- TimescaleDB requires of unique indexes on hypertables.
DROP INDEX IF EXISTS readings_device_ts;
CREATE UNIQUE INDEX IF NOT EXISTS readings_natural_key ON readings (device_id, metric, ts);

-- Kafka positions of the telemetry writers, committed with the rows they cover.
CREATE TABLE IF NOT EXISTS telemetry_positions (
    consumer    text   NOT NULL,
    topic       text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);

-- The sensor monitor's working rule state, committed with its events and positions.
CREATE TABLE IF NOT EXISTS monitor_state (
    device_id text  PRIMARY KEY,
    state     jsonb NOT NULL
);

-- Read models of the live map (written by the map projection, rebuildable).
CREATE TABLE IF NOT EXISTS map_sensors (
    device_id       text PRIMARY KEY,
    sensor_id       uuid NOT NULL,
    sensor_type     text NOT NULL,
    gateway_id      text NOT NULL,
    lon             double precision NOT NULL,
    lat             double precision NOT NULL,
    grid_code       text,
    district_code   text,
    department_code text,
    state           text NOT NULL,
    alarms          jsonb NOT NULL DEFAULT '{}'::jsonb,
    silent          boolean NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL,
    version         int NOT NULL
);
CREATE INDEX IF NOT EXISTS map_sensors_type_state ON map_sensors (sensor_type, state);
CREATE INDEX IF NOT EXISTS map_sensors_sensor_id ON map_sensors (sensor_id);
CREATE INDEX IF NOT EXISTS map_sensors_grid ON map_sensors (grid_code);
CREATE INDEX IF NOT EXISTS map_sensors_lonlat ON map_sensors (lon, lat);

CREATE TABLE IF NOT EXISTS map_incidents (
    incident_id     uuid PRIMARY KEY,
    kind            text NOT NULL,
    title           text NOT NULL,
    category        text NOT NULL,
    severity        text NOT NULL,
    status          text NOT NULL,
    alarm_status    text NOT NULL,
    acknowledged    boolean NOT NULL,
    acknowledged_by text,
    device_id       text,
    rule_id         text,
    rule_version    int,
    metric          text,
    last_value      double precision,
    trigger_count   int NOT NULL,
    lon             double precision NOT NULL,
    lat             double precision NOT NULL,
    grid_code       text,
    district_code   text,
    department_code text,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    cleared_at      timestamptz,
    closed_at       timestamptz,
    version         int NOT NULL
);
CREATE INDEX IF NOT EXISTS map_incidents_status ON map_incidents (status, severity);
CREATE INDEX IF NOT EXISTS map_incidents_grid ON map_incidents (grid_code);
CREATE INDEX IF NOT EXISTS map_incidents_device ON map_incidents (device_id);

-- Position of the map projection in the event log (the eventsourcing library's
-- single-row tracking table; created here so that no worker runs DDL at start).
CREATE TABLE IF NOT EXISTS map_tracking (
    application_name text PRIMARY KEY,
    notification_id  bigint
);

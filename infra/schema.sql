-- CityOps tables besides the event store (which the eventsourcing library creates).
-- Idempotent: applied at every start by `cityops seed` and the workers, one at a time
-- (two sessions replacing the same function at once would fail).
SELECT pg_advisory_xact_lock(7202611);

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
-- Only when missing: TimescaleDB refuses the statement, IF NOT EXISTS or not, on a
-- hypertable with compression.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'readings'::regclass AND attname = 'ingested_at' AND NOT attisdropped
    ) THEN
        ALTER TABLE readings ADD COLUMN ingested_at timestamptz NOT NULL DEFAULT now();
    END IF;
END
$$;
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
-- The incident workflow (GB/T 30428: 派遣 -> 处置 -> 反馈 -> 核查 -> 结案) and links
-- with citizen cases. ``status`` stays open/closed; ``stage`` is where the work is:
-- reported, dispatched, accepted, resolved, closed.
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS stage text NOT NULL DEFAULT 'reported';
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS dispatched_at timestamptz;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS accepted_at timestamptz;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS resolved_at timestamptz;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS due_at timestamptz;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS resolution text;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS reworks int NOT NULL DEFAULT 0;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS escalation_level int NOT NULL DEFAULT 0;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS linked_cases int NOT NULL DEFAULT 0;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS verified_at timestamptz;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS escalate_at timestamptz;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS confirmed_by_reports boolean NOT NULL DEFAULT false;
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS merged_into uuid;
CREATE INDEX IF NOT EXISTS map_incidents_escalate ON map_incidents (escalate_at) WHERE escalate_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS map_incidents_grid_opened ON map_incidents (grid_code, opened_at);
-- The live map's cache (projections/map_layers.py) reads only the rows written since it
-- last looked: every insert and update of a map row takes the next change number.
-- One fenced projector writes these tables, one transaction per batch, so numbers
-- commit in order.
CREATE SEQUENCE IF NOT EXISTS map_change_seq;
ALTER TABLE map_sensors ADD COLUMN IF NOT EXISTS change_seq bigint NOT NULL DEFAULT nextval('map_change_seq');
ALTER TABLE map_incidents ADD COLUMN IF NOT EXISTS change_seq bigint NOT NULL DEFAULT nextval('map_change_seq');
CREATE INDEX IF NOT EXISTS map_sensors_change_seq ON map_sensors (change_seq);
CREATE INDEX IF NOT EXISTS map_incidents_change_seq ON map_incidents (change_seq);
CREATE OR REPLACE FUNCTION map_stamp_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_seq := nextval('map_change_seq');
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER map_sensors_changed BEFORE UPDATE ON map_sensors
    FOR EACH ROW EXECUTE FUNCTION map_stamp_change();
CREATE OR REPLACE TRIGGER map_incidents_changed BEFORE UPDATE ON map_incidents
    FOR EACH ROW EXECUTE FUNCTION map_stamp_change();
CREATE INDEX IF NOT EXISTS map_incidents_department ON map_incidents (department_code, stage, due_at);
CREATE INDEX IF NOT EXISTS map_incidents_opened ON map_incidents (opened_at);

-- Position of the map projection in the event log (the eventsourcing library's
-- single-row tracking table; created here so that no worker runs DDL at start).
CREATE TABLE IF NOT EXISTS map_tracking (
    application_name text PRIMARY KEY,
    notification_id  bigint
);

-- Citizens' keys (PIPL crypto-shredding): events hold contacts only sealed under these.
-- Erasure deletes the key and the lookup hash; the row stays as a record of when.
CREATE TABLE IF NOT EXISTS citizen_keys (
    citizen_id uuid PRIMARY KEY,
    lookup     text UNIQUE,          -- keyed hash (HMAC) of the phone or email
    key        bytea,                -- NULL once erased
    created_at timestamptz NOT NULL DEFAULT now(),
    erased_at  timestamptz
);

-- API keys of machines (hotline systems, Open311 apps, gateways): only a hash is kept.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id          text PRIMARY KEY,
    key_hash        text NOT NULL UNIQUE,
    name            text NOT NULL,
    role            text NOT NULL,
    department_code text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

-- Read model of service cases (written by the cases projection, rebuildable).
-- No personal data: the contact stays sealed in the event log.
CREATE TABLE IF NOT EXISTS service_cases (
    case_id         uuid PRIMARY KEY,
    channel         text NOT NULL,
    external_id     text NOT NULL,
    category        text NOT NULL,
    description     text NOT NULL,
    status          text NOT NULL,
    status_notes    text NOT NULL DEFAULT '',
    lon             double precision,
    lat             double precision,
    address         text,
    grid_code       text,
    district_code   text,
    department_code text,
    citizen_id      uuid,
    submitted_by    text NOT NULL,
    rejection       text,
    possible_duplicates int NOT NULL DEFAULT 0,
    awaiting_assignment boolean NOT NULL DEFAULT false,
    due_at          timestamptz,
    due_soon_at     timestamptz,
    deadline_no     int NOT NULL DEFAULT 0,
    due_soon_marked int NOT NULL DEFAULT 0,
    overdue_marked  int NOT NULL DEFAULT 0,
    extension_pending boolean NOT NULL DEFAULT false,
    extensions      int NOT NULL DEFAULT 0,
    returns         int NOT NULL DEFAULT 0,
    revisits        int NOT NULL DEFAULT 0,
    rating          int,
    personal_data_erased boolean NOT NULL DEFAULT false,
    submitted_at    timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    resolved_at     timestamptz,
    closed_at       timestamptz,
    version         int NOT NULL
);
CREATE INDEX IF NOT EXISTS service_cases_status_due ON service_cases (status, due_at);
CREATE INDEX IF NOT EXISTS service_cases_department ON service_cases (department_code, status, due_at);
CREATE INDEX IF NOT EXISTS service_cases_category_lonlat ON service_cases (category, lon, lat);
CREATE INDEX IF NOT EXISTS service_cases_submitted ON service_cases (submitted_at);
CREATE INDEX IF NOT EXISTS service_cases_citizen ON service_cases (citizen_id);
CREATE INDEX IF NOT EXISTS service_cases_submitter ON service_cases (submitted_by);
-- The incident a case is linked to, and what nearby sensors said about it
-- (confirmed, not_confirmed, no_sensors); ``proactive`` when the incident's resolution
-- resolved the case (主动服务).
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS incident_id uuid;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS sensor_check text;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS proactive boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS service_cases_incident ON service_cases (incident_id);
CREATE INDEX IF NOT EXISTS service_cases_grid_submitted ON service_cases (grid_code, submitted_at);
CREATE INDEX IF NOT EXISTS service_cases_district_submitted ON service_cases (district_code, submitted_at);
-- Co-handling (协办), disputes (异议) and the three rates (三率): each co-handling unit's
-- part ({unit: {part, status: pending | answered | waived, feedback, answered_at}}); a
-- dispute waiting for arbitration (by ``arbitrate_by``); how many disputes were upheld
-- and since when the current unit is responsible (the upheld reassignment); the
-- first-contact deadline and the first contact; whether the citizen said it was solved.
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS co_handlers jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS dispute_pending boolean NOT NULL DEFAULT false;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS arbitrate_by timestamptz;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS disputes_upheld int NOT NULL DEFAULT 0;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS responsible_since timestamptz;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS respond_by timestamptz;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS first_contact_at timestamptz;
ALTER TABLE service_cases ADD COLUMN IF NOT EXISTS solved boolean;
CREATE INDEX IF NOT EXISTS service_cases_dispute ON service_cases (arbitrate_by) WHERE dispute_pending;
CREATE INDEX IF NOT EXISTS service_cases_co_handlers ON service_cases USING gin (co_handlers);

CREATE TABLE IF NOT EXISTS cases_tracking (
    application_name text PRIMARY KEY,
    notification_id  bigint
);

-- Position of the domain-events relay in the city log (last notification id published).
CREATE TABLE IF NOT EXISTS relay_positions (
    name            text PRIMARY KEY,
    notification_id bigint NOT NULL
);

-- >>> Time travel: replay checkpoints, see projections/replay.py. >>>
-- Snapshots of the replayed views, computed from the log by the replay itself (never
-- copied from the live views), taken every N events by ``cityops replay --snapshot``.
-- Stored as row versions: a row is written at the first checkpoint where it differs
-- from its previous version and is valid for positions [from_pos, to_pos); so the cost
-- is about one copy of the views plus the rows that changed across checkpoints, not one
-- full copy per checkpoint. A column added to a view must be added here too (the
-- replay refuses snapshots whose columns differ, and replays from the start instead).
CREATE TABLE IF NOT EXISTS replay_checkpoints (
    position    bigint PRIMARY KEY,
    recorded_at timestamptz,
    versions    int NOT NULL,          -- row versions written at this checkpoint
    taken_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS replay_snapshot_map_sensors (
    LIKE map_sensors, from_pos bigint NOT NULL, to_pos bigint
);
CREATE UNIQUE INDEX IF NOT EXISTS replay_snapshot_map_sensors_current
    ON replay_snapshot_map_sensors (device_id) WHERE to_pos IS NULL;
CREATE TABLE IF NOT EXISTS replay_snapshot_map_incidents (
    LIKE map_incidents, from_pos bigint NOT NULL, to_pos bigint
);
CREATE UNIQUE INDEX IF NOT EXISTS replay_snapshot_map_incidents_current
    ON replay_snapshot_map_incidents (incident_id) WHERE to_pos IS NULL;
CREATE TABLE IF NOT EXISTS replay_snapshot_service_cases (
    LIKE service_cases, from_pos bigint NOT NULL, to_pos bigint
);
CREATE UNIQUE INDEX IF NOT EXISTS replay_snapshot_service_cases_current
    ON replay_snapshot_service_cases (case_id) WHERE to_pos IS NULL;
-- <<< Time travel <<<

-- Which version of this schema the database has: one row per version applied
-- (infra.pgstore.SCHEMA_VERSION; apply_schema refuses a database newer than its code).
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer     PRIMARY KEY,
    digest     text        NOT NULL,   -- sha256 of this file as applied
    timescale  boolean     NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Escalation and paging (core/paging): the read model of escalations and their pages,
-- written by the pager's own projection (projections/pages.py, tracked in
-- pages_tracking; rebuildable from the log). The person's addresses stay in the policy
-- file: a page names the person and the channel only.
CREATE TABLE IF NOT EXISTS paging_escalations (
    escalation_id   uuid PRIMARY KEY,
    trigger         text NOT NULL,
    subject         text NOT NULL,
    title           text NOT NULL,
    grid_code       text,
    district_code   text,
    critical        boolean NOT NULL,
    status          text NOT NULL,             -- open, acknowledged, stopped
    started_at      timestamptz NOT NULL,
    policy_version  int NOT NULL,
    acknowledged_by text,
    acknowledged_at timestamptz,
    stop_reason     text,
    ended_at        timestamptz,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         int NOT NULL
);
CREATE INDEX IF NOT EXISTS paging_escalations_open ON paging_escalations (trigger) WHERE status = 'open';
CREATE TABLE IF NOT EXISTS paging_pages (
    page_id         uuid PRIMARY KEY,
    escalation_id   uuid NOT NULL,
    person          text NOT NULL,
    channel         text NOT NULL,             -- in_app, email, webhook, sms
    level           text NOT NULL,             -- street, district, city
    paged_at        timestamptz NOT NULL,
    delivery        text NOT NULL,             -- in_app, pending, failed, delivered, withdrawn
    attempts        int NOT NULL DEFAULT 0,
    last_error      text,
    delivered_at    timestamptz,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS paging_pages_person ON paging_pages (person, paged_at DESC);
CREATE INDEX IF NOT EXISTS paging_pages_escalation ON paging_pages (escalation_id);
CREATE INDEX IF NOT EXISTS paging_pages_outbox ON paging_pages (paged_at) WHERE delivery IN ('pending', 'failed');
CREATE TABLE IF NOT EXISTS pages_tracking (
    application_name text PRIMARY KEY,
    notification_id  bigint
);

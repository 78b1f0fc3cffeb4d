-- Tamper evidence for the city log. Applied after the event store's tables
-- exist (``infra.pgstore.apply_audit_schema``). Idempotent.
SELECT pg_advisory_xact_lock(7202612);

-- One link per recorded event, written in the same transaction as the event:
--   hash(n) = sha256(hash(n-1) || event_chain_record(n)),  hash(0) = 32 zero bytes.
-- The event store serializes its inserts (LOCK TABLE ... IN EXCLUSIVE MODE), so links
-- are made in notification order. ``recorded_at``: when the event was recorded (the
-- clock of the database), the audit's "as of" instants map to log positions by it.
CREATE TABLE IF NOT EXISTS event_chain (
    notification_id bigint PRIMARY KEY,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    hash            bytea NOT NULL
);
-- The position of the link before (a hint outside the hash: an event deleted together
-- with its link is then named exactly, though notification ids may skip numbers).
ALTER TABLE event_chain ADD COLUMN IF NOT EXISTS prev_id bigint;
CREATE INDEX IF NOT EXISTS event_chain_recorded_at ON event_chain (recorded_at, notification_id);

-- The canonical bytes of a stored event: every column, lengths where a field varies.
CREATE OR REPLACE FUNCTION event_chain_record(
    id bigint, originator uuid, version bigint, topic text, state bytea
) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT int8send(id) || uuid_send(originator) || int8send(version)
        || int4send(octet_length(convert_to(topic, 'UTF8'))) || convert_to(topic, 'UTF8')
        || int4send(octet_length(state)) || state
$$;

CREATE OR REPLACE FUNCTION event_chain_extend() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev bytea;
    prev_position bigint;
BEGIN
    SELECT notification_id, hash INTO prev_position, prev
        FROM event_chain ORDER BY notification_id DESC LIMIT 1;
    INSERT INTO event_chain (notification_id, prev_id, hash) VALUES (
        NEW.notification_id,
        prev_position,
        sha256(coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
            || event_chain_record(NEW.notification_id, NEW.originator_id,
                                  NEW.originator_version, NEW.topic, NEW.state)));
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER city_events_chain AFTER INSERT ON city_events
    FOR EACH ROW EXECUTE FUNCTION event_chain_extend();

-- The log is append-only: no role (but a superuser who disables the triggers) may change
-- or remove a recorded event or a link of the chain.
CREATE OR REPLACE FUNCTION refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the city log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE OR REPLACE TRIGGER city_events_append_only BEFORE UPDATE OR DELETE ON city_events
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE OR REPLACE TRIGGER city_events_no_truncate BEFORE TRUNCATE ON city_events
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE OR REPLACE TRIGGER event_chain_append_only BEFORE UPDATE OR DELETE ON event_chain
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE OR REPLACE TRIGGER event_chain_no_truncate BEFORE TRUNCATE ON event_chain
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();

-- The application's role. Processes that record events and write the views log in as a
-- member of ``cityops_writer`` (see README, "Database roles"): it may read the log and
-- append to it, never UPDATE or DELETE a recorded event, and it does not own the tables,
-- so it cannot disable the guards above. (The event store takes LOCK TABLE ... IN
-- EXCLUSIVE MODE to serialize inserts, which PostgreSQL grants only with UPDATE, DELETE or
-- TRUNCATE privilege: the role holds TRUNCATE, which the guard refuses.) The chain is
-- written only by its trigger, which runs as the tables' owner.
DO $$
BEGIN
    CREATE ROLE cityops_writer NOLOGIN;
EXCEPTION
    WHEN duplicate_object THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'cityops_writer not created: % may not create roles', current_user;
END
$$;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'cityops_writer') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO cityops_writer', current_database());
        GRANT USAGE ON SCHEMA public TO cityops_writer;
        GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO cityops_writer;
        GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO cityops_writer;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO cityops_writer;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO cityops_writer;
        REVOKE UPDATE, DELETE ON city_events FROM cityops_writer;
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON event_chain FROM cityops_writer;
    END IF;
END
$$;
ALTER FUNCTION event_chain_extend() SECURITY DEFINER SET search_path = public, pg_temp;

#!/usr/bin/env bash
# First-start initialisation of the CityOps database (run once, by the image's
# docker-entrypoint.sh, on an empty data volume; mounted into /docker-entrypoint-initdb.d
# after the image's own 000_install_timescaledb.sh).
#
# - creates the extensions as the superuser, so the application roles need no
#   superuser rights: timescaledb (hypertables, continuous aggregates) and postgis
#   (grid cells, jurisdictions, sensor locations);
# - creates the role `cityops` (password CITYOPS_DB_PASSWORD) and makes it the owner of
#   the database: `cityops seed` logs in as it to create the schemas and tables, and
#   grants `cityops_writer` its rights on them (infra/audit.sql);
# - creates `cityops_writer` (no login) and the login role `cityops_app` (password
#   CITYOPS_APP_DB_PASSWORD) in it, as which every other process runs: it records events
#   and writes the views, but owns nothing, so it can neither rewrite the log nor switch
#   off its guards (README, "Database roles").
#
# Idempotent: on a data volume made before `cityops_app` existed, run it again with
#   docker compose exec timescaledb bash /docker-entrypoint-initdb.d/100-cityops.sh
# then `docker compose up` (the seed grants cityops_writer its rights).
# Changing a password later does not re-run this script: use
#   docker compose exec timescaledb psql -U postgres -c "ALTER ROLE cityops_app PASSWORD '...'"
set -eo pipefail

: "${CITYOPS_DB_PASSWORD:?CITYOPS_DB_PASSWORD is not set}"
: "${CITYOPS_APP_DB_PASSWORD:?CITYOPS_APP_DB_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=owner_password="$CITYOPS_DB_PASSWORD" \
    --set=app_password="$CITYOPS_APP_DB_PASSWORD" --set=app_db="$POSTGRES_DB" <<'SQL'
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE EXTENSION IF NOT EXISTS postgis;

SELECT format('CREATE ROLE cityops LOGIN PASSWORD %L', :'owner_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cityops')
\gexec

-- The owner of the database owns its public schema (PostgreSQL 15+:
-- pg_database_owner), so this is all the rights the schema's owner needs.
SELECT format('ALTER DATABASE %I OWNER TO cityops', :'app_db')
\gexec

-- The application's roles. Their rights on the tables are granted by `cityops seed`
-- (as the tables' owner) on every run, so tables added later are covered too.
SELECT 'CREATE ROLE cityops_writer NOLOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cityops_writer')
\gexec

SELECT format('CREATE ROLE cityops_app LOGIN PASSWORD %L IN ROLE cityops_writer', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cityops_app')
\gexec

GRANT cityops_writer TO cityops_app;
SQL

#!/usr/bin/env bash
# First-start initialisation of the CityOps database (run once, by the image's
# docker-entrypoint.sh, on an empty data volume; mounted into /docker-entrypoint-initdb.d
# after the image's own 000_install_timescaledb.sh).
#
# - creates the extensions as the superuser, so the application role needs no
#   superuser rights: timescaledb (hypertables, continuous aggregates) and postgis
#   (grid cells, jurisdictions, sensor locations);
# - creates the application role `cityops` (password CITYOPS_DB_PASSWORD) and makes
#   it the owner of the database, so `cityops seed` can create its schemas and
#   tables, and the workers own what they write.
#
# Changing CITYOPS_DB_PASSWORD later does not re-run this script: use
#   docker compose exec timescaledb psql -U postgres -c "ALTER ROLE cityops PASSWORD '...'"
set -eo pipefail

: "${CITYOPS_DB_PASSWORD:?CITYOPS_DB_PASSWORD is not set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=app_password="$CITYOPS_DB_PASSWORD" --set=app_db="$POSTGRES_DB" <<'SQL'
CREATE EXTENSION IF NOT EXISTS timescaledb;
CREATE EXTENSION IF NOT EXISTS postgis;

SELECT format('CREATE ROLE cityops LOGIN PASSWORD %L', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cityops')
\gexec

-- The owner of the database owns its public schema (PostgreSQL 15+:
-- pg_database_owner), so this is all the rights the application needs.
SELECT format('ALTER DATABASE %I OWNER TO cityops', :'app_db')
\gexec
SQL

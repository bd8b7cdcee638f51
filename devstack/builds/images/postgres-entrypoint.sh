#!/bin/bash
# The test stack's stand-in for the chart's quick-start image (postgres:16-alpine cannot be pulled here): Debian's
# postgresql with the official image's main environment variables (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB,
# PGDATA) and its uid 70; server flags may follow the command. Not supported: *_FILE variables, /docker-entrypoint-initdb.d.
#
# First start: initdb into a scratch directory next to PGDATA with password (scram) logins from anywhere, create
# POSTGRES_DB, then rename it into place, so a start killed half-way never leaves a half-initialised PGDATA behind.
set -euo pipefail
: "${PGDATA:?PGDATA must be set}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set to initialise the database}"
  scratch="$PGDATA.initialising"
  rm -rf "$scratch"
  mkdir -p "$scratch"
  chmod 0700 "$scratch"
  initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 -D "$scratch" >/dev/null
  printf 'host all all all scram-sha-256\n' >> "$scratch/pg_hba.conf"
  pg_ctl -D "$scratch" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$database" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -v db="$database" --username "$user" --dbname postgres \
      <<< 'CREATE DATABASE :"db";' >/dev/null
  fi
  pg_ctl -D "$scratch" -m fast -w stop >/dev/null
  rm -rf "$PGDATA"
  mv "$scratch" "$PGDATA"
  echo "PostgreSQL init process complete; ready for start up."
fi
[ "${1:-}" = postgres ] && shift  # the image's CMD; server flags (-c name=value) may follow
exec postgres -c listen_addresses='*' "$@"

#!/bin/sh
# Entrypoint of the project's PostgreSQL image: the part of the official image's contract that
# tests rely on. Runs as the postgres user.
#
#   POSTGRES_USER      superuser to create (default postgres)
#   POSTGRES_PASSWORD  its password (required unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_DB        database to create (default: $POSTGRES_USER)
#   POSTGRES_INITDB_ARGS  extra initdb arguments (e.g. --no-sync)
#   PGPORT             port to listen on (default 5432); set it under host networking, where
#                      the container shares the host's ports
#
# Arguments: `postgres -c name=value …` or just `-c name=value …` start the server with those
# settings; anything else runs as a command (e.g. `psql`).
set -eu

if [ "${1:-postgres}" = postgres ] || [ "${1#-}" != "${1:-}" ]; then
  [ "${1:-}" = postgres ] && shift

  user=${POSTGRES_USER:-postgres}
  database=${POSTGRES_DB:-$user}
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "entrypoint: set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
  fi

  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    umask 077
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-unused}" >"$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments, as in the official image
    initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 \
      --no-locale --auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$pwfile"
    # Like the official image: the server listens on every interface of the container unless
    # told otherwise (-c listen_addresses=127.0.0.1 under host networking).
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.auto.conf"
    echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
      echo "CREATE DATABASE \"$database\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
  fi
  exec postgres -D "$PGDATA" "$@"
fi

exec "$@"

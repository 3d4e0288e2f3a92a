#!/usr/bin/env bash
# The whole test suite: on SQLite, PostgreSQL and MySQL/MariaDB, serially and under pytest-xdist,
# plus the throwaway-cluster and Docker backends. Extra arguments go to every pytest run (e.g. -x,
# -k name).
#
# PostgreSQL: THREADCREATOR_POSTGRES_URL, default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
# MySQL/MariaDB: THREADCREATOR_MYSQL_URL, default mysql+asyncmy://root@127.0.0.1:3306/
# Docker: THREADCREATOR_DOCKER_IMAGE, default the project's image (docker/build-postgres-image.sh
# builds it), with THREADCREATOR_DOCKER_NETWORK=host and without Ryuk; with a registry, e.g.
# THREADCREATOR_DOCKER_IMAGE=postgres:16-alpine THREADCREATOR_DOCKER_NETWORK=bridge ./test.sh
set -euo pipefail
cd "$(dirname "$0")"
python=.venv/bin/python
[ -x "$python" ] || { echo "no .venv here: run the README's install command first" >&2; exit 2; }
pg_url=${THREADCREATOR_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}
mysql_url=${THREADCREATOR_MYSQL_URL:-mysql+asyncmy://root@127.0.0.1:3306/}
export THREADCREATOR_DOCKER_IMAGE=${THREADCREATOR_DOCKER_IMAGE:-threadcreator-postgres:15}
export THREADCREATOR_DOCKER_NETWORK=${THREADCREATOR_DOCKER_NETWORK:-host}
export TESTCONTAINERS_RYUK_DISABLED=${TESTCONTAINERS_RYUK_DISABLED:-true}

run() {
  local db=$1; shift
  echo
  echo "=== pytest on ${db} $*"
  THREADCREATOR_DB=$db "$python" -m pytest -p no:cacheprovider "$@"
}

# The tests that start containers choose their backend themselves: they run once, on Docker.
# The examples, the benchmark's smoke tests, the backend and store-contract suites and the inner
# runs pick their own backends whatever THREADCREATOR_DB says (marker suite_independent): they
# run once, in the first run.
others="not suite_independent"
run sqlite -m "not docker" "$@"
run sqlite -n 2 -m "not docker and $others" "$@"
run "$pg_url" -m "not docker and $others" "$@"
run "$pg_url" -n 2 -m "not docker and $others" "$@"
run "$mysql_url" -m "not docker and $others" "$@"
run "$mysql_url" -n 2 -m "not docker and $others" "$@"
run postgresql-local -m "not docker and $others" "$@"
run postgresql-docker -m "$others" "$@"

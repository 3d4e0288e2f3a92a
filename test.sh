#!/usr/bin/env bash
# The whole test suite: on SQLite and on PostgreSQL, serially and under pytest-xdist, plus the
# throwaway-cluster backend. Extra arguments go to every pytest run (e.g. -x, -k name).
#
# PostgreSQL: THREADCREATOR_POSTGRES_URL, default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
set -euo pipefail
cd "$(dirname "$0")"
python=.venv/bin/python
[ -x "$python" ] || { echo "no .venv here: run the README's install command first" >&2; exit 2; }
pg_url=${THREADCREATOR_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}

run() {
  local db=$1; shift
  echo
  echo "=== pytest on ${db} $*"
  THREADCREATOR_DB=$db "$python" -m pytest -p no:cacheprovider "$@"
}

run sqlite "$@"
run sqlite -n 2 "$@"
run "$pg_url" "$@"
run "$pg_url" -n 2 "$@"
run postgresql-local "$@"

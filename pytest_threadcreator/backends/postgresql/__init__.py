"""The PostgreSQL backend: :mod:`.backend` (the backend), :mod:`.kind` (its registry entry and
factory), :mod:`.servers` (where a server comes from, the one URL check), :mod:`.local` (a
throwaway cluster), :mod:`.docker` (a container), :mod:`.janitor` (names, marks, run locks, the
sweep of dead runs), :mod:`.recycle` (used ``fresh`` databases made spares again) and
:mod:`.pools` (pool sizes). The tender of ``fresh`` databases cloned ahead is
:mod:`..spares`, shared with MySQL."""

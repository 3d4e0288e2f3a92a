"""The PostgreSQL backend: :mod:`.backend` (the backend), :mod:`.kind` (its registry entry and
factory), :mod:`.servers` (where a server comes from, the one URL check), :mod:`.local` (a
throwaway cluster), :mod:`.docker` (a container), :mod:`.janitor` (names, marks, run locks, the
sweep of dead runs), :mod:`.spares` (``fresh`` databases cloned ahead) and :mod:`.pools` (pool
sizes)."""

"""The PostgreSQL backend: :mod:`.backend` (the backend and its factory), :mod:`.servers`
(where a server comes from, the one URL check), :mod:`.local` (a throwaway cluster),
:mod:`.docker` (a container), :mod:`.janitor` (names, marks, run locks, the sweep of dead runs)
and :mod:`.pools` (pool sizes)."""

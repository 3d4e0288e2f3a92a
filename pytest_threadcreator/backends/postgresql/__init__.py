"""The PostgreSQL backend: :mod:`.backend` (the backend), :mod:`.kind` (its registry entry and
factory), :mod:`.servers` (where a server comes from, the one URL check), :mod:`.local` (a
throwaway cluster; where it lives: :mod:`.cluster_dirs`), :mod:`.docker` (a container), :mod:`.janitor` (names, marks, run locks, the
sweep of dead runs), :mod:`.recycle` (used ``fresh`` databases made spares again). Shared with MySQL: the names
(:mod:`..naming`), the pool sizes (:mod:`..pools`) and the tender of ``fresh`` databases cloned
ahead (:mod:`..spares`)."""

"""The MySQL/MariaDB backend: :mod:`.backend` (the backend and its registry entry's factory),
:mod:`.urls` (the one URL check, connection arguments), :mod:`.janitor` (the registry of what
the plugin made, run locks, the sweep of dead runs) and :mod:`.recycle` (used ``fresh``
databases made spares again). The tender of ``fresh`` databases made ahead is
:mod:`..spares`, shared with PostgreSQL."""

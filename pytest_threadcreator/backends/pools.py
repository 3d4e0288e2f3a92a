"""Pool sizes of one worker within the server's ``max_connections`` (see :func:`plan_pools`),
the same rule on every server kind."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigurationError
from ..store.base import DEFAULT_STORE_POOL

__all__ = ["PoolPlan", "plan_pools", "service_connections", "worker_count"]

ENV_WORKER_COUNT = "PYTEST_XDIST_WORKER_COUNT"
#: Connections of the server kept free for humans, monitoring and other tools.
SERVER_HEADROOM = 5
DEFAULT_ENGINE_POOL = 5
DEFAULT_ENGINE_OVERFLOW = 10
#: ``fresh`` databases a worker keeps cloned ahead (each costs the template's size on disk).
DEFAULT_SPARES = 4
#: Spares never leave a database fewer connections than this (its pools come first).
MIN_DATABASE_WITH_SPARES = 4


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """Connection budget of one worker; see :func:`plan_pools`."""

    max_connections: int
    workers: int
    per_worker: int
    store_max: int
    engine_pool_size: int
    engine_max_overflow: int
    #: ``fresh`` databases cloned ahead by the worker's tender (never more than this at once)
    spares: int = DEFAULT_SPARES
    #: whether each ready spare holds its first connection open (see :mod:`..spares`)
    warm_spares: bool = True


def plan_pools(
    max_connections: int,
    *,
    reserved: int = 3,
    workers: int = 1,
    requested: int | None = None,
    server: str = "PostgreSQL",
    remedy: str = "or use --threadcreator-db=postgresql-local (its cluster allows 200)",
) -> PoolPlan:
    """Split the server's connections so that every xdist worker's pools fit.

    The rule: ``usable = max_connections - superuser_reserved_connections - 5`` (headroom for
    psql and monitoring); each of the ``workers`` gets ``usable // workers``; of those, :func:`service_connections` are
    the admin connection and the tender's (which clones ``fresh`` databases ahead, each with a
    connection open, and drops used ones: :data:`DEFAULT_SPARES`, fewer or none when that would leave a database fewer
    than :data:`MIN_DATABASE_WITH_SPARES`, or spares without a connection open); the rest is shared by at most two live databases (the worker's
    ``clean`` database and a ``fresh`` one), and within a database half goes to the store pool
    (ThreadCreator, integrity reads; default 10, or ``requested``) and the remainder to the
    engine for the test's own code (``pool_size`` default 5, or ``requested``, plus overflow up
    to 10). Raises ConfigurationError when a database would get fewer than 2 connections.
    Another run sharing the server is not counted: give each CI job its own server or lower -n.
    ``server`` and ``remedy`` name the server kind and its own way out in that error.
    """
    workers = max(1, workers)
    usable = max_connections - reserved - SERVER_HEADROOM
    per_worker = usable // workers
    # fewer spares, then spares without a connection each, when connections are tight
    for spares, warm in ((n, w) for n in range(DEFAULT_SPARES, -1, -1) for w in (True, False)):
        per_database = (per_worker - service_connections(spares, warm=warm)) // 2
        if per_database >= (MIN_DATABASE_WITH_SPARES if spares else 2):
            break
    if per_database < 2:
        raise ConfigurationError(
            f"{server} max_connections={max_connections} is too low for {workers} workers "
            f"(each would get {max(per_worker, 0)} connections). Raise max_connections on the "
            f"server, run fewer xdist workers (-n), {remedy}"
        )
    store_max = max(1, min(requested or DEFAULT_STORE_POOL, per_database // 2))
    engine_total = per_database - store_max
    engine_pool = max(1, min(requested or DEFAULT_ENGINE_POOL, engine_total))
    overflow = max(0, min(DEFAULT_ENGINE_OVERFLOW, engine_total - engine_pool))
    return PoolPlan(
        max_connections, workers, per_worker, store_max, engine_pool, overflow, spares, warm
    )


def service_connections(spares: int, *, warm: bool = True) -> int:
    """Connections of a worker that serve no test's database: the admin one and, with spares,
    the tender's (one per spare to clone it side by side, one to drop used databases) and the
    one each ready spare holds open for its test when ``warm`` (see :mod:`..spares`)."""
    return 1 + ((2 if warm else 1) * spares + 1 if spares else 0)


def worker_count() -> int:
    try:
        return max(1, int(os.environ.get(ENV_WORKER_COUNT, "1")))
    except ValueError:
        return 1

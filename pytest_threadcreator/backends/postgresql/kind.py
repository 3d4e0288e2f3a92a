"""How the ``postgresql`` backend kind makes a :class:`~.backend.PostgresBackend` for a
``--threadcreator-db`` value (the registry's entry; the registry loads this on first use)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ConfigurationError
from ...store.postgresql import _asyncpg
from ..base import BackendRequest
from .backend import PostgresBackend
from .docker import DEFAULT_IMAGE
from .servers import MODES, async_url

__all__ = ["make", "make_postgres_backend"]


def make_postgres_backend(
    value: str,
    *,
    worker_id: str,
    run_id: str,
    pool_size: int | None = None,
    template_key: str | None = None,
    shared_cluster: Mapping[str, str] | None = None,
    docker_image: str | None = None,
    docker_network: str | None = None,
) -> PostgresBackend:
    """The backend for a ``--threadcreator-db`` value (not started yet).

    ``"postgresql"`` (auto: ``$THREADCREATOR_POSTGRES_URL``, else local binaries, else Docker),
    ``"postgresql-local"``, ``"postgresql-docker"``, or an async SQLAlchemy URL.
    ``template_key``: share one template per run (see the module docstring);
    ``shared_cluster``: use the local cluster (or Docker container) another process of the run
    started; ``docker_image``/``docker_network``: the container's image and network mode.
    """
    _asyncpg()
    common: dict[str, Any] = {
        "run_id": run_id,
        "worker_id": worker_id,
        "pool_size": pool_size,
        "template_key": template_key,
        "shared_cluster": shared_cluster,
        "docker_image": docker_image or DEFAULT_IMAGE,
        "docker_network": docker_network or "bridge",
    }
    value = value.strip()
    if value in MODES:
        return PostgresBackend(MODES[value], **common)
    if "://" in value:
        async_url(value, "--threadcreator-db")
        return PostgresBackend("url", url=value, **common)
    raise ConfigurationError(
        f"{value!r} is not a PostgreSQL backend; valid values: postgresql, postgresql-local, "
        "postgresql-docker, or an async URL such as postgresql+asyncpg://user@host:5432/postgres"
    )


def make(request: BackendRequest) -> PostgresBackend:
    """The backend for a request (the registry's entry, which loads this module on first use)."""
    return make_postgres_backend(
        request.db,
        worker_id=request.worker_id,
        run_id=request.run_id,
        template_key=request.template_key,
        shared_cluster=request.shared_server,
        docker_image=request.docker_image,
        docker_network=request.docker_network,
    )

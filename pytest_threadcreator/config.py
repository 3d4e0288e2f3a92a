"""Settings: every option resolved once, with where each value came from.

Precedence: marker > command line > environment > ini > default. Pytest-free: the plugin hands
in the raw values it read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.engine import make_url

from .backends import registry
from .backends.registry import BACKEND_NAMES
from .errors import ConfigurationError

__all__ = [
    "BACKEND_NAMES",
    "DOCKER_NETWORKS",
    "ISOLATION_MODES",
    "DockerSettings",
    "Settings",
    "backend_kind",
    "resolve_settings",
    "validate_db",
    "validate_isolation",
    "validate_seed",
    "validate_shake",
]

ISOLATION_MODES = ("clean", "fresh", "rollback")
ENV_DB = "THREADCREATOR_DB"
ENV_DOCKER_IMAGE = "THREADCREATOR_DOCKER_IMAGE"
ENV_DOCKER_NETWORK = "THREADCREATOR_DOCKER_NETWORK"
#: ``bridge``: Docker's default network, the port published; ``host``: host networking.
DOCKER_NETWORKS = ("bridge", "host")


@dataclass(frozen=True)
class DockerSettings:
    """How ``postgresql-docker`` runs its container (env > ini > default)."""

    #: None: the official image the backend defaults to
    image: str | None = None
    image_source: str = "default"
    network: str = "bridge"
    network_source: str = "default"

    def describe(self) -> str:
        """``, docker_image=… (from …)`` for what is not the default; else empty."""
        out = ""
        if self.image is not None:
            out += f", docker_image={self.image} (from {self.image_source})"
        if self.network_source != "default":
            out += f", docker_network={self.network} (from {self.network_source})"
        return out


@dataclass(frozen=True)
class Settings:
    """The resolved options of a run (or of one test, after its marker)."""

    db: str = "sqlite"
    db_source: str = "default"
    isolation: str = "clean"
    isolation_source: str = "default"
    keep: bool = False
    schema: str | None = None
    report: str | None = None
    #: repetitions of each database test under seeded schedule perturbations (0: off)
    shake: int = 0
    #: replay one schedule: every database test runs once under this seed
    seed: int | None = None
    docker: DockerSettings = DockerSettings()

    def with_marker(
        self, db: str | None, isolation: str | None, shake: int | None = None
    ) -> Settings:
        """These settings overridden by a ``threadcreator`` marker's arguments."""
        out = self
        if shake is not None:
            out = replace(out, shake=validate_shake(shake, "the threadcreator marker's shake"))
        if db is not None:
            out = replace(
                out, db=validate_db(db, "the threadcreator marker's db"), db_source="marker"
            )
        if isolation is not None:
            out = replace(
                out,
                isolation=validate_isolation(isolation, "the threadcreator marker's isolation"),
                isolation_source="marker",
            )
        return out

    def describe(self) -> str:
        """One line for the report header."""
        return (
            f"threadcreator: db={_hide(self.db)} (from {self.db_source}), "
            f"isolation={self.isolation} (from {self.isolation_source})"
            + (f", schema={self.schema}" if self.schema else "")
            + (f", shake={self.shake}" if self.shake else "")
            + (f", seed={self.seed}" if self.seed is not None else "")
            + self.docker.describe()
        )


def _hide(db: str) -> str:
    if "://" not in db:
        return db
    return make_url(db).render_as_string(hide_password=True)


def validate_db(value: str, where: str) -> str:
    """Return ``value`` if it names a backend or a server URL one takes, else raise (the
    registry's check, which also judges ``THREADCREATOR_POSTGRES_URL``)."""
    return registry.validate_db(value, where)


def validate_shake(value: object, where: str) -> int:
    """Return ``value`` as a repetition count (>= 0), else raise."""
    try:
        count = int(str(value))
    except ValueError:
        count = -1
    if isinstance(value, bool) or count < 0:
        raise ConfigurationError(
            f"{where}: {value!r} is not a number of repetitions; pass an int >= 0 "
            "(0 turns shake mode off)"
        )
    return count


def validate_seed(value: object, where: str) -> int:
    """Return ``value`` as a seed (an int >= 0), else raise."""
    try:
        seed = int(str(value))
    except ValueError:
        seed = -1
    if seed < 0:
        raise ConfigurationError(
            f"{where}: {value!r} is not a seed; pass the int >= 0 a shake failure printed"
        )
    return seed


def validate_isolation(value: str, where: str) -> str:
    """Return ``value`` if it is an isolation mode, else raise."""
    if value not in ISOLATION_MODES:
        raise ConfigurationError(
            f"{where}: {value!r} is not an isolation mode; valid values: "
            + ", ".join(ISOLATION_MODES)
        )
    return value


def resolve_docker(ini: Mapping[str, Any], env: Mapping[str, str]) -> DockerSettings:
    """The Docker image and network mode: env > ini > default. Raises ConfigurationError."""
    image, image_source = None, "default"
    for value, source, where in (
        (ini.get("docker_image"), "ini", "ini threadcreator_docker_image"),
        (env.get(ENV_DOCKER_IMAGE), "env", f"environment {ENV_DOCKER_IMAGE}"),
    ):
        if value and str(value).strip():
            image, image_source = str(value).strip(), source
            if any(ch.isspace() for ch in image):
                raise ConfigurationError(
                    f"{where}: {image!r} is not a Docker image reference; give one like "
                    "postgres:16-alpine or registry.example.com/team/postgres:16"
                )
    network, network_source = "bridge", "default"
    for value, source, where in (
        (ini.get("docker_network"), "ini", "ini threadcreator_docker_network"),
        (env.get(ENV_DOCKER_NETWORK), "env", f"environment {ENV_DOCKER_NETWORK}"),
    ):
        if value and str(value).strip():
            network, network_source = str(value).strip(), source
            if network not in DOCKER_NETWORKS:
                raise ConfigurationError(
                    f"{where}: {network!r} is not a Docker network mode; valid values: "
                    + ", ".join(DOCKER_NETWORKS)
                )
    return DockerSettings(image, image_source, network, network_source)


def backend_kind(db: str) -> str:
    """The name of the kind of backend (``Database.backend``) a validated ``db`` value names."""
    return registry.kind_of(db).name


def resolve_settings(
    *,
    cli: Mapping[str, Any],
    ini: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve CLI > env > ini > default. Raises ConfigurationError naming the bad value (also
    for a bad server URL in the environment, e.g. ``THREADCREATOR_POSTGRES_URL``)."""
    env = os.environ if env is None else env
    registry.validate_environment(env)
    db, db_source = "sqlite", "default"
    if ini.get("db"):
        db, db_source = validate_db(str(ini["db"]), "ini threadcreator_db"), "ini"
    if env.get(ENV_DB):
        db, db_source = validate_db(env[ENV_DB], f"environment {ENV_DB}"), "env"
    if cli.get("db"):
        db, db_source = validate_db(str(cli["db"]), "--threadcreator-db"), "command line"
    isolation, isolation_source = "clean", "default"
    if ini.get("isolation"):
        isolation = validate_isolation(str(ini["isolation"]), "ini threadcreator_isolation")
        isolation_source = "ini"
    if cli.get("isolation"):
        isolation = validate_isolation(str(cli["isolation"]), "--threadcreator-isolation")
        isolation_source = "command line"
    shake = 0
    if ini.get("shake"):
        shake = validate_shake(ini["shake"], "ini threadcreator_shake")
    if cli.get("shake") is not None:
        shake = validate_shake(cli["shake"], "--threadcreator-shake")
    seed = (
        validate_seed(cli["seed"], "--threadcreator-seed") if cli.get("seed") is not None else None
    )
    return Settings(
        shake=shake,
        seed=seed,
        db=db,
        db_source=db_source,
        isolation=isolation,
        isolation_source=isolation_source,
        keep=bool(cli.get("keep")),
        schema=str(ini["schema"]) if ini.get("schema") else None,
        report=str(cli["report"]) if cli.get("report") else None,
        docker=resolve_docker(ini, env),
    )

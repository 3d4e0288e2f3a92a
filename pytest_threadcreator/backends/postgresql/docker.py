"""PostgreSQL in a Docker container (testcontainers), for ``--threadcreator-db=postgresql-docker``.

* Any image that honours ``POSTGRES_USER``/``POSTGRES_PASSWORD``/``POSTGRES_DB`` works: the
  official ``postgres`` image (the default) or one built without a registry
  (``docker/build-postgres-image.sh`` in the project's repository). An image that is missing
  and cannot be pulled stops the run with one line.
* ``network="host"`` runs the container with host networking: the plugin picks a free loopback
  port, passes it as ``PGPORT`` and makes the server listen on 127.0.0.1 only. For CI runners
  whose Docker has no bridge network, and for images that cannot publish ports.
* Every container carries the plugin's mark, the run id and its owner (host, boot id, pid
  namespace, pid and the pid's start time) as labels. It is removed when the run ends; a run
  killed outright leaves it behind, and the next start removes the containers of owners that
  are provably gone. Containers without the mark, or whose owner cannot be checked from here
  (another host, another pid namespace), are never touched. This works with and without
  testcontainers' Ryuk reaper (``TESTCONTAINERS_RYUK_DISABLED=true``).
* Under pytest-xdist the controller launches one container for the run
  (:meth:`DockerServer.launch`) and hands :meth:`DockerServer.handoff` to the workers, which :meth:`DockerServer.attach` to it
  (waiting until it accepts connections) and never remove it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import secrets
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import BackendUnavailableError
from ..server import short_reason as _short_reason

__all__ = [
    "DEFAULT_IMAGE",
    "NETWORKS",
    "DockerServer",
    "docker_unreachable_reason",
    "failed_handoff",
    "owner_is_gone",
    "owner_label",
    "remove_dead_containers",
]

#: The official image (any image honouring POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB works).
DEFAULT_IMAGE = "postgres:16-alpine"
#: ``bridge``: Docker's default network, the server's port published on the host;
#: ``host``: host networking, the server on a free 127.0.0.1 port passed as PGPORT.
NETWORKS = ("bridge", "host")
#: Label on every container the plugin starts; the proof that it is the plugin's.
LABEL_MARK = "pytest-threadcreator"
LABEL_MARK_VALUE = "postgresql"
LABEL_RUN = "pytest-threadcreator.run"
#: ``host/boot id/pid namespace/pid/pid start time`` of the process that started it.
LABEL_OWNER = "pytest-threadcreator.owner"
#: Name suffix of a container kept for a kept database: no run removes it.
KEPT_SUFFIX = "-kept"
#: How long a container may take to accept connections (initdb included).
READY_TIMEOUT = 120.0
_POLL_INTERVAL = 0.1
_USER = "postgres"
_DATABASE = "postgres"
_SETTINGS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
_INSTALL_DOCKER = "pip install 'pytest-threadcreator[docker]'"
_USE_INSTEAD = (
    "use --threadcreator-db=postgresql-local (local PostgreSQL binaries) or a server URL such as "
    "--threadcreator-db=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
#: Run inside the container (its environment has POSTGRES_* and, under host networking,
#: PGPORT): succeeds once the real server accepts TCP connections, not the official image's
#: socket-only init server.
_READY_CHECK = [
    "sh",
    "-c",
    'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "${POSTGRES_USER:-postgres}" '
    '-d "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" -Atqc "select 1" >/dev/null',
]


class DockerServer:
    """A PostgreSQL container: :meth:`start` it (or :meth:`launch` + :meth:`wait_ready`), then
    use :attr:`url`; :meth:`stop` removes it."""

    def __init__(
        self, image: str = DEFAULT_IMAGE, *, network: str = "bridge", run_id: str = ""
    ) -> None:
        if network not in NETWORKS:
            raise BackendUnavailableError(
                f"postgresql-docker: {network!r} is not a Docker network mode; valid values: "
                + ", ".join(NETWORKS)
            )
        self.image = image
        self.network = network
        self.run_id = run_id
        #: the asyncpg URL of the server (password included), once launched
        self.url = ""
        self.container_id = ""
        self.name = ""
        #: True for a container another process of the run started (see :meth:`attach`)
        self.attached = False
        self._client: Any = None
        self._container: Any = None  # testcontainers' PostgresContainer (launched here)
        self._docker_container: Any = None  # docker-py's Container

    def __repr__(self) -> str:
        return f"<DockerServer {self.image} {self.name or '(not started)'}>"

    # -- start -------------------------------------------------------------------------------
    def start(self) -> str:
        """Launch the container and wait until it accepts connections; returns :attr:`url`."""
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def launch(self) -> str:
        """Remove dead runs' containers, then create and start ours (not waiting for it).

        Raises BackendUnavailableError, in one line, when testcontainers or Docker is missing,
        the image is neither present nor pullable, or the container does not start.
        """
        module = _testcontainers_postgres()
        reason = docker_unreachable_reason()
        if reason is not None:
            raise BackendUnavailableError(
                "postgresql-docker: tried to start a PostgreSQL container with testcontainers, "
                f"but Docker is not reachable ({reason}); {_USE_INSTEAD}"
            )
        self._client = _docker_client()
        remove_dead_containers(self._client)
        self._ensure_image()
        _ensure_reaper()
        password = secrets.token_hex(12)
        self.name = f"threadcreator-{self.run_id or 'run'}-{secrets.token_hex(3)}"
        container = _quiet_container_class(module)(
            self.image, username=_USER, password=password, dbname=_DATABASE, driver="asyncpg"
        )
        # A throwaway server: initdb need not flush its files (seconds on a busy disk).
        container.with_env("POSTGRES_INITDB_ARGS", "--no-sync")
        command = f"postgres {_SETTINGS}"
        kwargs: dict[str, Any] = {"labels": self._labels()}
        port = 0
        if self.network == "host":
            port = _free_loopback_port()
            container.ports = {}  # nothing to publish: the server is on the host's loopback
            container.with_env("PGPORT", str(port))
            command += " -c listen_addresses=127.0.0.1"
            kwargs["network"] = "host"
        container.with_name(self.name).with_command(command).with_kwargs(**kwargs)
        try:
            container.start()
        except Exception as exc:  # any Docker failure becomes one readable line
            with contextlib.suppress(Exception):
                container.stop()
            raise BackendUnavailableError(
                f"postgresql-docker: the {self.image} container did not start "
                f"({_short_reason(exc)}); {_USE_INSTEAD}"
            ) from None
        self._container = container
        self._docker_container = container.get_wrapped_container()
        self.container_id = str(self._docker_container.id)
        atexit.register(self.stop)
        try:
            if port:
                self.url = f"postgresql+asyncpg://{_USER}:{password}@127.0.0.1:{port}/{_DATABASE}"
            else:
                self.url = str(container.get_connection_url())
        except Exception as exc:  # the port lookup fails when the container exited at once
            self.stop()
            raise BackendUnavailableError(
                f"postgresql-docker: the {self.image} container did not start "
                f"({_short_reason(exc)}); {_USE_INSTEAD}"
            ) from None
        return self.url

    def _labels(self) -> dict[str, str]:
        return {LABEL_MARK: LABEL_MARK_VALUE, LABEL_RUN: self.run_id, LABEL_OWNER: owner_label()}

    def _ensure_image(self) -> None:
        """The image, pulled if missing; one line when it is neither here nor pullable."""
        docker = importlib.import_module("docker")
        try:
            self._client.images.get(self.image)
            return
        except docker.errors.ImageNotFound:
            pass
        except Exception as exc:  # e.g. an invalid reference
            raise BackendUnavailableError(
                f"postgresql-docker: image {self.image!r} is not usable ({_short_reason(exc)}); "
                f"{_IMAGE_HINT}"
            ) from None
        try:
            self._client.images.pull(self.image)
        except Exception as exc:  # no registry, unknown image, no access
            raise BackendUnavailableError(
                f"postgresql-docker: image {self.image!r} is not present and could not be pulled "
                f"({_short_reason(exc)}); {_IMAGE_HINT}"
            ) from None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until the server accepts connections; one line if the container exits first."""
        container = self._docker_container
        deadline = time.monotonic() + timeout
        while True:
            try:
                container.reload()
                status = str(container.status)
            except Exception as exc:  # removed under us
                raise BackendUnavailableError(
                    f"postgresql-docker: container {self.name} is gone ({_short_reason(exc)}); "
                    "run again, and leave the plugin's containers alone while a run uses them"
                ) from None
            if status in ("exited", "dead"):
                raise BackendUnavailableError(
                    f"postgresql-docker: the {self.image} container exited before PostgreSQL was "
                    f"ready ({self._log_tail()}); check that the image honours POSTGRES_USER, "
                    f"POSTGRES_PASSWORD and POSTGRES_DB (and PGPORT with host networking), or "
                    f"{_USE_INSTEAD}"
                )
            if status == "running":
                with contextlib.suppress(Exception):  # not up yet
                    if container.exec_run(_READY_CHECK).exit_code == 0:
                        return
            if time.monotonic() > deadline:
                raise BackendUnavailableError(
                    f"postgresql-docker: the {self.image} container did not accept connections "
                    f"within {timeout:.0f} s ({self._log_tail()}); {_USE_INSTEAD}"
                )
            time.sleep(_POLL_INTERVAL)

    def _log_tail(self) -> str:
        try:
            lines = self._docker_container.logs(tail=5).decode(errors="replace").splitlines()
        except Exception as exc:  # the container may be gone
            return f"no logs: {_short_reason(exc)}"
        lines = [line.strip() for line in lines if line.strip()]
        return "last log line: " + (lines[-1][:200] if lines else "(none)")

    # -- sharing (pytest-xdist) --------------------------------------------------------------
    def handoff(self) -> dict[str, str]:
        """What :meth:`attach` needs in another process (plain strings: it crosses processes)."""
        return {
            "docker_container": self.container_id,
            "docker_url": self.url,
            "docker_image": self.image,
            "docker_name": self.name,
        }

    @staticmethod
    def is_handoff(handoff: Mapping[str, str]) -> bool:
        """True when ``handoff`` comes from :meth:`handoff` (or :func:`failed_handoff`)."""
        return "docker_url" in handoff or "docker_error" in handoff

    @classmethod
    def attach(cls, handoff: Mapping[str, str]) -> DockerServer:
        """The container another process of this run launched, once it accepts connections.

        :meth:`stop` on the result does nothing: the process that launched it removes it.
        """
        if handoff.get("docker_error"):
            raise BackendUnavailableError(handoff["docker_error"])
        server = cls(handoff.get("docker_image") or DEFAULT_IMAGE)
        server.attached = True
        server.url = handoff["docker_url"]
        server.container_id = handoff["docker_container"]
        server.name = handoff.get("docker_name") or server.container_id[:12]
        reason = docker_unreachable_reason()
        if reason is not None:
            raise BackendUnavailableError(
                f"postgresql-docker: the run's container {server.name} cannot be checked: Docker "
                f"is not reachable from this process ({reason})"
            )
        server._client = _docker_client()
        try:
            server._docker_container = server._client.containers.get(server.container_id)
        except Exception as exc:  # removed, or the controller stopped early
            server._close_client()
            raise BackendUnavailableError(
                f"postgresql-docker: the run's container {server.name} is gone "
                f"({_short_reason(exc)}); did the pytest-xdist controller stop early?"
            ) from None
        try:
            server.wait_ready()
        finally:
            server._close_client()
        return server

    # -- stop --------------------------------------------------------------------------------
    def stop(self, *, keep: bool = False) -> None:
        """Remove the container and its volumes (idempotent; nothing for an attached one).

        ``keep``: leave it running, renamed ``<name>-kept`` so that no later run removes it
        (``--threadcreator-keep`` kept a database in it); remove it by hand when done.
        """
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        container, self._container = self._container, None
        if container is not None and not self.attached:
            with contextlib.suppress(Exception):
                if keep:
                    self._docker_container.rename(self.name + KEPT_SUFFIX)
                else:
                    container.stop(force=True, delete_volume=True)
        self._docker_container = None
        self._close_client()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def failed_handoff(error: BaseException) -> dict[str, str]:
    """A hand-off that makes every :meth:`DockerServer.attach` raise ``error``'s message."""
    return {"docker_error": str(error)}


_IMAGE_HINT = (
    "pull or build it first (the project's docker/build-postgres-image.sh builds one without a "
    "registry), set THREADCREATOR_DOCKER_IMAGE or ini threadcreator_docker_image to an image "
    f"you have, or {_USE_INSTEAD}"
)


# ---------------------------------------------------------------------------------------------
# Owners: which run started a container, and whether it is still alive
# ---------------------------------------------------------------------------------------------


def owner_label(pid: int | None = None) -> str:
    """``host/boot id/pid namespace/pid/start time`` of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return "/".join(
        [socket.gethostname(), _boot_id(), _pid_namespace(), str(pid), _start_time(pid)]
    )


def owner_is_gone(label: str) -> bool:
    """True only when the process that ``label`` names has provably ended.

    Another host, another pid namespace or a label that does not parse: False (cannot tell).
    The same host after a reboot: gone. Otherwise: gone when no process has that pid, or the
    one that has it started at another time (the pid was reused).
    """
    parts = label.split("/")
    if len(parts) != 5 or not parts[3].isdigit():
        return False
    host, boot_id, pid_namespace, pid_text, start_time = parts
    if host != socket.gethostname():
        return False
    if boot_id and _boot_id() and boot_id != _boot_id():
        return True  # the machine rebooted since: every process of that boot is gone
    if pid_namespace != _pid_namespace():
        return False
    pid = int(pid_text)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return bool(start_time) and _start_time(pid) not in ("", start_time)


def remove_dead_containers(client: Any) -> list[str]:
    """Remove the plugin's containers whose owner is gone; returns their names.

    Only containers labelled with the plugin's mark are looked at; only those whose owner has
    provably ended are removed (with their anonymous volumes), and never one kept for a kept
    database.
    """
    removed: list[str] = []
    try:
        containers = client.containers.list(
            all=True, filters={"label": f"{LABEL_MARK}={LABEL_MARK_VALUE}"}
        )
    except Exception:  # listing failed: leave everything alone
        return removed
    for container in containers:
        labels = container.labels or {}
        if labels.get(LABEL_MARK) != LABEL_MARK_VALUE or str(container.name).endswith(KEPT_SUFFIX):
            continue
        if not owner_is_gone(str(labels.get(LABEL_OWNER, ""))):
            continue
        with contextlib.suppress(Exception):  # another run may be removing it right now
            container.remove(force=True, v=True)
            removed.append(str(container.name))
    return removed


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").replace("/", "_")
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


# ---------------------------------------------------------------------------------------------
# Docker and testcontainers
# ---------------------------------------------------------------------------------------------


def docker_unreachable_reason() -> str | None:
    """None when a Docker daemon answers a ping, else a short reason."""
    try:
        docker = importlib.import_module("docker")
    except ImportError:
        return f"the docker package is not installed: {_INSTALL_DOCKER}"
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        if where.startswith("unix://"):
            # docker's client leaves its socket unclosed when the connect fails: probe first
            _connect_unix(where[len("unix://") :])
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # turned into one line
        return f"no Docker daemon at {where}: {_short_reason(exc)}"
    return None


def _connect_unix(path: str) -> None:
    """Connect to the Unix socket at ``path`` and close it; OSError when nothing listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        probe.connect(path)


def _docker_client() -> Any:
    # Generous: pulling a large image over a slow link is one long API call.
    return importlib.import_module("docker").from_env(timeout=600)


def _testcontainers_postgres() -> Any:
    try:
        return importlib.import_module("testcontainers.community.postgres")
    except ImportError:
        try:
            return importlib.import_module("testcontainers.postgres")
        except ImportError:
            raise BackendUnavailableError(
                "postgresql-docker: testcontainers is not installed; "
                f"{_INSTALL_DOCKER}, or {_USE_INSTEAD}"
            ) from None


def _quiet_container_class(module: Any) -> Any:
    """PostgresContainer without its own readiness wait (polled once a second, and blind to a
    container that exited): :meth:`DockerServer.wait_ready` does that."""

    class _Container(module.PostgresContainer):  # type: ignore[misc]
        def _connect(self) -> None:
            pass

    return _Container


def _ensure_reaper() -> None:
    """Start testcontainers' Ryuk reaper unless disabled; one line when it cannot start."""
    try:
        core = importlib.import_module("testcontainers.core.container")
        config = importlib.import_module("testcontainers.core.config").testcontainers_config
    except ImportError:
        return
    if config.ryuk_disabled:
        return
    try:
        core.Reaper.get_instance()
    except Exception as exc:  # typically: its image cannot be pulled
        with contextlib.suppress(Exception):
            core.Reaper.delete_instance()
        raise BackendUnavailableError(
            f"postgresql-docker: testcontainers' Ryuk reaper ({config.ryuk_image}) did not start "
            f"({_short_reason(exc)}); set TESTCONTAINERS_RYUK_DISABLED=true (the plugin removes "
            "its containers itself at exit, and those of killed runs at the next start)"
        ) from None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

"""A throwaway PostgreSQL cluster from the local binaries (``initdb`` + ``postgres``).

* Lives in a fresh directory with a short name (``/dev/shm/tc-XXXXXXXX`` when that has room,
  else ``/tmp/tc-XXXXXXXX``): the server listens only on a unix socket there, and socket paths
  must stay under 107 bytes. In memory, because a cluster and each of its databases are
  hundreds of files, and creating a file on a disk filesystem can cost most of a millisecond
  (:mod:`.cluster_dirs`: the parent directory and the ``initdb`` cache).
* Tuned for tests, not durability: ``fsync``, ``synchronous_commit`` and ``full_page_writes``
  off; ``max_connections`` raised so pools of several xdist workers fit.
* Works when pytest runs as root (CI containers): ``initdb`` refuses root, so the binaries run
  as the ``postgres`` system user, which owns the directory.
* Starts from a pristine copy of ``initdb``'s output when one is cached beside the clusters
  (``threadcreator-initdb-<uid>-<key>``, keyed by the binaries and the initdb arguments, kept
  only when it belongs to the user the server runs as and nobody else can write it): copying is
  a small part of what ``initdb`` costs. The first start fills the cache.
* Removed at exit (``atexit``; Ctrl-C takes the normal exit path). A run killed outright leaves
  its directory behind, holding nobody's lock: the next cluster start stops and removes it.
* Shared by the processes of one run (pytest-xdist): the controller calls
  :meth:`LocalCluster.start_in_background` (the directory and address exist at once, ``initdb``
  and the server start overlap the workers' own start-up) and hands :meth:`LocalCluster.handoff`
  to each worker; a worker's :meth:`LocalCluster.attach` waits, on a file lock the starter holds
  until it is done, for the server to be up, and never stops it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from ...errors import BackendUnavailableError
from .cluster_dirs import (
    INITDB_ARGS,
    STAGING_PREFIX,
    default_parents,
    initdb_cache_path,
    remove_stale_staging,
    short_parent,
    trusted_cache,
)

__all__ = ["LocalCluster", "find_pg_bindir"]

#: Unix socket paths longer than this fail (``sun_path`` is 108 bytes including the NUL).
MAX_SOCKET_PATH = 107
#: The port only names the socket file (``.s.PGSQL.<port>``); the directory is private.
SOCKET_PORT = 5432
ENV_BINDIR = "THREADCREATOR_PG_BINDIR"
_MARKER = "threadcreator-cluster"
_LOCKFILE = "owner.lock"
#: Held exclusively by the process starting the server until it is up (or failed to start).
_READY_LOCK = "ready.lock"
#: Why a background start failed, for the processes waiting on the ready lock.
_START_ERROR = "start-error"
_HINT = (
    "Install the PostgreSQL server binaries (e.g. apt-get install postgresql), set "
    f"{ENV_BINDIR} to the directory holding initdb and pg_ctl, or use an existing server with "
    "--threadcreator-db=postgresql+asyncpg://user@host:5432/postgres"
)


_FAILED_HINT = (
    "Fix the cause shown, point THREADCREATOR_PG_BINDIR at another PostgreSQL installation, or "
    "use an existing server with --threadcreator-db=postgresql+asyncpg://user@host:5432/postgres"
)


def find_pg_bindir(explicit: str | None = None) -> str:
    """The directory holding ``initdb`` and ``pg_ctl``.

    Looked for in order: ``explicit``, ``$THREADCREATOR_PG_BINDIR``, ``PATH``,
    ``pg_config --bindir``, then the usual package locations (newest version first).
    Raises BackendUnavailableError listing where it looked.
    """
    looked: list[str] = []
    candidates: list[str] = []
    for given in (explicit, os.environ.get(ENV_BINDIR)):
        if given:
            candidates.append(given)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))
    else:
        looked.append("PATH (no pg_ctl)")
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError) as exc:
            looked.append(f"pg_config --bindir ({exc.__class__.__name__})")
    else:
        looked.append("pg_config (not on PATH)")
    patterns = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
    for pattern in patterns:
        candidates.extend(sorted(glob.glob(pattern), key=_version_key, reverse=True))
    for directory in candidates:
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return directory
        looked.append(f"{directory} (no initdb/pg_ctl)")
    looked.append(" ".join(patterns) + " (nothing found)")
    raise BackendUnavailableError(
        "postgresql-local: no PostgreSQL server binaries (initdb, pg_ctl) found; looked in "
        + "; ".join(looked)
        + ". "
        + _HINT
    )


def _version_key(path: str) -> tuple[int, ...]:
    digits = "".join(ch if ch.isdigit() else " " for ch in path).split()
    return tuple(int(d) for d in digits)


class LocalCluster:
    """A private PostgreSQL server in a temp directory; :meth:`start` it, :meth:`stop` it.

    After :meth:`start`: :attr:`socket_dir`, :attr:`port`, :attr:`url` (an async SQLAlchemy URL
    for asyncpg over the unix socket), :attr:`version`.
    """

    def __init__(
        self,
        *,
        bindir: str | None = None,
        parent_dir: str | None = None,
        max_connections: int = 200,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._bindir_hint = bindir
        self._parent_dir = parent_dir
        self._parent = ""
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.bindir = ""
        self.directory: Path | None = None
        self.port = SOCKET_PORT
        self.version = ""
        self._run_as: pwd.struct_passwd | None = None
        self._lock: IO[bytes] | None = None
        self._running = False
        #: True for a cluster another process started and owns (see :meth:`attach`)
        self.attached = False
        self._starter: threading.Thread | None = None
        self._start_error: BaseException | None = None
        #: the server this process started (None when attached or not started)
        self._postmaster: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<LocalCluster {self.directory or '(not started)'} running={self._running}>"

    # -- addresses ---------------------------------------------------------------------------
    @property
    def socket_dir(self) -> str:
        """The directory holding the server's unix socket (also the cluster's directory)."""
        if self.directory is None:
            raise BackendUnavailableError("postgresql-local: the cluster was not started")
        return str(self.directory)

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return Path(self.socket_dir) / "data"

    @property
    def log_path(self) -> Path:
        """The server log."""
        return Path(self.socket_dir) / "server.log"

    @property
    def url(self) -> str:
        """``postgresql+asyncpg://postgres@/postgres?host=<socket dir>&port=<port>``."""
        return f"postgresql+asyncpg://postgres@/postgres?host={self.socket_dir}&port={self.port}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """initdb + start; raises BackendUnavailableError saying what failed and what to do."""
        if self._running:
            return
        try:
            self._prepare()
            self._boot()
        except BaseException:
            self.stop()
            raise
        self._started()
        atexit.register(self.stop)

    def start_in_background(self) -> None:
        """Make the directory now, then initdb and start the server on a thread.

        :attr:`url` and :meth:`handoff` are usable on return; other processes :meth:`attach`
        and wait for the server, this one calls :meth:`wait_started`. Raises
        BackendUnavailableError at once when no binaries are found.
        """
        if self._running or self._starter is not None:
            return
        try:
            self._prepare()
            ready = open(self.data_dir.parent / _READY_LOCK, "wb")
        except BaseException:
            self.stop()
            raise
        fcntl.flock(ready.fileno(), fcntl.LOCK_EX)  # ours alone: nobody else has it yet
        atexit.register(self.stop)

        def boot() -> None:
            try:
                self._boot()
                self._started()
            except BaseException as exc:  # handed to wait_started() and to the workers
                self._start_error = exc
                with contextlib.suppress(OSError):
                    (self.data_dir.parent / _START_ERROR).write_text(str(exc))
            finally:
                ready.close()  # releases the lock: the waiting workers go on

        self._starter = threading.Thread(target=boot, name="threadcreator-pg-start", daemon=True)
        self._starter.start()

    def wait_started(self) -> None:
        """Block until a background start is done; raise what made it fail."""
        if self._starter is not None:
            self._starter.join()
        if self._start_error is not None:
            raise self._start_error

    def handoff(self) -> dict[str, str]:
        """What :meth:`attach` needs in another process (plain strings: it crosses processes)."""
        return {
            "directory": self.socket_dir,
            "port": str(self.port),
            "bindir": self.bindir,
            "user": self._run_as.pw_name if self._run_as is not None else "",
        }

    @classmethod
    def attach(cls, handoff: Mapping[str, str]) -> LocalCluster:
        """The cluster another process of this run started (``handoff`` from it), once it is up.

        Waits while that process still starts it; raises BackendUnavailableError when the start
        failed. :meth:`stop` on the result does nothing: the owner stops the cluster.
        """
        cluster = cls(bindir=handoff.get("bindir") or None)
        cluster.directory = Path(handoff["directory"])
        cluster.port = int(handoff.get("port") or SOCKET_PORT)
        cluster.bindir = handoff.get("bindir", "")
        user = handoff.get("user")
        if user:
            with contextlib.suppress(KeyError):
                cluster._run_as = pwd.getpwnam(user)
        cluster.attached = True
        try:
            with open(cluster.directory / _READY_LOCK, "rb") as ready:
                fcntl.flock(ready.fileno(), fcntl.LOCK_SH)  # blocks until the starter is done
        except OSError as exc:
            raise BackendUnavailableError(
                f"postgresql-local: the run's cluster in {cluster.directory} is gone ({exc}); "
                "did the pytest-xdist controller stop early?"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            reason = (cluster.directory / _START_ERROR).read_text().strip()
            raise BackendUnavailableError(reason or "postgresql-local: the cluster did not start")
        try:
            cluster.version = (cluster.data_dir / "PG_VERSION").read_text().strip()
        except OSError as exc:
            raise BackendUnavailableError(
                f"postgresql-local: the run's cluster in {cluster.directory} is not usable "
                f"({exc}). {_FAILED_HINT}"
            ) from None
        cluster._running = True
        return cluster

    def _prepare(self) -> None:
        """Find the binaries and make the cluster's directory (quick; no server yet)."""
        self.bindir = find_pg_bindir(self._bindir_hint)
        self._run_as = _system_user_for_root()
        parent = self._parent_dir or short_parent()
        for swept in [parent] if self._parent_dir else default_parents():
            remove_stale_clusters(swept)
        self._create_directory(parent)
        self._parent = parent

    def _boot(self) -> None:
        self._initdb()
        self._configure()
        self._start_server()

    def _started(self) -> None:
        self.version = (self.data_dir / "PG_VERSION").read_text().strip()
        self._running = True

    def _create_directory(self, parent: str) -> None:
        directory = Path(tempfile.mkdtemp(prefix="tc-", dir=parent))
        self.directory = directory
        socket_path = directory / f".s.PGSQL.{self.port}"
        if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
            raise BackendUnavailableError(
                f"postgresql-local: the socket path {socket_path} is longer than "
                f"{MAX_SOCKET_PATH} bytes; pass a shorter parent_dir (e.g. /tmp)"
            )
        lock = open(directory / _LOCKFILE, "wb")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = lock
        (directory / _MARKER).write_text(f"{os.getpid()}\n")
        if self._run_as is not None:
            os.chown(directory, self._run_as.pw_uid, self._run_as.pw_gid)

    def _initdb(self) -> None:
        """``initdb``, or a copy of its cached output; fills the cache when it has none."""
        args = INITDB_ARGS
        cache = initdb_cache_path(self._parent, self.bindir, args, self._run_as)
        if self._copy_data_from(cache):
            return
        self._run(
            [os.path.join(self.bindir, "initdb"), "-D", str(self.data_dir), *args], what="initdb"
        )
        self._fill_cache(cache)

    def _copy_data_from(self, cache: Path) -> bool:
        """Copy the cached ``initdb`` output into this cluster; False when there is none usable."""
        if not trusted_cache(cache, self._run_as) or not (cache / "data" / "PG_VERSION").is_file():
            return False
        copied = _spawn(
            ["cp", "-a", str(cache / "data"), str(self.data_dir)],
            cwd=self.socket_dir,
            user=self._run_as,
            timeout=120,
        )
        if copied.returncode == 0:
            return True
        shutil.rmtree(self.data_dir, ignore_errors=True)  # a partial copy: initdb instead
        return False

    def _fill_cache(self, cache: Path) -> None:
        """Keep a copy of this fresh ``initdb`` output at ``cache`` (before the server runs).

        Copied into a staging directory and renamed into place, so a cache is always whole and
        two runs filling it at once keep one; any failure just leaves no cache.
        """
        if os.path.lexists(cache):
            return
        remove_stale_staging(cache.parent)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=cache.parent))
        try:
            if self._run_as is not None:
                os.chown(staging, self._run_as.pw_uid, self._run_as.pw_gid)
            copied = _spawn(
                ["cp", "-a", str(self.data_dir), str(staging / "data")],
                cwd=self.socket_dir,
                user=self._run_as,
                timeout=120,
            )
            if copied.returncode == 0:
                os.rename(staging, cache)
        except (OSError, subprocess.SubprocessError):
            pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _configure(self) -> None:
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(self.port),
            "max_connections": str(self.max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            # CREATE DATABASE … TEMPLATE (WAL_LOG strategy) writes the template to WAL, and a
            # fresh cluster has no segments to recycle: do not zero-fill new ones.
            "wal_init_zero": "off",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
        }
        settings.update(self.settings)
        lines = [f"{key} = {value}" for key, value in settings.items()]
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# pytest-threadcreator\n" + "\n".join(lines) + "\n")

    def _start_server(self) -> None:
        """Start the postmaster and return once it accepts connections.

        Spawned directly, not through ``pg_ctl start -w``, which looks every 100 ms: this looks
        every few milliseconds, and sees at once a server that exits while starting.
        """
        argv = [os.path.join(self.bindir, "postgres"), "-D", str(self.data_dir)]
        user = self._run_as
        try:
            with open(self.log_path, "ab") as log:
                self._postmaster = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.socket_dir,
                    env=_clean_env(),
                    start_new_session=True,  # the server must not get the terminal's Ctrl-C
                    user=None if user is None else user.pw_uid,
                    group=None if user is None else user.pw_gid,
                    extra_groups=None if user is None else [],
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendUnavailableError(
                f"postgresql-local: postgres failed to run ({exc}). {_HINT}"
            ) from None
        server = self._postmaster
        deadline = time.monotonic() + self.start_timeout
        while not _accepts_connections(self.data_dir, server.pid):
            code = server.poll()
            if code is not None:
                problem = f"the server exited with {code} while starting"
            elif time.monotonic() > deadline:
                problem = f"the server did not start within {self.start_timeout:g} s"
            else:
                time.sleep(0.005)
                continue
            raise BackendUnavailableError(
                f"postgresql-local: {problem}" + self._log_tail() + f". {_FAILED_HINT}"
            )

    def _run(self, argv: Sequence[str], *, what: str, timeout: float = 120.0) -> None:
        try:
            proc = _spawn(argv, cwd=self.socket_dir, user=self._run_as, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendUnavailableError(
                f"postgresql-local: {what} failed to run ({exc}). {_HINT}"
            ) from None
        if proc.returncode != 0:
            output = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise BackendUnavailableError(
                f"postgresql-local: {what} exited with {proc.returncode}: "
                + " | ".join(output)
                + self._log_tail()
                + f". {_FAILED_HINT}"
            )

    def _log_tail(self, lines: int = 8) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return (" | server log: " + " | ".join(tail)) if tail else ""

    def start_command(self) -> str:
        """The shell command that starts this cluster again (for a kept cluster)."""
        pg_ctl = os.path.join(self.bindir, "pg_ctl") if self.bindir else "pg_ctl"
        command = f"{pg_ctl} -D {self.data_dir} start"
        return f"runuser -u {self._run_as.pw_name} -- {command}" if self._run_as else command

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server immediately and remove its directory (idempotent).

        ``keep_data`` keeps the directory (for ``--threadcreator-keep``) and unmarks it, so no
        later run's cleanup takes it for the leftover of a crashed run.
        """
        if self.attached:  # another process owns it
            self._running = False
            self.directory = None
            return
        starter, self._starter = self._starter, None
        if starter is not None:
            starter.join()
        directory = self.directory
        self._running = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if directory is None:
            return
        server, self._postmaster = self._postmaster, None
        if server is not None:
            _stop_postmaster(server)
        _stop_cluster(directory, self.bindir, self._run_as)
        if keep_data:
            (directory / _MARKER).unlink(missing_ok=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self.directory = None


def _system_user_for_root() -> pwd.struct_passwd | None:
    """The ``postgres`` user when running as root (initdb refuses root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise BackendUnavailableError(
            "postgresql-local: running as root, and initdb refuses to run as root, but there is "
            "no 'postgres' system user to run it as. Create one (useradd --system postgres) or "
            "run pytest as a normal user"
        ) from None


def _spawn(
    argv: Sequence[str], *, cwd: str, user: pwd.struct_passwd | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool (as ``user`` when given) in its own session, output captured."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_clean_env(),
        start_new_session=True,  # the server must not get the terminal's Ctrl-C
        user=None if user is None else user.pw_uid,
        group=None if user is None else user.pw_gid,
        extra_groups=None if user is None else [],
        check=False,
    )


def _clean_env() -> dict[str, str]:
    """The environment without PG* variables (PGDATA, PGPORT… would redirect the tools)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _accepts_connections(data: Path, pid: int) -> bool:
    """Whether ``postmaster.pid`` says server ``pid`` is ready (what ``pg_ctl -w`` checks)."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    # line 1: the postmaster's pid; line 8: its status, "ready" once it accepts connections
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def _stop_postmaster(server: subprocess.Popen[bytes]) -> None:
    """Stop a server this process spawned at once (SIGQUIT: immediate shutdown) and reap it."""
    if server.poll() is None:
        with contextlib.suppress(OSError):
            server.send_signal(signal.SIGQUIT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _stop_cluster(directory: Path, bindir: str, user: pwd.struct_passwd | None) -> None:
    data = directory / "data"
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    pg_ctl = os.path.join(bindir, "pg_ctl") if bindir else shutil.which("pg_ctl")
    if pg_ctl:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _spawn(
                [pg_ctl, "stop", "-D", str(data), "-m", "immediate", "-w", "-t", "10", "-s"],
                cwd=str(directory),
                user=user,
                timeout=20,
            )
    if pid_file.exists():  # pg_ctl could not stop it: kill the postmaster ourselves
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)


def remove_stale_clusters(parent: str) -> list[str]:
    """Stop and remove clusters under ``parent`` whose owning process is gone.

    A cluster directory is ours when it holds the marker file; its owner holds an exclusive
    ``flock`` on ``owner.lock`` for its whole life, so a lock we can take means a dead owner.
    Returns the removed directories.
    """
    removed: list[str] = []
    for path in glob.glob(os.path.join(parent, "tc-*")):
        directory = Path(path)
        if not (directory / _MARKER).is_file():
            continue
        try:
            lock = open(directory / _LOCKFILE, "ab")
        except OSError:
            continue
        try:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # owner alive
            user = None
            if os.geteuid() == 0:
                owner_uid = directory.stat().st_uid
                with contextlib.suppress(KeyError):
                    user = pwd.getpwuid(owner_uid) if owner_uid != 0 else None
            bindir = ""
            with contextlib.suppress(BackendUnavailableError):
                bindir = find_pg_bindir()
            _stop_cluster(directory, bindir, user)
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(str(directory))
        finally:
            lock.close()
    return removed

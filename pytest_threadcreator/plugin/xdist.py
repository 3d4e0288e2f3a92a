"""pytest-xdist support: what the workers of one run share, and the controller's part in it.

Registered by the plugin only when pytest-xdist is installed (its hooks are unknown otherwise).

* Controller: :class:`XdistSupport` picks one run id for the run and, for ``postgresql-local``,
  starts one cluster for the whole run (in the background, while the workers start up); for
  ``postgresql-docker`` it launches one container (the workers wait until it accepts
  connections); both go to every worker through ``pytest_configure_node``
  (``node.workerinput``). On a server given by
  URL it holds the run's lock (:class:`~.backends.postgresql.janitor.RunLock`), so that the shared
  template outlives workers that finish early. Once the workers are down it drops what the run
  left on that server, stops the cluster (keeping its files if a worker kept a database in it)
  or removes the container (kept likewise), and removes the shared SQLite templates the workers report.
* Worker: :func:`worker_run` turns that hand-off into the :class:`~.runtime.XdistRun` of the
  worker's Runtime, whose backends then share one schema template per run.

Only the run's own database (``--threadcreator-db``, its env var or ini) is known to the
controller; a server that only a marker picks is shared by the workers all the same, but a worker
that starts using it after all others stopped builds its template again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..backends import registry
from ..backends.run_id import new_run_id
from ..errors import BackendUnavailableError, ThreadCreatorError
from ..report.data import merge_report_data
from ..runtime import XdistRun
from .state import state
from .summary import run_report, show_report

if TYPE_CHECKING:
    from ..backends.postgresql.docker import DockerServer
    from ..backends.postgresql.janitor import RunLock
    from ..backends.postgresql.local import LocalCluster

__all__ = ["XdistSupport", "register", "worker_run"]

#: ``node.workerinput`` key of the controller's hand-off
WORKERINPUT_KEY = "threadcreator"
#: ``workeroutput`` key: locations of the databases a worker kept (--threadcreator-keep)
KEPT_KEY = "threadcreator_kept"
#: ``workeroutput`` key: the run's shared temp dir, as the worker saw it
SHARED_DIR_KEY = "threadcreator_shared_dir"
#: Room per worker in a shared cluster's max_connections (admin, store and engine pools).
CONNECTIONS_PER_WORKER = 50


REPORT_KEY = "threadcreator_report"


def is_worker(config: pytest.Config) -> bool:
    """True in an xdist worker process."""
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    """True in the xdist controller of a distributed run (``-n``)."""
    return config.pluginmanager.hasplugin("dsession")


def register(config: pytest.Config) -> None:
    """Register the xdist hooks if pytest-xdist is installed and not disabled (``-p no:xdist``)."""
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistSupport(config), "threadcreator-xdist")


def worker_run(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> XdistRun | None:
    """What this xdist worker shares with the other workers of its run; None outside a worker."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    given: dict[str, Any] = workerinput.get(WORKERINPUT_KEY) or {}
    run_id = str(given.get("run_id") or run_id_from_testrunuid(workerinput["testrunuid"]))
    # A popen worker's basetemp is <the controller's basetemp>/popen-gwN: the parent is the
    # run's. The run id in the name keeps runs apart where that does not hold (remote workers).
    shared_dir = tmp_path_factory.getbasetemp().parent / f"threadcreator-{run_id}"
    return XdistRun(run_id=run_id, shared_dir=shared_dir, servers=dict(given.get("servers") or {}))


def run_id_from_testrunuid(testrunuid: str) -> str:
    """A run id derived from xdist's ``testrunuid`` (the same in every worker of the run)."""
    return hashlib.blake2b(str(testrunuid).encode(), digest_size=6).hexdigest()


class XdistSupport:
    """The plugin's pytest-xdist hooks: controller side and worker side."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._run_id: str | None = None
        #: the cluster this controller started for the run, if any
        self.cluster: LocalCluster | None = None
        #: the container this controller launched for the run, if any
        self.container: DockerServer | None = None
        #: the run's lock on the server of the run's URL, once held
        self.run_lock: RunLock | None = None
        self._locking: threading.Thread | None = None
        self._servers: dict[str, dict[str, str]] | None = None
        self._kept: list[str] = []
        self._shared_dirs: set[str] = set()
        self._problems: list[str] = []
        #: the workers' report data (summary and --threadcreator-report), as they finish
        self._reports: list[dict[str, Any]] = []

    @property
    def run_id(self) -> str:
        """The run's id, made by the controller when its first worker is configured."""
        if self._run_id is None:
            self._run_id = new_run_id()
        return self._run_id

    # -- controller --------------------------------------------------------------------------
    def pytest_configure_node(self, node: Any) -> None:
        """Give the worker the run id and the servers started for the run (before it starts)."""
        if self._servers is None:
            self._servers = self._start_servers(int(node.workerinput.get("workercount", 1)))
        node.workerinput[WORKERINPUT_KEY] = {"run_id": self.run_id, "servers": self._servers}

    def _start_servers(self, workers: int) -> dict[str, dict[str, str]]:
        """One local cluster for the run when the run's database is a local cluster; the run's
        lock on the server when it is a URL."""
        db = state(self.config).settings.db
        if registry.kind_of(db) is not registry.POSTGRESQL:
            return {}  # SQLite needs nothing; MySQL's workers take their own locks
        from ..backends.postgresql.servers import plan_server

        plan = plan_server(db, os.environ)
        if plan.url is not None:
            self._lock_run(plan.url)
            return {}
        if plan.docker:
            return {db: self._launch_container(explicit=True)}
        if not plan.local:
            return {}
        try:
            from ..backends.postgresql.local import LocalCluster
        except ImportError:  # not POSIX: the workers report why, as without xdist
            return {}
        cluster = LocalCluster(max_connections=max(200, 10 + CONNECTIONS_PER_WORKER * workers))
        try:
            cluster.start_in_background()  # initdb overlaps the workers' start-up
        except BackendUnavailableError:
            if plan.fallback:  # the auto chain's last resort, as in each worker
                handoff = self._launch_container(explicit=False)
                return {db: handoff} if handoff else {}
            return {}  # no binaries: each worker tries and stops the run with the reason
        self.cluster = cluster
        return {db: cluster.handoff()}

    def _launch_container(self, *, explicit: bool) -> dict[str, str]:
        """One container for the run; its start-up overlaps the workers'. On failure, with
        ``explicit``, a hand-off that gives every worker the same one-line error (no worker
        tries again); else nothing (each worker runs its own chain and reports it)."""
        from ..backends.postgresql.docker import DEFAULT_IMAGE, DockerServer, failed_handoff

        docker = state(self.config).settings.docker
        server = DockerServer(
            docker.image or DEFAULT_IMAGE, network=docker.network, run_id=self.run_id
        )
        try:
            server.launch()
        except BackendUnavailableError as exc:
            return failed_handoff(exc) if explicit else {}
        self.container = server
        return server.handoff()

    def _lock_run(self, url: str) -> None:
        """Take the run's lock on ``url`` on a thread (joined before any test is handed out)."""
        try:
            from ..backends.postgresql.janitor import RunLock

            lock = RunLock(url, self.run_id)
        except (ImportError, ThreadCreatorError):
            return  # the workers report it, as without xdist

        def acquire() -> None:
            try:
                lock.acquire()
            except Exception:  # unreachable, or anything else: the workers report it
                return
            self.run_lock = lock

        self._locking = threading.Thread(target=acquire, name="threadcreator-run-lock")
        self._locking.start()

    def pytest_testnodeready(self, node: Any) -> None:
        """Hold the run's lock before the first test runs: no worker may be the run's last."""
        locking, self._locking = self._locking, None
        if locking is not None:
            locking.join()

    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        """Collect the databases the worker kept: a cluster holding one must stay."""
        output: dict[str, Any] = getattr(node, "workeroutput", None) or {}
        self._kept.extend(output.get(KEPT_KEY, ()))
        if output.get(REPORT_KEY):
            self._reports.append(output[REPORT_KEY])
        if output.get(SHARED_DIR_KEY):
            self._shared_dirs.add(str(output[SHARED_DIR_KEY]))

    @pytest.hookimpl(trylast=True)  # after xdist's own, which waits for the workers to stop
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Worker: report to the controller. Controller: clean up after the run."""
        output: dict[str, Any] | None = getattr(self.config, "workeroutput", None)
        if output is not None:
            self._report(output)
        else:
            self._clean_up()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Controller: clean up, if the session ended before pytest_sessionfinish."""
        self._clean_up()

    def _clean_up(self) -> None:
        """Drop what the run left on its server, stop its cluster, remove its shared dir."""
        if self._locking is not None:  # no worker became ready
            self._locking.join()
            self._locking = None
        lock, self.run_lock = self.run_lock, None
        if lock is not None:
            # no worker holds the run any more: this drops the shared template
            self._problems += lock.release()
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            directory = cluster.socket_dir
            cluster.stop(keep_data=any(directory in location for location in self._kept))
        container, self.container = self.container, None
        if container is not None:
            container.stop(keep=any(container.name in location for location in self._kept))
        shared_dirs, self._shared_dirs = self._shared_dirs, set()
        for shared in shared_dirs:
            shutil.rmtree(Path(shared), ignore_errors=True)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Controller: the workers' summaries merged (theirs are not shown), and what cleaning
        up after the run could not do."""
        if not is_controller(self.config):
            return
        st = state(self.config)
        show_report(
            terminalreporter,
            self.config,
            merge_report_data(self._reports, settings=st.settings.describe()),
        )
        for problem in self._problems:
            terminalreporter.write_line(
                f"cleaning up after the run: {problem} (a later run removes it)", yellow=True
            )

    # -- worker --------------------------------------------------------------------------------
    def _report(self, output: dict[str, Any]) -> None:
        """Tell the controller where this worker kept databases and its shared dir (xdist sends
        ``workeroutput`` after pytest_sessionfinish)."""
        try:
            st = state(self.config)
        except KeyError:
            return
        runtimes = [st.runtime, *st.schema_runtimes.values()]
        output[KEPT_KEY] = [loc for rt in runtimes if rt is not None for loc in rt.kept]
        output[REPORT_KEY] = run_report(self.config)
        if st.runtime is not None and st.runtime.xdist is not None:
            output[SHARED_DIR_KEY] = str(st.runtime.xdist.shared_dir)

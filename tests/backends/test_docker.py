"""postgresql-docker: a testcontainers PostgreSQL, end to end.

The image comes from ``THREADCREATOR_DOCKER_IMAGE`` (default: the official one) and the network
mode from ``THREADCREATOR_DOCKER_NETWORK``, as for users; without a registry, build the
project's image first (``docker/build-postgres-image.sh``) and set
``TESTCONTAINERS_RYUK_DISABLED=true``. Which containers are the plugin's, and which of those
belong to dead runs, is tested on containers that are created but never started (cheap).
"""

from __future__ import annotations

import functools
import gc
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pytest_threadcreator.backends.postgresql import docker as pg_docker
from pytest_threadcreator.backends.postgresql.docker import (
    DEFAULT_IMAGE,
    LABEL_MARK,
    LABEL_MARK_VALUE,
    LABEL_OWNER,
    LABEL_RUN,
    DockerServer,
    docker_unreachable_reason,
    owner_is_gone,
    owner_label,
    remove_dead_containers,
)
from pytest_threadcreator.backends.postgresql.janitor import parse_database_name
from pytest_threadcreator.config import DockerSettings, resolve_settings
from pytest_threadcreator.errors import BackendUnavailableError, ConfigurationError

from ..helpers import kill_mid_test, needs, start_pytest
from .test_xdist import assert_one_database_per_worker, hook_calls, make_project, run_xdist, seen

IMAGE = os.environ.get("THREADCREATOR_DOCKER_IMAGE", "").strip() or DEFAULT_IMAGE
NETWORK = os.environ.get("THREADCREATOR_DOCKER_NETWORK", "").strip() or "bridge"
MARK = f"{LABEL_MARK}={LABEL_MARK_VALUE}"
NO_DOCKER = "unix:///nonexistent/docker.sock"
F = TypeVar("F", bound=Callable[..., Any])
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


@functools.cache
def docker_missing() -> str | None:
    """Why the Docker tests cannot run here (no daemon, no image), or None."""
    reason = docker_unreachable_reason()
    if reason is not None:
        return f"Docker is not reachable: {reason}"
    docker = pytest.importorskip("docker")
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        return f"image {IMAGE} is not here (docker/build-postgres-image.sh builds one)"
    finally:
        client.close()
    return None


def needs_docker(test: F) -> F:
    """A test that starts containers: test.sh runs these once, in its postgresql-docker run."""
    marked: F = pytest.mark.docker(needs(docker_missing())(test))
    return marked


@pytest.fixture
def client() -> Iterator[Any]:
    """A docker-py client."""
    docker = pytest.importorskip("docker")
    c = docker.from_env()
    try:
        yield c
    finally:
        c.close()


def ours(client: Any, owner: str | None = None) -> list[Any]:
    """The plugin's containers (of ``owner``, if given), running or not."""
    containers = client.containers.list(all=True, filters={"label": MARK})
    return [c for c in containers if owner is None or c.labels.get(LABEL_OWNER) == owner]


def ids(containers: list[Any]) -> set[str]:
    """The ids of ``containers``."""
    return {c.id for c in containers}


def ended_process_owner() -> str:
    """The owner label of a process that has ended (taken while it was alive)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    label = owner_label(child.pid)
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=30)
    return label


# -- reachability ------------------------------------------------------------------------------
def test_no_daemon_is_a_reason_and_leaves_no_socket_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    silent = tmp_path / "docker.sock"  # a socket file nothing listens on
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(silent))
    for host, why in [(NO_DOCKER, "No such file or directory"), (f"unix://{silent}", "refused")]:
        monkeypatch.setenv("DOCKER_HOST", host)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            reason = docker_unreachable_reason()
            gc.collect()  # an unclosed socket warns when it is collected
        assert reason is not None and reason.startswith(f"no Docker daemon at {host}: ")
        assert why in reason


# -- owners ------------------------------------------------------------------------------------
def test_this_process_is_a_live_owner() -> None:
    assert not owner_is_gone(owner_label())


def test_an_ended_process_is_a_gone_owner() -> None:
    assert owner_is_gone(ended_process_owner())


def test_a_reused_pid_is_a_gone_owner() -> None:
    host, boot, namespace, pid, start = owner_label().split("/")
    assert start, "Linux gives every process a start time"
    reused = "/".join([host, boot, namespace, pid, str(int(start) + 1)])
    assert owner_is_gone(reused)


def test_a_reboot_makes_every_owner_of_the_host_gone() -> None:
    host, _, namespace, pid, start = owner_label().split("/")
    assert owner_is_gone("/".join([host, "another-boot", namespace, pid, start]))


@pytest.mark.parametrize(
    "label",
    [
        "another-host/{boot}/{ns}/999999999/1",  # cannot look at another host's processes
        "{host}/{boot}/pid:[1]/999999999/1",  # nor into another pid namespace
        "",
        "garbage",
        "{host}/{boot}/{ns}/not-a-pid/1",
    ],
)
def test_an_owner_that_cannot_be_checked_is_never_gone(label: str) -> None:
    host, boot, ns, _, _ = owner_label().split("/")
    assert not owner_is_gone(label.format(host=host, boot=boot, ns=ns))


# -- options -------------------------------------------------------------------------------------
def test_docker_options_env_over_ini_over_default() -> None:
    default = resolve_settings(cli={}, ini={}, env={})
    assert default.docker == DockerSettings(None, "default", "bridge", "default")
    from_ini = resolve_settings(
        cli={}, ini={"docker_image": "team/pg:16", "docker_network": "host"}, env={}
    )
    assert from_ini.docker == DockerSettings("team/pg:16", "ini", "host", "ini")
    both = resolve_settings(
        cli={},
        ini={"docker_image": "team/pg:16", "docker_network": "host"},
        env={"THREADCREATOR_DOCKER_IMAGE": "mine:1", "THREADCREATOR_DOCKER_NETWORK": "bridge"},
    )
    assert both.docker == DockerSettings("mine:1", "env", "bridge", "env")
    assert both.describe().endswith(
        ", docker_image=mine:1 (from env), docker_network=bridge (from env)"
    )


def test_a_bad_docker_network_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_settings(cli={}, ini={}, env={"THREADCREATOR_DOCKER_NETWORK": "overlay"})
    assert str(info.value) == (
        "environment THREADCREATOR_DOCKER_NETWORK: 'overlay' is not a Docker network mode; "
        "valid values: bridge, host"
    )


def test_a_bad_docker_option_in_the_ini_stops_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("THREADCREATOR_DOCKER_NETWORK", raising=False)
    pytester.makeini(f"{INI}threadcreator_docker_network = hostt\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: ini threadcreator_docker_network: 'hostt' is not a Docker network mode; "
            "valid values: bridge, host"
        ]
    )


def test_the_header_says_which_image_and_network(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THREADCREATOR_DOCKER_IMAGE", "team/pg:16")
    monkeypatch.delenv("THREADCREATOR_DOCKER_NETWORK", raising=False)
    monkeypatch.delenv("THREADCREATOR_DB", raising=False)
    pytester.makeini(f"{INI}threadcreator_docker_network = host\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "threadcreator: db=sqlite (from default), isolation=clean (from default), "
            "docker_image=team/pg:16 (from env), docker_network=host (from ini)"
        ]
    )


# -- without Docker ------------------------------------------------------------------------------
def test_without_docker_the_run_stops_with_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)
    pytester.makeini(INI)
    pytester.makepyfile("def test_db(threadcreator_db): pass")
    result = pytester.runpytest("--threadcreator-db=postgresql-docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*BackendUnavailableError: postgresql-docker: tried to start a PostgreSQL container "
            f"with testcontainers, but Docker is not reachable (no Docker daemon at {NO_DOCKER}: "
            "No such file or directory); use --threadcreator-db=postgresql-local (local "
            "PostgreSQL binaries) or a server URL such as "
            "--threadcreator-db=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres*"
        ]
    )
    assert "Traceback" not in result.stdout.str()


# -- images --------------------------------------------------------------------------------------
@needs_docker
def test_an_image_that_is_neither_here_nor_pullable_is_one_line(client: Any) -> None:
    image = "threadcreator-test-missing/postgres:0"
    server = DockerServer(image, network=NETWORK, run_id="missing")
    before = ids(ours(client, owner_label()))  # this suite's own, on postgresql-docker
    with pytest.raises(BackendUnavailableError) as info:
        server.start()
    message = str(info.value)
    assert message.startswith(
        f"postgresql-docker: image '{image}' is not present and could not be pulled ("
    )
    assert message.endswith(
        "); pull or build it first (the project's docker/build-postgres-image.sh builds one "
        "without a registry), set THREADCREATOR_DOCKER_IMAGE or ini threadcreator_docker_image "
        "to an image you have, or use --threadcreator-db=postgresql-local (local PostgreSQL "
        "binaries) or a server URL such as "
        "--threadcreator-db=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    assert "\n" not in message
    assert ids(ours(client, owner_label())) == before


@needs_docker
def test_ryuk_that_cannot_start_says_how_to_run_without_it(
    monkeypatch: pytest.MonkeyPatch, client: Any
) -> None:
    config = pytest.importorskip("testcontainers.core.config").testcontainers_config
    monkeypatch.setattr(config, "ryuk_disabled", False)
    monkeypatch.setattr(config, "ryuk_image", "threadcreator-test-missing/ryuk:0")
    before = ids(ours(client, owner_label()))
    with pytest.raises(BackendUnavailableError) as info:
        DockerServer(IMAGE, network=NETWORK, run_id="ryuk").start()
    message = str(info.value)
    assert message.startswith(
        "postgresql-docker: testcontainers' Ryuk reaper (threadcreator-test-missing/ryuk:0) did "
        "not start ("
    )
    assert message.endswith(
        "); set TESTCONTAINERS_RYUK_DISABLED=true (the plugin removes its containers itself at "
        "exit, and those of killed runs at the next start)"
    )
    assert ids(ours(client, owner_label())) == before


# -- whole runs ----------------------------------------------------------------------------------
@needs_docker
def test_a_run_on_docker_uses_one_container_and_removes_it(
    pytester: pytest.Pytester, client: Any
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        f"""
        import asyncio
        import docker
        import pytest

        from pytest_threadcreator.backends.postgresql.janitor import parse_database_name

        @pytest.mark.parametrize("n", range(3))
        @pytest.mark.asyncio
        async def test_on_docker(n, threadcreator_db, thread_creator, user_context):
            await thread_creator.create_thread_with_message(user_context, "hello")
            assert await threadcreator_db.count_threads() == 1
            client = docker.from_env()
            try:
                run = parse_database_name(threadcreator_db.name).run_id
                mine = client.containers.list(filters={{"label": {LABEL_RUN!r} + "=" + run}})
                assert len(mine) == 1, mine
                (container,) = mine
                assert {IMAGE!r} in container.image.tags
                assert container.labels[{LABEL_MARK!r}] == {LABEL_MARK_VALUE!r}
                assert container.labels[{LABEL_OWNER!r}] == {owner_label()!r}
                network = container.attrs["HostConfig"]["NetworkMode"]
            finally:
                client.close()
            if {NETWORK!r} == "host":
                assert network == "host"
                async with threadcreator_db.session() as session:
                    from sqlalchemy import text
                    listen = (await session.execute(text("SHOW listen_addresses"))).scalar()
                assert listen == "127.0.0.1"
        """
    )
    before = ids(ours(client, owner_label()))  # this suite's own, on postgresql-docker
    result = pytester.runpytest("--threadcreator-db=postgresql-docker", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*threadcreator*postgresql-docker*"])
    assert ids(ours(client, owner_label())) == before, "the run removes its container"


STUCK = """
import os, pathlib, time
import pytest

@pytest.mark.asyncio
async def test_stuck(threadcreator_db, thread_creator, user_context):
    await thread_creator.create_thread_with_message(user_context, "before the crash")
    pathlib.Path(os.environ["MARKER"]).write_text(str(os.getpid()))
    while True:  # until the outer test kills this process
        time.sleep(1)
"""


@needs_docker
def test_a_killed_runs_container_is_removed_by_the_next_run(tmp_path: Path, client: Any) -> None:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_stuck.py").write_text(STUCK)
    (tmp_path / "test_quick.py").write_text("def test_quick(threadcreator_db):\n    pass\n")
    marker = tmp_path / "pid.txt"

    def pytest_run(test_file: str) -> subprocess.Popen[str]:
        db = "--threadcreator-db=postgresql-docker"
        return start_pytest(tmp_path, test_file, db, MARKER=str(marker))

    owners: list[str] = []

    def read_owner(pid: str) -> bool:
        # while the process lives: the label carries its start time, gone once it is killed
        owners.append(owner_label(int(pid)))
        return True

    stuck = pytest_run("test_stuck.py")
    try:
        kill_mid_test(stuck, marker, within_s=120, ready=read_owner)
        owner = owners[-1]
        (left,) = ours(client, owner)  # nothing had a chance to clean up
        quick = pytest_run("test_quick.py")
        output = quick.communicate(timeout=180)[0]
        assert quick.returncode == 0, output
        assert ours(client, owner) == [], "the next run removes a killed run's container"
        assert left.id not in ids(ours(client))
    finally:
        for container in ours(client, owners[-1]) if owners else []:
            container.remove(force=True, v=True)


@needs_docker
def test_one_container_serves_all_xdist_workers(pytester: pytest.Pytester, client: Any) -> None:
    make_project(pytester.path, tests=6)
    result = run_xdist(pytester, "postgresql-docker", "-n", "2")
    result.assert_outcomes(passed=6)
    by_worker = seen(pytester.path)
    assert_one_database_per_worker(by_worker, 2)
    assert len(hook_calls(pytester.path)) == 1, "one template for the run"
    # location is "<host>:<port>/<name>": both workers used the same server
    servers = {loc.rsplit("/", 1)[0] for rows in by_worker.values() for _, loc in rows}
    assert len(servers) == 1, servers
    (run_id,) = {parse_database_name(n).run_id for rows in by_worker.values() for n, _ in rows}
    assert client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}) == []


# -- which containers a sweep removes ------------------------------------------------------------
@pytest.fixture
def created(client: Any) -> Iterator[Any]:
    """``created(name, labels)``: a container created from the image, never started."""
    made: list[Any] = []

    def create(name: str, labels: dict[str, str]) -> Any:
        container = client.containers.create(IMAGE, name=f"{name}-{os.getpid()}", labels=labels)
        made.append(container)
        return container

    try:
        yield create
    finally:
        for container in made:
            try:
                container.remove(force=True, v=True)
            except Exception as exc:  # removed by the sweep under test
                assert "No such container" in str(exc) or "404" in str(exc)


@needs_docker
def test_a_sweep_removes_only_the_plugins_containers_of_gone_owners(
    client: Any, created: Any
) -> None:
    gone = ended_process_owner()
    host, boot, ns, _, _ = owner_label().split("/")
    mark = {LABEL_MARK: LABEL_MARK_VALUE, LABEL_RUN: "sweep"}
    dead = created("tc-sweep-dead", {**mark, LABEL_OWNER: gone})
    users = created("tc-sweep-users", {LABEL_RUN: "sweep", LABEL_OWNER: gone})
    lookalike = created("tc-sweep-lookalike", {LABEL_MARK: "something-else", LABEL_OWNER: gone})
    live = created("tc-sweep-live", {**mark, LABEL_OWNER: owner_label()})
    elsewhere = created(
        "tc-sweep-elsewhere", {**mark, LABEL_OWNER: f"another-host/{boot}/{ns}/999999999/1"}
    )
    kept = created("tc-sweep-kept", {**mark, LABEL_OWNER: gone})
    kept.rename(kept.name + pg_docker.KEPT_SUFFIX)

    removed = remove_dead_containers(client)

    assert dead.name in removed
    left = {c.id for c in client.containers.list(all=True)}
    assert dead.id not in left
    for survivor in (users, lookalike, live, elsewhere, kept):
        assert survivor.id in left, survivor.name
    assert host  # the labels above name this host

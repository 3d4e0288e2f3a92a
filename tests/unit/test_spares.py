"""The spares' tender on its own (no server): warm connections go with their clone and are
closed by whoever drops it; used databases come back as spares when they pass their check."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from pytest_threadcreator._background import BackgroundLoop
from pytest_threadcreator.backends.spares import SpareTender


class _Conn:
    def __init__(self) -> None:
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed


class _Warm:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


class _Server:
    """Records what the tender does, in order."""

    def __init__(self, *, warm_fails: bool = False) -> None:
        self.events: list[tuple[str, str]] = []
        self.warmed: list[_Warm] = []
        self.conns: list[_Conn] = []
        self.warm_fails = warm_fails
        self._names = (f"db_{n}_fresh" for n in itertools.count(1))

    async def connect(self) -> _Conn:
        conn = _Conn()
        self.conns.append(conn)
        return conn

    async def disconnect(self, conn: _Conn) -> None:
        conn.closed = True

    def make_name(self) -> str:
        return next(self._names)

    async def clone(self, _conn: Any, name: str) -> None:
        self.events.append(("clone", name))

    async def drop(self, _conn: Any, name: str) -> bool:
        self.events.append(("drop", name))
        return True

    async def warm(self, name: str) -> _Warm:
        if self.warm_fails:
            raise OSError("too many connections")
        handle = _Warm(name)
        self.warmed.append(handle)
        return handle

    async def unwarm(self, handle: _Warm) -> None:
        handle.closed = True
        self.events.append(("unwarm", handle.name))

    def tender(
        self,
        background: BackgroundLoop,
        target: int = 2,
        recycle: Any = None,
        *,
        cold: bool = False,
    ) -> SpareTender:
        return SpareTender(
            background=background,
            target=target,
            connect=self.connect,
            disconnect=self.disconnect,
            is_closed=_Conn.is_closed,
            make_name=self.make_name,
            clone=self.clone,
            drop=self.drop,
            warm=None if cold else self.warm,
            unwarm=self.unwarm,
            recycle=recycle,
        )


class _Recycler:
    """Renames a used database ``<name>_r`` (or, ``same_name``, takes it back under its own
    name, as MySQL's does); its check passes unless ``passes`` is False."""

    def __init__(self, server: _Server, *, passes: bool = True, same_name: bool = False) -> None:
        self.server = server
        self.passes = passes
        self.same_name = same_name

    keeps_handles = False

    async def trim(self, name: str, handle: Any) -> bool:
        raise AssertionError("a recycler that keeps no handle is never asked to trim one")

    async def reclaim(self, _conn: Any, name: str, handle: Any = None) -> str | None:
        self.server.events.append(("reclaim", name))
        return name if self.same_name else f"{name}_r"

    async def check(self, name: str, pool: Any = None) -> bool:
        warmed = isinstance(pool, _Warm) and pool.name == name
        self.server.events.append(("check" if warmed else "check-cold", name))
        return self.passes


class _KeepingRecycler(_Recycler):
    """Takes a used database back under its name with its warm handle, as PostgreSQL's and
    MySQL's do."""

    keeps_handles = True

    def __init__(self, server: _Server) -> None:
        super().__init__(server, same_name=True)
        self.trimmed: list[str] = []

    async def trim(self, name: str, handle: Any) -> bool:
        self.trimmed.append(name)
        return True


async def _nothing() -> None:
    pass


def _started(tender: SpareTender, background: BackgroundLoop) -> SpareTender:
    tender.start()
    background.run(_nothing())  # queued after the start: the cloners exist once it returns
    assert tender.running
    return tender


def test_a_spare_comes_with_its_own_warm_handle_and_the_drop_closes_it_first(
    background: BackgroundLoop,
) -> None:
    server = _Server()
    tender = _started(server.tender(background), background)
    spare = tender.take()
    assert spare is not None
    name, handle = spare
    assert isinstance(handle, _Warm) and handle.name == name and not handle.closed
    assert tender.discard(name, handle)
    background.run(tender.drained())
    assert handle.closed
    assert server.events.index(("unwarm", name)) < server.events.index(("drop", name))
    background.run(tender.stop())


def test_stop_closes_what_was_warmed_for_the_spares_left_and_returns_them(
    background: BackgroundLoop,
) -> None:
    server = _Server()
    tender = _started(server.tender(background, target=3), background)
    taken = tender.take()
    assert taken is not None
    left = background.run(tender.stop())
    assert taken[0] not in left, "a spare handed out is its taker's"
    assert sorted(left) == sorted(h.name for h in server.warmed if h.name != taken[0])
    assert all(h.closed for h in server.warmed if h.name != taken[0])
    assert not taken[1].closed, "the handle handed out is its taker's to give back"
    assert all(conn.closed for conn in server.conns), "the tender's own connections too"
    assert not tender.discard(taken[0], taken[1]), "a stopped tender takes no more drops"


def test_a_spare_that_could_not_be_warmed_is_handed_out_cold(background: BackgroundLoop) -> None:
    server = _Server(warm_fails=True)
    tender = _started(server.tender(background), background)
    spare = tender.take()
    assert spare is not None and spare[1] is None
    assert tender.running, "a failed warm-up does not stop the tender"
    assert tender.discard(spare[0])
    background.run(tender.drained())
    assert ("drop", spare[0]) in server.events
    background.run(tender.stop())


def _clones(server: _Server) -> int:
    return sum(1 for event, _ in server.events if event == "clone")


def test_databases_in_tests_come_back_as_spares_and_are_not_cloned_again(
    background: BackgroundLoop,
) -> None:
    server = _Server()
    tender = _started(server.tender(background, recycle=_Recycler(server)), background)
    for _ in range(10):
        spare = tender.take()
        assert spare is not None
        assert tender.discard(*spare)
        background.run(tender.drained())
    assert _clones(server) == 2, "the ones handed out come back: no clone replaces them"
    assert not any(event in ("drop", "check-cold") for event, _ in server.events)
    background.run(tender.stop())


def test_coming_back_says_whether_used_databases_return_as_spares(
    background: BackgroundLoop,
) -> None:
    """What the PostgreSQL tender picks its clone strategy by: few clones, each awaited, while
    used databases come back; clones back to back once one did not (or without a recycler)."""
    server = _Server()
    assert not server.tender(background).coming_back, "nothing comes back without a recycler"
    recycler = _Recycler(server)
    tender = _started(server.tender(background, recycle=recycler), background)
    assert tender.coming_back
    for passes in (True, False, True):
        recycler.passes = passes
        spare = tender.take()
        assert spare is not None and tender.discard(*spare)
        background.run(tender.drained())
        assert tender.coming_back is passes
    background.run(tender.stop())


def test_kept_handles_stay_within_one_connection_per_spare(background: BackgroundLoop) -> None:
    """A used database keeps its warm handle only while ready spares and those coming back hold
    fewer than ``target`` connections, and never where the spares are planned cold."""
    server = _Server()
    recycler = _KeepingRecycler(server)
    tender = _started(server.tender(background, target=2, recycle=recycler), background)
    first, second = tender.take(), tender.take()
    assert first is not None and second is not None
    assert tender.discard(*first)
    background.run(tender.drained())
    assert recycler.trimmed == [first[0]], "kept: one spare's connection, one coming back"
    # a clone begun while the test ran: two spares ready with their connections already
    extra = _Warm("db_extra_fresh")
    tender._ready.append((extra.name, extra))
    assert tender.discard(*second)
    background.run(tender.drained())
    assert recycler.trimmed == [first[0]], "not kept: the budget is full"
    assert second[1].closed
    background.run(tender.stop())

    server = _Server()
    recycler = _KeepingRecycler(server)
    tender = _started(server.tender(background, recycle=recycler, cold=True), background)
    spare = tender.take()
    assert spare is not None and tender.discard(spare[0], _Warm(spare[0]))
    background.run(tender.drained())
    assert recycler.trimmed == [], "no connection kept where spares are planned cold"
    background.run(tender.stop())


def test_a_taker_gets_a_clone_while_the_others_are_still_out(background: BackgroundLoop) -> None:
    server = _Server()
    tender = _started(server.tender(background, recycle=_Recycler(server)), background)
    taken = [tender.take() for _ in range(5)]
    assert all(spare is not None for spare in taken)
    assert len({spare[0] for spare in taken if spare is not None}) == 5
    background.run(tender.stop())


def test_a_database_that_fails_its_check_is_dropped_under_its_new_name(
    background: BackgroundLoop,
) -> None:
    server = _Server()
    tender = _started(
        server.tender(background, recycle=_Recycler(server, passes=False)), background
    )
    spare = tender.take()
    assert spare is not None
    assert tender.discard(*spare)
    background.run(tender.drained())
    renamed = f"{spare[0]}_r"
    assert ("check", renamed) in server.events and ("drop", renamed) in server.events
    assert server.events.count(("reclaim", renamed)) == 0, "not tried again"
    assert [h.closed for h in server.warmed if h.name == renamed] == [True]
    background.run(tender.stop())


def test_the_next_test_never_gets_the_database_the_previous_one_gave_back(
    background: BackgroundLoop,
) -> None:
    """A database taken back under its own name (MySQL's) goes to a later test: each test's
    name differs from the one before, even when that database is the only spare ready."""
    server = _Server()
    recycler = _Recycler(server, same_name=True)
    tender = _started(server.tender(background, target=1, recycle=recycler), background)
    names: list[str] = []
    for _ in range(6):
        spare = tender.take()
        assert spare is not None
        names.append(spare[0])
        assert tender.discard(*spare)
        background.run(tender.drained())  # a spare again, and the only one ready the first time
    assert all(a != b for a, b in itertools.pairwise(names)), names
    assert _clones(server) == 2, "one more clone for the test that could not take it, no more"
    assert names == [names[0], names[1]] * 3, "then the two take turns"
    background.run(tender.stop())


def test_a_database_kept_by_its_test_is_not_waited_for(background: BackgroundLoop) -> None:
    server = _Server()
    tender = _started(server.tender(background, recycle=_Recycler(server)), background)
    for _ in range(3):  # kept (--threadcreator-keep): they never come back
        spare = tender.take()
        assert spare is not None
        tender.forget(spare[0])
    assert tender._returning() == 0, "the cloners count on none of them coming back"
    background.run(tender.stop())


def test_the_first_clone_is_made_alone_and_the_others_side_by_side(
    background: BackgroundLoop,
) -> None:
    """The first ``fresh`` test waits for the first clone: it gets the server to itself."""
    server = _Server()
    steps: list[tuple[str, str]] = []

    async def clone(_conn: Any, name: str) -> None:
        steps.append(("begin", name))
        await asyncio.sleep(0.2)  # long enough for every cloner woken with it to begin too
        steps.append(("end", name))

    server.clone = clone  # type: ignore[method-assign]
    tender = _started(server.tender(background, target=4), background)
    spare = tender.take()
    assert spare is not None
    deadline = time.monotonic() + 10
    while sum(step == "end" for step, _ in steps) < 4:
        assert time.monotonic() < deadline, steps
        time.sleep(0.01)
    background.run(tender.stop())
    first = spare[0]
    assert steps[:2] == [("begin", first), ("end", first)], "no other clone begun meanwhile"
    after = [step for step, _ in steps[2:]]
    assert after[:2] == ["begin", "begin"], "the rest are made side by side"

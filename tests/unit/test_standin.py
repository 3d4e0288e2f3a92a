"""The stand-in for a loop-bound driver connection (``store/standin.py``), with a fake driver
that records the thread each call runs on: the real one is exercised by the rollback tests on
PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from pytest_threadcreator._background import BackgroundLoop
from pytest_threadcreator.store.standin import Driver, OnLoop, held_on


class _Cursor:
    """Tied to its connection's loop, like asyncpg's objects; awaitable like asyncmy's cursors."""

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    async def fetch(self) -> str:
        self.conn.threads.append(threading.current_thread().name)
        return "row"

    def __await__(self) -> Any:
        return self.fetch().__await__()


class _Conn:
    def __init__(self) -> None:
        self.threads: list[str] = []
        self.closed: str | None = None
        self.loop = asyncio.get_running_loop()

    async def execute(self, sql: str) -> str:
        assert asyncio.get_running_loop() is self.loop, "called from another loop"
        self.threads.append(threading.current_thread().name)
        return f"ran {sql}"

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    def status(self) -> str:
        return "idle"

    def terminate(self) -> None:
        self.closed = "terminated on " + threading.current_thread().name

    async def close(self) -> None:
        self.closed = "closed on " + threading.current_thread().name


async def _connect(kwargs: Mapping[str, Any]) -> _Conn:
    assert kwargs == {"database": "db"}
    return _Conn()


async def _close(conn: _Conn) -> None:
    await conn.close()


DRIVER = Driver(
    name="fake",
    connect=_connect,
    wrapped=(_Cursor,),
    loop_only=frozenset({"terminate"}),
    close=_close,
    force_close=_Conn.terminate,
    reset=lambda conn: conn.execute("RESET"),
)


def test_every_call_runs_on_the_background_loop_whatever_loop_awaits_it(
    background: BackgroundLoop,
) -> None:
    held = held_on(background, DRIVER)

    async def first_test() -> OnLoop:
        conn = await held.connect({"database": "db"})
        assert await conn.execute("SELECT 1") == "ran SELECT 1"
        return conn

    conn = asyncio.run(first_test())  # this loop is closed now; the connection is not

    async def next_test() -> None:
        assert await conn.execute("SELECT 2") == "ran SELECT 2"
        cursor = conn.cursor()
        assert isinstance(cursor, OnLoop)  # wrapped, not awaited: it is the driver's object
        assert await cursor.fetch() == "row"
        assert await cursor == "row"  # awaiting the stand-in awaits the object on its loop

    asyncio.run(next_test())
    assert conn.target.threads == [background.name] * 4
    assert conn.status() == "idle"  # a synchronous call returns its value as is
    with pytest.raises(TypeError, match="can't be used in 'await' expression"):
        asyncio.run(_await(conn))
    held.close()
    assert conn.target.closed == f"closed on {background.name}"


async def _await(thing: Any) -> Any:
    return await thing


def test_a_forced_close_is_handed_to_the_loop_thread(background: BackgroundLoop) -> None:
    held = held_on(background, DRIVER)
    conn = asyncio.run(held.connect({"database": "db"}))
    conn.terminate()
    background.run(asyncio.sleep(0))  # queued after the terminate
    assert conn.target.closed == f"terminated on {background.name}"


def test_close_drops_a_connection_whose_polite_close_fails(background: BackgroundLoop) -> None:
    async def stuck(conn: _Conn) -> None:
        raise OSError("the server went away")

    held = held_on(background, dataclasses.replace(DRIVER, close=stuck))
    conn = asyncio.run(held.connect({"database": "db"}))
    held.close()
    background.run(asyncio.sleep(0))
    assert conn.target.closed == f"terminated on {background.name}"
    held.close()  # a second close has nothing left to close


class _Finalised:
    """Records the thread its last reference went on (asyncpg's statements close themselves
    on their connection from ``__del__``)."""

    threads: ClassVar[list[str]] = []

    def __del__(self) -> None:
        _Finalised.threads.append(threading.current_thread().name)


def test_a_wrapped_object_is_let_go_on_the_loop_thread(background: BackgroundLoop) -> None:
    # many times over: the loop may run the release before the dropping thread is done with
    # what it queued (one drop in twenty lost that race before the holder)
    driver = dataclasses.replace(DRIVER, wrapped=(_Finalised,))
    _Finalised.threads.clear()
    for _ in range(500):
        standin = OnLoop(_Finalised(), background, driver)
        del standin  # dropped on this thread, as SQLAlchemy's statement cache drops its entries
        background.run(asyncio.sleep(0))  # runs after the release queued by the drop
    assert set(_Finalised.threads) == {background.name}
    assert len(_Finalised.threads) == 500

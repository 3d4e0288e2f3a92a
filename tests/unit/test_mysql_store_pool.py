"""The MySQL store's pool on its own (no server): a pool handed over or still being made when the
store is released is closed, never left open beside a released store."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from pytest_threadcreator._background import BackgroundLoop
from pytest_threadcreator.errors import DatabaseError
from pytest_threadcreator.schema import default_schema
from pytest_threadcreator.store import mysql as mysql_store


class _Pool:
    def __init__(self) -> None:
        self.closed = False
        self.freesize = 1

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None

    def terminate(self) -> None:
        self.closed = True


def _store(background: BackgroundLoop, pool: Any = None) -> mysql_store.MySqlStore:
    return mysql_store.MySqlStore(
        schema=default_schema(),
        connect_kwargs={"host": "127.0.0.1"},
        background=background,
        name="tc_run_gw0_1_test",
        pool=pool,
    )


def test_a_pool_made_ahead_is_the_stores_and_goes_with_detach(background: BackgroundLoop) -> None:
    pool = _Pool()
    store = _store(background, pool)
    assert background.run(store._get_pool()) is pool, "no new pool: the one made ahead"
    assert store.detach() is pool and not pool.closed, "handed over, for the taker to close"
    assert store.detach() is None
    with pytest.raises(DatabaseError, match="was released; request threadcreator_db"):
        background.run(store._get_pool())


def test_a_pool_still_being_made_when_the_store_is_released_is_closed(
    background: BackgroundLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _Pool()
    started = threading.Event()
    go_on = asyncio.Event()

    async def slow_open_pool(*args: Any, **kwargs: Any) -> _Pool:
        started.set()
        await go_on.wait()
        return made

    monkeypatch.setattr(mysql_store, "open_pool", slow_open_pool)
    store = _store(background)
    getting = asyncio.run_coroutine_threadsafe(store._get_pool(), background.loop)
    assert started.wait(10)
    assert store.detach() is None, "nothing to hand over yet"
    background.loop.call_soon_threadsafe(go_on.set)
    with pytest.raises(DatabaseError, match="was released"):
        getting.result(10)
    assert made.closed, "closed by the store, since nobody else has it"

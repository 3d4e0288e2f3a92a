"""One contract, every store: the same tests against the SQLite, PostgreSQL and MySQL stores.

A store is ThreadCreator's data path. Whatever SQL it compiles for its dialect, a row must come
out as SQLAlchemy itself would write it (column defaults, ``None`` in JSON columns), a read must
accept what SQLAlchemy accepts (``IN`` lists), transient contention must be recognised so that
ThreadCreator retries it, and a create cancelled or failed at any step leaves both rows or
neither.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import pytest
from sqlalchemy import JSON, ForeignKey, String, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pytest_threadcreator import DatabaseError, ThreadCreator, UserExecutionContext
from pytest_threadcreator.database import Database
from pytest_threadcreator.errors import InjectedFault
from pytest_threadcreator.faults.steps import FaultAction
from pytest_threadcreator.ids import new_message_id, new_thread_id
from pytest_threadcreator.schema import NewThread, ThreadSchema, default_schema
from pytest_threadcreator.store.base import ThreadIdTaken

from ..helpers import MYSQL_SERVER_URL, pg_connect_kwargs
from .stores import BACKEND_PARAMS, open_database

pytestmark = pytest.mark.suite_independent


class ContractBase(DeclarativeBase):
    """A schema with every kind of column default and both flavours of JSON column."""


class Note(ContractBase):
    __tablename__ = "contract_notes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), default="plain")
    token: Mapped[str] = mapped_column(String(32), default=lambda: "generated")
    label: Mapped[str] = mapped_column(String(32), default=func.lower("ABC"))
    note: Mapped[str] = mapped_column(String(32), server_default="from the server")
    extra: Mapped[Any] = mapped_column(JSON, nullable=True)


class Reply(ContractBase):
    __tablename__ = "contract_replies"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    note_id: Mapped[str] = mapped_column(ForeignKey("contract_notes.id"), nullable=False)
    body: Mapped[Any] = mapped_column(JSON, nullable=True)
    tags: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)


def _note_row(new: NewThread) -> dict[str, Any]:
    return {"id": new.thread_id, "user_id": new.user_id}


def _reply_row(new: NewThread) -> dict[str, Any]:
    return {"id": new.message_id, "note_id": new.thread_id, "body": {"text": new.message}}


CONTRACT_SCHEMA = ThreadSchema.from_models(
    Note,
    Reply,
    thread_row=_note_row,
    message_row=_reply_row,
    thread_created_column=None,
    deleted_at_column=None,
    owner_metadata_column=None,
    message_created_column=None,
    message_thread_column="note_id",
    name="contract",
)
SCHEMA = default_schema()
T = SCHEMA.thread_table
M = SCHEMA.message_table


@pytest.fixture(params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database with the default schema, on each backend."""
    with open_database(request.param, SCHEMA, tmp_path) as database:
        yield database


@pytest.fixture(params=BACKEND_PARAMS)
def contract_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database with the contract schema, on each backend."""
    with open_database(request.param, CONTRACT_SCHEMA, tmp_path) as database:
        yield database


def _rows(
    user_id: str = "contract_user", thread_id: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    new = NewThread(
        thread_id=thread_id or new_thread_id(),
        message_id=new_message_id(),
        user_id=user_id,
        run_id="run_contract",
        message="hello",
        title="a title",
        role="user",
        metadata={"source": "contract"},
        created_at=1_700_000_000,
        context=None,
    )
    return SCHEMA.thread_row(new), SCHEMA.message_row(new)


async def _counts(db: Database) -> tuple[int, int]:
    return await db.count_threads(), await db.count_messages()


# -- reads ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_in_lists_select_the_listed_rows(db: Database) -> None:
    made = [_rows() for _ in range(3)]
    for thread, message in made:
        await db.store.create(thread, message, explicit_id=False)
    wanted = [made[0][0]["id"], made[2][0]["id"], "thread_not_there"]
    stmt = select(T.c.id).where(T.c.id.in_(wanted)).order_by(T.c.id)
    expected = [{"id": i} for i in sorted(wanted[:2])]
    assert await db.store.fetch_all(stmt) == expected
    assert db.store.fetch_all_sync(stmt) == expected
    assert await db.store.fetch_all(select(T.c.id).where(T.c.id.in_([]))) == []
    # Two lists and a plain parameter in one statement keep their order.
    both = select(M.c.thread_id).where(
        M.c.role == "user", M.c.thread_id.in_(wanted), M.c.id.not_in([made[0][1]["id"]])
    )
    assert await db.store.fetch_all(both) == [{"thread_id": made[2][0]["id"]}]


# -- writes: rows as SQLAlchemy writes them -------------------------------------------------------


async def _written_by_sqlalchemy(db: Database, note: dict[str, Any], reply: dict[str, Any]) -> None:
    async with db.session() as session, session.begin():
        await session.execute(insert(Note), [note])
        await session.execute(insert(Reply), [reply])


async def _stored(db: Database, note_id: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    n = CONTRACT_SCHEMA.thread_table
    r = CONTRACT_SCHEMA.message_table
    (note,) = await db.store.fetch_all(select(n).where(n.c.id == note_id))
    (reply,) = await db.store.fetch_all(select(r).where(r.c.note_id == note_id))
    sql_nulls = await db.store.fetch_all(
        select(n.c.extra.is_(None).label("extra"), r.c.body.is_(None).label("body"),
               r.c.tags.is_(None).label("tags"))
        .join_from(n, r, r.c.note_id == n.c.id)
        .where(n.c.id == note_id)
    )  # fmt: skip
    nulls = [name for name, is_null in sql_nulls[0].items() if is_null]
    del note["id"], reply["id"], reply["note_id"]
    return note, reply, nulls


@pytest.mark.asyncio
async def test_column_defaults_apply_as_sqlalchemy_applies_them(contract_db: Database) -> None:
    ours = {"id": "note_store", "user_id": "u1"}
    await contract_db.store.create(
        ours, {"id": "reply_store", "note_id": "note_store"}, explicit_id=False
    )
    await _written_by_sqlalchemy(
        contract_db, {"id": "note_sa", "user_id": "u1"}, {"id": "reply_sa", "note_id": "note_sa"}
    )
    store_note, store_reply, _ = await _stored(contract_db, "note_store")
    sa_note, sa_reply, _ = await _stored(contract_db, "note_sa")
    assert (
        store_note
        == sa_note
        == {
            "user_id": "u1",
            "kind": "plain",
            "token": "generated",
            "label": "abc",
            "note": "from the server",
            "extra": None,
        }
    )
    assert store_reply == sa_reply


@pytest.mark.asyncio
async def test_none_in_json_columns_is_stored_as_sqlalchemy_stores_it(
    contract_db: Database,
) -> None:
    # JSON(): None is JSON null (not SQL NULL); JSON(none_as_null=True): SQL NULL.
    await contract_db.store.create(
        {"id": "note_store", "user_id": "u1", "extra": None},
        {"id": "reply_store", "note_id": "note_store", "body": None, "tags": None},
        explicit_id=False,
    )
    await _written_by_sqlalchemy(
        contract_db,
        {"id": "note_sa", "user_id": "u1", "extra": None},
        {"id": "reply_sa", "note_id": "note_sa", "body": None, "tags": None},
    )
    store_note, store_reply, store_nulls = await _stored(contract_db, "note_store")
    sa_note, sa_reply, sa_nulls = await _stored(contract_db, "note_sa")
    assert sa_nulls == ["tags"]
    assert store_nulls == sa_nulls
    assert (store_note, store_reply) == (sa_note, sa_reply)
    assert store_note["extra"] is None and store_reply["body"] is None


@pytest.mark.asyncio
async def test_json_values_round_trip(db: Database) -> None:
    thread, message = _rows()
    thread["metadata_"] = {
        **thread["metadata_"],
        "emoji": "🧵 ✓",
        "nested": [1, 2.5, True, None, {"k": ["v"]}],
        "big": 2**53 + 1,
    }
    await db.store.create(thread, message, explicit_id=False)
    (row,) = await db.store.fetch_all(select(T.c.metadata_).where(T.c.id == thread["id"]))
    assert row["metadata_"] == thread["metadata_"]


# -- ids, failures, retries, cancellation ----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_taken_explicit_id_reports_its_owner(db: Database) -> None:
    await db.store.create(*_rows("owner_1", thread_id="thread_fixed"), explicit_id=True)
    with pytest.raises(ThreadIdTaken) as info:
        await db.store.create(*_rows("owner_2", thread_id="thread_fixed"), explicit_id=True)
    assert info.value.owner == "owner_1"
    assert await _counts(db) == (1, 1)


async def _real_transient_error(db: Database) -> Exception:
    """Contention as the backend's own driver reports it."""
    if db.backend == "sqlite":
        holder = sqlite3.connect(db.location, isolation_level=None)
        waiter = sqlite3.connect(db.location, isolation_level=None, timeout=0)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(sqlite3.OperationalError) as info:
                waiter.execute("BEGIN IMMEDIATE")
            return info.value
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            waiter.close()
    if db.backend == "mysql":
        return await _mysql_deadlock(db)
    conn = await asyncpg.connect(**pg_connect_kwargs(db.name))
    try:
        with pytest.raises(asyncpg.PostgresError) as pg_info:
            await conn.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; "
                "END $$"
            )
        return pg_info.value
    finally:
        await conn.close()


async def _mysql_deadlock(db: Database) -> Exception:
    """A real deadlock (error 1213): two sessions each lock a row the other then wants."""
    server = make_url(MYSQL_SERVER_URL)
    kwargs = {"host": server.host, "port": server.port or 3306, "user": server.username}
    first = await asyncmy.connect(db=db.name, **kwargs)
    second = await asyncmy.connect(db=db.name, **kwargs)
    try:
        for thread, message in (_rows("a", "thread_a"), _rows("b", "thread_b")):
            await db.store.create(thread, message, explicit_id=True)
        lock = "SELECT id FROM threads WHERE id = %s FOR UPDATE"
        async with first.cursor() as one, second.cursor() as two:
            await one.execute("START TRANSACTION")
            await two.execute("START TRANSACTION")
            await one.execute(lock, ("thread_a",))
            await two.execute(lock, ("thread_b",))
            # Each now wants the other's row: InnoDB picks one as the deadlock's victim.
            results = await asyncio.gather(
                one.execute(lock, ("thread_b",)),
                two.execute(lock, ("thread_a",)),
                return_exceptions=True,
            )
            await one.execute("ROLLBACK")
            await two.execute("ROLLBACK")
        (victim,) = [r for r in results if isinstance(r, BaseException)]
        assert isinstance(victim, asyncmy.errors.OperationalError), victim
        assert victim.args[0] == 1213, victim
        db.store.reset()
        return victim
    finally:
        first.close()
        second.close()


@pytest.mark.asyncio
async def test_transient_errors_are_retried_and_others_are_not(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    transient = await _real_transient_error(db)
    assert db.store.is_transient(transient)
    real_create = db.store.create
    raised: list[Exception] = []

    async def contended_once(*args: Any, **kwargs: Any) -> None:
        if not raised:
            raised.append(transient)
            raise transient
        await real_create(*args, **kwargs)

    monkeypatch.setattr(db.store, "create", contended_once)
    creator = ThreadCreator(db)
    result = await creator.create_thread_with_message(
        UserExecutionContext(user_id="contract_user"), "hello"
    )
    assert creator.retries == 1 and raised == [transient]
    assert await _counts(db) == (1, 1)
    assert [t.id for t in await creator.list_threads("contract_user")] == [result.thread.id]

    # Anything else is raised at once, as DatabaseError carrying the driver's own error.
    monkeypatch.setattr(db.store, "create", real_create)
    thread, message = _rows()
    await db.store.create(thread, message, explicit_id=False)
    with pytest.raises(Exception) as info:
        await db.store.create(thread, dict(message, id=new_message_id()), explicit_id=False)
    duplicate = info.value
    assert not db.store.is_transient(duplicate)
    calls: list[int] = []

    async def always_duplicate(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise duplicate

    monkeypatch.setattr(db.store, "create", always_duplicate)
    creator = ThreadCreator(db)
    with pytest.raises(DatabaseError) as wrapped:
        await creator.create_thread_with_message(UserExecutionContext(user_id="u_other"), "x")
    assert wrapped.value.__cause__ is duplicate
    assert calls == [1] and creator.retries == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("step", ["thread_insert", "message_insert", "commit"])
async def test_a_create_cancelled_or_failed_at_any_step_leaves_neither_row(
    db: Database, step: str
) -> None:
    seen: list[str] = []

    def cancel_at(current: str) -> FaultAction | None:
        seen.append(current)
        return FaultAction("cancel", current) if current == step else None

    with pytest.raises(asyncio.CancelledError):
        await db.store.create(*_rows(), explicit_id=False, decide=cancel_at)
    assert seen[-1] == step
    assert await _counts(db) == (0, 0)

    def fail_at(current: str) -> FaultAction | None:
        return FaultAction("fail", current, call=3) if current == step else None

    with pytest.raises(InjectedFault):
        await db.store.create(*_rows(), explicit_id=False, decide=fail_at)
    assert await _counts(db) == (0, 0)
    assert db.checked_out() == 0

    # The store is still usable, with and without a decider.
    await db.store.create(*_rows(), explicit_id=False, decide=lambda current: None)
    await db.store.create(*_rows(), explicit_id=False)
    assert await _counts(db) == (2, 2)
    await db.check_integrity()


@pytest.mark.asyncio
async def test_a_task_cancelled_while_its_create_runs_leaves_both_rows_or_neither(
    db: Database,
) -> None:
    loop = asyncio.get_running_loop()
    rows = [_rows(f"user_{i}") for i in range(30)]
    tasks: list[asyncio.Future[None]] = []
    steps = ["thread_insert", "message_insert", "commit"]

    def cancel_own_task_at(i: int) -> Any:
        # The caller's task is cancelled from inside its own create, between two steps (the
        # decider may run on another thread: the store's writer or its background loop).
        def decide(current: str) -> None:
            if i % 2 and current == steps[i % 3]:
                loop.call_soon_threadsafe(tasks[i].cancel)

        return decide

    for i, (thread, message) in enumerate(rows):
        create = db.store.create(thread, message, explicit_id=False, decide=cancel_own_task_at(i))
        tasks.append(asyncio.ensure_future(create))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results
    assert all(results[i] is None for i in range(0, 30, 2))
    thread_ids = {r["id"] for r in await db.store.fetch_all(select(T.c.id))}
    message_threads = [r["thread_id"] for r in await db.store.fetch_all(select(M.c.thread_id))]
    assert sorted(message_threads) == sorted(thread_ids)
    for (thread, _), result in zip(rows, results, strict=True):
        if result is None:
            assert thread["id"] in thread_ids
    assert db.checked_out() == 0
    await db.check_integrity()

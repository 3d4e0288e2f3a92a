"""The integrity reads and assertions on a test's database (``Database.check_integrity`` and
friends): the queries are written once here, for the fixture's methods and the failure report.

It sits above both ThreadCreator and Database (it reads through ThreadCreator for
``assert_user_isolation``); ``Database``'s methods of the same names call these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from sqlalchemy import String, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Select

from ._binding import BoundDatabase
from .creator import ThreadCreator
from .errors import ConfigurationError, ThreadOwnershipError
from .schema import ThreadSchema


class CheckedDatabase(BoundDatabase, Protocol):
    """What the integrity tools need of the plugin's ``Database`` (which calls them)."""

    location: str

    def session(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]: ...


__all__ = [
    "assert_user_isolation",
    "check_integrity",
    "count_messages",
    "count_threads",
    "messages_without_thread",
    "orphan_threads",
    "orphans_query",
    "owner_mismatches",
    "ownerless_threads",
]


def orphans_query(schema: ThreadSchema) -> Select[Any]:
    """Ids (column ``id``) of threads without a message, in id order."""
    t, m = schema.thread_table, schema.message_table
    tid = t.c[schema.thread_id_column]
    has_message = (
        select(literal_column("1")).where(m.c[schema.message_thread_column] == tid).exists()
    )
    return select(tid.label("id")).where(~has_message).order_by(tid)


async def count_threads(database: CheckedDatabase, user_id: str | None = None) -> int:
    """Number of threads (soft-deleted included), optionally of one user."""
    s = database.schema
    stmt = select(func.count().label("n")).select_from(s.thread_table)
    if user_id is not None:
        stmt = stmt.where(s.thread_table.c[s.owner("count_threads(user_id=...)")] == user_id)
    rows = await database.store.fetch_all(stmt)
    return int(rows[0]["n"])


async def count_messages(database: CheckedDatabase, thread_id: str | None = None) -> int:
    """Number of messages, optionally of one thread."""
    s = database.schema
    stmt = select(func.count().label("n")).select_from(s.message_table)
    if thread_id is not None:
        stmt = stmt.where(s.message_table.c[s.message_thread_column] == thread_id)
    rows = await database.store.fetch_all(stmt)
    return int(rows[0]["n"])


async def orphan_threads(database: CheckedDatabase) -> list[str]:
    """Ids of threads that have no message, in id order."""
    rows = await database.store.fetch_all(orphans_query(database.schema))
    return [row["id"] for row in rows]


async def messages_without_thread(database: CheckedDatabase) -> list[str]:
    """Ids of messages whose thread row is missing (only possible without foreign keys)."""
    s = database.schema
    t, m = s.thread_table, s.message_table
    mtid = m.c[s.message_thread_column]
    has_thread = select(literal_column("1")).where(t.c[s.thread_id_column] == mtid).exists()
    mid = m.c[s.message_id_column]
    rows = await database.store.fetch_all(select(mid.label("id")).where(~has_thread).order_by(mid))
    return [row["id"] for row in rows]


async def owner_mismatches(database: CheckedDatabase) -> list[str]:
    """Ids of threads whose metadata owner differs from the owner column."""
    s = database.schema
    if s.owner_metadata_column is None or s.owner_column is None:
        return []
    t = s.thread_table
    stmt = select(
        t.c[s.thread_id_column].label("id"),
        t.c[s.owner_column].label("owner"),
        t.c[s.owner_metadata_column].label("meta"),
    ).order_by(t.c[s.thread_id_column])
    bad = []
    for row in await database.store.fetch_all(stmt):
        meta = row["meta"]
        if not isinstance(meta, dict) or meta.get("user_id") != row["owner"]:
            bad.append(row["id"])
    return bad


async def ownerless_threads(database: CheckedDatabase) -> list[str]:
    """Ids of threads whose owner is NULL or empty (none without an owner column)."""
    s = database.schema
    if s.owner_column is None:
        return []
    t = s.thread_table
    owner, tid = t.c[s.owner_column], t.c[s.thread_id_column]
    missing = or_(owner.is_(None), owner == "") if isinstance(owner.type, String) else None
    stmt = select(tid.label("id")).where(owner.is_(None) if missing is None else missing)
    stmt = stmt.order_by(tid)
    return [row["id"] for row in await database.store.fetch_all(stmt)]


async def assert_user_isolation(
    database: CheckedDatabase,
    contexts: Iterable[Any],
    *,
    read: Callable[[Any], Awaitable[Iterable[Any]]] | None = None,
) -> None:
    """:meth:`Database.assert_user_isolation <pytest_threadcreator.Database.assert_user_isolation>`."""
    __tracebackhide__ = True
    s = database.schema
    owner_column = s.owner("assert_user_isolation()")
    t = s.thread_table
    contexts = list(contexts)
    live = select(t.c[s.thread_id_column].label("id"), t.c[owner_column].label("owner")).order_by(
        t.c[s.thread_id_column]
    )
    if s.deleted_at_column is not None:
        live = live.where(t.c[s.deleted_at_column].is_(None))
    owners = {row["id"]: row["owner"] for row in await database.store.fetch_all(live)}
    if read is None:
        problems = await _isolation_through_creator(database, contexts, owners)
    else:
        problems = []
        for context in contexts:
            user = getattr(context, "user_id", context)
            shown = {_shown_id(database, item) for item in await read(context)}
            stored = {tid for tid, owner in owners.items() if owner == user}
            foreign = sorted(tid for tid in shown - stored if tid in owners)
            if foreign:
                others = sorted({str(owners[tid]) for tid in foreign})
                problems.append(
                    f"{user}: shown {len(foreign)} thread(s) of other users "
                    f"({', '.join(others)}): {_ids(foreign)}"
                )
            missing, unknown = sorted(stored - shown), sorted(shown - set(owners))
            if missing or unknown:
                problems.append(
                    f"{user}: shown {len(shown)} thread(s), the table holds {len(stored)} "
                    f"for them (missing: {_ids(missing)}; not in the table: {_ids(unknown)})"
                )
    if problems:
        raise AssertionError("user isolation violated:\n  " + "\n  ".join(problems))


def _shown_id(database: CheckedDatabase, item: Any) -> Any:
    """The thread id of one item an app's ``read`` returned: an id, a row or an object."""
    if isinstance(item, (str, int)):
        return item
    s = database.schema
    attr = s.attr_name(s.thread_table, s.thread_id_column)
    for name in dict.fromkeys((attr, s.thread_id_column, "id")):
        if isinstance(item, Mapping) and name in item:
            return item[name]
        if not isinstance(item, Mapping) and hasattr(item, name):
            return getattr(item, name)
    names = " or ".join(repr(n) for n in dict.fromkeys((attr, "id")))
    raise ConfigurationError(
        f"assert_user_isolation(read=...): read() returned {type(item).__name__} {item!r}; "
        f"return thread ids, or rows or objects with an {names}"
    )


async def _isolation_through_creator(
    database: CheckedDatabase, contexts: list[Any], owners: Mapping[Any, Any]
) -> list[str]:

    s = database.schema
    t = s.thread_table
    owner_column = s.owner("assert_user_isolation()")
    creator = ThreadCreator(database)
    users = list(dict.fromkeys(getattr(c, "user_id", c) for c in contexts))
    problems = []
    for index, user in enumerate(users):
        listed = await creator.list_threads(user)
        listed_ids = [s.thread_from_row(row) if isinstance(row, dict) else row for row in listed]
        ids = {_attr(x, s.attr_name(t, s.thread_id_column)) for x in listed_ids}
        listed_owners = {_attr(x, s.attr_name(t, owner_column)) for x in listed_ids}
        stored = {tid for tid, owner in owners.items() if owner == user}
        if listed_owners - {user}:
            problems.append(f"{user}: list_threads returned threads of other users")
        if ids != stored:
            problems.append(
                f"{user}: list_threads returned {len(ids)} thread(s), the table holds "
                f"{len(stored)} (missing: {_ids(sorted(stored - ids))}; extra: "
                f"{_ids(sorted(ids - stored))})"
            )
        if ids and len(users) > 1:
            other = users[(index + 1) % len(users)]
            probe = sorted(ids)[0]
            try:
                await creator.get_thread(probe, user_id=other)
            except ThreadOwnershipError:
                pass
            else:
                problems.append(f"{other} could read {user}'s thread {probe}")
    return problems


async def check_integrity(database: CheckedDatabase) -> None:
    """Raise AssertionError naming every problem: threads without a message (unless the
    schema allows them), messages without a thread, threads without an owner or whose
    metadata owner differs, and what the schema's own ``checks`` report."""
    __tracebackhide__ = True
    s = database.schema
    problems = []
    if s.require_first_message:
        orphans = await orphan_threads(database)
        if orphans:
            problems.append(f"{len(orphans)} thread(s) without a message: {_ids(orphans)}")
    homeless = await messages_without_thread(database)
    if homeless:
        problems.append(f"{len(homeless)} message(s) without a thread: {_ids(homeless)}")
    ownerless = await ownerless_threads(database)
    if ownerless:
        problems.append(
            f"{len(ownerless)} thread(s) whose {s.owner_column} is NULL or empty: {_ids(ownerless)}"
        )
    mismatched = await owner_mismatches(database)
    if mismatched:
        problems.append(
            f"{len(mismatched)} thread(s) whose metadata owner differs from "
            f"{s.owner_column}: {_ids(mismatched)}"
        )
    if s.checks:
        async with database.session() as session:
            for check in s.checks:
                name = getattr(check, "__name__", repr(check))
                problems.extend(f"{name}: {problem}" for problem in await check(session))
    if problems:
        raise AssertionError(
            f"integrity check failed on {database.location}:\n  " + "\n  ".join(problems)
        )


def _attr(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _ids(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", … and {len(ids) - limit} more" if len(ids) > limit else "")

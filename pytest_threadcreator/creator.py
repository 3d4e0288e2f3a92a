"""ThreadCreator: a thread and its first message, written atomically in one call."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Table, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import _binding, shake
from ._binding import BoundDatabase
from .context import check_json, check_text, coerce_context, validate_id
from .errors import (
    DatabaseError,
    InjectedFault,
    InvalidMessageError,
    NoDatabaseError,
    ThreadCreatorError,
    ThreadExistsError,
    ThreadNotFoundError,
    ThreadOwnershipError,
)
from .faults.steps import FaultDecider
from .schema import (
    NewThread,
    ThreadSchema,
    default_message_row,
    default_schema,
    default_thread_row,
)
from .store.base import Store, ThreadIdTaken

__all__ = ["BoundDatabase", "ThreadCreator", "ThreadWithMessage"]


ROLES = frozenset({"user", "assistant", "system"})
PLUGIN_METADATA_KEYS = frozenset({"user_id", "title", "status", "created_at"})
MAX_TITLE_CHARS = 255


@dataclass(frozen=True)
class ThreadWithMessage:
    """What a create returns: the thread, its first message and the context; unpacks to two."""

    thread_row: Mapping[str, Any] = field(repr=False)
    message_row: Mapping[str, Any] = field(repr=False)
    context: Any
    schema: ThreadSchema = field(repr=False, compare=False)

    @property
    def thread(self) -> Any:
        """The thread as the schema's model instance (detached), built on first access."""
        cached = self.__dict__.get("_thread")
        if cached is None:
            cached = self.schema.thread_from_row(self.thread_row)
            object.__setattr__(self, "_thread", cached)
        return cached

    @property
    def message(self) -> Any:
        """The first message as the schema's model instance (detached), built on first access."""
        cached = self.__dict__.get("_message")
        if cached is None:
            cached = self.schema.message_from_row(self.message_row)
            object.__setattr__(self, "_message", cached)
        return cached

    @property
    def thread_id(self) -> str:
        """The new thread's id."""
        return str(self.thread_row[self.schema.thread_id_column])

    def __iter__(self) -> Iterator[Any]:
        yield self.thread
        yield self.message

    def __repr__(self) -> str:
        return f"ThreadWithMessage(thread_id={self.thread_id!r})"


#: Classes whose instances passed the check of :func:`_takes` (a Protocol check is slow).
_TAKEN: set[type] = set()


def _takes(database: object) -> bool:
    """Whether ``database`` is a Database (by its protocol) or an ``async_sessionmaker``."""
    kind = type(database)
    if kind in _TAKEN:
        return True
    if isinstance(database, (async_sessionmaker, BoundDatabase)):
        _TAKEN.add(kind)
        return True
    return False


class ThreadCreator:
    """Creates a thread with its first message in one transaction, from any number of tasks.

    ``database`` is the plugin's :class:`~pytest_threadcreator.Database`, an
    ``async_sessionmaker``, or ``None`` to use the running test's ``threadcreator_db``.
    """

    def __init__(
        self,
        database: BoundDatabase | async_sessionmaker[AsyncSession] | None = None,
        *,
        schema: ThreadSchema | None = None,
        max_retries: int = 5,
        max_message_chars: int = 1_000_000,
    ) -> None:
        if database is not None and not _takes(database):
            raise TypeError(
                "ThreadCreator(database=...) takes the threadcreator_db fixture's Database, an "
                f"async_sessionmaker, or None; got {type(database).__name__}"
            )
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if not isinstance(max_message_chars, int) or max_message_chars < 1:
            raise ValueError(f"max_message_chars must be an int >= 1, got {max_message_chars!r}")
        self._database = database
        self._schema = schema
        self._session_store: Store | None = None
        self.max_retries = max_retries
        self.max_message_chars = max_message_chars
        #: Decides faults per step; set by the fault injector (None: no faults, fastest path).
        self.fault_decider: FaultDecider | None = None
        #: Retries taken on transient contention, for reports.
        self.retries = 0

    def __repr__(self) -> str:
        target = self._database if self._database is not None else "the running test's database"
        return f"<ThreadCreator on {target!r}>"

    # -- binding -----------------------------------------------------------------------------
    def _target(self) -> tuple[Store, ThreadSchema, BoundDatabase | None]:
        database = self._database
        if database is None:
            database = _binding.current_database()
            if database is None:
                raise NoDatabaseError(
                    "ThreadCreator() has no database: no test database is bound here. Inside a "
                    "test, request the threadcreator_db (or thread_creator) fixture; elsewhere "
                    "pass one: ThreadCreator(database) with a Database or an async_sessionmaker."
                )
        if not isinstance(database, async_sessionmaker):  # a Database (checked when made)
            schema = self._schema or database.schema
            return database.store, schema, database
        if self._session_store is None:
            from .store.session import SessionStore

            self._session_store = SessionStore(database, self._schema or default_schema())
        return self._session_store, self._schema or default_schema(), None

    @property
    def schema(self) -> ThreadSchema:
        """The schema this creator writes."""
        return self._target()[1]

    @property
    def database(self) -> BoundDatabase | None:
        """The bound Database (None when built on a plain async_sessionmaker)."""
        return self._target()[2]

    # -- create ------------------------------------------------------------------------------
    async def create_thread_with_message(
        self,
        context: Any,
        message: str,
        title: str | None = None,
        *,
        role: str = "user",
        metadata: Mapping[str, Any] | None = None,
    ) -> ThreadWithMessage:
        """Create a thread and its first message atomically; both rows or neither."""
        ids = coerce_context(context)
        self._check_message(message, title, role, metadata)
        store, schema, database = self._target()
        if database is not None:
            database.loops_seen.add(asyncio.get_running_loop())
        explicit = ids.thread_id is not None
        new = NewThread(
            thread_id=ids.thread_id if explicit else schema.thread_id_factory(),  # type: ignore[arg-type]
            message_id=schema.message_id_factory(),
            user_id=ids.user_id,
            run_id=ids.run_id,
            message=message,
            title=title,
            role=role,
            metadata=dict(metadata) if metadata else {},
            created_at=int(time.time()),
            context=context,
        )
        thread_row = schema.thread_row(new)
        message_row = schema.message_row(new)
        # The default builders write only what was checked above; a team's builders may write
        # more (e.g. the context's audit_metadata): those rows are checked before any write.
        if schema.thread_row is not default_thread_row:
            _check_row(thread_row, schema.thread_table)
        if schema.message_row is not default_message_row:
            _check_row(message_row, schema.message_table)
        decide = self.fault_decider
        if decide is None and database is not None:
            decide = database.fault_decider  # the test's fault_injector, if it uses one
        shaker = shake.active()
        if shaker is not None:  # shake mode: seeded pauses before the write and inside it
            creation, pause = shaker.write_delay()
            if pause:
                await asyncio.sleep(pause)
            decide = shaker.step_decider(creation, decide)
        attempt = 0
        while True:
            try:
                await store.create(thread_row, message_row, explicit_id=explicit, decide=decide)
                break
            except ThreadIdTaken as taken:
                if schema.owner_column is None or taken.owner == ids.user_id:
                    raise ThreadExistsError(
                        f"thread {new.thread_id!r} already exists for this user; use "
                        "get_thread() to read it, or drop thread_id from the context to create "
                        "a new thread"
                    ) from None
                raise ThreadOwnershipError(
                    f"thread {new.thread_id!r} cannot be created or used by this user: the id "
                    "is taken. Choose another thread_id, or none to get a generated one."
                ) from None
            except (InjectedFault, ThreadCreatorError):
                raise  # never wrapped, never retried
            except Exception as exc:
                if store.is_transient(exc) and attempt < self.max_retries:
                    attempt += 1
                    self.retries += 1
                    if database is not None:
                        database.retries += 1
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise DatabaseError(
                    f"creating thread {new.thread_id!r} failed: {type(exc).__name__}: "
                    f"{_first_line(exc)}"
                    + (
                        f" (still contended after {attempt} retries; raise max_retries or lower "
                        "the concurrency)"
                        if attempt
                        else ""
                    )
                ) from exc
        return ThreadWithMessage(thread_row, message_row, context, schema)

    def _check_message(
        self, message: Any, title: Any, role: Any, metadata: Mapping[str, Any] | None
    ) -> None:
        if not isinstance(message, str):
            raise InvalidMessageError(
                f"message must be a str, got {type(message).__name__}; pass the message text"
            )
        if not message.strip():
            raise InvalidMessageError(
                "message is empty or blank; pass the text of the first message"
            )
        check_text(message, "message", InvalidMessageError)
        if len(message) > self.max_message_chars:
            raise InvalidMessageError(
                f"message has {len(message):,} characters, over the limit of "
                f"{self.max_message_chars:,}; shorten it or raise "
                "ThreadCreator(max_message_chars=...)"
            )
        if title is not None:
            if not isinstance(title, str):
                raise InvalidMessageError(
                    f"title must be a str or None, got {type(title).__name__}"
                )
            check_text(title, "title", InvalidMessageError)
            if len(title) > MAX_TITLE_CHARS:
                raise InvalidMessageError(
                    f"title has {len(title)} characters, over the limit of {MAX_TITLE_CHARS}; "
                    "shorten it"
                )
        if role not in ROLES:
            raise InvalidMessageError(
                f"role {role!r} is not one of {', '.join(sorted(ROLES))}; pass one of them"
            )
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InvalidMessageError(f"metadata must be a dict, got {type(metadata).__name__}")
            if metadata:
                clash = sorted(PLUGIN_METADATA_KEYS & metadata.keys())
                if clash:
                    raise InvalidMessageError(
                        f"metadata key(s) {', '.join(map(repr, clash))} are set by the plugin; "
                        "rename them (reserved: " + ", ".join(sorted(PLUGIN_METADATA_KEYS)) + ")"
                    )
                if not all(isinstance(k, str) for k in metadata):
                    raise InvalidMessageError(
                        "metadata keys must be str (it is stored as JSON); convert them with str()"
                    )
                check_json(metadata, "metadata", InvalidMessageError)

    # -- reads -------------------------------------------------------------------------------
    async def list_threads(self, user_id: str) -> list[Any]:
        """The user's live (not soft-deleted) threads, ordered by ``(created_at, id)``."""
        validate_id(user_id, "user_id")
        store, s, _ = self._target()
        t = s.thread_table
        stmt = select(t).where(t.c[s.owner("list_threads()")] == user_id)
        if s.deleted_at_column is not None:
            stmt = stmt.where(t.c[s.deleted_at_column].is_(None))
        stmt = stmt.order_by(*_order(t, s.thread_created_column, s.thread_id_column))
        return [s.thread_from_row(row) for row in await store.fetch_all(stmt)]

    async def get_thread(self, thread_id: str, *, user_id: str) -> Any:
        """One live thread of ``user_id``; ThreadNotFoundError or ThreadOwnershipError otherwise."""
        validate_id(thread_id, "thread_id")
        validate_id(user_id, "user_id")
        store, s, _ = self._target()
        t = s.thread_table
        stmt = select(t).where(t.c[s.thread_id_column] == thread_id)
        rows = await store.fetch_all(stmt)
        if not rows or (
            s.deleted_at_column is not None and rows[0][s.deleted_at_column] is not None
        ):
            raise ThreadNotFoundError(f"no thread {thread_id!r}")
        if rows[0][s.owner("get_thread(user_id=...)")] != user_id:
            raise ThreadOwnershipError(f"thread {thread_id!r} is not accessible to this user")
        return s.thread_from_row(rows[0])

    async def list_messages(self, thread_id: str) -> list[Any]:
        """The thread's messages, ordered by ``(created_at, id)``."""
        validate_id(thread_id, "thread_id")
        store, s, _ = self._target()
        m = s.message_table
        stmt = (
            select(m)
            .where(m.c[s.message_thread_column] == thread_id)
            .order_by(*_order(m, s.message_created_column, s.message_id_column))
        )
        return [s.message_from_row(row) for row in await store.fetch_all(stmt)]


def _check_row(row: Mapping[str, Any], table: Table) -> None:
    """Refuse text and JSON values that some backend could not store, naming the column."""
    for name, value in row.items():
        if isinstance(value, str):
            check_text(value, f"{table.name}.{name}", InvalidMessageError)
        elif value is not None and name in table.c and isinstance(table.c[name].type, JSON):
            check_json(value, f"{table.name}.{name}", InvalidMessageError)


def _order(table: Any, created: str | None, ident: str) -> list[Any]:
    cols = [table.c[created]] if created is not None else []
    return [*cols, table.c[ident]]


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: up to 5 ms, 10 ms, 20 ms, … capped at 200 ms."""
    return random.uniform(0, min(0.2, 0.005 * 2 ** (attempt - 1)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "(no message)"

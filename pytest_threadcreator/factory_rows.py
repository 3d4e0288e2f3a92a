"""What the factories write and how: a mapped model's rows, instances and links, and the one
transaction each ``create()`` call writes (through the store for a thread and its first message,
ThreadCreator's own path; as multi-row INSERTs through one session for anything else).

Private to :mod:`pytest_threadcreator.factories`. This module never imports pytest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import JSON, Column, Table, insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.orm import Mapper, RelationshipDirection, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import UnmappedColumnError

from . import instrument
from .context import check_json, check_text
from .database import Database
from .errors import (
    ConfigurationError,
    InvalidContextError,
    InvalidMessageError,
    ThreadExistsError,
    ThreadOwnershipError,
)
from .schema import ThreadSchema
from .store.base import ThreadIdTaken

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "attr_of",
    "build_instance",
    "link",
    "links",
    "model_for",
    "persist",
    "starts_thread",
]


# -- models, rows and instances --------------------------------------------------------------
def _mapper(model: type[Any]) -> Mapper[Any]:
    try:
        mapper: Mapper[Any] = sa_inspect(model)
    except NoInspectionAvailable:
        raise ConfigurationError(
            f"{model!r} is not a mapped SQLAlchemy model; factories need declarative models "
            "(set Meta.model, and build the ThreadSchema with ThreadSchema.from_models())"
        ) from None
    return mapper


_COLUMN_ATTRS: dict[tuple[type[Any], Table], tuple[tuple[Column[Any], str], ...]] = {}
_LINKS: dict[tuple[type[Any], type[Any]], tuple[str | None, str | None]] = {}


def _column_attrs(model: type[Any], table: Table) -> tuple[tuple[Column[Any], str], ...]:
    """(column, attribute name) of each of ``table``'s columns that ``model`` maps."""
    cached = _COLUMN_ATTRS.get((model, table))
    if cached is None:
        mapper = _mapper(model)
        pairs = []
        for column in table.columns:
            try:
                prop = mapper.get_property_by_column(column)
            except UnmappedColumnError:  # not mapped: the database default applies
                continue
            pairs.append((column, prop.key))
        cached = _COLUMN_ATTRS[(model, table)] = tuple(pairs)
    return cached


def attr_of(model: type[Any], table: Table, column_name: str) -> str:
    for column, key in _column_attrs(model, table):
        if column.name == column_name:
            return key
    raise ConfigurationError(f"{model.__name__} does not map column {table.name}.{column_name}")


def links(thread_model: type[Any], message_model: type[Any]) -> tuple[str | None, str | None]:
    """(thread's message collection, message's thread reference) relationship names, if mapped."""
    cached = _LINKS.get((thread_model, message_model))
    if cached is not None:
        return cached
    collection = parent = None
    for rel in _mapper(thread_model).relationships:
        if rel.direction is RelationshipDirection.ONETOMANY and issubclass(
            message_model, rel.mapper.class_
        ):
            collection = rel.key
    for rel in _mapper(message_model).relationships:
        if rel.direction is RelationshipDirection.MANYTOONE and issubclass(
            thread_model, rel.mapper.class_
        ):
            parent = rel.key
    cached = _LINKS[(thread_model, message_model)] = (collection, parent)
    return cached


def model_for(
    factory_cls: type[Any], table: Table, schema_model: type[Any] | None, default: type[Any]
) -> type[Any]:
    """The class to instantiate: Meta.model, or the schema's own model for a default factory."""
    model: type[Any] = factory_cls._meta.model
    own_table = _mapper(model).local_table
    if own_table is table:
        return model
    if model is default and schema_model is not None:
        return schema_model  # the plugin's factory on a team's schema: follow the schema
    raise ConfigurationError(
        f"{factory_cls.__name__} builds {model.__name__} (table "
        f"{getattr(own_table, 'name', own_table)!r}) but the schema keeps these rows in table "
        f"{table.name!r}; subclass it with `class Meta: model = <the model of {table.name}>`"
    )


def build_instance(
    model: type[Any], table: Table, row: Mapping[str, Any], overrides: dict[str, Any]
) -> Any:
    """``model`` built from a row keyed by column name, then attribute overrides applied."""
    names = {column.name: key for column, key in _column_attrs(model, table)}
    unknown = sorted(set(row) - names.keys())
    if unknown:
        raise ConfigurationError(
            f"the schema's row builder set column(s) {', '.join(unknown)} that "
            f"{model.__name__} does not map"
        )
    values = {names[name]: value for name, value in row.items()}
    values.update(overrides)
    return model(**values)


def _row(instance: Any, table: Table) -> dict[Column[Any], Any]:
    """The column values set on ``instance``, plus scalar column defaults for the unset ones.

    The defaults are filled in here because the store's INSERT names every column (a missing
    value is NULL), while a session's INSERT applies them: both paths must write the same row.
    """
    state = sa_inspect(instance).dict
    row = {}
    for column, key in _column_attrs(type(instance), table):
        if key in state:
            row[column] = state[key]
        elif column.default is not None and column.default.is_scalar:
            row[column] = getattr(column.default, "arg", None)
    return row


def _table_of(instance: Any) -> Table:
    table = _mapper(type(instance)).local_table
    assert isinstance(table, Table)
    return table


def _has_identity(instance: Any) -> bool:
    return all(v is not None for v in _mapper(type(instance)).primary_key_from_instance(instance))


def link(thread: Any, message: Any, *, into_collection: bool) -> None:
    """Point ``message`` at ``thread`` (and add it to the thread's loaded collection).

    Committed values, not attribute events: linking must neither mark the thread changed nor
    load anything (lazy loads of a detached or async-attached object would fail).
    """
    collection, parent = links(type(thread), type(message))
    if parent is not None:
        set_committed_value(message, parent, thread)
    if into_collection and collection is not None:
        loaded = sa_inspect(thread).dict.get(collection)
        if loaded is not None:
            set_committed_value(thread, collection, [*loaded, message])


def starts_thread(thread: Any, message_model: type[Any]) -> bool:
    """True when ``thread`` is known (in memory) to have no message yet."""
    if thread is None:
        return False
    collection, _ = links(type(thread), message_model)
    if collection is None:
        return False
    loaded = sa_inspect(thread).dict.get(collection)
    return loaded is not None and len(loaded) == 0


# -- writing ---------------------------------------------------------------------------------
async def persist(database: Database, written: list[Any]) -> None:
    """Write what one create call made, in one transaction, then detach the objects."""
    if not written:
        return
    schema = database.schema
    rows: dict[Table, list[dict[Column[Any], Any]]] = {}
    for instance in written:
        rows.setdefault(_table_of(instance), []).append(_row(instance, _table_of(instance)))
    threads = rows.get(schema.thread_table, [])
    messages = rows.get(schema.message_table, [])
    unknown = [
        t.name for t in rows if t is not schema.thread_table and t is not schema.message_table
    ]
    if unknown:
        raise ConfigurationError(
            f"factories write threads and messages only; got rows for {', '.join(unknown)}"
        )
    _check_storable(schema, rows)
    id_column = schema.thread_table.c[schema.thread_id_column]
    fk_column = schema.message_table.c[schema.message_thread_column]
    if (
        len(threads) == 1
        and len(messages) == 1
        and messages[0].get(fk_column) == threads[0].get(id_column)
    ):
        await _create_pair(database, _by_name(threads[0]), _by_name(messages[0]))
    else:
        await _insert_rows(
            database, [(schema.thread_table, threads), (schema.message_table, messages)]
        )
    for instance in written:
        if _has_identity(instance):
            make_transient_to_detached(instance)


def _check_storable(schema: ThreadSchema, rows: dict[Table, list[dict[Column[Any], Any]]]) -> None:
    """Refuse, before any write, text and JSON that some backend could not store (as
    ThreadCreator does): ids and owners raise InvalidContextError, the rest InvalidMessageError."""
    for table, table_rows in rows.items():
        if table is schema.thread_table:
            id_columns = {schema.thread_id_column, schema.owner_column}
        else:
            id_columns = {schema.message_id_column, schema.message_thread_column}
        for row in table_rows:
            for column, value in row.items():
                if value is None:
                    continue
                error = InvalidContextError if column.name in id_columns else InvalidMessageError
                if isinstance(value, str):
                    check_text(value, f"{table.name}.{column.name}", error)
                elif isinstance(column.type, JSON):
                    check_json(value, f"{table.name}.{column.name}", error)


def _by_name(row: dict[Column[Any], Any]) -> dict[str, Any]:
    return {column.name: value for column, value in row.items()}


async def _create_pair(
    database: Database, thread_row: dict[str, Any], message_row: dict[str, Any]
) -> None:
    """A thread and its first message through the store: ThreadCreator's own path."""
    schema = database.schema
    try:
        await database.store.create(thread_row, message_row, explicit_id=True)
    except ThreadIdTaken as taken:
        thread_id = thread_row.get(schema.thread_id_column)
        if schema.owner_column is not None and taken.owner != thread_row.get(schema.owner_column):
            raise ThreadOwnershipError(
                f"thread {thread_id!r} cannot be created by this user: the id is taken. Leave "
                "id= out to get a generated one, or pass another"
            ) from None
        raise ThreadExistsError(
            f"thread {thread_id!r} already exists; leave id= out to get a generated one"
        ) from None


def _write_session(database: Database) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
    """A session in a transaction that commits on exit.

    A store built on sessions (``rollback`` isolation) shares one connection one session at a
    time behind its own lock; write through it so the factory takes its turn too.
    """
    maker = getattr(database.store, "sessionmaker", None)
    if maker is not None and callable(getattr(maker, "begin", None)):
        return cast("contextlib.AbstractAsyncContextManager[AsyncSession]", maker.begin())
    return database.sessionmaker.begin()


async def _insert_rows(
    database: Database, tables: list[tuple[Table, list[dict[Column[Any], Any]]]]
) -> None:
    """Multi-row INSERTs, parents first, in one transaction; no ORM objects, so no lazy IO."""
    token = instrument.store_steps.set(True)  # the plugin's own writes: no step faults, no shake
    try:
        async with _write_session(database) as session:
            for table, rows in tables:
                for batch in _same_columns(rows):
                    await session.execute(insert(table), batch)
    finally:
        instrument.store_steps.reset(token)


def _same_columns(rows: list[dict[Column[Any], Any]]) -> Iterator[list[dict[str, Any]]]:
    """Rows grouped by the columns they set (an executemany needs one set), order kept."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        keyed = {column.key: value for column, value in row.items()}
        groups.setdefault(tuple(keyed), []).append(keyed)
    yield from groups.values()

"""factory_boy factories for threads, messages and user contexts.

``build()`` is synchronous and writes nothing. ``create()`` and ``create_batch()`` are
coroutines: ``await ThreadFactory.create()`` commits a thread together with its first message,
exactly the rows ThreadCreator writes, so other connections see them at once::

    thread = await thread_factory.create(title="Plans")             # thread + first message
    bare = await thread_factory.create(first_message=None)           # a thread without a message
    reply = await message_factory.create(thread=thread, role="assistant", text="Sure")
    threads = await thread_factory.create_batch(50, user_id="alice")  # one transaction

How it works: factory_boy resolves every declaration synchronously, SubFactory and
RelatedFactory included, so ``SelfAttribute("thread.id")`` and friends see real objects, never
coroutines. ``_create`` only records what it made; the awaited ``create`` then writes everything
one call made in a single transaction and returns the objects detached (their primary key is
known to SQLAlchemy, so ``session.merge()``/``session.add()`` treat them as existing rows).
A call that made one thread and one message of it goes through the database's store, the path
ThreadCreator uses; anything else (bare threads, extra messages, batches) through one session,
as one multi-row INSERT per table.

Binding: the ``thread_factory``/``message_factory`` fixtures hand out ``ThreadFactory.bind(
threadcreator_db)``, a subclass that writes to that database. An unbound factory writes to the
running test's ``threadcreator_db``; outside such a test ``create()`` raises NoDatabaseError.

Your own models: rows come from the database's ThreadSchema (its ``thread_row``/``message_row``
builders), instances from ``Meta.model``. The default factories follow a custom schema's models
on their own; to add declarations, subclass::

    class TeamThreadFactory(ThreadFactory):
        class Meta:
            model = TeamThread
            schema = team_schema  # only needed for build() outside a test database

        title = factory.Faker("sentence")
        tenant_id = "acme"  # a model attribute: set on the instance after the schema's builder

    threads = await TeamThreadFactory.bind(threadcreator_db).create_batch(3)

This module never imports pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from factory.base import Factory, FactoryOptions, OptionDefault
from factory.declarations import (
    LazyAttribute,
    LazyAttributeSequence,
    LazyFunction,
    Maybe,
    Sequence,
    SubFactory,
)
from factory.enums import CREATE_STRATEGY
from sqlalchemy import JSON, Column, Table, insert
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import NoInspectionAvailable
from sqlalchemy.orm import Mapper, RelationshipDirection, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import UnmappedColumnError

from . import _binding
from .context import UserExecutionContext, check_json, check_text
from .creator import PLUGIN_METADATA_KEYS, ThreadWithMessage
from .database import Database
from .errors import (
    ConfigurationError,
    InvalidContextError,
    InvalidMessageError,
    NoDatabaseError,
    ThreadExistsError,
    ThreadOwnershipError,
)
from .ids import new_id
from .models import Message, Thread
from .schema import NewThread, ThreadSchema, default_message_row, default_schema
from .store.base import ThreadIdTaken

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["MessageFactory", "ThreadCreatorFactory", "ThreadFactory", "UserContextFactory"]

T = TypeVar("T")
F = TypeVar("F", bound="ThreadCreatorFactory[Any]")

#: Distinguishes this process's generated user ids from other runs' and xdist workers'.
_RUN = uuid.uuid4().hex[:8]
#: Objects generated between two yields to the event loop in create_batch.
_CHUNK = 200


# -- what one create call made ---------------------------------------------------------------
@dataclass
class _Generation:
    """The database and schema of one outermost build/create; ``writes`` is None while building."""

    database: Database | None
    schema: ThreadSchema
    writes: list[Any] | None = None


_GENERATION: contextvars.ContextVar[_Generation | None] = contextvars.ContextVar(
    "threadcreator_factory_generation", default=None
)


class _Options(FactoryOptions):
    """factory_boy ``class Meta`` options, plus ``database`` and ``schema``."""

    # Set by factory_boy from the Meta class (declared without a value, as it asserts).
    database: Database | None
    schema: ThreadSchema | None

    def _build_default_options(self) -> list[OptionDefault]:
        # factory_boy's options API has no annotations.
        options: list[OptionDefault] = super()._build_default_options()  # type: ignore[no-untyped-call]
        for name, checker in (("database", _check_database), ("schema", _check_schema)):
            options.append(OptionDefault(name, None, inherit=True, checker=checker))  # type: ignore[no-untyped-call]
        return options


def _check_database(meta: object, value: object) -> None:
    if value is not None and not isinstance(value, Database):
        raise TypeError(
            f"Meta.database must be the threadcreator_db fixture's Database, got "
            f"{type(value).__name__}; or call Factory.bind(threadcreator_db)"
        )


def _check_schema(meta: object, value: object) -> None:
    if value is not None and not isinstance(value, ThreadSchema):
        raise TypeError(
            f"Meta.schema must be a ThreadSchema, got {type(value).__name__}; build one with "
            "ThreadSchema.from_models(ThreadModel, MessageModel)"
        )


# -- the base --------------------------------------------------------------------------------
class ThreadCreatorFactory(Factory[T]):
    """Base of the async factories: ``build()`` writes nothing; awaited ``create()`` commits."""

    _options_class = _Options

    class Meta:
        abstract = True

    @classmethod
    def bind(cls: type[F], database: Database) -> type[F]:
        """A subclass of this factory that writes to ``database`` (what the fixtures hand out)."""
        if not isinstance(database, Database):
            raise TypeError(
                f"{cls.__name__}.bind() takes the threadcreator_db fixture's Database, got "
                f"{type(database).__name__}"
            )
        meta = type("Meta", (), {"database": database})
        attrs = {"Meta": meta, "__module__": cls.__module__, "__doc__": cls.__doc__}
        metaclass: Any = type(cls)
        return cast("type[F]", metaclass(cls.__name__, (cls,), attrs))

    @classmethod
    def _options(cls) -> _Options:
        return cast(_Options, cls._meta)

    @classmethod
    async def create(cls, **kwargs: Any) -> T:  # type: ignore[override]  # async on purpose
        """Make one object and commit it (a thread with its first message unless told otherwise)."""
        made = await cls._create_many(1, kwargs)
        return made[0]

    @classmethod
    async def create_batch(cls, size: int, **kwargs: Any) -> list[T]:  # type: ignore[override]
        """Make ``size`` objects and commit them all in one transaction."""
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"create_batch(size) needs an int size >= 0, got {size!r}")
        return await cls._create_many(size, kwargs)

    @classmethod
    async def _create_many(cls, size: int, kwargs: dict[str, Any]) -> list[T]:
        database = cls._write_target()
        generation = _Generation(database, database.schema, writes=[])
        made: list[T] = []
        while len(made) < size:
            token = _GENERATION.set(generation)
            try:
                for _ in range(min(_CHUNK, size - len(made))):
                    made.append(cls._generate(CREATE_STRATEGY, dict(kwargs)))
            finally:
                _GENERATION.reset(token)
            if len(made) < size:
                await asyncio.sleep(0)  # a big batch must not starve the loop's other tasks
        await _persist(database, generation.writes or [])
        return made

    @classmethod
    def _write_target(cls) -> Database:
        database = cls._options().database or _binding.current_database()
        if database is None:
            raise NoDatabaseError(
                f"{cls.__name__}.create() has no database to write to. In a test, use the "
                "thread_factory / message_factory fixtures (or request threadcreator_db); "
                f"elsewhere bind one: {cls.__name__}.bind(database). "
                f"{cls.__name__}.build() needs no database."
            )
        return database

    @classmethod
    def _generate(cls, strategy: str, params: dict[str, Any]) -> T:
        for name, value in params.items():
            if inspect.iscoroutine(value):
                value.close()  # never awaited: close it so Python does not warn a second time
                raise TypeError(
                    f"{cls.__name__}: {name}= got a coroutine; did you forget `await`? e.g. "
                    "thread=await thread_factory.create()"
                )
        with cls._generation():
            result = super()._generate(strategy, params)  # type: ignore[no-untyped-call]
        return cast(T, result)

    @classmethod
    @contextlib.contextmanager
    def _generation(cls) -> Iterator[_Generation]:
        """The outermost call's generation; a top-level build() opens one that writes nothing."""
        active = _GENERATION.get()
        if active is not None:
            yield cls._joined(active)
            return
        generation = cls._detached_generation()
        token = _GENERATION.set(generation)
        try:
            yield generation
        finally:
            _GENERATION.reset(token)

    @classmethod
    def _current(cls) -> _Generation:
        """The generation this object belongs to.

        factory_boy recurses into a SubFactory without calling its ``_generate``, so a factory of
        ours nested in a plain factory_boy factory finds none and resolves its own.
        """
        active = _GENERATION.get()
        return cls._joined(active) if active is not None else cls._detached_generation()

    @classmethod
    def _joined(cls, active: _Generation) -> _Generation:
        own = cls._options().database
        if own is not None and active.database is not None and own is not active.database:
            raise ConfigurationError(
                f"{cls.__name__} is bound to {own!r} but is used inside a factory that "
                f"writes to {active.database!r}; bind both to the same database"
            )
        return active

    @classmethod
    def _detached_generation(cls) -> _Generation:
        """Bound database, else Meta.schema, else the running test's database, else the default."""
        database = cls._options().database
        schema = database.schema if database is not None else cls._options().schema
        if schema is None:
            database = _binding.current_database()
            schema = database.schema if database is not None else default_schema()
        return _Generation(database, schema, writes=None)

    @classmethod
    def _record(cls, generation: _Generation, instance: object) -> None:
        """Remember ``instance`` for the awaited create() to write."""
        if generation.writes is None:
            raise ConfigurationError(
                f"{cls.__name__} was asked to create synchronously (e.g. by a SubFactory or "
                "RelatedFactory of a plain factory_boy factory); its rows are only written by "
                f"`await {cls.__name__}.create(...)`. Use .build() for unsaved objects."
            )
        generation.writes.append(instance)


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


def _attr(model: type[Any], table: Table, column_name: str) -> str:
    for column, key in _column_attrs(model, table):
        if column.name == column_name:
            return key
    raise ConfigurationError(f"{model.__name__} does not map column {table.name}.{column_name}")


def _links(thread_model: type[Any], message_model: type[Any]) -> tuple[str | None, str | None]:
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


def _model_for(
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


def _instance(
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


def _link(thread: Any, message: Any, *, into_collection: bool) -> None:
    """Point ``message`` at ``thread`` (and add it to the thread's loaded collection).

    Committed values, not attribute events: linking must neither mark the thread changed nor
    load anything (lazy loads of a detached or async-attached object would fail).
    """
    collection, parent = _links(type(thread), type(message))
    if parent is not None:
        set_committed_value(message, parent, thread)
    if into_collection and collection is not None:
        loaded = sa_inspect(thread).dict.get(collection)
        if loaded is not None:
            set_committed_value(thread, collection, [*loaded, message])


def _starts_thread(thread: Any, message_model: type[Any]) -> bool:
    """True when ``thread`` is known (in memory) to have no message yet."""
    if thread is None:
        return False
    collection, _ = _links(type(thread), message_model)
    if collection is None:
        return False
    loaded = sa_inspect(thread).dict.get(collection)
    return loaded is not None and len(loaded) == 0


# -- writing ---------------------------------------------------------------------------------
async def _persist(database: Database, written: list[Any]) -> None:
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
    async with _write_session(database) as session:
        for table, rows in tables:
            for batch in _same_columns(rows):
                await session.execute(insert(table), batch)


def _same_columns(rows: list[dict[Column[Any], Any]]) -> Iterator[list[dict[str, Any]]]:
    """Rows grouped by the columns they set (an executemany needs one set), order kept."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        keyed = {column.key: value for column, value in row.items()}
        groups.setdefault(tuple(keyed), []).append(keyed)
    yield from groups.values()


# -- the factories ---------------------------------------------------------------------------
def _now() -> int:
    return int(time.time())


def _schema_now() -> ThreadSchema:
    """The schema of the build or create under way (its id factories make the ids)."""
    active = _GENERATION.get()
    return active.schema if active is not None else default_schema()


def _context_thread_id(o: Any) -> str:
    given = getattr(o.context, "thread_id", None) if o.context is not None else None
    return given if isinstance(given, str) else _schema_now().thread_id_factory()


def _context_user_id(o: Any, n: int) -> str:
    if o.context is not None:
        return str(o.context.user_id)
    return f"owner_{_RUN}_{n:05d}"


def _context_run_id(o: Any) -> str | None:
    if o.context is not None:
        run_id = getattr(o.context, "run_id", None)
        return run_id if isinstance(run_id, str) else None
    return new_id("run_")


def _first_message_id(o: Any) -> str | None:
    return None if o.first_message is None else _schema_now().message_id_factory()


class UserContextFactory(Factory[UserExecutionContext]):
    """Valid UserExecutionContexts with unique user ids (``create()`` is ``build()``: nothing to store)."""

    class Meta:
        model = UserExecutionContext

    user_id = Sequence(lambda n: f"user_{_RUN}_{n:05d}")  # type: ignore[no-untyped-call]


class ThreadFactory(ThreadCreatorFactory[Thread]):
    """Threads with their first message, as ThreadCreator writes them.

    Declarations are what ThreadCreator hands the schema's row builders: ``id`` (the thread id),
    ``user_id``, ``title``, ``created_at``, ``metadata`` (caller metadata, merged into
    ``metadata_``), ``first_message`` (its text; ``None`` for a bare thread), ``role``,
    ``run_id`` and ``message_id`` (of the first message), and ``context`` (a
    UserExecutionContext or any object with a ``user_id``: its user, run and thread id become
    the defaults). Any other keyword sets that model attribute after the builder ran, e.g.
    ``status="archived"``, ``deleted_at=...``, or ``metadata_={...}`` to write raw metadata
    (say, an owner mismatch for integrity tests).
    """

    class Meta:
        model = Thread

    context = None
    id = LazyAttribute(_context_thread_id)  # type: ignore[no-untyped-call]
    user_id = LazyAttributeSequence(_context_user_id)  # type: ignore[no-untyped-call]
    title = None
    created_at = LazyFunction(_now)  # type: ignore[no-untyped-call]
    metadata = LazyFunction(dict)  # type: ignore[no-untyped-call]
    first_message = "Hello"
    role = "user"
    run_id = LazyAttribute(_context_run_id)  # type: ignore[no-untyped-call]
    message_id = LazyAttribute(_first_message_id)  # type: ignore[no-untyped-call]

    @classmethod
    def _build(cls, model_class: type[Any], *args: Any, **kwargs: Any) -> Any:
        return cls._make_thread(args, kwargs, persist=False)

    @classmethod
    def _create(cls, model_class: type[Any], *args: Any, **kwargs: Any) -> Any:
        return cls._make_thread(args, kwargs, persist=True)

    @classmethod
    def _make_thread(cls, args: tuple[Any, ...], kwargs: dict[str, Any], *, persist: bool) -> Any:
        if args:
            raise TypeError(f"{cls.__name__} takes keyword arguments only")
        generation = cls._current()
        schema = generation.schema
        model = _model_for(cls, schema.thread_table, schema.thread_model, Thread)
        text = kwargs.pop("first_message")
        metadata = kwargs.pop("metadata")
        _check_metadata(metadata)
        new = NewThread(
            thread_id=kwargs.pop("id"),
            message_id=kwargs.pop("message_id") or "",
            user_id=kwargs.pop("user_id"),
            run_id=kwargs.pop("run_id"),
            message=text if text is not None else "",
            title=kwargs.pop("title"),
            role=kwargs.pop("role"),
            metadata=dict(metadata or {}),
            created_at=kwargs.pop("created_at"),
            context=kwargs.pop("context"),
        )
        collection, _ = _links(model, schema.message_model or Message)
        if collection is not None and collection in kwargs:
            raise TypeError(
                f"{cls.__name__}: {collection}= is not supported; pass first_message=... and add "
                "more with MessageFactory.create(thread=...)"
            )
        thread = _instance(model, schema.thread_table, schema.thread_row(new), kwargs)
        message = None
        if text is not None:
            if schema.message_model is None:
                raise ConfigurationError(
                    "factories need the schema's message model; build the ThreadSchema with "
                    "ThreadSchema.from_models(ThreadModel, MessageModel)"
                )
            message = _instance(
                schema.message_model, schema.message_table, schema.message_row(new), {}
            )
        if collection is not None:
            set_committed_value(thread, collection, [])
        if message is not None:
            _link(thread, message, into_collection=True)
        if persist:
            cls._record(generation, thread)
            if message is not None:
                cls._record(generation, message)
        return thread


def _check_metadata(metadata: object) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise InvalidMessageError(f"metadata must be a dict, got {type(metadata).__name__}")
    clash = sorted(PLUGIN_METADATA_KEYS & set(metadata))
    if clash:
        raise InvalidMessageError(
            f"metadata key(s) {', '.join(map(repr, clash))} are set by the plugin, as "
            "ThreadCreator does; to write the raw column (e.g. an owner mismatch for an "
            "integrity test) pass metadata_={...} instead"
        )


class MessageFactory(ThreadCreatorFactory[Message]):
    """Messages in a thread: ``thread=`` an object or ``thread_id=`` an id; neither starts a new bare thread.

    Declarations: ``thread``, ``thread_id``, ``id``, ``text``, ``role``, ``run_id``,
    ``created_at`` and ``initial`` (mark it as the thread's first message; by default true when
    the thread is known to have none yet). Any other keyword sets that model attribute.
    The new thread comes from ``SubFactory(ThreadFactory, first_message=None)`` inside a
    ``Maybe("thread_id", ...)``; ``thread__title="..."`` reaches it, and a subclass may
    redeclare ``thread`` the same way with its own thread factory.
    """

    class Meta:
        model = Message

    # Given a thread_id, no new thread is made.
    thread = Maybe(  # type: ignore[no-untyped-call]
        "thread_id",
        yes_declaration=None,
        no_declaration=SubFactory(ThreadFactory, first_message=None),  # type: ignore[no-untyped-call]
    )
    thread_id = None
    id = LazyFunction(lambda: _schema_now().message_id_factory())  # type: ignore[no-untyped-call]
    text = Sequence(lambda n: f"Message {n}")  # type: ignore[no-untyped-call]
    role = "user"
    run_id = None
    created_at = LazyFunction(_now)  # type: ignore[no-untyped-call]
    initial = None

    @classmethod
    def _build(cls, model_class: type[Any], *args: Any, **kwargs: Any) -> Any:
        return cls._make_message(args, kwargs, persist=False)

    @classmethod
    def _create(cls, model_class: type[Any], *args: Any, **kwargs: Any) -> Any:
        return cls._make_message(args, kwargs, persist=True)

    @classmethod
    def _message_row(cls, schema: ThreadSchema, new: NewThread, *, initial: bool) -> dict[str, Any]:
        """Row of one message; override for a schema whose builder marks first messages differently."""
        row = schema.message_row(new)
        if not initial and schema.message_row is default_message_row:
            row["metadata_"] = {}  # the default builder marks every row as the initial message
        return row

    @classmethod
    def _make_message(cls, args: tuple[Any, ...], kwargs: dict[str, Any], *, persist: bool) -> Any:
        if args:
            raise TypeError(f"{cls.__name__} takes keyword arguments only")
        generation = cls._current()
        schema = generation.schema
        model = _model_for(cls, schema.message_table, schema.message_model, Message)
        thread = kwargs.pop("thread")
        if isinstance(thread, ThreadWithMessage):
            thread = thread.thread  # what ThreadCreator returned
        thread_id = kwargs.pop("thread_id")
        owner = ""
        if thread is not None:
            thread_table = schema.thread_table
            given = getattr(thread, _attr(type(thread), thread_table, schema.thread_id_column))
            if thread_id is not None and thread_id != given:
                raise InvalidMessageError(
                    f"thread_id={thread_id!r} is not the id of thread= ({given!r}); pass one of them"
                )
            thread_id = given
            if schema.owner_column is not None:
                owner = getattr(thread, _attr(type(thread), thread_table, schema.owner_column), "")
        elif thread_id is None:
            raise InvalidMessageError(
                f"{cls.__name__} needs a thread: pass thread=<a thread>, thread_id=<its id>, or "
                "neither to start a new one"
            )
        initial = kwargs.pop("initial")
        if initial is None:
            initial = _starts_thread(thread, model)
        new = NewThread(
            thread_id=thread_id,
            message_id=kwargs.pop("id"),
            user_id=owner or "",
            run_id=kwargs.pop("run_id"),
            message=kwargs.pop("text"),
            title=None,
            role=kwargs.pop("role"),
            metadata={},
            created_at=kwargs.pop("created_at"),
            context=None,
        )
        message = _instance(
            model,
            schema.message_table,
            cls._message_row(schema, new, initial=bool(initial)),
            kwargs,
        )
        if thread is not None:
            # A built message joins a transient thread's graph; a persisted thread only learns
            # of messages that are written.
            into = persist or sa_inspect(thread).transient
            _link(thread, message, into_collection=into)
        if persist:
            cls._record(generation, message)
        return message

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
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm.attributes import set_committed_value

from .context import UserExecutionContext
from .creator import PLUGIN_METADATA_KEYS, ThreadWithMessage
from .database import Database, bound_database
from .errors import (
    ConfigurationError,
    InvalidMessageError,
    NoDatabaseError,
)
from .factory_rows import (
    attr_of,
    build_instance,
    link,
    links,
    model_for,
    persist,
    starts_thread,
)
from .ids import new_id
from .models import Message, Thread
from .schema import NewThread, ThreadSchema, default_message_row, default_schema

if TYPE_CHECKING:
    pass

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
        await persist(database, generation.writes or [])
        return made

    @classmethod
    def _write_target(cls) -> Database:
        database = cls._options().database or bound_database()
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
            database = bound_database()
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
        model = model_for(cls, schema.thread_table, schema.thread_model, Thread)
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
        collection, _ = links(model, schema.message_model or Message)
        if collection is not None and collection in kwargs:
            raise TypeError(
                f"{cls.__name__}: {collection}= is not supported; pass first_message=... and add "
                "more with MessageFactory.create(thread=...)"
            )
        thread = build_instance(model, schema.thread_table, schema.thread_row(new), kwargs)
        message = None
        if text is not None:
            if schema.message_model is None:
                raise ConfigurationError(
                    "factories need the schema's message model; build the ThreadSchema with "
                    "ThreadSchema.from_models(ThreadModel, MessageModel)"
                )
            message = build_instance(
                schema.message_model, schema.message_table, schema.message_row(new), {}
            )
        if collection is not None:
            set_committed_value(thread, collection, [])
        if message is not None:
            link(thread, message, into_collection=True)
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
        model = model_for(cls, schema.message_table, schema.message_model, Message)
        thread = kwargs.pop("thread")
        if isinstance(thread, ThreadWithMessage):
            thread = thread.thread  # what ThreadCreator returned
        thread_id = kwargs.pop("thread_id")
        owner = ""
        if thread is not None:
            thread_table = schema.thread_table
            given = getattr(thread, attr_of(type(thread), thread_table, schema.thread_id_column))
            if thread_id is not None and thread_id != given:
                raise InvalidMessageError(
                    f"thread_id={thread_id!r} is not the id of thread= ({given!r}); pass one of them"
                )
            thread_id = given
            if schema.owner_column is not None:
                owner = getattr(
                    thread, attr_of(type(thread), thread_table, schema.owner_column), ""
                )
        elif thread_id is None:
            raise InvalidMessageError(
                f"{cls.__name__} needs a thread: pass thread=<a thread>, thread_id=<its id>, or "
                "neither to start a new one"
            )
        initial = kwargs.pop("initial")
        if initial is None:
            initial = starts_thread(thread, model)
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
        message = build_instance(
            model,
            schema.message_table,
            cls._message_row(schema, new, initial=bool(initial)),
            kwargs,
        )
        if thread is not None:
            # A built message joins a transient thread's graph; a persisted thread only learns
            # of messages that are written.
            into = persist or sa_inspect(thread).transient
            link(thread, message, into_collection=into)
        if persist:
            cls._record(generation, message)
        return message

"""ThreadSchema: which tables hold threads and messages, and how a create becomes their rows.

The default schema is :mod:`pytest_threadcreator.models`; other teams describe theirs with
:meth:`ThreadSchema.from_models` or by building a :class:`ThreadSchema` from tables.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, MetaData, String, Table
from sqlalchemy import inspect as sa_inspect

from .errors import ConfigurationError
from .ids import new_message_id, new_thread_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["IntegrityCheck", "NewThread", "ThreadSchema", "default_schema", "load_schema"]

#: A team's own integrity rule: given a session on the test's database, the problems it finds
#: (one line each; empty when all is well). ``check_integrity()`` reports them with its own.
IntegrityCheck = Callable[["AsyncSession"], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class NewThread:
    """Everything a create call knows, handed to a schema's row builders."""

    thread_id: str
    message_id: str
    user_id: str
    run_id: str | None
    message: str
    title: str | None
    role: str
    metadata: Mapping[str, Any]
    created_at: int
    context: object

    @property
    def created_datetime(self) -> datetime:
        """``created_at`` as an aware UTC datetime, for datetime or ISO-text columns."""
        return datetime.fromtimestamp(self.created_at, timezone.utc)


RowBuilder = Callable[[NewThread], dict[str, Any]]


def default_thread_row(new: NewThread) -> dict[str, Any]:
    """Row of the default ``threads`` table (keys are column names)."""
    meta: dict[str, Any] = {"user_id": new.user_id}
    if new.title is not None:
        meta["title"] = new.title
    meta["status"] = "active"
    meta["created_at"] = new.created_at
    meta.update(new.metadata)
    return {
        "id": new.thread_id,
        "object": "thread",
        "user_id": new.user_id,
        "title": new.title,
        "status": "active",
        "created_at": new.created_at,
        "metadata_": meta,
        "deleted_at": None,
    }


def default_message_row(new: NewThread) -> dict[str, Any]:
    """Row of the default ``messages`` table (keys are column names)."""
    return {
        "id": new.message_id,
        "object": "thread.message",
        "thread_id": new.thread_id,
        "role": new.role,
        "content": [{"type": "text", "text": {"value": new.message, "annotations": []}}],
        "created_at": new.created_at,
        "assistant_id": None,
        "run_id": new.run_id,
        "file_ids": [],
        "metadata_": {"initial_message": True},
    }


@dataclass(frozen=True)
class ThreadSchema:
    """Describes a team's thread and message storage to the plugin.

    ``thread_row``/``message_row`` turn a :class:`NewThread` into row values keyed by *column
    name*. ``owner_metadata_column`` names a JSON column whose ``"user_id"`` key must match the
    owner (``check_integrity`` verifies it); ``None`` skips that check. ``owner_column=None``
    describes threads without owners: everything works but the per-user tools, which then
    raise ConfigurationError. ``require_first_message=False`` lets a thread without a message
    pass ``check_integrity()`` (an empty chat is valid in some apps); ``checks`` adds the
    team's own rules to it. ``thread_id_factory``/``message_id_factory`` make the ids the
    plugin writes (default ``thread_…``/``msg_…``, 39 and 36 characters); they are checked
    against the id columns' declared lengths when the schema is built.
    """

    metadata: MetaData
    thread_table: Table
    message_table: Table
    thread_row: RowBuilder = default_thread_row
    message_row: RowBuilder = default_message_row
    thread_model: type[Any] | None = None
    message_model: type[Any] | None = None
    thread_id_column: str = "id"
    owner_column: str | None = "user_id"
    thread_created_column: str | None = "created_at"
    deleted_at_column: str | None = "deleted_at"
    owner_metadata_column: str | None = "metadata_"
    message_id_column: str = "id"
    message_thread_column: str = "thread_id"
    message_created_column: str | None = "created_at"
    require_first_message: bool = True
    checks: Sequence[IntegrityCheck] = ()
    thread_id_factory: Callable[[], str] = new_thread_id
    message_id_factory: Callable[[], str] = new_message_id
    name: str = "custom"
    _attr_names: dict[str, dict[str, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.validate()
        for model, table in (
            (self.thread_model, self.thread_table),
            (self.message_model, self.message_table),
        ):
            if model is not None:
                mapper = sa_inspect(model)
                self._attr_names[table.name] = {
                    prop.columns[0].name: prop.key for prop in mapper.column_attrs
                }

    @classmethod
    def from_models(
        cls, thread_model: type[Any], message_model: type[Any], **options: Any
    ) -> ThreadSchema:
        """Build a schema from two declarative models (their tables share one MetaData)."""
        thread_table = getattr(thread_model, "__table__", None)
        message_table = getattr(message_model, "__table__", None)
        if not isinstance(thread_table, Table) or not isinstance(message_table, Table):
            raise ConfigurationError(
                "ThreadSchema.from_models() needs two SQLAlchemy declarative models with a "
                f"__table__; got {thread_model!r} and {message_model!r}"
            )
        return cls(
            metadata=thread_table.metadata,
            thread_table=thread_table,
            message_table=message_table,
            thread_model=thread_model,
            message_model=message_model,
            **options,
        )

    def validate(self) -> None:
        """Raise ConfigurationError listing every problem at once, each with what to set."""
        problems = self.problems()
        if len(problems) == 1:
            raise ConfigurationError(f"ThreadSchema: {problems[0]}")
        if problems:
            raise ConfigurationError(
                f"ThreadSchema: {len(problems)} problems:\n  - " + "\n  - ".join(problems)
            )

    def problems(self) -> list[str]:
        """What does not fit between this schema and its tables (empty when all fits)."""
        t, m = self.thread_table, self.message_table
        if t.metadata is not self.metadata or m.metadata is not self.metadata:
            return ["the thread and message tables must belong to the schema's MetaData"]
        problems: list[str] = []
        for table, option, required in (
            (t, "thread_id_column", True),
            (t, "owner_column", False),
            (t, "thread_created_column", False),
            (t, "deleted_at_column", False),
            (t, "owner_metadata_column", False),
            (m, "message_id_column", True),
            (m, "message_thread_column", True),
            (m, "message_created_column", False),
        ):
            column = getattr(self, option)
            if column is None and required:
                problems.append(f"{option} is None; name the column of table {table.name!r}")
            elif column is not None and column not in table.c:
                off = " (None turns off what uses it)" if not required else ""
                problems.append(
                    f"table {table.name!r} has no column {column!r}; its columns are "
                    f"{', '.join(table.c.keys())}. Set {option}= to the right one{off}."
                )
        thread_column = m.c.get(self.message_thread_column or "")
        if (
            thread_column is not None
            and self.thread_id_column is not None
            and (self.thread_id_column in t.c)
        ):
            fk_targets = {
                fk.column.table.name + "." + fk.column.name
                for fk in thread_column.foreign_keys
                if isinstance(fk, ForeignKey)
            }
            if f"{t.name}.{self.thread_id_column}" not in fk_targets:
                problems.append(
                    f"{m.name}.{self.message_thread_column} has no foreign key to "
                    f"{t.name}.{self.thread_id_column}; atomicity and integrity checks need it. "
                    "Add ForeignKey(...) to the column."
                )
        for option, table, column in (
            ("thread_id_factory", t, self.thread_id_column),
            ("message_id_factory", m, self.message_id_column),
        ):
            problem = _id_fit(getattr(self, option), option, table, column)
            if problem is not None:
                problems.append(problem)
        return problems

    def owner(self, what: str) -> str:
        """The owner column, or ConfigurationError saying ``what`` needs one."""
        if self.owner_column is None:
            raise ConfigurationError(
                f"{what} needs to know who owns a thread, but this ThreadSchema has "
                "owner_column=None; set owner_column= to the column that holds the owner"
            )
        return self.owner_column

    def attr_name(self, table: Table, column: str) -> str:
        """Model attribute name of ``column`` (the column name when there is no model)."""
        return self._attr_names.get(table.name, {}).get(column, column)

    def thread_from_row(self, row: Mapping[str, Any]) -> Any:
        """A thread object built from a row keyed by column name (a model instance if known)."""
        return self._build(self.thread_model, self.thread_table, row)

    def message_from_row(self, row: Mapping[str, Any]) -> Any:
        """A message object built from a row keyed by column name (a model instance if known)."""
        return self._build(self.message_model, self.message_table, row)

    def _build(self, model: type[Any] | None, table: Table, row: Mapping[str, Any]) -> Any:
        if model is None:
            return dict(row)
        names = self._attr_names[table.name]
        return model(**{names.get(k, k): v for k, v in row.items()})


def _id_fit(factory: Any, option: str, table: Table, column: str | None) -> str | None:
    """A problem when ``factory`` is no id factory or makes ids longer than ``column`` holds.

    SQLite ignores declared lengths and PostgreSQL refuses what does not fit: checked here, the
    same test fails the same way on every backend, before it runs.
    """
    if not callable(factory):
        return f"{option} must be a callable returning a str id, got {type(factory).__name__}"
    try:
        sample = factory()
    except Exception as exc:
        return f"{option}() raised {type(exc).__name__}: {exc}"
    if not isinstance(sample, str) or not sample:
        return f"{option}() must return a non-empty str, returned {sample!r}"
    if column is None or column not in table.c:
        return None
    column_type = table.c[column].type
    length = getattr(column_type, "length", None)
    if isinstance(column_type, String) and length is not None and len(sample) > length:
        return (
            f"{table.name}.{column} holds {length} characters but {option} makes ids of "
            f"{len(sample)} (e.g. {sample!r}); pass {option}= a callable returning ids that fit "
            "(pytest_threadcreator.ids.new_uuid makes 36-character time-ordered UUIDs), or "
            "widen the column"
        )
    return None


def _make_default() -> ThreadSchema:
    from .models import Base, Message, Thread

    schema = ThreadSchema.from_models(Thread, Message)
    object.__setattr__(schema, "name", "default")
    assert schema.metadata is Base.metadata
    return schema


_DEFAULT: ThreadSchema | None = None


def default_schema() -> ThreadSchema:
    """The schema of :mod:`pytest_threadcreator.models`."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _make_default()
    return _DEFAULT


def load_schema(spec: str) -> ThreadSchema:
    """Import ``"package.module:attribute"`` and return the ThreadSchema it names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            f"threadcreator_schema = {spec!r} is not of the form 'package.module:attribute'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"threadcreator_schema = {spec!r}: cannot import {module_name!r} ({exc}). "
            "Check the module path and that it is importable from the test run."
        ) from exc
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                f"threadcreator_schema = {spec!r}: {module_name!r} has no attribute {attribute!r}"
            ) from None
    if callable(obj) and not isinstance(obj, (ThreadSchema, type)):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise ConfigurationError(
                f"threadcreator_schema = {spec!r} names {_describe(obj)}, which needs "
                "arguments, not a ThreadSchema (name the ThreadSchema itself, or a function "
                "without parameters that returns one)"
            ) from None
        except ValueError:  # no signature to check (a builtin): call it and see
            pass
        obj = obj()
    if not isinstance(obj, ThreadSchema):
        raise ConfigurationError(
            f"threadcreator_schema = {spec!r} names {_describe(obj)}, not a ThreadSchema "
            "(build one with ThreadSchema.from_models(ThreadModel, MessageModel))"
        )
    return obj


def _describe(obj: Any) -> str:
    """``a dict``, ``the class Conversation``, ``the function conversation_row``."""
    if isinstance(obj, type):
        return f"the class {obj.__name__}"
    if inspect.isroutine(obj):
        return f"the function {getattr(obj, '__name__', repr(obj))}"
    return f"a {type(obj).__name__}"

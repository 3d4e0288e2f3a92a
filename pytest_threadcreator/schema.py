"""ThreadSchema: which tables hold threads and messages, and how a create becomes their rows.

The default schema is :mod:`pytest_threadcreator.models`; other teams describe theirs with
:meth:`ThreadSchema.from_models` or by building a :class:`ThreadSchema` from tables.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ForeignKey, MetaData, Table
from sqlalchemy import inspect as sa_inspect

from .errors import ConfigurationError

__all__ = ["NewThread", "ThreadSchema", "default_schema", "load_schema"]


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
    owner (``check_integrity`` verifies it); ``None`` skips that check.
    """

    metadata: MetaData
    thread_table: Table
    message_table: Table
    thread_row: RowBuilder = default_thread_row
    message_row: RowBuilder = default_message_row
    thread_model: type[Any] | None = None
    message_model: type[Any] | None = None
    thread_id_column: str = "id"
    owner_column: str = "user_id"
    thread_created_column: str | None = "created_at"
    deleted_at_column: str | None = "deleted_at"
    owner_metadata_column: str | None = "metadata_"
    message_id_column: str = "id"
    message_thread_column: str = "thread_id"
    message_created_column: str | None = "created_at"
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
        """Raise ConfigurationError naming what does not fit."""
        t, m = self.thread_table, self.message_table
        if t.metadata is not self.metadata or m.metadata is not self.metadata:
            raise ConfigurationError(
                "ThreadSchema: the thread and message tables must belong to the schema's MetaData"
            )
        for table, column in (
            (t, self.thread_id_column),
            (t, self.owner_column),
            (t, self.thread_created_column),
            (t, self.deleted_at_column),
            (t, self.owner_metadata_column),
            (m, self.message_id_column),
            (m, self.message_thread_column),
            (m, self.message_created_column),
        ):
            if column is not None and column not in table.c:
                raise ConfigurationError(
                    f"ThreadSchema: table {table.name!r} has no column {column!r}; "
                    f"its columns are {', '.join(table.c.keys())}. Name the right column "
                    "in the ThreadSchema options."
                )
        fk_targets = {
            fk.column.table.name + "." + fk.column.name
            for fk in m.c[self.message_thread_column].foreign_keys
            if isinstance(fk, ForeignKey)
        }
        if f"{t.name}.{self.thread_id_column}" not in fk_targets:
            raise ConfigurationError(
                f"ThreadSchema: {m.name}.{self.message_thread_column} has no foreign key to "
                f"{t.name}.{self.thread_id_column}; atomicity and integrity checks need it. "
                "Add ForeignKey(...) to the column."
            )

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

"""One SQL compiler for every dialect: INSERTs compiled once, SELECTs with positional parameters.

The data paths talk to the driver directly (one hop per transaction); this module keeps
SQLAlchemy the single source of SQL text and of value conversion, through public APIs only
(``compile``, ``TypeEngine.bind_processor``/``result_processor``), and makes every store write
what SQLAlchemy itself would write for the same row:

* a column the row leaves out takes its ``Column(default=…)``: a scalar or a Python callable
  is computed here, a SQL expression or a sequence is inlined into the statement, and a column
  with none (``server_default``, identity, plain NULL) is left to the database;
* every value goes through its column type's bind processor, ``None`` included: in a ``JSON()``
  column ``None`` is JSON ``null`` and in a ``JSON(none_as_null=True)`` one SQL ``NULL``, as
  SQLAlchemy Core and the ORM store it;
* ``IN (…)`` lists are expanded into one parameter per item.

The stores pass their dialect; the parameter style (``?`` or ``$n``) is the dialect's own.
"""

from __future__ import annotations

import dataclasses
import json
import json.encoder
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import sqltypes

from ..errors import ConfigurationError
from .base import Query

__all__ = ["CompiledSelect", "InsertPlan", "RowInsert", "compile_select", "insert_plan"]

Processor = Callable[[Any], Any] | None

_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode_ascii: Any = getattr(json.encoder, "encode_basestring_ascii", None)
_JSON_DEFAULT = json.JSONEncoder().default


def _placeholder(dialect: Dialect) -> Callable[[int], str]:
    """The dialect's positional parameter marker for parameter number ``n`` (from 1)."""
    style = dialect.paramstyle
    if style == "qmark":
        return lambda n: "?"
    if style == "numeric_dollar":
        return lambda n: f"${n}"
    if style == "numeric":
        return lambda n: f":{n}"
    if style == "format":
        return lambda n: "%s"
    raise ConfigurationError(
        f"the {dialect.name} dialect uses the {style!r} parameter style, which the store's SQL "
        "compiler does not support; use a driver with a positional parameter style"
    )


@dataclass(frozen=True, slots=True)
class InsertPlan:
    """How a row (keys are column names) becomes one INSERT and its positional parameters."""

    table: Table
    dialect: Dialect
    #: every column the INSERT names, in table order
    columns: tuple[str, ...]
    #: SQL text for a column computed by the database (a SQL or sequence default), else None
    inline: tuple[str | None, ...]
    processors: tuple[Processor, ...]
    #: Python-side defaults of columns the row leaves out
    defaults: Mapping[str, Callable[[], Any]]
    #: ``INSERT INTO t (cols) VALUES (…)`` with parameters numbered from 1
    sql: str = ""
    #: each parameter's column and bind processor, in order (what ``params`` walks per row)
    bound: tuple[tuple[str, Processor], ...] = ()

    def params(self, row: Mapping[str, Any], skip: str | None = None) -> tuple[Any, ...]:
        """Parameters in column order; ``skip`` names a column filled by SQL instead."""
        out: list[Any] = []
        append = out.append
        defaults = self.defaults
        for name, proc in self.bound:  # every create walks this: kept lean
            if name == skip:
                continue
            try:
                value = row[name]
            except KeyError:
                value = defaults[name]()
            append(value if proc is None else proc(value))
        return tuple(out)

    def render(
        self, first: int = 1, replace: Mapping[str, str] | None = None, rows: int = 1
    ) -> tuple[str, int]:
        """The INSERT with parameters numbered from ``first``, and the next free number.

        ``replace`` maps a column to SQL text used instead of its parameter (e.g. a subquery);
        ``rows`` > 1: one INSERT of that many rows, their parameters one row after the other.
        """
        replace = replace or {}
        preparer = self.dialect.identifier_preparer
        marker = _placeholder(self.dialect)
        names = [preparer.quote(name) for name in self.columns]
        tuples = []
        n = first
        for _ in range(rows):
            values = []
            for name, inline in zip(self.columns, self.inline, strict=True):
                if name in replace:
                    values.append(replace[name])
                elif inline is not None:
                    values.append(inline)
                else:
                    values.append(marker(n))
                    n += 1
            tuples.append(f"({', '.join(values)})")
        table = preparer.format_table(self.table)
        return f"INSERT INTO {table} ({', '.join(names)}) VALUES {', '.join(tuples)}", n

    def rows_sql(self, rows: int) -> str:
        """The INSERT of ``rows`` rows (parameters numbered from 1), compiled once."""
        key = (self.sql, rows)
        sql = _ROWS.get(key)
        if sql is None:
            sql = _ROWS[key] = self.render(1, rows=rows)[0]
        return sql


# Plans by (table, dialect name, its JSON serializer, row keys): a database per test compiles
# nothing.
_PLANS: dict[tuple[Table, str, Any, tuple[str, ...]], InsertPlan] = {}
#: Multi-row INSERTs by (the one-row INSERT, rows).
_ROWS: dict[tuple[str, int], str] = {}


def insert_plan(table: Table, keys: Sequence[str], dialect: Dialect) -> InsertPlan:
    """The INSERT of rows with ``keys`` into ``table`` for ``dialect`` (cached for the process)."""
    cache_key = (table, dialect.name, getattr(dialect, "_json_serializer", None), tuple(keys))
    plan = _PLANS.get(cache_key)
    if plan is None:  # a race only compiles twice
        plan = _PLANS[cache_key] = _compile_insert(table, cache_key[3], dialect)
    return plan


def _compile_insert(table: Table, keys: tuple[str, ...], dialect: Dialect) -> InsertPlan:
    unknown = [k for k in keys if k not in table.c]
    if unknown:
        raise ConfigurationError(
            f"the row builder for table {table.name!r} returned key(s) {', '.join(unknown)} that "
            f"are not columns; its columns are {', '.join(table.c.keys())}"
        )
    preparer = dialect.identifier_preparer
    columns: list[str] = []
    inline: list[str | None] = []
    defaults: dict[str, Callable[[], Any]] = {}
    for column in table.c:
        name = column.name
        default: Any = column.default
        if name in keys:
            inline.append(None)
        elif default is None:
            continue  # left to the database (server_default, identity, NULL)
        elif default.is_scalar:
            inline.append(None)
            defaults[name] = _constant(default.arg)
        elif default.is_callable:
            inline.append(None)
            defaults[name] = _called(default.arg)
        elif default.is_sequence:
            if not dialect.supports_sequences:
                continue  # SQLAlchemy ignores sequences where the dialect has none
            inline.append(f"nextval('{preparer.format_sequence(default)}')")
        elif default.is_clause_element:
            compiled = default.arg.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            inline.append(f"({compiled})")
        else:
            continue
        columns.append(name)
    processors = tuple(
        table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns
    )
    plan = InsertPlan(table, dialect, tuple(columns), tuple(inline), processors, defaults)
    bound = tuple(
        (name, _lean(proc, table.c[name].type, dialect))
        for name, sql, proc in zip(columns, inline, processors, strict=True)
        if sql is None
    )
    return dataclasses.replace(plan, sql=plan.render(1)[0], bound=bound)


def _dumps(value: Any) -> str:
    """``json.dumps(value)`` with its default arguments, minus two Python frames per call."""
    encode = _c_make_encoder(  # a new one per call: its cycle check starts empty, as dumps's
        {}, _JSON_DEFAULT, _encode_ascii, None, ": ", ", ", False, False, True
    )
    return "".join(encode(value, 0))


def _lean(proc: Processor, type_: Any, dialect: Dialect) -> Processor:
    """``proc``, or a faster stand-in with the same output where ``proc`` is SQLAlchemy's own
    JSON processor with the default serializer (dicts and lists become ``json.dumps`` text):
    every create serialises several JSON values. Other values still go through ``proc``."""
    if proc is None or _c_make_encoder is None or not isinstance(type_, sqltypes.JSON):
        return proc
    if getattr(dialect, "_json_serializer", None) is not None:
        return proc  # the engine's own serializer: keep SQLAlchemy's call of it
    probe: dict[str, Any] = {"z": ["é", 1, 2.5, None, True, {}], "a": "\u2028"}
    try:
        if proc(probe) != json.dumps(probe) or proc([]) != "[]":
            return proc
    except Exception:  # not a JSON processor
        return proc

    def process(value: Any) -> Any:
        kind = type(value)
        if kind is dict or kind is list:
            return _dumps(value)
        return proc(value)

    return process


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _called(fn: Callable[[Any], Any]) -> Callable[[], Any]:
    return lambda: fn(None)  # SQLAlchemy wraps zero-argument callables to take a context


class RowInsert:
    """Compiled INSERTs of one table for one dialect, one per shape of row."""

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        self._plans: dict[tuple[str, ...], InsertPlan] = {}

    def plan(self, row: Mapping[str, Any]) -> InsertPlan:
        """The compiled statement for rows with ``row``'s keys."""
        key = tuple(row)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = insert_plan(self.table, key, self.dialect)
        return plan


@dataclass(frozen=True, slots=True)
class CompiledSelect:
    """A SELECT's SQL text, its positional parameters and result processors."""

    sql: str
    params: tuple[Any, ...]
    keys: tuple[str, ...]
    processors: tuple[Processor, ...]

    def rows(self, records: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Turn driver rows into dicts keyed by result column name, values processed."""
        keys, procs = self.keys, self.processors
        if not any(p is not None for p in procs):
            return [dict(zip(keys, record, strict=True)) for record in records]
        return [
            {
                k: (p(v) if p is not None and v is not None else v)
                for k, p, v in zip(keys, procs, record, strict=True)
            }
            for record in records
        ]


def compile_select(statement: Query, dialect: Dialect) -> CompiledSelect:
    """Positional parameters (never literal values), processed as SQLAlchemy would."""
    compiled = statement.compile(dialect=dialect)
    expanded = compiled.construct_expanded_state()  # IN (…) lists become one parameter per item
    params: list[Any] = []
    for name, value in zip(expanded.positiontup or (), expanded.positional_parameters, strict=True):
        proc = expanded.processors.get(name)
        if proc is None and name in compiled.binds:
            proc = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        params.append(proc(value) if proc is not None else value)
    keys = tuple(statement.selected_columns.keys())
    procs: list[Processor] = []
    for column in statement.selected_columns:
        try:
            procs.append(column.type.dialect_impl(dialect).result_processor(dialect, None))
        except Exception:  # some need the driver's type code; the driver's value is fine then
            procs.append(None)
    return CompiledSelect(expanded.statement, tuple(params), keys, tuple(procs))

"""Compile SQLAlchemy statements once and apply column types' processors by hand.

The data paths talk to the driver directly (one hop per transaction); these helpers keep
SQLAlchemy as the single source of SQL text and of value conversion, through public APIs only
(``compile``, ``TypeEngine.bind_processor``/``result_processor``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect

from .base import Query

__all__ = ["CompiledInsert", "CompiledSelect", "RowInsert", "compile_insert", "compile_select"]

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class CompiledInsert:
    """``INSERT INTO table (cols) VALUES (?, …)`` with per-column bind processors."""

    sql: str
    columns: tuple[str, ...]
    processors: tuple[Processor, ...]
    defaults: tuple[Callable[[], Any] | None, ...] = ()

    def params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """Positional parameters for ``row`` (keys are column names).

        A column the row leaves out takes its Python-side default (``Column(default=…)``).
        """
        out = []
        defaults = self.defaults or (None,) * len(self.columns)
        for name, proc, default in zip(self.columns, self.processors, defaults, strict=True):
            if name in row:
                value = row[name]
            else:
                value = default() if default is not None else None
            out.append(proc(value) if proc is not None and value is not None else value)
        return tuple(out)


class RowInsert:
    """Compiled INSERTs of one table, one per shape of row, as SQLAlchemy would issue them.

    The statement names the row's columns plus those with a Python-side default; columns the
    row leaves out that have only a server default are left to the server.
    """

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.table = table
        self.dialect = dialect
        self._plans: dict[tuple[str, ...], CompiledInsert] = {}

    def plan(self, row: Mapping[str, Any]) -> CompiledInsert:
        """The compiled statement for rows with ``row``'s keys (cached for the process)."""
        key = tuple(row)
        plan = self._plans.get(key)
        if plan is None:
            plan = _PLANS.get((self.table, self.dialect.name, key))
        if plan is None:
            unknown = [k for k in key if k not in self.table.c]
            if unknown:
                raise KeyError(
                    f"row for table {self.table.name!r} has unknown column(s) {unknown}; "
                    f"its columns are {', '.join(self.table.c.keys())}"
                )
            names = [
                c.name for c in self.table.c if c.name in row or _python_default(c) is not None
            ]
            plan = compile_insert(self.table, self.dialect, names)
            _PLANS[(self.table, self.dialect.name, key)] = plan
        self._plans[key] = plan
        return plan


# Compiled INSERTs by (table, dialect name, row keys): a database per test compiles nothing.
_PLANS: dict[tuple[Table, str, tuple[str, ...]], CompiledInsert] = {}


def _python_default(column: Any) -> Callable[[], Any] | None:
    default = column.default
    if default is None or getattr(default, "is_sequence", False):
        return None
    if getattr(default, "is_scalar", False):
        value = default.arg
        return lambda: value
    if getattr(default, "is_callable", False):
        fn = default.arg
        return lambda: fn(None)  # SQLAlchemy wraps callables to take an execution context
    return None


def compile_insert(
    table: Table, dialect: Dialect, columns: Sequence[str] | None = None
) -> CompiledInsert:
    """Compile an INSERT of ``columns`` (default: every column) for ``dialect``."""
    names = tuple(columns if columns is not None else [c.name for c in table.c])
    sql = str(insert(table).compile(dialect=dialect, column_keys=list(names)))
    procs = tuple(table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names)
    defaults = tuple(_python_default(table.c[n]) for n in names)
    return CompiledInsert(sql=sql, columns=names, processors=procs, defaults=defaults)


@dataclass(frozen=True, slots=True)
class CompiledSelect:
    """A SELECT's SQL text, its positional parameters and result processors."""

    sql: str
    params: tuple[Any, ...]
    keys: tuple[str, ...]
    processors: tuple[Processor, ...]

    def rows(self, raw_rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Turn driver rows into dicts keyed by result column name, values processed."""
        keys, procs = self.keys, self.processors
        out = []
        for raw in raw_rows:
            out.append(
                {
                    k: (p(v) if p is not None and v is not None else v)
                    for k, p, v in zip(keys, procs, raw, strict=True)
                }
            )
        return out


def compile_select(stmt: Query, dialect: Dialect) -> CompiledSelect:
    """Compile ``stmt`` with positional parameters for ``dialect``."""
    compiled = stmt.compile(dialect=dialect)
    values = compiled.construct_params()
    order = compiled.positiontup or []
    params = []
    for key in order:
        value = values[key]
        proc = compiled.binds[key].type.dialect_impl(dialect).bind_processor(dialect)
        params.append(proc(value) if proc is not None and value is not None else value)
    keys = tuple(stmt.selected_columns.keys())
    procs = tuple(
        col.type.dialect_impl(dialect).result_processor(dialect, None)
        for col in stmt.selected_columns
    )
    return CompiledSelect(sql=str(compiled), params=tuple(params), keys=keys, processors=procs)

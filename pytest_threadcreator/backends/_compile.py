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
from sqlalchemy.sql import Select

__all__ = ["CompiledInsert", "CompiledSelect", "compile_insert", "compile_select"]

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class CompiledInsert:
    """``INSERT INTO table (cols) VALUES (?, …)`` with per-column bind processors."""

    sql: str
    columns: tuple[str, ...]
    processors: tuple[Processor, ...]

    def params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """Positional parameters for ``row`` (keys are column names; missing ones are NULL)."""
        out = []
        for name, proc in zip(self.columns, self.processors, strict=True):
            value = row.get(name)
            out.append(proc(value) if proc is not None and value is not None else value)
        return tuple(out)


def compile_insert(
    table: Table, dialect: Dialect, columns: Sequence[str] | None = None
) -> CompiledInsert:
    """Compile an INSERT of ``columns`` (default: every column) for ``dialect``."""
    names = tuple(columns if columns is not None else [c.name for c in table.c])
    sql = str(insert(table).compile(dialect=dialect, column_keys=list(names)))
    procs = tuple(table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names)
    return CompiledInsert(sql=sql, columns=names, processors=procs)


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


def compile_select(stmt: Select[Any], dialect: Dialect) -> CompiledSelect:
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

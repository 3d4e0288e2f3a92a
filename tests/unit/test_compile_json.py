"""JSON values of a create take a faster path than SQLAlchemy's processor, with the same text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import JSON, Column, MetaData, String, Table, TypeDecorator, func, null
from sqlalchemy.dialects.mysql import asyncmy
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import aiosqlite
from sqlalchemy.engine import Dialect

from pytest_threadcreator.store.compile import insert_plan

DIALECTS = [asyncmy.dialect(), aiosqlite.dialect(), asyncpg.dialect()]


class Upper(TypeDecorator[Any]):
    """A team's JSON type that changes what it is given."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return {k.upper(): v for k, v in value.items()} if isinstance(value, dict) else value


TABLE = Table(
    "docs",
    MetaData(),
    Column("id", String(36), primary_key=True),
    Column("body", JSON()),
    Column("maybe", JSON(none_as_null=True)),
    Column("team", Upper()),
)

cycle: list[Any] = []
cycle.append(cycle)
VALUES: list[Any] = [
    {},
    [],
    {"b": 1, "a": [1.5, None, True, "é\u2028\U0001f600", {"x": {}}]},
    [{"type": "text", "text": {"value": "hi", "annotations": []}}],
    {"nan": float("nan")},
    None,
    JSON.NULL,
    null(),
    "a string",
    7,
]


def _processors(dialect: Dialect) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each column's processor in the plan, and SQLAlchemy's own."""
    plan = insert_plan(TABLE, ("id", "body", "maybe", "team"), dialect)
    ours = dict(plan.bound)
    theirs = {c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in TABLE.c}
    return ours, theirs


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
@pytest.mark.parametrize("value", VALUES, ids=[f"value{i}" for i in range(len(VALUES))])
def test_json_values_are_written_as_sqlalchemy_writes_them(dialect: Dialect, value: Any) -> None:
    ours, theirs = _processors(dialect)
    for name in ("body", "maybe", "team"):
        if theirs[name] is None:
            assert ours[name] is None
            continue
        assert ours[name](value) == theirs[name](value), name


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_values_json_cannot_hold_fail_as_json_dumps_fails(dialect: Dialect) -> None:
    ours, theirs = _processors(dialect)
    if theirs["body"] is None:
        pytest.skip(f"{dialect.name} passes JSON to its driver unserialised")
    assert ours["body"] is not theirs["body"]  # the fast path is in use
    for bad in ({"when": object()}, cycle):
        with pytest.raises((TypeError, ValueError)) as ours_error:
            ours["body"](bad)
        with pytest.raises((TypeError, ValueError)) as json_error:
            json.dumps(bad)
        assert str(ours_error.value) == str(json_error.value)


def test_a_team_type_and_an_engine_serializer_keep_sqlalchemys_processor() -> None:
    dialect = aiosqlite.dialect(json_serializer=lambda v: json.dumps(v, sort_keys=True))
    ours, _ = _processors(dialect)
    assert ours["body"]({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'
    plain, _ = _processors(aiosqlite.dialect())
    assert plain["team"]({"a": 1}) == '{"A": 1}'


ROWS_TABLE = Table(
    "rows",
    MetaData(),
    Column("id", String(36), primary_key=True),
    Column("kind", String(8), default="plain"),
    Column("at", String(32), default=func.now()),
    Column("body", String(32)),
)


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (
            asyncmy.dialect(),
            "INSERT INTO `rows` (id, kind, at, body) VALUES "
            "(%s, %s, (now()), %s), (%s, %s, (now()), %s), (%s, %s, (now()), %s)",
        ),
        (
            asyncpg.dialect(),
            "INSERT INTO rows (id, kind, at, body) VALUES "
            "($1, $2, (now()), $3), ($4, $5, (now()), $6), ($7, $8, (now()), $9)",
        ),
    ],
    ids=["format", "numbered"],
)
def test_an_insert_of_several_rows_repeats_the_row_and_numbers_on(
    dialect: Dialect, expected: str
) -> None:
    """MySQL sends the creates of a packet as one multi-row INSERT per table: every row's
    values in the one-row INSERT's order, a SQL default inlined in each, parameters numbered
    on from row to row where the dialect numbers them."""
    plan = insert_plan(ROWS_TABLE, ("id", "body"), dialect)
    assert plan.rows_sql(3) == expected
    assert plan.rows_sql(3) is plan.rows_sql(3)  # compiled once
    assert plan.rows_sql(1) == plan.sql
    # a row's parameters are the one-row INSERT's: laid end to end they fill the three rows
    assert [name for name, _ in plan.bound] == ["id", "kind", "body"]
    assert plan.params({"id": "a", "body": "x"}) == ("a", "plain", "x")

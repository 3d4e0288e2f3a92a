"""Every test database starts from the migrated template; the migrations ran once."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

pytestmark = pytest.mark.asyncio


async def fetch(database, sql):
    async with database.engine.connect() as connection:
        return (await connection.execute(text(sql))).all()


async def index_names(database, table):
    async with database.engine.connect() as connection:
        indexes = await connection.run_sync(lambda sync: inspect(sync).get_indexes(table))
    return {index["name"] for index in indexes}


@pytest.mark.parametrize("n", range(3))
async def test_each_test_database_is_migrated(n, threadcreator_db, migrated_templates):
    assert await fetch(threadcreator_db, "SELECT version_num FROM alembic_version") == [
        ("0001_topics",)
    ]
    assert await fetch(threadcreator_db, "SELECT name FROM topics ORDER BY id") == [
        ("billing",),
        ("support",),
    ]
    assert "ix_threads_user_id_created_at" in await index_names(threadcreator_db, "threads")
    assert await threadcreator_db.count_threads() == 0
    assert len(migrated_templates) == 1  # once for the run, however many tests ran


@pytest.mark.threadcreator(isolation="fresh")
async def test_a_fresh_database_is_a_copy_of_the_migrated_template(
    threadcreator_db, migrated_templates
):
    assert await fetch(threadcreator_db, "SELECT count(*) FROM topics") == [(2,)]
    assert len(migrated_templates) == 1


async def test_thread_creation_on_the_migrated_schema(
    thread_creator, make_user_context, run_concurrently, threadcreator_db, migrated_templates
):
    users = make_user_context.many(20)
    report = await run_concurrently(
        lambda user: thread_creator.create_thread_with_message(user, "Hi", metadata={"topic": 2}),
        users,
    )

    report.raise_errors()
    assert await threadcreator_db.count_threads() == 20
    await threadcreator_db.check_integrity()
    await threadcreator_db.assert_user_isolation(users)
    assert len(migrated_templates) == 1

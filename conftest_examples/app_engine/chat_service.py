"""A team's service: its own async engine, built from its settings when the module is imported.

Nothing here knows about pytest. The tests point DATABASE_URL at the test database through ini
``threadcreator_env``; the plugin then counts, faults and shakes this engine's statements.
The service writes the default schema's tables (``threads``/``messages``); with tables of your
own, point ``threadcreator_schema`` at them (docs/own-models.md).
"""

from __future__ import annotations

import os
import time
import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from pytest_threadcreator.models import Message, Thread

DATABASE_URL = os.environ["DATABASE_URL"]

# NullPool: every session opens a fresh connection and closes it when done. pytest-asyncio gives
# each test its own event loop, and an async connection belongs to the loop that opened it: a
# pooled one handed to the next test's loop fails ("attached to a different loop"). A server
# connection per session costs little next to a test; an app that wants a pool in tests builds
# its engine per loop instead (the FastAPI example does, in a fixture).
engine = create_async_engine(DATABASE_URL, poolclass=NullPool)
sessions = async_sessionmaker(engine, expire_on_commit=False)


async def start_chat(user_id: str, text: str, title: str | None = None) -> str:
    """Create a thread with its first message in one transaction; return the thread id."""
    now = int(time.time())
    thread_id = f"thread_{uuid.uuid4().hex}"
    async with sessions.begin() as session:
        session.add(
            Thread(
                id=thread_id,
                user_id=user_id,
                title=title,
                created_at=now,
                metadata_={"user_id": user_id},
            )
        )
        await session.flush()  # INSERT INTO threads, then INSERT INTO messages at commit
        session.add(
            Message(
                id=f"msg_{uuid.uuid4().hex}",
                thread_id=thread_id,
                role="user",
                created_at=now,
                content=[{"type": "text", "text": {"value": text, "annotations": []}}],
            )
        )
    return thread_id


async def rename_chat(thread_id: str, title: str) -> None:
    """Give a thread a new title."""
    async with sessions.begin() as session:
        await session.execute(update(Thread).where(Thread.id == thread_id).values(title=title))


async def list_chats(user_id: str) -> list[str]:
    """The ids of the user's threads, as the app shows them."""
    async with sessions() as session:
        rows = await session.execute(
            select(Thread.id).where(Thread.user_id == user_id).order_by(Thread.created_at)
        )
        return list(rows.scalars())

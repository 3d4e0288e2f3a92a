"""A team's FastAPI app: chat threads over HTTP, written with its own SQLAlchemy asyncio engine.

``POST /threads`` creates a thread with its first message in one transaction; ``GET /threads``
lists the caller's threads. The caller is named by the ``X-User-Id`` header (a real app takes it
from its authentication). Database sessions come from the ``get_sessions`` dependency, which in
production builds the engine from DATABASE_URL; the tests override it (see conftest.py).
"""

import functools
import os
import time
import uuid
from typing import Annotated

from fastapi import Depends, FastAPI, Header
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from pytest_threadcreator.models import Message, Thread

app = FastAPI()


@functools.cache
def _sessions_from_settings() -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(create_async_engine(os.environ["DATABASE_URL"]))


def get_sessions() -> async_sessionmaker[AsyncSession]:
    """The app's sessionmaker (tests override this dependency)."""
    return _sessions_from_settings()


Sessions = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]
UserId = Annotated[str, Header(alias="X-User-Id", min_length=1)]


class NewThread(BaseModel):
    message: str
    title: str | None = None


class ThreadOut(BaseModel):
    id: str
    title: str | None


@app.post("/threads", status_code=201)
async def create_thread(body: NewThread, user_id: UserId, sessions: Sessions) -> ThreadOut:
    now = int(time.time())
    thread = Thread(
        id=f"thread_{uuid.uuid4().hex}",
        user_id=user_id,
        title=body.title,
        created_at=now,
        metadata_={"user_id": user_id},
    )
    async with sessions.begin() as session:
        session.add(thread)
        await session.flush()  # INSERT INTO threads, then INSERT INTO messages at commit
        session.add(
            Message(
                id=f"msg_{uuid.uuid4().hex}",
                thread_id=thread.id,
                role="user",
                created_at=now,
                content=[{"type": "text", "text": {"value": body.message, "annotations": []}}],
            )
        )
        result = ThreadOut(id=thread.id, title=thread.title)
    return result


@app.get("/threads")
async def list_threads(user_id: UserId, sessions: Sessions) -> list[ThreadOut]:
    async with sessions() as session:
        rows = await session.execute(
            select(Thread.id, Thread.title)
            .where(Thread.user_id == user_id)
            .order_by(Thread.created_at, Thread.id)
        )
        return [ThreadOut(id=row.id, title=row.title) for row in rows]

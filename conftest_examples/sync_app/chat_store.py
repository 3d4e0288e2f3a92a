"""A team's synchronous service: plain SQLAlchemy ``Session`` on an engine of its own.

Nothing here is async and nothing knows about pytest. The tests build it on
``threadcreator_db.sync_url`` (``sqlite:///…`` or ``postgresql+psycopg://…``) and call it from
async tests through ``asyncio.to_thread``, as an async web app calls blocking code.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from pytest_threadcreator.models import Message, Thread


class ChatStore:
    """Threads and messages, one transaction per call."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def start_chat(self, user_id: str, text: str) -> str:
        """Create a thread with its first message in one transaction; return the thread id."""
        now = int(time.time())
        thread_id = f"thread_{uuid.uuid4().hex}"
        with self.sessions.begin() as session:
            session.add(
                Thread(
                    id=thread_id, user_id=user_id, created_at=now, metadata_={"user_id": user_id}
                )
            )
            session.flush()  # INSERT INTO threads, then INSERT INTO messages at commit
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

    def chat_count(self, user_id: str) -> int:
        """How many threads the user has."""
        with self.sessions() as session:
            query = select(func.count()).select_from(Thread).where(Thread.user_id == user_id)
            return session.execute(query).scalar_one()

    def close(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()

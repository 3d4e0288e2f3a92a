"""The default schema: OpenAI-assistants-style ``threads`` and ``messages``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "Message", "Thread"]


class Base(DeclarativeBase):
    """Declarative base of the default schema."""


class Thread(Base):
    """A chat thread owned by one user."""

    __tablename__ = "threads"
    __table_args__ = (Index("ix_threads_user_created", "user_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    object: Mapped[str] = mapped_column(String(32), default="thread")
    user_id: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    title: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="active")
    created_at: Mapped[int] = mapped_column(Integer, nullable=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata_", JSON, default=dict)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    messages: Mapped[list[Message]] = relationship(
        back_populates="thread", order_by="(Message.created_at, Message.id)", lazy="raise"
    )

    def __repr__(self) -> str:
        return f"<Thread {self.id} user={self.user_id!r} title={self.title!r}>"


class Message(Base):
    """A message in a thread."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_thread_created", "thread_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    object: Mapped[str] = mapped_column(String(32), default="thread.message")
    thread_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("threads.id"), index=True, nullable=False
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[int] = mapped_column(Integer, nullable=False)
    assistant_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    file_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata_", JSON, default=dict)

    thread: Mapped[Thread] = relationship(back_populates="messages", lazy="raise")

    @property
    def text(self) -> str:
        """The joined text values of the message's content parts."""
        parts = []
        for part in self.content or []:
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, dict):
                    parts.append(str(text.get("value", "")))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"<Message {self.id} thread={self.thread_id} role={self.role!r}>"

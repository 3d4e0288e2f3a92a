"""A team's own declarative models: not the plugin's ``threads``/``messages``.

Different table names, column names and roles: ``conversations`` owned by ``owner``, with a
JSON ``extra`` column and soft delete through ``archived_at``; ``chat_messages`` point at their
conversation through ``conversation_ref``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"

    conversation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    label: Mapped[str | None] = mapped_column(String(255))
    opened_at: Mapped[int]
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)

    messages: Mapped[list[ChatMessage]] = relationship(back_populates="conversation", lazy="raise")


class ChatMessage(Base):
    __tablename__ = "chat_messages"

    message_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_ref: Mapped[str] = mapped_column(
        ForeignKey("conversations.conversation_id"), index=True
    )
    author_role: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    posted_at: Mapped[int]
    run_ref: Mapped[str | None] = mapped_column(String(64))

    conversation: Mapped[Conversation] = relationship(back_populates="messages", lazy="raise")

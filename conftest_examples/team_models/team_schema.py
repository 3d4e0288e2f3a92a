"""Tells pytest-threadcreator where the team keeps threads and messages.

``pytest.ini`` points at ``SCHEMA`` with ``threadcreator_schema = team_schema:SCHEMA``. The row
builders turn what a create call knows (a ``NewThread``) into row values keyed by *column
name*; the options name the columns the plugin reads and checks.
"""

from __future__ import annotations

from typing import Any

from team_models import ChatMessage, Conversation

from pytest_threadcreator import NewThread, ThreadSchema


def conversation_row(new: NewThread) -> dict[str, Any]:
    """The ``conversations`` row of a new thread."""
    return {
        "conversation_id": new.thread_id,
        "owner": new.user_id,
        "label": new.title,
        "opened_at": new.created_at,
        "archived_at": None,
        # check_integrity compares extra["user_id"] with owner (owner_metadata_column below)
        "extra": {"user_id": new.user_id, **new.metadata},
    }


def chat_message_row(new: NewThread) -> dict[str, Any]:
    """The ``chat_messages`` row of a thread's first message (and of factory-made messages)."""
    return {
        "message_id": new.message_id,
        "conversation_ref": new.thread_id,
        "author_role": new.role,
        "body": new.message,
        "posted_at": new.created_at,
        "run_ref": new.run_id,
    }


SCHEMA = ThreadSchema.from_models(
    Conversation,
    ChatMessage,
    thread_row=conversation_row,
    message_row=chat_message_row,
    thread_id_column="conversation_id",
    owner_column="owner",
    thread_created_column="opened_at",
    deleted_at_column="archived_at",
    owner_metadata_column="extra",
    message_id_column="message_id",
    message_thread_column="conversation_ref",
    message_created_column="posted_at",
    name="team",
)

"""The plugin's async factories, subclassed for the team's models."""

from __future__ import annotations

import factory
from team_models import ChatMessage, Conversation

from pytest_threadcreator.factories import MessageFactory, ThreadFactory


class ConversationFactory(ThreadFactory):
    """A conversation with its first message; ``first_message=None`` makes a bare one."""

    class Meta:
        model = Conversation

    title = factory.Sequence(lambda n: f"Conversation {n}")  # the builder puts it in ``label``


class ChatMessageFactory(MessageFactory):
    """A message in ``thread=``/``thread_id=``; with neither, in a new bare conversation."""

    class Meta:
        model = ChatMessage

    thread = factory.Maybe(
        "thread_id",
        yes_declaration=None,
        no_declaration=factory.SubFactory(ConversationFactory, first_message=None),
    )
    text = factory.Faker("sentence")

"""The plugin's exceptions: one hierarchy rooted at :class:`ThreadCreatorError`.

Every message says what happened and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ConfigurationError",
    "DatabaseError",
    "InjectedFault",
    "InvalidContextError",
    "InvalidMessageError",
    "NoDatabaseError",
    "ThreadCreatorError",
    "ThreadExistsError",
    "ThreadNotFoundError",
    "ThreadOwnershipError",
]


class ThreadCreatorError(Exception):
    """Base class of every error the plugin raises on purpose."""


class InvalidContextError(ThreadCreatorError, ValueError):
    """A user execution context (or one of its ids) failed validation."""


class InvalidMessageError(ThreadCreatorError, ValueError):
    """A message, title, role or metadata passed to ThreadCreator was rejected."""


class ThreadExistsError(ThreadCreatorError):
    """The context's ``thread_id`` already names a thread of the same user."""


class ThreadOwnershipError(ThreadCreatorError):
    """The thread belongs to another user; the message reveals nothing about that user."""


class ThreadNotFoundError(ThreadCreatorError):
    """No (live) thread has that id."""


class DatabaseError(ThreadCreatorError):
    """The database failed in a way that is not transient contention.

    The driver's original exception is chained as ``__cause__``.
    """


class NoDatabaseError(ThreadCreatorError):
    """``ThreadCreator()`` was used without a database and no test database is bound."""


class ConfigurationError(ThreadCreatorError, ValueError):
    """A setting, schema or hook does not fit."""


class BackendUnavailableError(ThreadCreatorError):
    """The selected database backend cannot be started or reached."""


class InjectedFault(Exception):
    """Raised by the fault injector. Deliberately not a ThreadCreatorError: never wrapped, never retried."""

    def __init__(self, step: str, call: int) -> None:
        super().__init__(f"injected fault at step {step!r} (call {call})")
        self.step = step
        self.call = call


def short_reason(exc: BaseException) -> str:
    """The innermost cause's message, one line, no traceback."""
    inner: BaseException = exc
    for _ in range(10):
        nxt = inner.__cause__ or inner.__context__
        if nxt is None:
            break
        inner = nxt
    for arg in getattr(inner, "args", ()):
        # requests/urllib3 nest the OSError inside their own exceptions' args
        if isinstance(arg, BaseException):
            inner = arg
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    explanation = getattr(inner, "explanation", None)  # docker.errors.APIError
    if explanation:
        return str(explanation).strip().splitlines()[0][:200]
    text = str(inner).strip().splitlines()
    return (text[0] if text else type(inner).__name__)[:200]

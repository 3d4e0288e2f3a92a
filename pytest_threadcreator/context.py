"""The user execution context: who acts, in which thread, run and request.

:class:`UserExecutionContext` is validated once, at construction, and is immutable afterwards:
its ``agent_context`` and ``audit_metadata`` are deep copies, frozen all the way down.
:func:`coerce_context` accepts it or any object with a str ``user_id`` (other teams' context
classes), checks the ids ThreadCreator needs (again for ours: ``object.__setattr__`` gets past a
frozen dataclass) and returns them. :func:`check_text` and :func:`check_json` refuse what some
backend could not store (NUL, lone surrogates, non-finite floats, JSON nested too deep), so a
test has the same outcome on every backend.

This module never imports pytest.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NoReturn, cast

from pytest_threadcreator.errors import InvalidContextError, ThreadCreatorError
from pytest_threadcreator.ids import new_id

__all__ = [
    "ContextIds",
    "UserExecutionContext",
    "check_json",
    "check_text",
    "coerce_context",
    "validate_id",
]

_MAX_ID_LENGTH = 255
_MAX_CHILD_DEPTH = 10
_PREVIEW_CHARS = 40
#: Containers nested in a JSON value at most (the value itself counted): deeper ones are refused
#: on every backend, before Python's own recursion limit turns them into a RecursionError.
MAX_JSON_DEPTH = 100

_PLACEHOLDER_IDS = frozenset(
    {
        "registry", "placeholder", "default", "temp", "none", "null", "undefined", "0", "1",
        "xxx", "yyy", "example", "test", "demo", "sample", "template", "mock", "fake", "dummy",
    }
)  # fmt: skip

# Keys the context owns; a mapping that repeated them would shadow or contradict the fields.
_RESERVED_KEYS = frozenset(
    {
        "user_id", "thread_id", "run_id", "request_id", "created_at", "db_session",
        "websocket_client_id",
    }
)  # fmt: skip

# Keys child() writes into audit_metadata.
_OPERATION_KEY = "operation"
_PARENT_REQUEST_KEY = "parent_request_id"
_DEPTH_KEY = "depth"

_HINTS = {
    "user_id": (
        "pass the real id of the user (for tests, make_user_context() generates unique ones)"
    ),
    "thread_id": "pass the real id of the thread, or leave thread_id=None to have one generated",
    "run_id": "pass the real id of the run, or leave run_id out to have one generated",
    "request_id": "pass the real id of the request, or leave request_id out to have one generated",
    "websocket_client_id": "pass the real id of the websocket client, or leave it None",
}
_DEFAULT_HINT = "pass a real, unique id"

# Values that are immutable and hold no references: no copy needed.
_ATOMS: frozenset[type] = frozenset({str, int, float, bool, complex, bytes, type(None)})


def _preview(value: str) -> str:
    """``repr`` of ``value``, cut to a readable length."""
    if len(value) <= _PREVIEW_CHARS:
        return repr(value)
    return f"{value[:_PREVIEW_CHARS]!r}..."


# -- what every backend can store ------------------------------------------------------------
_NUL_PROBLEM = "contains a NUL character (\\x00), which PostgreSQL cannot store"
_TEXT_TODO = "remove it (the plugin refuses it on every backend so tests behave alike)"
_SURROGATE_TODO = (
    "fix the text's decoding (e.g. bytes.decode('utf-8', errors='replace')); the plugin "
    "refuses it on every backend so tests behave alike"
)


def _text_problem(value: str) -> tuple[str, str] | None:
    """(what is wrong, what to do) when a backend could not store ``value``, else None."""
    if "\x00" in value:
        return _NUL_PROBLEM, _TEXT_TODO
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains a lone surrogate {value[exc.start]!r} at index {exc.start}, which is not "
            "text (UTF-8 cannot encode it)",
            _SURROGATE_TODO,
        )
    return None


def check_text(value: str, field: str, error: type[ThreadCreatorError]) -> None:
    """Raise ``error`` naming ``field`` when ``value`` holds NUL or a lone surrogate."""
    problem = _text_problem(value)
    if problem is not None:
        raise error(f"{field} {problem[0]}; {problem[1]}")


_JSON_TODO = "pass only str, numbers, bools, None, lists and dicts"
_FINITE_TODO = (
    "JSON has no NaN or Infinity (PostgreSQL refuses them); pass a finite number, or None or a "
    "string for a missing value"
)


def _json_problem(value: object, depth: int) -> tuple[list[object], str, str] | None:
    """(path from ``value`` in reverse, what is wrong, what to do) or None: one pass, no dumps."""
    kind = type(value)
    if kind is str:
        problem = _text_problem(cast(str, value))
        return None if problem is None else ([], *problem)
    if kind is int or kind is bool or value is None:
        return None
    if kind is float:
        number = cast(float, value)
        if math.isfinite(number):
            return None
        return [], f"is {number!r}, a non-finite float", _FINITE_TODO
    if isinstance(value, (dict, list, tuple)):
        if depth > MAX_JSON_DEPTH:
            return (
                [],
                f"is nested deeper than {MAX_JSON_DEPTH} levels",
                "flatten it or store it as a string (JSON this deep is refused on every backend)",
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if type(key) is not str:
                    found = _key_problem(key)
                    if found is not None:
                        return found
                else:
                    problem = _text_problem(key)
                    if problem is not None:
                        return [], f"has a key {key!r} that {problem[0]}", problem[1]
                found = _json_problem(item, depth + 1)
                if found is not None:
                    found[0].append(key)
                    return found
            return None
        for index, item in enumerate(value):
            found = _json_problem(item, depth + 1)
            if found is not None:
                found[0].append(index)
                return found
        return None
    if isinstance(value, str):
        return _json_problem(str(value), depth)
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return _json_problem(float(value), depth)
    return [], f"is not JSON-serialisable ({kind.__name__})", _JSON_TODO


def _key_problem(key: object) -> tuple[list[object], str, str] | None:
    """Keys json.dumps turns into strings (numbers, bools, None) pass; anything else does not."""
    if isinstance(key, str):
        problem = _text_problem(key)
        return None if problem is None else ([], f"has a key {key!r} that {problem[0]}", problem[1])
    if isinstance(key, float) and not math.isfinite(key):
        return [], f"has the key {key!r}, a non-finite float", _FINITE_TODO
    if key is None or isinstance(key, (int, float)):
        return None
    return [], f"has a key of type {type(key).__name__}, which JSON cannot hold", "use str keys"


def check_json(value: object, field: str, error: type[ThreadCreatorError]) -> None:
    """Raise ``error`` naming the place (e.g. ``metadata['a'][0]``) if a backend would refuse
    ``value`` as JSON: NUL or a lone surrogate in a string or key, a non-finite float, nesting
    deeper than :data:`MAX_JSON_DEPTH`, or a type JSON cannot hold."""
    found = _json_problem(value, 1)
    if found is None:
        return
    path, problem, todo = found
    where = field + "".join(f"[{part!r}]" for part in reversed(path))
    if len(where) > 120:
        where = where[:117] + "..."
    raise error(f"{where} {problem}; {todo}")


def validate_id(value: object, field: str) -> str:
    """Return ``value`` if it is a usable id for ``field``, else raise InvalidContextError."""
    hint = _HINTS.get(field, _DEFAULT_HINT)
    if not isinstance(value, str):
        raise InvalidContextError(f"{field} must be a str, got {type(value).__name__}; {hint}")
    if not value:
        raise InvalidContextError(f"{field} is empty; {hint}")
    stripped = value.strip()
    if not stripped:
        raise InvalidContextError(f"{field} is blank (only whitespace); {hint}")
    if len(value) > _MAX_ID_LENGTH:
        raise InvalidContextError(
            f"{field} {_preview(value)} is {len(value)} chars long, over the maximum of "
            f"{_MAX_ID_LENGTH}; pass a shorter id"
        )
    if stripped != value:
        raise InvalidContextError(
            f"{field} {_preview(value)} has leading or trailing whitespace; strip it before "
            "building the context"
        )
    if value.lower() in _PLACEHOLDER_IDS:
        raise InvalidContextError(f"{field} {value!r} is a placeholder value; {hint}")
    problem = _text_problem(value)
    if problem is not None:
        raise InvalidContextError(f"{field} {_preview(value)} {problem[0]}; {hint}")
    return value


def _refuse_mutation(self: object, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(
        "the agent_context and audit_metadata of a UserExecutionContext are read-only, nested "
        "dicts and lists included; copy what you need (dict(...), list(...)) or build a new "
        "context with dataclasses.replace()"
    )


class _FrozenDict(dict[Any, Any]):
    """A read-only dict: equal to, JSON-serialisable and ``asdict``-able like the dict it copies."""

    __slots__ = ()

    __setitem__ = _refuse_mutation
    __delitem__ = _refuse_mutation
    __ior__ = _refuse_mutation
    clear = _refuse_mutation
    pop = _refuse_mutation
    popitem = _refuse_mutation
    setdefault = _refuse_mutation
    update = _refuse_mutation

    def __copy__(self) -> _FrozenDict:
        return self

    def __reduce__(self) -> tuple[type[_FrozenDict], tuple[dict[Any, Any]]]:
        # dict's default reduce restores items through __setitem__, which refuses.
        return (_FrozenDict, (dict(self),))


class _FrozenList(list[Any]):
    """A read-only list: compares equal to the list it copies."""

    __slots__ = ()

    __setitem__ = _refuse_mutation
    __delitem__ = _refuse_mutation
    __iadd__ = _refuse_mutation
    __imul__ = _refuse_mutation
    append = _refuse_mutation
    extend = _refuse_mutation
    insert = _refuse_mutation
    pop = _refuse_mutation
    remove = _refuse_mutation
    clear = _refuse_mutation
    sort = _refuse_mutation
    reverse = _refuse_mutation

    def __copy__(self) -> _FrozenList:
        return self

    def __reduce__(self) -> tuple[type[_FrozenList], tuple[list[Any]]]:
        return (_FrozenList, (list(self),))


_EMPTY = _FrozenDict()


def _empty_mapping() -> Mapping[str, Any]:
    return _EMPTY


class _Freezer:
    """Deep-copies a value into read-only containers; shared references stay shared."""

    def __init__(self, mapping_name: str) -> None:
        self.mapping_name = mapping_name
        self.done: dict[int, Any] = {}
        self.in_progress: set[int] = set()
        self.copy_memo: dict[int, Any] = {}

    def freeze(self, value: Any) -> Any:
        kind = type(value)
        if kind in _ATOMS or kind is _FrozenDict or kind is _FrozenList:
            return value  # immutable already (our frozen containers were built by this class)
        key = id(value)
        if key in self.done:
            return self.done[key]
        if key in self.in_progress:
            raise InvalidContextError(
                f"{self.mapping_name} contains a reference cycle; pass plain, tree-shaped data"
            )
        self.in_progress.add(key)
        frozen: Any
        if isinstance(value, Mapping):
            frozen = _FrozenDict((self.freeze(k), self.freeze(v)) for k, v in value.items())
        elif isinstance(value, list):
            frozen = _FrozenList(self.freeze(item) for item in value)
        elif kind is tuple:
            frozen = tuple(self.freeze(item) for item in value)
        elif isinstance(value, (set, frozenset)):
            frozen = frozenset(self.freeze(item) for item in value)
        else:
            frozen = copy.deepcopy(value, self.copy_memo)
        self.in_progress.discard(key)
        self.done[key] = frozen
        return frozen


def _freeze_mapping(value: object, name: str) -> Mapping[str, Any]:
    """Validate ``agent_context``/``audit_metadata`` and return a frozen deep copy of it."""
    if not isinstance(value, Mapping):
        raise InvalidContextError(
            f"{name} must be a mapping (e.g. a dict), got {type(value).__name__}; "
            "leave it out for an empty one"
        )
    _check_keys(value, name)
    if type(value) is _FrozenDict:
        return value  # already a deep, read-only copy (e.g. from another context)
    freezer = _Freezer(name)
    items = []
    for key, item in value.items():
        try:
            items.append((key, freezer.freeze(item)))
        except InvalidContextError:
            raise
        except Exception as exc:
            raise InvalidContextError(
                f"{name}[{key!r}] could not be deep-copied ({type(exc).__name__}: {exc}); keep "
                "only plain data in a context, not live objects such as sessions or connections"
            ) from exc
    return _FrozenDict(items)


def _check_keys(mapping: Iterable[object], name: str) -> None:
    for key in mapping:
        if not isinstance(key, str):
            raise InvalidContextError(
                f"{name} keys must be str, got {type(key).__name__} key {key!r:.{_PREVIEW_CHARS}}"
            )
        if key in _RESERVED_KEYS:
            if key == "db_session":
                what = "a database session does not belong in a context; pass it on its own"
            else:
                what = f"the context sets it itself; pass it as UserExecutionContext({key}=...)"
            raise InvalidContextError(
                f"{name} uses the reserved key {key!r}: {what}, or rename the key"
            )


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _new_run_id() -> str:
    return new_id("run_")


def _new_request_id() -> str:
    return new_id("req_")


@dataclass(frozen=True, slots=True)
class UserExecutionContext:
    """Who runs an operation and where: validated at construction, immutable afterwards."""

    user_id: str
    thread_id: str | None = None
    run_id: str = field(default_factory=_new_run_id)
    request_id: str = field(default_factory=_new_request_id)
    websocket_client_id: str | None = None
    agent_context: Mapping[str, Any] = field(default_factory=_empty_mapping)
    audit_metadata: Mapping[str, Any] = field(default_factory=_empty_mapping)
    created_at: datetime = field(default_factory=_utc_now)

    def __post_init__(self) -> None:
        validate_id(self.user_id, "user_id")
        if self.thread_id is not None:
            validate_id(self.thread_id, "thread_id")
        validate_id(self.run_id, "run_id")
        validate_id(self.request_id, "request_id")
        if self.websocket_client_id is not None:
            validate_id(self.websocket_client_id, "websocket_client_id")
        created_at = self.created_at
        if not isinstance(created_at, datetime):
            raise InvalidContextError(
                f"created_at must be a datetime, got {type(created_at).__name__}; "
                "leave it out to use the current time"
            )
        if created_at.tzinfo is not timezone.utc:
            if created_at.utcoffset() is None:
                raise InvalidContextError(
                    f"created_at {created_at.isoformat()} is naive (no timezone); pass an aware "
                    "datetime such as datetime.now(timezone.utc)"
                )
            object.__setattr__(self, "created_at", created_at.astimezone(timezone.utc))
        object.__setattr__(
            self, "agent_context", _freeze_mapping(self.agent_context, "agent_context")
        )
        object.__setattr__(
            self, "audit_metadata", _freeze_mapping(self.audit_metadata, "audit_metadata")
        )

    def __hash__(self) -> int:
        # The mappings are unhashable; user and request identify a context well enough.
        return hash((self.user_id, self.request_id))

    def child(self, operation: str) -> UserExecutionContext:
        """Return a context for a sub-operation: same user, thread and run, a new request id.

        ``audit_metadata`` of the child records ``operation``, ``parent_request_id`` and
        ``depth`` (1 for a child of a root context). A depth over 10 raises InvalidContextError.
        """
        if not isinstance(operation, str) or not operation.strip():
            got = repr(operation) if isinstance(operation, str) else type(operation).__name__
            raise InvalidContextError(
                f"operation must be a non-empty str naming what the child does, got {got}; "
                "e.g. ctx.child('create_thread')"
            )
        if len(operation) > _MAX_ID_LENGTH:
            raise InvalidContextError(
                f"operation {_preview(operation)} is {len(operation)} chars long, over the "
                f"maximum of {_MAX_ID_LENGTH}; pass a short name"
            )
        parent_depth = self.audit_metadata.get(_DEPTH_KEY, 0)
        if not isinstance(parent_depth, int) or isinstance(parent_depth, bool):
            parent_depth = 0
        depth = parent_depth + 1
        if depth > _MAX_CHILD_DEPTH:
            raise InvalidContextError(
                f"child({operation!r}) would be at depth {depth}; the maximum depth is "
                f"{_MAX_CHILD_DEPTH}. A chain this deep usually means an operation derives a "
                "child from its own context in a loop or recursion; pass the context on instead"
            )
        audit = dict(self.audit_metadata)
        audit[_OPERATION_KEY] = operation
        audit[_PARENT_REQUEST_KEY] = self.request_id
        audit[_DEPTH_KEY] = depth
        return dataclasses.replace(
            self, request_id=_new_request_id(), audit_metadata=audit, created_at=_utc_now()
        )

    def with_thread(self, thread_id: str) -> UserExecutionContext:
        """Return a copy of this context bound to ``thread_id`` (validated like every id)."""
        validate_id(thread_id, "thread_id")
        return dataclasses.replace(self, thread_id=thread_id)


@dataclass(frozen=True, slots=True)
class ContextIds:
    """The ids ThreadCreator takes from a context, and the context they came from."""

    user_id: str
    thread_id: str | None
    run_id: str | None
    source: object = field(compare=False, repr=False)


def coerce_context(obj: object) -> ContextIds:
    """Return the validated ids of a UserExecutionContext or any object with a str ``user_id``.

    Other teams' context classes work if they have ``user_id`` and, optionally, ``thread_id``
    and ``run_id`` attributes; their ids are checked by the same rules as ours.
    """
    if isinstance(obj, UserExecutionContext):
        # Validated at construction, but object.__setattr__ gets past a frozen dataclass: the
        # ids a create writes are checked again (a few string operations each).
        own_thread_id = obj.thread_id
        validate_id(obj.user_id, "user_id")
        if own_thread_id is not None:
            validate_id(own_thread_id, "thread_id")
        validate_id(obj.run_id, "run_id")
        return ContextIds(obj.user_id, own_thread_id, obj.run_id, obj)
    try:
        user_id = obj.user_id  # type: ignore[attr-defined]
    except AttributeError:
        raise InvalidContextError(
            "expected a UserExecutionContext or an object with a str user_id attribute, got "
            f"{type(obj).__name__}"
        ) from None
    validate_id(user_id, "user_id")
    thread_id = getattr(obj, "thread_id", None)
    if thread_id is not None:
        validate_id(thread_id, "thread_id")
    run_id = getattr(obj, "run_id", None)
    if run_id is not None:
        validate_id(run_id, "run_id")
    return ContextIds(user_id, thread_id, run_id, obj)

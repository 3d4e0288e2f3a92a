"""Direct tests of pytest_threadcreator.context: validation, immutability, child contexts."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

import pytest_threadcreator.context as context_module
from pytest_threadcreator.context import (
    ContextIds,
    UserExecutionContext,
    coerce_context,
    validate_id,
)
from pytest_threadcreator.errors import InvalidContextError, ThreadCreatorError

from ..helpers import REPO_ROOT

# Written out here, not imported, so a change to the module's lists fails these tests.
PLACEHOLDERS = (
    "registry", "placeholder", "default", "temp", "none", "null", "undefined", "0", "1", "xxx",
    "yyy", "example", "test", "demo", "sample", "template", "mock", "fake", "dummy",
)  # fmt: skip
RESERVED_KEYS = (
    "user_id", "thread_id", "run_id", "request_id", "created_at", "db_session",
    "websocket_client_id",
)  # fmt: skip
ID_FIELDS = ("user_id", "thread_id", "run_id", "request_id", "websocket_client_id")
MAPPING_FIELDS = ("agent_context", "audit_metadata")
USER_HINT = "pass the real id of the user (for tests, make_user_context() generates unique ones)"


def make(**fields: Any) -> UserExecutionContext:
    fields.setdefault("user_id", "user_42")
    return UserExecutionContext(**fields)


def raises_context_error(message: str) -> pytest.RaisesExc[InvalidContextError]:
    """Expect InvalidContextError whose message contains ``message`` verbatim."""
    return pytest.raises(InvalidContextError, match=re.escape(message))


# --- validate_id -------------------------------------------------------------------------


def test_invalid_context_error_is_a_value_error_and_a_threadcreator_error() -> None:
    with pytest.raises(ValueError, match="user_id is empty"):
        validate_id("", "user_id")
    with pytest.raises(ThreadCreatorError):
        validate_id("", "user_id")


@pytest.mark.parametrize("value", ["user_42", "a", "thread_0123", "test_user_7", "x" * 255])
def test_validate_id_returns_a_good_id_unchanged(value: str) -> None:
    assert validate_id(value, "user_id") is value


@pytest.mark.parametrize("placeholder", PLACEHOLDERS)
@pytest.mark.parametrize(
    "spell", [str.lower, str.upper, str.title], ids=["lower", "upper", "title"]
)
def test_validate_id_rejects_placeholders_in_any_case(placeholder: str, spell: Any) -> None:
    value = spell(placeholder)
    with pytest.raises(InvalidContextError) as excinfo:
        validate_id(value, "user_id")
    assert str(excinfo.value) == f"user_id {value!r} is a placeholder value; {USER_HINT}"


@pytest.mark.parametrize("value", ["TeSt", "NuLl", "DuMmY", "tEMPLATe"])
def test_validate_id_rejects_mixed_case_placeholders(value: str) -> None:
    with raises_context_error(f"user_id {value!r} is a placeholder value"):
        validate_id(value, "user_id")


@pytest.mark.parametrize("value", ["test1", "demo-user", "00", "10", "nullable", "sampler"])
def test_validate_id_accepts_ids_that_only_contain_a_placeholder(value: str) -> None:
    assert validate_id(value, "user_id") == value


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(None, "NoneType"), (42, "int"), (b"user_42", "bytes"), (["user_42"], "list"), (True, "bool")],
)
def test_validate_id_rejects_non_str(value: object, type_name: str) -> None:
    with pytest.raises(InvalidContextError) as excinfo:
        validate_id(value, "user_id")
    assert str(excinfo.value) == f"user_id must be a str, got {type_name}; {USER_HINT}"


def test_validate_id_rejects_empty() -> None:
    with pytest.raises(InvalidContextError) as excinfo:
        validate_id("", "user_id")
    assert str(excinfo.value) == f"user_id is empty; {USER_HINT}"


@pytest.mark.parametrize("value", [" ", "   ", "\t", "\n \r"])
def test_validate_id_rejects_blank(value: str) -> None:
    with pytest.raises(InvalidContextError) as excinfo:
        validate_id(value, "user_id")
    assert str(excinfo.value) == f"user_id is blank (only whitespace); {USER_HINT}"


@pytest.mark.parametrize("length", [256, 1000, 100_000])
def test_validate_id_rejects_over_long_without_echoing_it(length: int) -> None:
    value = "u" * length
    with pytest.raises(InvalidContextError) as excinfo:
        validate_id(value, "user_id")
    message = str(excinfo.value)
    assert f"user_id {'u' * 40!r}... is {length} chars long, over the maximum of 255" in message
    assert "pass a shorter id" in message
    assert "u" * 41 not in message
    assert len(message) < 200


@pytest.mark.parametrize("value", [" user_42", "user_42 ", "user_42\n", "\tuser_42", " test "])
def test_validate_id_rejects_surrounding_whitespace(value: str) -> None:
    with pytest.raises(InvalidContextError) as excinfo:
        validate_id(value, "user_id")
    assert str(excinfo.value) == (
        f"user_id {value!r} has leading or trailing whitespace; strip it before building the "
        "context"
    )


def test_validate_id_keeps_long_whitespace_values_short_in_the_message() -> None:
    value = " " + "u" * 200
    with raises_context_error("has leading or trailing whitespace") as excinfo:
        validate_id(value, "user_id")
    assert "u" * 41 not in str(excinfo.value)


def test_validate_id_names_an_unknown_field_with_a_generic_hint() -> None:
    with pytest.raises(InvalidContextError) as excinfo:
        validate_id("test", "tenant_id")
    assert str(excinfo.value) == "tenant_id 'test' is a placeholder value; pass a real, unique id"


# --- construction: every id field ----------------------------------------------------------


@pytest.mark.parametrize("field", ID_FIELDS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is empty"),
        ("  ", "is blank (only whitespace)"),
        (" id_1", "' id_1' has leading or trailing whitespace"),
        ("x" * 256, "is 256 chars long, over the maximum of 255"),
        ("PLACEHOLDER", "'PLACEHOLDER' is a placeholder value"),
        (7, "must be a str, got int"),
        ("ali\x00ce", "'ali\\x00ce' contains a NUL character (\\x00), which PostgreSQL cannot"),
        ("id_\udc80", "'id_\\udc80' contains a lone surrogate '\\udc80' at index 3"),
    ],
)
def test_every_id_field_is_validated_at_construction(
    field: str, value: object, problem: str
) -> None:
    with raises_context_error(f"{field} ") as excinfo:
        make(**{field: value})
    assert problem in str(excinfo.value)
    assert str(excinfo.value).startswith(field)


@pytest.mark.parametrize(
    ("field", "hint"),
    [
        ("thread_id", "leave thread_id=None to have one generated"),
        ("run_id", "leave run_id out to have one generated"),
        ("request_id", "leave request_id out to have one generated"),
        ("websocket_client_id", "or leave it None"),
    ],
)
def test_id_errors_say_what_to_do(field: str, hint: str) -> None:
    with raises_context_error(hint):
        make(**{field: "dummy"})


def test_user_id_is_required() -> None:
    with pytest.raises(TypeError, match="user_id"):
        UserExecutionContext()  # type: ignore[call-arg]


def test_user_id_none_is_rejected() -> None:
    with raises_context_error(f"user_id must be a str, got NoneType; {USER_HINT}"):
        UserExecutionContext(None)  # type: ignore[arg-type]


def test_optional_ids_default_to_none_and_accept_good_values() -> None:
    ctx = make()
    assert ctx.thread_id is None
    assert ctx.websocket_client_id is None
    given = make(
        thread_id="thread_1", run_id="run_1", request_id="req_1", websocket_client_id="ws_1"
    )
    assert (given.thread_id, given.run_id, given.request_id, given.websocket_client_id) == (
        "thread_1",
        "run_1",
        "req_1",
        "ws_1",
    )


@pytest.mark.parametrize(("field", "prefix"), [("run_id", "run_"), ("request_id", "req_")])
def test_generated_ids_have_prefix_and_32_hex_chars(field: str, prefix: str) -> None:
    first, second = make(), make()
    for ctx in (first, second):
        assert re.fullmatch(prefix + "[0-9a-f]{32}", getattr(ctx, field))
    assert getattr(first, field) != getattr(second, field)


# --- created_at ----------------------------------------------------------------------------


def test_created_at_defaults_to_aware_utc_now() -> None:
    before = datetime.now(timezone.utc)
    ctx = make()
    after = datetime.now(timezone.utc)
    assert ctx.created_at.tzinfo is timezone.utc
    assert before <= ctx.created_at <= after


def test_created_at_aware_is_converted_to_utc() -> None:
    local = datetime(2024, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    ctx = make(created_at=local)
    assert ctx.created_at.tzinfo is timezone.utc
    assert ctx.created_at == local
    assert ctx.created_at.hour == 10


def test_created_at_naive_is_rejected() -> None:
    with raises_context_error(
        "created_at 2024-03-01T12:00:00 is naive (no timezone); pass an aware datetime such as "
        "datetime.now(timezone.utc)"
    ):
        make(created_at=datetime.fromisoformat("2024-03-01T12:00:00"))


@pytest.mark.parametrize("value", ["2024-03-01T12:00:00+00:00", 1709294400, None])
def test_created_at_non_datetime_is_rejected(value: object) -> None:
    with raises_context_error(f"created_at must be a datetime, got {type(value).__name__}"):
        make(created_at=value)


# --- agent_context / audit_metadata --------------------------------------------------------


@pytest.mark.parametrize("mapping", MAPPING_FIELDS)
@pytest.mark.parametrize("key", RESERVED_KEYS)
def test_reserved_keys_are_rejected_in_both_mappings(mapping: str, key: str) -> None:
    with pytest.raises(InvalidContextError) as excinfo:
        make(**{mapping: {"fine": 1, key: "value"}})
    message = str(excinfo.value)
    assert message.startswith(f"{mapping} uses the reserved key {key!r}: ")
    assert message.endswith(", or rename the key")


def test_reserved_field_key_says_to_use_the_field() -> None:
    with raises_context_error(
        "agent_context uses the reserved key 'thread_id': the context sets it itself; pass it as "
        "UserExecutionContext(thread_id=...), or rename the key"
    ):
        make(agent_context={"thread_id": "thread_1"})


def test_reserved_db_session_key_says_sessions_do_not_belong() -> None:
    with raises_context_error(
        "audit_metadata uses the reserved key 'db_session': a database session does not belong "
        "in a context; pass it on its own, or rename the key"
    ):
        make(audit_metadata={"db_session": object()})


@pytest.mark.parametrize("mapping", MAPPING_FIELDS)
def test_reserved_keys_are_only_checked_at_the_top_level(mapping: str) -> None:
    ctx = make(**{mapping: {"request": {"user_id": "someone_else"}}})
    assert getattr(ctx, mapping)["request"]["user_id"] == "someone_else"


@pytest.mark.parametrize("mapping", MAPPING_FIELDS)
@pytest.mark.parametrize("value", [None, [("a", 1)], "a=1", 5])
def test_mapping_fields_must_be_mappings(mapping: str, value: object) -> None:
    with pytest.raises(InvalidContextError) as excinfo:
        make(**{mapping: value})
    assert str(excinfo.value) == (
        f"{mapping} must be a mapping (e.g. a dict), got {type(value).__name__}; leave it out "
        "for an empty one"
    )


@pytest.mark.parametrize("mapping", MAPPING_FIELDS)
def test_mapping_keys_must_be_str(mapping: str) -> None:
    with raises_context_error(f"{mapping} keys must be str, got int key 1"):
        make(**{mapping: {"ok": 1, 1: "one"}})


@pytest.mark.parametrize("mapping", MAPPING_FIELDS)
def test_mappings_default_to_empty(mapping: str) -> None:
    assert dict(getattr(make(), mapping)) == {}


@pytest.mark.parametrize("mapping", MAPPING_FIELDS)
def test_mappings_are_deep_copies(mapping: str) -> None:
    original: dict[str, Any] = {"tools": ["search"], "limits": {"tokens": 10}, "tags": {"a"}}
    ctx = make(**{mapping: original})
    original["new"] = True
    original["tools"].append("browse")
    original["limits"]["tokens"] = 99
    original["tags"].add("b")
    assert getattr(ctx, mapping) == {"tools": ["search"], "limits": {"tokens": 10}, "tags": {"a"}}


def test_mapping_leaf_objects_are_copied_too() -> None:
    class Settings:
        def __init__(self) -> None:
            self.level = 1

    settings = Settings()
    ctx = make(agent_context={"settings": settings})
    settings.level = 2
    assert ctx.agent_context["settings"].level == 1


@pytest.mark.parametrize("mapping", MAPPING_FIELDS)
def test_mappings_are_read_only_at_the_top_level(mapping: str) -> None:
    frozen = getattr(make(**{mapping: {"a": 1}}), mapping)
    with pytest.raises(TypeError, match="read-only"):
        frozen["a"] = 2
    with pytest.raises(TypeError, match="read-only"):
        frozen["b"] = 2
    with pytest.raises(TypeError, match="read-only"):
        del frozen["a"]
    with pytest.raises(TypeError, match="read-only"):
        frozen.update(b=2)
    with pytest.raises(TypeError, match="read-only"):
        frozen.pop("a")
    with pytest.raises(TypeError, match="read-only"):
        frozen.setdefault("b", 2)
    with pytest.raises(TypeError, match="read-only"):
        frozen.clear()
    assert frozen == {"a": 1}


def test_nested_dicts_and_lists_are_read_only() -> None:
    ctx = make(agent_context={"outer": {"inner": [1, {"deep": 2}]}})
    inner = ctx.agent_context["outer"]["inner"]
    with pytest.raises(TypeError, match="read-only"):
        ctx.agent_context["outer"]["x"] = 1
    with pytest.raises(TypeError, match="read-only"):
        inner.append(3)
    with pytest.raises(TypeError, match="read-only"):
        inner[0] = 5
    with pytest.raises(TypeError, match="read-only"):
        inner += [3]
    with pytest.raises(TypeError, match="read-only"):
        inner[1]["deep"] = 3
    assert ctx.agent_context == {"outer": {"inner": [1, {"deep": 2}]}}


def test_read_only_error_says_how_to_get_a_mutable_copy() -> None:
    ctx = make(agent_context={"a": 1})
    with pytest.raises(TypeError) as excinfo:
        ctx.agent_context["a"] = 2  # type: ignore[index]
    assert str(excinfo.value) == (
        "the agent_context and audit_metadata of a UserExecutionContext are read-only, nested "
        "dicts and lists included; copy what you need (dict(...), list(...)) or build a new "
        "context with dataclasses.replace()"
    )
    mutable = dict(ctx.agent_context)
    mutable["a"] = 2
    assert ctx.agent_context["a"] == 1


def test_frozen_mappings_stay_plain_data() -> None:
    data = {"tools": ["search", {"name": "x"}], "n": 1, "pair": (1, [2])}
    ctx = make(agent_context=data)
    assert ctx.agent_context == data
    assert json.loads(json.dumps(ctx.agent_context)) == {**data, "pair": [1, [2]]}
    assert isinstance(ctx.agent_context["tools"], list)
    assert ctx.agent_context["pair"] == (1, [2])
    assert dataclasses.asdict(ctx)["agent_context"] == data


def test_reference_cycles_are_rejected() -> None:
    looped: dict[str, Any] = {}
    looped["self"] = looped
    with raises_context_error("agent_context contains a reference cycle"):
        make(agent_context={"looped": looped})


def test_uncopyable_values_are_rejected_with_their_key() -> None:
    import threading

    with raises_context_error(
        "audit_metadata['lock'] could not be deep-copied (TypeError: "
    ) as excinfo:
        make(audit_metadata={"lock": threading.Lock()})
    assert "not live objects such as sessions or connections" in str(excinfo.value)


def test_context_survives_copy_and_pickle() -> None:
    ctx = make(thread_id="thread_1", agent_context={"a": [1, {"b": 2}]}, audit_metadata={"c": 3})
    for clone in (copy.copy(ctx), copy.deepcopy(ctx), pickle.loads(pickle.dumps(ctx))):
        assert clone == ctx
        with pytest.raises(TypeError, match="read-only"):
            clone.agent_context["a"].append(3)


# --- frozen, eq, hash ----------------------------------------------------------------------


@pytest.mark.parametrize("field", [*ID_FIELDS, "agent_context", "audit_metadata", "created_at"])
def test_context_is_frozen(field: str) -> None:
    ctx = make()
    before = getattr(ctx, field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(ctx, field, "other_1")
    assert getattr(ctx, field) is before


def test_context_is_hashable_and_compares_by_value() -> None:
    ctx = make(agent_context={"a": [1]}, audit_metadata={"b": {"c": 2}})
    same = dataclasses.replace(ctx)
    assert same == ctx
    assert hash(same) == hash(ctx)
    assert len({ctx, same}) == 1
    assert make(user_id="user_42", request_id=ctx.request_id + "0") != ctx
    assert dataclasses.replace(ctx, agent_context={"a": [2]}) != ctx


def test_fields_are_exactly_the_contract() -> None:
    assert [f.name for f in dataclasses.fields(UserExecutionContext)] == [
        "user_id",
        "thread_id",
        "run_id",
        "request_id",
        "websocket_client_id",
        "agent_context",
        "audit_metadata",
        "created_at",
    ]


# --- child ---------------------------------------------------------------------------------


def test_child_keeps_identity_and_gets_a_new_request_id() -> None:
    parent = make(
        thread_id="thread_1",
        websocket_client_id="ws_1",
        agent_context={"model": "gpt"},
        audit_metadata={"source": "api"},
    )
    child = parent.child("create_thread")
    assert child.user_id == parent.user_id
    assert child.thread_id == parent.thread_id
    assert child.run_id == parent.run_id
    assert child.websocket_client_id == parent.websocket_client_id
    assert child.agent_context == {"model": "gpt"}
    assert child.request_id != parent.request_id
    assert re.fullmatch("req_[0-9a-f]{32}", child.request_id)
    assert child.created_at.tzinfo is timezone.utc
    assert child.audit_metadata == {
        "source": "api",
        "operation": "create_thread",
        "parent_request_id": parent.request_id,
        "depth": 1,
    }
    assert parent.audit_metadata == {"source": "api"}


def test_child_chain_to_depth_10_is_allowed_and_11_is_not() -> None:
    ctx = make()
    request_ids = {ctx.request_id}
    for level in range(1, 11):
        parent = ctx
        ctx = ctx.child(f"step_{level}")
        assert ctx.audit_metadata["depth"] == level
        assert ctx.audit_metadata["parent_request_id"] == parent.request_id
        request_ids.add(ctx.request_id)
    assert len(request_ids) == 11
    with pytest.raises(InvalidContextError) as excinfo:
        ctx.child("step_11")
    message = str(excinfo.value)
    assert message.startswith("child('step_11') would be at depth 11; the maximum depth is 10.")


@pytest.mark.parametrize(
    ("operation", "got"), [("", "''"), ("   ", "'   '"), (None, "NoneType"), (3, "int")]
)
def test_child_requires_an_operation_name(operation: object, got: str) -> None:
    with raises_context_error(
        f"operation must be a non-empty str naming what the child does, got {got}; "
        "e.g. ctx.child('create_thread')"
    ):
        make().child(operation)  # type: ignore[arg-type]


def test_child_rejects_an_over_long_operation() -> None:
    with raises_context_error("operation 'oooo") as excinfo:
        make().child("o" * 256)
    assert "is 256 chars long, over the maximum of 255" in str(excinfo.value)


# --- with_thread ---------------------------------------------------------------------------


def test_with_thread_returns_a_copy_bound_to_the_thread() -> None:
    ctx = make(agent_context={"a": 1})
    bound = ctx.with_thread("thread_9")
    assert bound.thread_id == "thread_9"
    assert ctx.thread_id is None
    assert dataclasses.replace(bound, thread_id=None) == ctx


@pytest.mark.parametrize(
    ("thread_id", "problem"),
    [
        ("test", "thread_id 'test' is a placeholder value"),
        (" thread_9", "thread_id ' thread_9' has leading or trailing whitespace"),
        ("", "thread_id is empty"),
        (None, "thread_id must be a str, got NoneType"),
        ("t" * 256, "is 256 chars long, over the maximum of 255"),
    ],
)
def test_with_thread_validates(thread_id: object, problem: str) -> None:
    with raises_context_error(problem):
        make().with_thread(thread_id)  # type: ignore[arg-type]


# --- coerce_context ------------------------------------------------------------------------


def test_coerce_context_takes_ids_from_our_context() -> None:
    ctx = make(thread_id="thread_1")
    ids = coerce_context(ctx)
    assert ids == ContextIds("user_42", "thread_1", ctx.run_id, ctx)
    assert ids.source is ctx
    with pytest.raises(dataclasses.FrozenInstanceError):
        ids.user_id = "other_1"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("user_id", "ali\x00ce", "user_id 'ali\\x00ce' contains a NUL character"),
        ("user_id", "test", "user_id 'test' is a placeholder value"),
        ("thread_id", " thread_1", "thread_id ' thread_1' has leading or trailing whitespace"),
        ("run_id", "run_\udc80", "run_id 'run_\\udc80' contains a lone surrogate '\\udc80'"),
    ],
)
def test_coerce_context_checks_our_context_again_at_each_call(
    field: str, value: str, problem: str
) -> None:
    ctx = make(thread_id="thread_1")
    object.__setattr__(ctx, field, value)  # a frozen dataclass does not stop this
    with raises_context_error(problem):
        coerce_context(ctx)


class TeamContext:
    """Another team's context class: just the attributes, no validation."""

    def __init__(self, user_id: object, thread_id: object = None, run_id: object = None) -> None:
        self.user_id = user_id
        self.thread_id = thread_id
        self.run_id = run_id


@pytest.mark.parametrize("kind", [TeamContext, SimpleNamespace])
def test_coerce_context_accepts_duck_typed_contexts(kind: Any) -> None:
    obj = kind(user_id="user_7", thread_id="thread_7", run_id="run_7")
    ids = coerce_context(obj)
    assert (ids.user_id, ids.thread_id, ids.run_id) == ("user_7", "thread_7", "run_7")
    assert ids.source is obj


def test_coerce_context_thread_and_run_are_optional() -> None:
    ids = coerce_context(SimpleNamespace(user_id="user_7"))
    assert (ids.user_id, ids.thread_id, ids.run_id) == ("user_7", None, None)


@pytest.mark.parametrize("kind", [TeamContext, SimpleNamespace])
@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"user_id": "test"}, "user_id 'test' is a placeholder value"),
        ({"user_id": "MOCK"}, "user_id 'MOCK' is a placeholder value"),
        ({"user_id": None}, "user_id must be a str, got NoneType"),
        ({"user_id": 42}, "user_id must be a str, got int"),
        ({"user_id": " user_7"}, "user_id ' user_7' has leading or trailing whitespace"),
        ({"user_id": "u" * 256}, "is 256 chars long, over the maximum of 255"),
        ({"user_id": "user_7", "thread_id": "null"}, "thread_id 'null' is a placeholder value"),
        ({"user_id": "user_7", "thread_id": ""}, "thread_id is empty"),
        ({"user_id": "user_7", "run_id": 5}, "run_id must be a str, got int"),
        ({"user_id": "user_7", "run_id": "run_1 "}, "run_id 'run_1 ' has leading or trailing"),
    ],
)
def test_coerce_context_rejects_bad_duck_typed_ids(
    kind: Any, fields: dict[str, Any], problem: str
) -> None:
    with raises_context_error(problem):
        coerce_context(kind(**fields))


@pytest.mark.parametrize(
    ("obj", "type_name"),
    [(object(), "object"), ({"user_id": "user_7"}, "dict"), (None, "NoneType"), ("user_7", "str")],
)
def test_coerce_context_rejects_objects_without_user_id(obj: object, type_name: str) -> None:
    with pytest.raises(InvalidContextError) as excinfo:
        coerce_context(obj)
    assert str(excinfo.value) == (
        "expected a UserExecutionContext or an object with a str user_id attribute, got "
        + type_name
    )


# --- module hygiene ------------------------------------------------------------------------


def test_public_names_are_sorted_and_exist() -> None:
    assert context_module.__all__ == sorted(context_module.__all__)
    assert set(context_module.__all__) == {
        "ContextIds",
        "check_json",
        "check_text",
        "UserExecutionContext",
        "coerce_context",
        "validate_id",
    }
    for name in context_module.__all__:
        assert getattr(context_module, name).__doc__


def test_importing_context_does_not_import_pytest() -> None:
    # subprocess: this process has pytest loaded already, only a fresh interpreter can tell.
    root = REPO_ROOT
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    code = "import sys, pytest_threadcreator.context; assert 'pytest' not in sys.modules, 'pytest'"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr

"""The plugin's state for one run, kept on the config behind a stash key.

Every module of the pytest layer reaches the state through :func:`state`; this module imports
nothing else of the layer, so none of them needs to import another to find it.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..concurrency import ConcurrencyReport
from ..config import Settings
from ..runtime import Runtime
from ..schema import ThreadSchema, default_schema, load_schema

__all__ = [
    "PHASE_REPORTS_KEY",
    "REPETITION_KEY",
    "STATE_KEY",
    "PluginState",
    "marker_arguments",
    "state",
    "state_or_none",
]


def marker_arguments(
    db: str | None = None, isolation: str | None = None, shake: int | None = None
) -> tuple[str | None, str | None, int | None]:
    """The ``threadcreator`` marker's signature: calling this with a marker's arguments checks them."""
    return db, isolation, shake


class PluginState:
    """Everything the plugin keeps for one run: resolved settings and the runtime."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.runtime: Runtime | None = None
        #: (test id, repetitions run, seed that failed or None) of every shaken test
        self.shaken: list[tuple[str, int, int | None]] = []
        #: (test id, ConcurrencyReport) of every run_concurrently call, in order
        self.concurrency_reports: list[tuple[str, ConcurrencyReport[Any]]] = []
        self._schema: ThreadSchema | None = None
        #: runtimes of schemas that a conftest's threadcreator_schema override brings, by id
        self.schema_runtimes: dict[int, Runtime] = {}
        #: what ini threadcreator_env replaced, restored at exit (None: was unset)
        self.saved_env: dict[str, str | None] = {}

    def schema(self) -> ThreadSchema:
        """The schema from ini ``threadcreator_schema``, or the default one."""
        if self._schema is None:
            spec = self.settings.schema
            self._schema = load_schema(spec) if spec else default_schema()
        return self._schema

    def settings_for(self, item: pytest.Item) -> Settings:
        """This run's settings with the test's ``threadcreator`` marker applied."""
        marker = item.get_closest_marker("threadcreator")
        if marker is None:
            return self.settings
        db, isolation, shake_count = marker_arguments(*marker.args, **marker.kwargs)
        return self.settings.with_marker(db, isolation, shake_count)


#: The run's :class:`PluginState`, set in ``pytest_configure``.
STATE_KEY = pytest.StashKey[PluginState]()
#: A test item's reports so far, by phase (``setup``, ``call``, ``teardown``).
PHASE_REPORTS_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
#: (repetition number, repetitions, seed) of the shake repetition running now.
REPETITION_KEY = pytest.StashKey[tuple[int, int, int]]()


def state(config: pytest.Config) -> PluginState:
    """The plugin's state for this run (KeyError before ``pytest_configure``)."""
    return config.stash[STATE_KEY]


def state_or_none(config: pytest.Config) -> PluginState | None:
    """The plugin's state for this run, or None when the plugin is not configured."""
    return config.stash.get(STATE_KEY, None)

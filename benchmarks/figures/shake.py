"""Shake's replays: a race in an app's own code, found by shake, replayed from its printed seed.

A real pytest suite (:data:`RACE_SUITE`): an "app" with its own SQLAlchemy engine on the test's
database checks whether a user has a welcome chat and, if not, inserts one; two concurrent calls
can both find none and both insert. One run with ``--threadcreator-shake=50`` hunts for a seed
under which the test fails; then each of :data:`REPLAYS` new pytest processes runs the test once
with ``--threadcreator-seed=<seed>``, as a user replaying the printed command would, and the
figure is how many of them fail the same way. The goal: at least 9 in 10.
"""

from __future__ import annotations

import re
import textwrap

from benchlib import Goal, Row, RowSpec, short_reason
from harness import BACKEND_NAMES, Context, log

__all__ = ["REPLAYS", "REPLAY_GOAL", "measure"]

#: Fresh-process replays of the seed shake printed.
REPLAYS = 10
REPLAY_GOAL = Goal("min_ratio", 0.9, "≥ 9 in 10")
SHAKE = 50
TIMEOUT_S = 300.0

RACE_SUITE = textwrap.dedent(
    '''
    """An app's race: check for the user's welcome chat, then insert one if none was found."""

    import time
    import uuid

    import pytest
    import pytest_asyncio
    from sqlalchemy import insert, select
    from sqlalchemy.ext.asyncio import create_async_engine

    from pytest_threadcreator.models import Message, Thread


    class App:
        def __init__(self, url):
            self.engine = create_async_engine(url)  # the app's own engine, not the plugin's

        async def welcome_once(self, user_id):
            async with self.engine.connect() as conn:
                found = (
                    await conn.execute(select(Thread.id).where(Thread.user_id == user_id))
                ).first()
            if found is not None:
                return
            now = int(time.time())
            thread_id = "thread_" + uuid.uuid4().hex
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(Thread).values(
                        id=thread_id, object="thread", user_id=user_id, status="active",
                        created_at=now,
                        metadata_={"user_id": user_id, "status": "active", "created_at": now},
                    )
                )
                await conn.execute(
                    insert(Message).values(
                        id="msg_" + uuid.uuid4().hex, object="thread.message",
                        thread_id=thread_id, role="user", created_at=now, file_ids=[],
                        metadata_={"initial_message": True},
                        content=[{"type": "text", "text": {"value": "Welcome!", "annotations": []}}],
                    )
                )

        async def chats(self, user_id):
            async with self.engine.connect() as conn:
                rows = await conn.execute(select(Thread.id).where(Thread.user_id == user_id))
                return [row[0] for row in rows]


    @pytest_asyncio.fixture
    async def app(threadcreator_db):
        app = App(threadcreator_db.url)
        yield app
        await app.engine.dispose()


    @pytest.mark.asyncio
    async def test_welcome_chat_is_created_once(app, run_concurrently):
        report = await run_concurrently(lambda _: app.welcome_once("ann"), 2)
        report.raise_errors()
        assert len(await app.chats("ann")) == 1
    '''
)

_FOUND = re.compile(r"failed under seed (\d+); replay exactly that schedule")
NODE = "test_bench.py::test_welcome_chat_is_created_once"


def _spec(backend: str) -> RowSpec:
    return RowSpec(
        key=f"shake.{backend}",
        group="shake",
        figure=f"Shake, {BACKEND_NAMES[backend]}: an app's race replayed from its printed seed",
        unit="count",
        goal=REPLAY_GOAL,
        ratio_label=" of replays failed",
    )


def measure(ctx: Context) -> list[Row]:
    """Per backend: shake finds the app's race once, then new processes replay its seed."""
    directory = ctx.workspace.suite("shake-race", RACE_SUITE)
    rows: list[Row] = []
    for backend, db, reason in ctx.targets(("sqlite", "postgresql", "mysql")):
        spec = _spec(backend)
        if reason is not None:
            rows.append(spec.missing(reason))
            continue
        option = f"--threadcreator-db={db}"
        hunt = ctx.workspace.run(
            directory, [option, f"--threadcreator-shake={SHAKE}"], timeout=TIMEOUT_S
        )
        found = _FOUND.search(hunt.output)
        if found is None:
            problem = f"shake ×{SHAKE} did not report a failing seed: {short_reason(hunt.reason())}"
            log(f"shake {backend}: {problem}")
            rows.append(spec.missing(problem))
            continue
        seed = found.group(1)
        outcomes: list[str] = []
        for _ in range(REPLAYS):
            run = ctx.workspace.run(
                directory, [option, f"--threadcreator-seed={seed}", NODE], timeout=TIMEOUT_S
            )
            if run.counts.get("failed") == 1 and "assert 2 == 1" in run.output:
                outcomes.append("failed")
            elif run.ok(1):
                outcomes.append("passed")
            else:
                outcomes.append(f"broken: {short_reason(run.reason())}")
        failed = outcomes.count("failed")
        broken = [o for o in outcomes if o.startswith("broken")]
        log(f"shake {backend}: seed {seed}, {failed} of {REPLAYS} replays failed; {broken or ''}")
        rows.append(
            spec.measured(
                float(failed),
                baseline=float(REPLAYS),
                baseline_label="replays, each a new pytest process",
                ratio=failed / REPLAYS,
                warning=f"{len(broken)} replay(s) broke: {broken[0]}" if broken else "",
                extra={"seed": seed, "outcomes": outcomes, "hunt_wall_s": hunt.wall_s},
            )
        )
    return rows

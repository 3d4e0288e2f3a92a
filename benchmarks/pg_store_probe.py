"""Probe of the PostgreSQL data path and per-test costs, side by side with raw asyncpg.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/pg_store_probe.py [--url URL] [--local]``
(default URL: ``$THREADCREATOR_POSTGRES_URL`` or postgresql+asyncpg://postgres@127.0.0.1:5432/postgres).

Measures:

* local cluster start (initdb + pg_ctl start) and stop;
* template preparation, per-database ``CREATE DATABASE … TEMPLATE`` (both strategies on
  PostgreSQL 15+) and ``DROP … WITH (FORCE)``;
* ``PgStore.reset()`` (DELETEs) against TRUNCATE, on empty and on filled tables;
* create throughput, 200 concurrent calls from the caller's own event loop:
  ``PgStore.create`` (fast path: one CTE statement; stepwise path: explicit transaction) against
  raw asyncpg on the caller's loop (pool of 10, ``BEGIN; INSERT; INSERT; COMMIT``) and raw
  asyncpg with the same one-statement CTE (shows what crossing to the background loop costs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from pytest_threadcreator.backends.pg_local import LocalCluster
from pytest_threadcreator.backends.pg_names import new_run_id
from pytest_threadcreator.backends.postgresql import (
    PgStore,
    PostgresBackend,
    _connect_kwargs,
    _create_sql,
    _init_connection,
)
from pytest_threadcreator.ids import new_message_id, new_thread_id
from pytest_threadcreator.schema import NewThread, default_schema

SCHEMA = default_schema()
CONCURRENCY = 200
ROUNDS = 7


def _rows() -> tuple[dict[str, Any], dict[str, Any]]:
    new = NewThread(
        thread_id=new_thread_id(),
        message_id=new_message_id(),
        user_id="user_probe",
        run_id="run_probe",
        message="hello " * 10,
        title="probe",
        role="user",
        metadata={"source": "probe"},
        created_at=int(time.time()),
        context=None,
    )
    return SCHEMA.thread_row(new), SCHEMA.message_row(new)


def _ms(values: list[float]) -> str:
    values = sorted(values)
    return (
        f"median {statistics.median(values) * 1000:.1f} ms "
        f"(min {values[0] * 1000:.1f}, max {values[-1] * 1000:.1f}, n={len(values)})"
    )


def probe_local_cluster(runs: int = 3) -> None:
    starts, stops = [], []
    for _ in range(runs):
        cluster = LocalCluster()
        began = time.perf_counter()
        cluster.start()
        starts.append(time.perf_counter() - began)
        began = time.perf_counter()
        cluster.stop()
        stops.append(time.perf_counter() - began)
    print(f"local cluster start (initdb + pg_ctl start -w): {_ms(starts)}")
    print(f"local cluster stop (pg_ctl stop -m immediate + rm -r): {_ms(stops)}")


async def _interleaved(variants: dict[str, Callable[[], Awaitable[None]]]) -> dict[str, float]:
    """Median creates/s of each variant; rounds interleave the variants so load drift is shared."""
    rates: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(ROUNDS):
        for label, call in variants.items():
            began = time.perf_counter()
            await asyncio.gather(*(call() for _ in range(CONCURRENCY)))
            rates[label].append(CONCURRENCY / (time.perf_counter() - began))
    for label, values in rates.items():
        print(
            f"  {label:<54} {statistics.median(values):7.0f} creates/s "
            f"(median of {ROUNDS} x {CONCURRENCY}, best {max(values):.0f})"
        )
    return {label: statistics.median(values) for label, values in rates.items()}


async def probe_throughput(store: PgStore, connect: dict[str, Any]) -> None:
    sql = _create_sql(SCHEMA, *_rows())
    raw_pool = await asyncpg.create_pool(min_size=10, max_size=10, init=_init_connection, **connect)
    plain_pool = await asyncpg.create_pool(min_size=10, max_size=10, **connect)

    async def store_fast() -> None:
        await store.create(*_rows(), explicit_id=False)

    async def store_stepwise() -> None:
        await store.create(*_rows(), explicit_id=False, decide=lambda step: None)

    def params(pool_rows: tuple[dict[str, Any], dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        t, m = pool_rows
        return sql.thread_plan.params(t), sql.message_plan.params(m)

    async def raw_transaction() -> None:
        t_params, m_params = params(_rows())
        async with raw_pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute(sql.thread, *t_params)
            await conn.execute(sql.message, *m_params)
            await conn.execute("COMMIT")

    async def raw_cte(pool: Any) -> None:
        t, m = _rows()
        args = sql.thread_plan.params(t) + sql.message_plan.params(
            m, skip=sql.message_thread_column
        )
        async with pool.acquire() as conn:
            await conn.execute(sql.combined, *args)

    async def raw_cte_codec() -> None:
        await raw_cte(raw_pool)

    async def raw_cte_plain() -> None:
        await raw_cte(plain_pool)

    # warm up every path (pool growth, prepared statements)
    for fn in (store_fast, store_stepwise, raw_transaction, raw_cte_codec, raw_cte_plain):
        await asyncio.gather(*(fn() for _ in range(20)))
    print(f"create throughput, {CONCURRENCY} concurrent calls, pools of 10:")
    raw = "raw asyncpg, caller loop, BEGIN;INSERT;INSERT;COMMIT"
    fast = "PgStore.create fast path (one CTE, background loop)"
    results = await _interleaved(
        {
            raw: raw_transaction,
            fast: store_fast,
            "PgStore.create stepwise (fault-injector path)": store_stepwise,
            "raw asyncpg, caller loop, same CTE (json codec init)": raw_cte_codec,
            "raw asyncpg, caller loop, same CTE (no codec init)": raw_cte_plain,
        }
    )
    print(
        f"  ratio PgStore fast path / raw asyncpg transaction: {results[fast] / results[raw]:.2f}x"
    )
    await raw_pool.close()
    await plain_pool.close()


def probe_databases(url: str, runs: int = 10) -> None:
    backend = PostgresBackend("url", url=url, run_id=new_run_id(), worker_id="probe")
    backend.start()
    try:
        began = time.perf_counter()
        backend.prepare_template(SCHEMA, None)
        print(
            f"template (CREATE DATABASE + create_all + seal): {(time.perf_counter() - began) * 1000:.1f} ms"
        )
        creates, drops = [], []
        for i in range(runs):
            began = time.perf_counter()
            database = backend.create_database(f"probe {i}", isolation="fresh")
            creates.append(time.perf_counter() - began)
            began = time.perf_counter()
            backend.drop_database(database)
            drops.append(time.perf_counter() - began)
        print(f"create database from template (default strategy): {_ms(creates)}")
        print(f"drop database WITH (FORCE): {_ms(drops)}")
        if int(backend.version.split(".")[0]) >= 15:
            file_copy = []
            for i in range(runs):
                name = f"tc_{backend.run_id}_probe_fc{i}"
                began = time.perf_counter()
                backend._admin_run(
                    lambda conn, name=name: conn.execute(
                        f'CREATE DATABASE "{name}" TEMPLATE "{backend.template}" STRATEGY FILE_COPY'
                    )
                )
                file_copy.append(time.perf_counter() - began)
                backend._admin_run(lambda conn, name=name: conn.execute(f'DROP DATABASE "{name}"'))
            print(f"create database from template (STRATEGY FILE_COPY): {_ms(file_copy)}")

        database = backend.create_database("probe reset", isolation="clean")
        store = database.store
        assert isinstance(store, PgStore)
        connect = dict(_connect_kwargs(backend._url), database=database.name)  # type: ignore[arg-type]

        async def fill(n: int) -> None:
            await asyncio.gather(*(store.create(*_rows(), explicit_id=False) for _ in range(n)))

        async def truncate() -> float:
            conn = await asyncpg.connect(**connect)
            try:
                began = time.perf_counter()
                await conn.execute("TRUNCATE messages, threads RESTART IDENTITY CASCADE")
                return time.perf_counter() - began
            finally:
                await conn.close()

        for rows in (0, 100, 2000):
            deletes, truncates = [], []
            for _ in range(5):
                asyncio.run(fill(rows))
                began = time.perf_counter()
                store.reset()
                deletes.append(time.perf_counter() - began)
                asyncio.run(fill(rows))
                truncates.append(asyncio.run(truncate()))
            print(
                f"reset with {rows:>4} threads: PgStore.reset (DELETE, TRUNCATE from 500 rows) {_ms(deletes)}"
            )
            print(f"                  TRUNCATE … RESTART IDENTITY CASCADE {_ms(truncates)}")
        store.reset()
        asyncio.run(probe_throughput(store, connect))
        backend.drop_database(database)
    finally:
        backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "THREADCREATOR_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--local", action="store_true", help="also run on a throwaway cluster")
    args = parser.parse_args()
    probe_local_cluster()
    print(f"\n== server {args.url}")
    probe_databases(args.url)
    if args.local:
        cluster = LocalCluster()
        cluster.start()
        try:
            print(f"\n== local cluster {cluster.socket_dir}")
            probe_databases(cluster.url)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()

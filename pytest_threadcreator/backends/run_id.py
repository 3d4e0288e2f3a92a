"""Run ids: what names a run in its databases' names, marks and locks (on every server kind).

Kept apart from the PostgreSQL janitor, which uses it, so that making one loads no backend.
"""

from __future__ import annotations

import os
import time

__all__ = ["BASE36", "new_run_id"]

BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_run_id() -> str:
    """A fresh run id: 14 base36 characters, 6 of the time then 8 random (about 41 bits).

    Runs started in the same second must not share an id: the id keys the run's lock and its
    ownership marks. With 8 random characters, 200 ids made in one second collide with a
    chance below one in 100 million (4 characters gave about one in 80).
    """
    stamp = _base36(int(time.time()) % 36**6, 6)
    rand = _base36(int.from_bytes(os.urandom(6), "big") % 36**8, 8)
    return stamp + rand


def _base36(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, 36)
        out.append(BASE36[digit])
    return "".join(reversed(out))

"""Time-ordered ids: ``thread_``/``msg_``/``run_``/``req_`` + 32 hex chars in the UUID version 7 layout.

Within one process the ids are strictly increasing, so ``ORDER BY created_at, id`` keeps
creation order even when many rows share one ``created_at`` second.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_id", "new_message_id", "new_thread_id", "new_uuid"]

_RANDOM_BITS = 74  # 12 bits of rand_a + 62 bits of rand_b
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def _uuid7_hex() -> str:
    global _last_ms, _last_random
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms > _last_ms:
            random_part = int.from_bytes(os.urandom(10), "big") >> 6  # 74 random bits
        else:
            # Same (or an earlier, clock went back) millisecond: count up so order holds.
            ms = _last_ms
            random_part = _last_random + 1
            if random_part > _RANDOM_MASK:
                ms += 1
                random_part = 0
        _last_ms, _last_random = ms, random_part
    rand_a = random_part >> 62
    rand_b = random_part & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return f"{value:032x}"


def new_id(prefix: str) -> str:
    """Return ``prefix`` followed by 32 hex chars of a time-ordered UUID."""
    return prefix + _uuid7_hex()


def new_thread_id() -> str:
    """Return a new ``thread_…`` id."""
    return "thread_" + _uuid7_hex()


def new_message_id() -> str:
    """Return a new ``msg_…`` id."""
    return "msg_" + _uuid7_hex()


def new_uuid() -> str:
    """Return a time-ordered UUID (version 7 layout) in its 36-character text form.

    For schemas whose id columns hold plain UUID strings: ``ThreadSchema(...,
    thread_id_factory=new_uuid, message_id_factory=new_uuid)``.
    """
    h = _uuid7_hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

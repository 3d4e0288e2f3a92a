"""Where the throwaway clusters of :mod:`.local` live: their parent directory (memory when it
has room, else ``/tmp``) and the pristine ``initdb`` output cached beside them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "INITDB_ARGS",
    "MEMORY_MIN_FREE",
    "MEMORY_PARENT",
    "STAGING_PREFIX",
    "default_parents",
    "initdb_cache_path",
    "remove_stale_staging",
    "short_parent",
    "trusted_cache",
]

#: initdb's arguments (after ``-D``): part of the cache key.
INITDB_ARGS = (
    "-A",
    "trust",
    "-U",
    "postgres",
    "-E",
    "UTF8",
    "--no-locale",
    "--no-sync",
    "--no-instructions",
)
_CACHE_PREFIX = "threadcreator-initdb-"
STAGING_PREFIX = ".threadcreator-initdb-"
#: A staging directory older than this was left by a run killed while filling the cache.
_STALE_STAGING_S = 600.0


def initdb_cache_path(
    parent: str, bindir: str, args: Sequence[str], user: pwd.struct_passwd | None
) -> Path:
    """Where the pristine ``initdb`` output for these binaries, arguments and user is cached."""
    initdb = os.path.join(bindir, "initdb")
    try:
        info = os.stat(initdb)
        binary = f"{os.path.realpath(initdb)}:{info.st_size}:{info.st_mtime_ns}"
    except OSError:
        binary = initdb
    uid = os.geteuid() if user is None else user.pw_uid
    key = hashlib.sha256("\0".join([binary, *args]).encode()).hexdigest()[:16]
    return Path(parent) / f"{_CACHE_PREFIX}{uid}-{key}"


def trusted_cache(cache: Path, user: pwd.struct_passwd | None) -> bool:
    """A directory (not a link) owned by the server's user that nobody else can write."""
    try:
        info = os.lstat(cache)
    except OSError:
        return False
    uid = os.geteuid() if user is None else user.pw_uid
    return stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o022


def remove_stale_staging(parent: Path) -> None:
    """Remove staging directories that runs killed while filling the cache left behind."""
    for path in parent.glob(STAGING_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if time.time() - path.lstat().st_mtime > _STALE_STAGING_S:
                shutil.rmtree(path, ignore_errors=True)


#: Memory-backed and short: preferred parent of the clusters when it has room. Creating a file
#: there costs microseconds; on a disk filesystem it can cost most of a millisecond, and
#: ``initdb``'s output and every database hold hundreds of files.
MEMORY_PARENT = "/dev/shm"
#: Free space MEMORY_PARENT must have to be chosen (a container's default /dev/shm is 64 MB).
MEMORY_MIN_FREE = 1 << 30


def _usable(directory: str) -> bool:
    return os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)


def _roomy(directory: str) -> bool:
    try:
        info = os.statvfs(directory)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize >= MEMORY_MIN_FREE


def short_parent() -> str:
    """Where clusters live: :data:`MEMORY_PARENT` when usable with room, else ``/tmp``, else the
    system temp dir (all short: socket paths)."""
    if _usable(MEMORY_PARENT) and _roomy(MEMORY_PARENT):
        return MEMORY_PARENT
    if _usable("/tmp"):
        return "/tmp"
    return tempfile.gettempdir()


def default_parents() -> list[str]:
    """Every directory :func:`short_parent` may choose (crashed runs' clusters are swept in
    each, whichever one the next run picks)."""
    return [d for d in dict.fromkeys((MEMORY_PARENT, "/tmp", tempfile.gettempdir())) if _usable(d)]

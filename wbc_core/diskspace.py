"""Free-space checks before large writes, and one plain "disk full" error for every writer (import, checkpoints).

A full disk is a normal event on a shared machine, not a crash: the writer checks the free space before it starts
when it can estimate the size, removes what it half-wrote when the disk fills anyway, and raises `DiskFull`, whose
message says how much was needed and how much is free where. Freeing the partial files also leaves room for the
database to record the failure, so a job ends "failed: disk full" instead of dying as "killed or crashed".
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

_MB = 1_000_000  # decimal megabytes, as `df -H` and file managers show them
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # EDQUOT: a quota is as full as a disk
RESERVE_BYTES = 8 * _MB  # kept free beyond an estimate: the database must still record what happened
NEARLY_FULL_BYTES = 1 * _MB  # a write that fails with less than this free failed because the disk is full


class DiskFull(OSError):
    """The disk (or quota) holding a folder has too little space for a write; the message says how much."""

    def __init__(self, folder: str | os.PathLike[str], needed_bytes: int | None, free: int | None = None) -> None:
        self.folder = Path(folder)
        self.needed_bytes = int(needed_bytes) if needed_bytes else None  # None: the writer could not estimate it
        self.free_bytes = free_bytes(self.folder) if free is None else int(free)
        needed = f"{_mb(self.needed_bytes)} MB needed, " if self.needed_bytes else ""
        super().__init__(
            f"disk full: {needed}{_mb(self.free_bytes)} MB free in {self.folder}. "
            "Free some space on that disk (or move the data folder to a bigger one), then try again."
        )
        self.errno = errno.ENOSPC  # handlers that test errno see what the operating system would have said


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes free for this user on the disk holding folder (or its nearest existing parent)."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def ensure_free(folder: str | os.PathLike[str], needed_bytes: int) -> None:
    """Raise DiskFull unless folder's disk has needed_bytes plus a small reserve free."""
    free = free_bytes(folder)
    if free < needed_bytes + RESERVE_BYTES:
        raise DiskFull(folder, needed_bytes + RESERVE_BYTES, free)


def is_disk_full(exc: BaseException, folder: str | os.PathLike[str] | None = None) -> bool:
    """Whether an exception means the disk or quota is full.

    With folder, a failure while that folder's disk has (almost) nothing left also counts: torch.save reports a
    full disk from its C++ writer as a RuntimeError ("unexpected pos ...") without any errno. Call it before the
    partial file is removed, while the disk is still full.
    """
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc)
    if "No space left on device" in text or "database or disk is full" in text:  # the latter: SQLite's words
        return True
    return folder is not None and isinstance(exc, Exception) and free_bytes(folder) < NEARLY_FULL_BYTES


def payload_bytes(obj: object) -> int:
    """Bytes of the arrays (tensors, numpy arrays) inside nested dicts, lists and tuples: a checkpoint's size."""
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(obj, Mapping):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    if isinstance(obj, (bytes, bytearray, str)):
        return len(obj)
    return 0


def _mb(n: int) -> str:
    value = n / _MB
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"

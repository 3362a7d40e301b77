"""Staging folders: an import writes its files under WBC_HOME/staging/<name>/ and moves them into images/<name>
only after the database has committed the dataset, so a crash, a kill -9, a full disk or a lost race never leaves
files that no dataset owns.

    staging/<name>/owner.json   who writes here: pid, host, start time; its mtime is the writer's heartbeat
    staging/<name>/cells/...    the files, laid out as they will be under images/<name>/

`clean_stale_staging` runs whenever a process context is built: it removes the folders of writers that are gone.
The one case where a dead writer's files are still wanted (it died between the database commit and the move) is
recognised by asking the database whether it refers to images/<name>/, and the move is then finished instead.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from wbc_core.diskspace import DiskFull, is_disk_full

if TYPE_CHECKING:
    from wbc_core.context import Context

OWNER_FILE = "owner.json"
CELLS = "cells"
STALE_HOURS = 24.0  # a folder whose writer stopped beating this long ago is stale even if its pid looks alive
_BEAT_SECONDS = 30.0  # how often a writer refreshes its heartbeat
_NO_OWNER_GRACE_SECONDS = 600.0  # a folder without owner file younger than this may be one being created


class Staging:
    """One import's half-written files, private to this writer until `commit` moves them into images/."""

    def __init__(self, ctx: Context) -> None:
        self.name = f"import_{int(time.time() * 1000)}_{secrets.token_hex(4)}"
        self.home = ctx.home
        self.root = ctx.paths.staging / self.name
        self.cells = self.root / CELLS
        self.target = ctx.paths.images / self.name  # where the files live once committed
        try:
            self.root.mkdir(parents=True)
            (self.root / OWNER_FILE).write_text(json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
            self.cells.mkdir()
        except OSError as exc:
            self.discard()
            if is_disk_full(exc):
                raise DiskFull(ctx.home, None) from exc
            raise
        self._folders: dict[str, Path] = {}
        self._last_beat = time.monotonic()

    def write(self, folder: str, filename: str, content: bytes) -> str:
        """Write one file under cells/<folder>/; return the path it will have after commit, relative to the home."""
        path = self._folder(folder) / filename
        path.write_bytes(content)
        if time.monotonic() - self._last_beat > _BEAT_SECONDS:
            self._last_beat = time.monotonic()
            os.utime(self.root / OWNER_FILE)
        return (self.target / folder / filename).relative_to(self.home).as_posix()

    def _folder(self, name: str) -> Path:
        folder = self._folders.get(name)
        if folder is None:
            folder = self.cells / name
            # The names come from validated class names; this guards the layout itself against "..", "a/b", "".
            if not name or folder.parent != self.cells or name in (".", ".."):
                raise ValueError(f"{name!r} cannot be a folder name for stored cells")
            folder.mkdir(exist_ok=True)
            self._folders[name] = folder
        return folder

    def commit(self) -> None:
        """Move the files into images/<name> (call after the database committed), then drop the staging folder."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.cells, self.target)  # one rename: the files appear all at once
        except OSError:
            if self.target.exists():
                raise
            shutil.move(self.cells, self.target)  # images/ on another disk (a symlink): copy, then delete
        shutil.rmtree(self.root, ignore_errors=True)

    def discard(self) -> None:
        """Remove everything this writer staged."""
        shutil.rmtree(self.root, ignore_errors=True)


def clean_stale_staging(ctx: Context, stale_hours: float = STALE_HOURS) -> list[str]:
    """Remove staging folders whose writer is gone (finishing the move where the database has the dataset).

    Returns the names of the folders it handled. Never touches a folder whose writer is alive on this host.
    """
    root = ctx.paths.staging
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:  # no staging folder yet: nothing to do
        return []
    handled = []
    for folder in folders:
        if not _is_stale(folder, stale_hours):
            continue
        cells = folder / CELLS
        target = ctx.paths.images / folder.name
        if cells.is_dir() and not target.exists():
            try:
                committed = _database_refers_to(ctx, target)
            except Exception:  # noqa: BLE001 - a database that cannot answer now: keep the files for the next start
                continue
            if committed:
                try:
                    os.replace(cells, target)
                except OSError:  # another process starting at the same time got there first, or cannot now
                    continue
        shutil.rmtree(folder, ignore_errors=True)
        handled.append(folder.name)
    return handled


def _is_stale(folder: Path, stale_hours: float) -> bool:
    owner_file = folder / OWNER_FILE
    try:
        owner = json.loads(owner_file.read_text())
        beat = owner_file.stat().st_mtime
    except (OSError, ValueError):
        try:
            return time.time() - folder.stat().st_mtime > _NO_OWNER_GRACE_SECONDS
        except OSError:
            return False
    if time.time() - beat > stale_hours * 3600:
        return True
    if owner.get("host") != socket.gethostname():
        return False  # another machine's writer (a shared home): only its heartbeat can tell
    return not _pid_alive(owner.get("pid"))


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped) still answers kill -0
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _database_refers_to(ctx: Context, target: Path) -> bool:
    from db.datasets import has_images_under

    return has_images_under(target.relative_to(ctx.home).as_posix() + "/", ctx.database)

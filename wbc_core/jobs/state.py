"""Job state: create, cancel, wait for and reconcile runs. The database is the only channel to a worker.

The worker writes its heartbeat, progress and metrics there and reads its cancel flag from there, so a
closed tab, a page reload or a restarted UI never loses a job. A job whose process died (killed, OOM,
machine reboot) is found by `reconcile()` and marked failed with the reason.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import runs as runs_db
from db.models import utcnow
from wbc_core.context import current
from wbc_core.jobs import launcher
from wbc_core.jobs.kinds import kind as job_kind

if TYPE_CHECKING:
    from wbc_core.auth import User

HEARTBEAT_SECONDS = 2.0  # worker heartbeat cadence; also how often it re-reads the cancel flag
STALE_SECONDS = 60.0  # a running job silent this long is dead, whatever its pid says
START_GRACE_SECONDS = 120.0  # a queued job may take this long to import torch and report in
RECONCILE_EVERY_SECONDS = 5.0  # reconcile_if_due() runs a reconcile at most this often per process

_last_reconcile = 0.0


def run_dir(run_id: int) -> Path:
    """The folder of one run's files (checkpoints, grids, model, worker log)."""
    return current().paths.run_dir(run_id)


def submit(kind: str, dataset_id: int | None, config: dict[str, Any], *, seed: int = 0, started_by: str | None = None,
           launch: bool = True, **run_fields: Any) -> int:
    """Create a queued run of a job kind and (by default) launch its worker; return the run id."""
    job_kind(kind)  # refuses unknown kinds before anything is written
    run_id = runs_db.create_run(kind, dataset_id, config, seed=seed, started_by=started_by, **run_fields)
    if launch:
        launcher.launch(run_id)
    return run_id


def check_cancel(run: runs_db.RunInfo, user: User) -> User:
    """The acting user if they may stop this run: the train permission, or the run is their own."""
    from wbc_core.auth import PermissionDenied, authorize, can

    acting = authorize(user, "view")
    if not can(acting, "train") and run.started_by != acting.username:
        raise PermissionDenied(f"{acting.role} '{acting.username}' may not cancel run {run.id}, which "
                               f"{run.started_by or 'someone else'} started; ask an admin")
    return acting


def cancel(run_id: int, user: User) -> bool:
    """Ask a run to stop at its next step (the worker saves a checkpoint and exits), on behalf of user.

    Allowed with the train permission or for one's own run (PermissionDenied otherwise); records who asked.
    False if the run had already ended."""
    acting = check_cancel(runs_db.get_run(run_id), user)
    return runs_db.request_cancel(run_id, acting.username)


def request_stop(run_id: int, by: str) -> bool:
    """The system's own stop, without a role check (e.g. a group rolling back its queued runs, a Ctrl-C of the
    process that follows the run). by names the part that asked, as "system:<what>"; never call it for a user."""
    if not by.startswith("system:"):
        raise ValueError(f"request_stop is for the system itself (by='system:...'), got {by!r}; use cancel()")
    return runs_db.request_cancel(run_id, by)


def pid_alive(pid: int | None) -> bool:
    """Whether a process exists and is not a zombie (a dead child not yet reaped still answers kill -0)."""
    if not pid:
        return False
    launcher.reap()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill -0


def reconcile() -> list[int]:
    """Mark runs whose worker died as failed; return their ids. The only place that does so."""
    global _last_reconcile
    _last_reconcile = time.monotonic()
    failed: list[int] = []
    now = utcnow()
    host = socket.gethostname()
    for run in runs_db.active_runs():
        age = (now - (run.heartbeat_at or run.created_at)).total_seconds()
        # The pid only means something on the machine that launched the worker; elsewhere
        # (a shared PostgreSQL) the heartbeat alone decides.
        gone = run.pid is not None and run.hostname == host and not pid_alive(run.pid)
        if run.status == "running":
            dead = age > STALE_SECONDS or gone
        else:  # queued: launched but never reported in
            dead = age > START_GRACE_SECONDS or (gone and age > 5)
        if dead and runs_db.finish_run(run.id, "failed", error=_death_reason(run.id, age)):
            failed.append(run.id)
    return failed


def reconcile_if_due() -> list[int]:
    """reconcile(), at most every RECONCILE_EVERY_SECONDS in this process (the app frame calls it per rerun)."""
    if time.monotonic() - _last_reconcile < RECONCILE_EVERY_SECONDS:
        return []
    return reconcile()


def _death_reason(run_id: int, age: float) -> str:
    tail = ""
    info = runs_db.get_run(run_id)
    if info.log_path:
        path = current().absolute(info.log_path)
        if path.exists():
            tail = path.read_text(errors="replace")[-2000:]
    message = (f"the worker process (pid {info.pid}) stopped without reporting back "
               f"(last heartbeat {age:.0f} s ago); it was killed or crashed.")
    if "No space left on device" in tail or "DiskFull: disk full:" in tail:  # the OS's words, or wbc_core.diskspace
        message = ("the disk is full: the worker could not write its files "
                   f"(free space in {current().home}: {_free_mb(current().home):.0f} MB). Free some space, "
                   "then resume the run.")
    if tail.strip():
        message += f"\nLast lines of its log:\n{tail}"
    return message


def _free_mb(path: Path) -> float:
    import shutil

    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return float("nan")


def wait(run_id: int, timeout: float | None = None, poll: float = 0.5, on_poll=None) -> runs_db.RunInfo:  # noqa: ANN001
    """Block until a run ends (or timeout seconds pass); on_poll(run_info) is called at each poll."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        reconcile()
        info = runs_db.get_run(run_id)
        if on_poll is not None:
            on_poll(info)
        if not info.active:
            return info
        if deadline is not None and time.monotonic() > deadline:
            return info
        time.sleep(poll)


def kill(run_id: int) -> None:
    """Hard-kill a run's worker (tests and emergencies only; normal stops go through cancel())."""
    info = runs_db.get_run(run_id)
    if info.pid and pid_alive(info.pid):
        os.killpg(info.pid, signal.SIGKILL)

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
from wbc_core.jobs import executors, launcher
from wbc_core.jobs.kinds import kind as job_kind

if TYPE_CHECKING:
    from wbc_core.auth import User

HEARTBEAT_SECONDS = 2.0  # worker heartbeat cadence; also how often it re-reads the cancel flag
STALE_SECONDS = 60.0  # a running job silent this long is dead, whatever its pid says
START_GRACE_SECONDS = 120.0  # a queued job may take this long to import torch and report in
RECONCILE_EVERY_SECONDS = 5.0  # reconcile_if_due() runs a reconcile at most this often per process
CANCEL_GRACE_SECONDS = 60.0  # a cancelled Ray job still running this long after is stopped through Ray

_last_reconcile = 0.0


def run_dir(run_id: int) -> Path:
    """The folder of one run's files (checkpoints, grids, model, worker log)."""
    return current().paths.run_dir(run_id)


def submit(kind: str, dataset_id: int | None, config: dict[str, Any], *, seed: int = 0, started_by: str | None = None,
           launch: bool = True, **run_fields: Any) -> int:
    """Create a queued run of a job kind and (by default) launch its worker; return the run id."""
    job_kind(kind)  # refuses unknown kinds before anything is written
    if launch:
        executors.check_ready(current().settings, kind)  # a Ray address that does not answer: nothing queued
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
    return _stop_ray_job_if_ended(run_id, runs_db.request_cancel(run_id, acting.username))


def request_stop(run_id: int, by: str) -> bool:
    """The system's own stop, without a role check (e.g. a group rolling back its queued runs, a Ctrl-C of the
    process that follows the run). by names the part that asked, as "system:<what>"; never call it for a user."""
    if not by.startswith("system:"):
        raise ValueError(f"request_stop is for the system itself (by='system:...'), got {by!r}; use cancel()")
    return _stop_ray_job_if_ended(run_id, runs_db.request_cancel(run_id, by))


def _stop_ray_job_if_ended(run_id: int, asked: bool) -> bool:
    """After a cancel: a Ray run cancelled while queued is stopped in Ray too (Ray would still start it)."""
    if asked:
        info = runs_db.get_run(run_id)
        ray = _ray_executor() if info.executor == "ray" and not info.active else None
        if ray is not None:
            ray.stop(info.external_id)
    return asked


def _ray_executor() -> executors.RayExecutor | None:
    """The Ray executor of this context, None when WBC_RAY_ADDRESS is not set here (the heartbeat decides then)."""
    settings = current().settings
    return executors.RayExecutor(settings.ray_address) if settings.ray_address else None


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
        if run.executor == "ray":  # the pid means nothing here: Ray's job status and the heartbeat decide
            ended = _reconcile_ray(run, age)
            if ended is not None and runs_db.finish_run(run.id, ended[0], error=ended[1]) and ended[0] == "failed":
                failed.append(run.id)
            continue
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


def _reconcile_ray(run: runs_db.RunInfo, age: float) -> tuple[str, str] | None:
    """(final status, reason) for an active run of a Ray job that is gone or hung; None while it is fine."""
    ray = _ray_executor()
    status = ray.status(run.external_id) if ray is not None else None
    waiting_since = current().caches.get("ray_cancel_seen", dict)  # run id -> when this process saw the cancel
    if status in executors.RAY_ENDED:
        waiting_since.pop(run.id, None)
        if run.cancel_requested and status == "STOPPED":
            return "cancelled", "the Ray job was stopped after cancel"
        return "failed", _ray_death_reason(run, age, f"ended ({status})", ray.log_tail(run.external_id))
    if run.cancel_requested and status == "RUNNING":
        first = waiting_since.setdefault(run.id, time.monotonic())
        if time.monotonic() - first > CANCEL_GRACE_SECONDS:
            ray.stop(run.external_id)
            waiting_since.pop(run.id, None)
            return "cancelled", (f"the run did not stop within {CANCEL_GRACE_SECONDS:.0f} s of cancel; its Ray job "
                                 f"{run.external_id} was stopped")
    hung = (run.status == "running" and age > STALE_SECONDS) or (
        run.status == "queued" and status != "PENDING" and age > START_GRACE_SECONDS)  # PENDING: waits for a GPU
    if not hung:
        return None
    tail = ""
    if ray is not None:
        tail = ray.log_tail(run.external_id)
        ray.stop(run.external_id)
    return "failed", _ray_death_reason(run, age, f"went silent (Ray says {status or 'nothing'})", tail)


def _ray_death_reason(run: runs_db.RunInfo, age: float, what: str, tail: str) -> str:
    for line in tail.splitlines():  # the worker's own plain refusal (a worker that cannot see the shared home)
        if "cannot see WBC_HOME" in line:
            return line.strip() + f"\nLast lines of the Ray job's log:\n{tail}"
    message = (f"the Ray job {run.external_id} {what} without the run reporting back (last heartbeat {age:.0f} s "
               "ago): its worker was killed or crashed. Resume the run or start it again.")
    return message + (f"\nLast lines of the Ray job's log:\n{tail}" if tail.strip() else "")


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
    if info.executor == "ray":
        ray = _ray_executor()
        if ray is not None:
            ray.stop(info.external_id)
        return
    if info.pid and pid_alive(info.pid):
        os.killpg(info.pid, signal.SIGKILL)

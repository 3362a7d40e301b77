"""Background jobs: every long run (GAN, classifier) executes in its own OS process.

The database is the only channel between a worker and the UI/CLI: the worker writes its
heartbeat, progress and metrics there and reads its cancel flag from there, so a closed tab,
a page reload or a restarted UI never loses a job. A job whose process died (killed, OOM,
machine reboot) is found by `reconcile()` and marked failed with the reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from db import runs
from db.models import utcnow
from wbc_core.settings import runs_dir, wbc_home

HEARTBEAT_SECONDS = 2.0  # worker heartbeat cadence; also how often it re-reads the cancel flag
STALE_SECONDS = 60.0  # a running job silent this long is dead, whatever its pid says
START_GRACE_SECONDS = 120.0  # a queued job may take this long to import torch and report in
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_children: dict[int, subprocess.Popen] = {}


def run_dir(run_id: int) -> Path:
    """The folder of one run's files (checkpoints, grids, model, worker log)."""
    path = runs_dir() / f"run_{run_id:05d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def launch(run_id: int) -> int:
    """Start the worker process for a queued run and return its pid."""
    folder = run_dir(run_id)
    log_path = folder / "worker.log"
    runs.set_artifact_dir(run_id, str(folder.relative_to(wbc_home())), str(log_path.relative_to(wbc_home())))
    env = dict(os.environ)
    env["WBC_HOME"] = str(wbc_home())  # the worker must see the same home even if cwd differs
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    # Idle OpenMP threads otherwise spin-wait; with a GAN and a classifier job (or the UI) sharing two
    # cores that made training 10-20x slower in our measurements. Passive waiting costs nothing when alone.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(log_path, "ab") as log:
        # A new session detaches the worker from the terminal and from Streamlit's process group,
        # so Ctrl-C on the UI or a browser disconnect does not kill training.
        proc = subprocess.Popen(
            [sys.executable, "-m", "wbc_core.worker", str(run_id)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(PROJECT_ROOT),
            start_new_session=True,
        )
    _children[proc.pid] = proc
    runs.set_pid(run_id, proc.pid, socket.gethostname())
    return proc.pid


def cancel(run_id: int) -> bool:
    """Ask a run to stop at its next step; the worker saves a checkpoint and exits cleanly."""
    return runs.request_cancel(run_id)


def pid_alive(pid: int | None) -> bool:
    """Whether a process exists and is not a zombie (a dead child not yet reaped still answers kill -0)."""
    if not pid:
        return False
    _reap()
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


def _reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def reconcile() -> list[int]:
    """Mark runs whose worker died as failed; return their ids. Cheap: called by every page poll."""
    failed: list[int] = []
    now = utcnow()
    host = socket.gethostname()
    for run in runs.active_runs():
        age = (now - (run.heartbeat_at or run.created_at)).total_seconds()
        # The pid only means something on the machine that launched the worker; elsewhere
        # (a shared PostgreSQL) the heartbeat alone decides.
        gone = run.pid is not None and run.hostname == host and not pid_alive(run.pid)
        if run.status == "running":
            dead = age > STALE_SECONDS or gone
        else:  # queued: launched but never reported in
            dead = age > START_GRACE_SECONDS or (gone and age > 5)
        if dead:
            # Re-read: the worker may have finished cleanly between our two reads.
            reason = _death_reason(run.id, age)
            if runs.finish_run(run.id, "failed", error=reason):
                failed.append(run.id)
    return failed


def _death_reason(run_id: int, age: float) -> str:
    tail = ""
    info = runs.get_run(run_id)
    if info.log_path:
        path = wbc_home() / info.log_path
        if path.exists():
            tail = path.read_text(errors="replace")[-2000:]
    message = (f"the worker process (pid {info.pid}) stopped without reporting back "
               f"(last heartbeat {age:.0f} s ago); it was killed or crashed.")
    if tail.strip():
        message += f"\nLast lines of its log:\n{tail}"
    return message


def wait(run_id: int, timeout: float | None = None, poll: float = 0.5, on_poll=None) -> runs.RunInfo:  # noqa: ANN001
    """Block until a run ends (or timeout seconds pass); on_poll(run_info) is called at each poll."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        reconcile()
        info = runs.get_run(run_id)
        if on_poll is not None:
            on_poll(info)
        if not info.active:
            return info
        if deadline is not None and time.monotonic() > deadline:
            return info
        time.sleep(poll)


def kill(run_id: int) -> None:
    """Hard-kill a run's worker (tests and emergencies only; normal stops go through cancel())."""
    info = runs.get_run(run_id)
    if info.pid and pid_alive(info.pid):
        os.killpg(info.pid, signal.SIGKILL)

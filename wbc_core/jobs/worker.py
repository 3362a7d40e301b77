"""Worker process: `python -m wbc_core.worker RUN_ID` executes one run, whatever its kind.

It reports in (status running, pid), keeps a heartbeat thread alive, turns the training loop's
progress events into metric rows, and turns the database cancel flag (or SIGTERM) into the
loop's should_stop. Whatever happens, the run ends with a final status and, on failure, the error.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback

from db import runs
from wbc_core import context
from wbc_core.jobs.executors import check_shared_home
from wbc_core.jobs.kinds import kind as job_kind
from wbc_core.jobs.state import HEARTBEAT_SECONDS
from wbc_core.tracking import log_finished_run
from wbc_core.types import ProgressEvent


class JobContext:
    """What a run handler gets: progress and should_stop callbacks bound to the database."""

    def __init__(self, run: runs.RunInfo) -> None:
        self.run = run
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._fraction = 0.0
        self._message = "starting"

    # -- callbacks handed to training loops ------------------------------------------------------
    def progress(self, event: ProgressEvent) -> None:
        """Store an event's metrics and artifacts; the heartbeat thread publishes the progress line."""
        if event.metrics:
            runs.add_metrics(self.run.id, event.step, event.metrics)
        checkpoint = event.artifacts.get("checkpoint")
        grid = event.artifacts.get("grid")
        if checkpoint or grid:
            runs.add_checkpoint(self.run.id, event.step, self.relative(checkpoint) if checkpoint else "",
                                self.relative(grid) if grid else None)
        with self._lock:
            self._fraction = event.step / event.total if event.total else 0.0
            if event.message:
                self._message = event.message

    def should_stop(self) -> bool:
        """True once cancel was requested (read by the heartbeat thread) or SIGTERM arrived."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    @staticmethod
    def relative(path: str | os.PathLike[str]) -> str:
        """A path relative to the home when it lies inside it (so a moved home keeps working)."""
        return context.current().relative(path)

    # -- heartbeat ---------------------------------------------------------------------------------
    def beat(self) -> None:
        with self._lock:
            fraction, message = self._fraction, self._message
        if runs.heartbeat(self.run.id, fraction, message):
            self._stop.set()


def _heartbeat_loop(ctx: JobContext, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_SECONDS):
        try:
            ctx.beat()
        except Exception:  # noqa: BLE001 - a busy database must not kill the heartbeat thread
            traceback.print_exc()


def _report_unseen_home(settings: context.Settings, run_id: int, message: str) -> None:
    """Close the run as failed when its database lies outside the unseen home (else the app reads the log)."""
    if settings.db_url.startswith("sqlite") and not os.path.exists(settings.db_url.partition(":///")[2]):
        return  # a SQLite file in a home this machine cannot see: the app's reconcile reports the Ray log instead
    from db.engine import Database, bind

    database = Database(settings.db_url)
    bind(database)
    try:
        runs.finish_run(run_id, "failed", error=message)
    finally:
        bind(None)
        database.dispose()


# Jobs yield the CPU to the page server: an acceptance-model retrain that started on a reviewer's 50th decision
# made key presses wait behind it on a 2-core machine (bench/review.py: p95 key -> grid 394 ms at niceness 10,
# 288 ms at 19, 249 ms with no job). Alone on a machine a niced job runs at full speed; two jobs share as before.
JOB_NICENESS = 19


def lower_priority() -> int:
    """Raise this process's niceness to at least JOB_NICENESS (never lowers it); returns the niceness it has now."""
    try:
        return os.nice(max(0, JOB_NICENESS - os.nice(0)))
    except OSError:  # a platform or container that refuses; the job still runs
        return os.nice(0)


def main(run_id: int) -> int:
    """Execute one run to its end; the exit code is 0 unless the run failed."""
    settings = context.Settings.from_environ()
    unseen = check_shared_home(settings, run_id)  # before the context: building it would create an empty home
    if unseen:
        print(unseen, flush=True)
        _report_unseen_home(settings, run_id, unseen)
        return 3
    context.current("worker")  # builds the context from the environment the launcher set, schema applied
    if not runs.mark_started(run_id, os.getpid(), socket.gethostname()):
        print(f"run {run_id} is no longer queued (cancelled before it started?); nothing to do", flush=True)
        return 0
    run = runs.get_run(run_id)
    ctx = JobContext(run)
    signal.signal(signal.SIGTERM, lambda *_: ctx.request_stop())
    done = threading.Event()
    beater = threading.Thread(target=_heartbeat_loop, args=(ctx, done), daemon=True)
    beater.start()
    started = time.monotonic()
    print(f"run {run_id} ({run.kind}) started, pid {os.getpid()}", flush=True)
    try:
        result = job_kind(run.kind).load()(run, ctx)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the run row
        done.set()
        error = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"
        print(error, flush=True)
        runs.finish_run(run_id, "failed", error=error)
        return 1
    done.set()
    status = "cancelled" if ctx.should_stop() else "succeeded"
    try:
        ctx.beat()  # publish the last progress line, so a finished run does not show a stale one
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    result = {**result, "wall_seconds": round(time.monotonic() - started, 2)}
    runs.finish_run(run_id, status, result=result)
    print(f"run {run_id} {status}", flush=True)
    if status == "succeeded":
        log_finished_run(run_id)  # a copy in MLflow when MLFLOW_TRACKING_URI is set; warns, never raises
    return 0



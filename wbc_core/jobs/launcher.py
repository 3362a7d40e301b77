"""The one spawn: every background process (a run's worker, a group's chain) starts here."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from db import runs as runs_db
from wbc_core.context import SENTINEL_VARIABLE, Settings, current
from wbc_core.jobs.warm import WarmStarter

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Popen handles of processes started here, kept only so finished children are reaped (no zombies).
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()
# Processes that launch many jobs over their life keep a warm starter (wbc_core.jobs.warm); a CLI command starts
# one job and ends, so a starter would only import torch a second time beside it.
WARM_PROCESSES = ("app", "test", "bench")
# This process's starter, made on its first launch (or by prestart). Not on the context: it holds no setting and
# serves every home the process opens (tests and benches switch homes; a starter per context would import again).
_warm: WarmStarter | None = None
_warm_lock = threading.Lock()


def spawn(module: str, args: Sequence[str], log_path: Path, extra_env: Mapping[str, str] | None = None) -> int:
    """Start `python -m module args...` detached, logging to log_path, with this context's home; return its pid."""
    env = job_environ(current().settings, extra_env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid = _start_warm(module, args, env, log_path)
    if pid is not None:
        return pid
    with open(log_path, "ab") as log:
        # A new session detaches the process from the terminal and from Streamlit's process group,
        # so Ctrl-C on the UI or a browser disconnect does not kill training.
        proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(PROJECT_ROOT),
                                start_new_session=True)
    with _children_lock:
        reap()
        _children[proc.pid] = proc
    return proc.pid


def job_environ(settings: Settings, extra_env: Mapping[str, str]) -> dict[str, str]:
    """A local job's whole environment: this process's, the context's settings and the run's own variables."""
    inherited = {k: v for k, v in os.environ.items() if k != SENTINEL_VARIABLE}  # a token belongs to one run only
    return {**inherited, **worker_environ(settings, os.environ), **extra_env}


def worker_environ(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a worker process needs on top of its machine's environment (also a Ray job's env_vars)."""
    base = base or {}
    env = settings.child_environ()  # the child builds the same context, whatever its cwd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), base.get("PYTHONPATH")]))
    # Idle OpenMP threads otherwise spin-wait; with a GAN and a classifier job (or the UI) sharing two
    # cores that made training 10-20x slower in our measurements. Passive waiting costs nothing when alone.
    env["OMP_WAIT_POLICY"] = base.get("OMP_WAIT_POLICY", "PASSIVE")
    return env


def warm_starter(env: dict[str, str] | None = None) -> WarmStarter | None:
    """This process's warm starter for env (made, or remade for a new import environment, when missing); None
    where jobs start cold: WBC_WARM_JOBS=0 or a short-lived process (WARM_PROCESSES)."""
    global _warm
    ctx = current()
    if not ctx.settings.warm_jobs or ctx.process not in WARM_PROCESSES:
        return None
    env = env if env is not None else job_environ(ctx.settings, {})
    with _warm_lock:
        if _warm is not None and _warm.refused and _warm.fits(env):
            return None  # its imports are unsafe to fork here (it said why): cold starts, without a new try each time
        if _warm is not None and (not _warm.alive() or _warm.ready is False or not _warm.fits(env)):
            _warm.close()
            _warm = None
        if _warm is None:  # the run's token stays the run's (a child gets its own environment whole)
            _warm = WarmStarter({k: v for k, v in env.items() if k != SENTINEL_VARIABLE}, PROJECT_ROOT)
        return _warm


def prestart() -> None:
    """Start this process's warm starter now, so that even its first job starts warm (the app calls it)."""
    warm_starter()


def _start_warm(module: str, args: Sequence[str], env: dict[str, str], log_path: Path) -> int | None:
    starter = warm_starter(env)
    return starter.start(module, args, env, log_path) if starter is not None else None


@atexit.register
def _close_warm() -> None:
    global _warm
    with _warm_lock:
        if _warm is not None:
            _warm.close()
            _warm = None


def reap() -> None:
    """Collect the exit status of children that ended (so their pids stop answering kill -0)."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            del _children[pid]


def launch(run_id: int) -> int:
    """Start the worker of a queued run through the configured executor; its pid (0 for a Ray job).

    When the executor cannot take it (a Ray address that does not answer), the run is closed as failed with that
    reason, so nothing stays queued, and the ExecutorError is raised."""
    from wbc_core.jobs.executors import ExecutorError, executor_for

    ctx = current()
    folder = ctx.paths.run_dir(run_id)
    log_path = folder / "worker.log"
    try:
        executor = executor_for(ctx.settings, kind=runs_db.get_run(run_id).kind)
        local = executor.name == "local"
        runs_db.set_artifact_dir(run_id, ctx.relative(folder), ctx.relative(log_path) if local else None)
        return executor.launch(run_id, log_path)
    except ExecutorError as exc:
        runs_db.finish_run(run_id, "failed", error=str(exc))
        raise


def launch_chain(run_ids: Sequence[int]) -> int:
    """Start the detached chain process that trains queued runs one after another; returns its pid."""
    log_path = current().paths.run_dir(run_ids[0]) / "chain.log"
    return spawn("wbc_core.jobs.groups", [str(r) for r in run_ids], log_path)

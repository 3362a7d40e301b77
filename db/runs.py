"""Queries on runs, their jobs (process, heartbeat, cancel flag), metrics and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from db import validate
from db.engine import read_session, write_session
from db.models import Checkpoint, Dataset, Job, Metric, Run, utcnow
from db.vocabulary import ACTIVE_STATUSES


class RunNotFound(LookupError):
    """No run with that id."""


@dataclass(frozen=True)
class RunInfo:
    id: int
    dataset_id: int | None
    dataset_name: str | None
    kind: str
    status: str
    recipe: str | None
    group_name: str | None
    config: dict[str, Any]
    seed: int
    device: str | None
    split_hash: str | None
    train_set_hash: str | None
    train_set_size: int | None
    train_set_summary: dict[str, Any]
    result: dict[str, Any]
    artifact_dir: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    pid: int | None
    hostname: str | None
    heartbeat_at: datetime | None
    cancel_requested: bool
    progress_fraction: float
    progress_message: str
    error: str | None
    log_path: str | None
    started_by: str | None = None
    cancelled_by: str | None = None
    executor: str = "local"
    external_id: str | None = None
    archived_at: datetime | None = None  # set when "deleted": hidden from lists, kept for the audit
    archived_by: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


def _info(run: Run, job: Job | None, dataset_name: str | None) -> RunInfo:
    return RunInfo(
        run.id, run.dataset_id, dataset_name, run.kind, run.status, run.recipe, run.group_name, dict(run.config),
        run.seed, run.device, run.split_hash, run.train_set_hash, run.train_set_size,
        dict(run.train_set_summary or {}), dict(run.result or {}), run.artifact_dir, run.created_at, run.started_at,
        run.finished_at, job.pid if job else None, job.hostname if job else None, job.heartbeat_at if job else None,
        bool(job.cancel_requested) if job else False, job.progress_fraction if job else 0.0,
        job.progress_message if job else "", job.error if job else None, job.log_path if job else None,
        run.started_by, run.cancelled_by, (job.executor or "local") if job else "local",
        job.external_id if job else None, run.archived_at, run.archived_by,
    )


def _select_runs():  # noqa: ANN202
    return select(Run, Job, Dataset.name).outerjoin(Job, Job.run_id == Run.id).outerjoin(
        Dataset, Dataset.id == Run.dataset_id
    )


def create_run(kind: str, dataset_id: int | None, config: dict[str, Any], seed: int, recipe: str | None = None,
               group_name: str | None = None, split_hash: str | None = None, started_by: str | None = None) -> int:
    """Create a queued run and its job row; return the run id."""
    validate.json_value(config, "the run settings")
    validate.text(recipe, "the recipe", 30)
    validate.text(group_name, "the group name", validate.GROUP_NAME_MAX)
    validate.text(started_by, "the user name", validate.USERNAME_MAX)
    with write_session() as s:
        run = Run(kind=kind, dataset_id=dataset_id, config=config, seed=seed, recipe=recipe, group_name=group_name,
                  split_hash=split_hash, status="queued", started_by=started_by)
        s.add(run)
        s.flush()
        s.add(Job(run_id=run.id))
        return run.id


def set_artifact_dir(run_id: int, artifact_dir: str, log_path: str | None = None) -> None:
    """Record where a run keeps its files (relative to WBC_HOME) and its worker log."""
    with write_session() as s:
        s.execute(update(Run).where(Run.id == run_id).values(artifact_dir=artifact_dir))
        if log_path is not None:
            s.execute(update(Job).where(Job.run_id == run_id).values(log_path=log_path))


def mark_started(run_id: int, pid: int, hostname: str, device: str | None = None) -> bool:
    """Move a queued run to running under pid; False if it was cancelled or already finished meanwhile."""
    now = utcnow()
    with write_session() as s:
        changed = s.execute(
            update(Run).where(Run.id == run_id, Run.status == "queued").values(status="running", started_at=now,
                                                                               device=device)
        ).rowcount
        if changed:
            s.execute(update(Job).where(Job.run_id == run_id).values(pid=pid, hostname=hostname, heartbeat_at=now))
        return bool(changed)


def set_pid(run_id: int, pid: int, hostname: str) -> None:
    """Record the worker process of a run as soon as it is spawned (before it reports in)."""
    with write_session() as s:
        s.execute(update(Job).where(Job.run_id == run_id).values(pid=pid, hostname=hostname, heartbeat_at=utcnow()))


def set_device(run_id: int, device: str) -> None:
    """Record the device (cpu, cuda:0 ...) a run trains on."""
    with write_session() as s:
        s.execute(update(Run).where(Run.id == run_id).values(device=device))


def heartbeat(run_id: int, fraction: float | None = None, message: str | None = None) -> bool:
    """Refresh a job's heartbeat (and progress); return whether cancellation was requested."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if fraction is not None:
        values["progress_fraction"] = max(0.0, min(1.0, float(fraction)))
    if message is not None:
        values["progress_message"] = message
    with write_session() as s:
        s.execute(update(Job).where(Job.run_id == run_id).values(**values))
        return bool(s.scalar(select(Job.cancel_requested).where(Job.run_id == run_id)))


def cancel_requested(run_id: int) -> bool:
    """Whether someone asked this run to stop."""
    with read_session() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.run_id == run_id)))


def request_cancel(run_id: int, by: str | None = None) -> bool:
    """Ask an active run to stop (recording who asked); a queued run is cancelled at once. False if it had ended."""
    with write_session() as s:
        status = s.scalar(select(Run.status).where(Run.id == run_id))
        if status is None:
            raise RunNotFound(f"no run {run_id}")
        if status not in ACTIVE_STATUSES:
            return False
        s.execute(update(Job).where(Job.run_id == run_id).values(cancel_requested=True))
        if by is not None:
            s.execute(update(Run).where(Run.id == run_id, Run.cancelled_by.is_(None)).values(cancelled_by=by))
        if status == "queued":
            s.execute(update(Run).where(Run.id == run_id).values(status="cancelled", finished_at=utcnow()))
        return True


def set_training_set(run_id: int, train_set_hash: str, size: int, summary: dict[str, Any]) -> None:
    """Record the exact set of images a run trains on (hash over ids and sha256s) and its composition."""
    validate.json_value(summary, "the training set summary")
    with write_session() as s:
        s.execute(update(Run).where(Run.id == run_id).values(train_set_hash=train_set_hash, train_set_size=size,
                                                             train_set_summary=summary))


def finish_run(run_id: int, status: str, result: dict[str, Any] | None = None, error: str | None = None) -> bool:
    """Close an active run with a final status; never overwrites a run that already ended.

    A result that cannot be stored (NaN or infinity inside) still closes the run, as failed with the reason, and
    then raises: the run row never stays "running" because of it."""
    if result is not None:
        try:
            validate.json_value(result, "the run's result")
        except validate.InvalidValue as exc:
            finish_run(run_id, "failed", error=f"{exc}" + (f"\n\n{error}" if error else ""))
            raise
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now}
    if result is not None:
        values["result"] = result
    with write_session() as s:
        changed = s.execute(
            update(Run).where(Run.id == run_id, Run.status.in_(ACTIVE_STATUSES)).values(**values)
        ).rowcount
        if changed:
            job_values: dict[str, Any] = {"heartbeat_at": now}
            if error is not None:
                job_values["error"] = error
            if status == "succeeded":
                job_values["progress_fraction"] = 1.0
            s.execute(update(Job).where(Job.run_id == run_id).values(**job_values))
        return bool(changed)


def update_result(run_id: int, result: dict[str, Any]) -> None:
    """Merge keys into a run's result JSON (e.g. test metrics computed after training)."""
    validate.json_value(result, "the run's result")
    with write_session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id}")
        run.result = {**(run.result or {}), **result}


def add_metrics(run_id: int, step: int, metrics: dict[str, float]) -> None:
    """Append one value per metric name at a step."""
    if not metrics:
        return
    now = utcnow()
    # SQLite would turn NaN into NULL (refused by NOT NULL) while PostgreSQL stores it: refuse it alike, by name.
    rows = [{"run_id": run_id, "step": int(step), "name": validate.text(k, "the metric name", validate.METRIC_NAME_MAX),
             "value": validate.finite(v, f"metric {k!r} at step {int(step)}"), "created_at": now}
            for k, v in metrics.items()]
    with write_session() as s:
        s.execute(Metric.__table__.insert(), rows)


def metrics(run_ids: list[int], names: list[str] | None = None, since_id: int = 0) -> list[dict[str, Any]]:
    """Metric rows {id, run_id, step, name, value} for runs, in insertion order."""
    query = select(Metric.id, Metric.run_id, Metric.step, Metric.name, Metric.value).where(
        Metric.run_id.in_(run_ids), Metric.id > since_id
    )
    if names:
        query = query.where(Metric.name.in_(names))
    with read_session() as s:
        return [dict(r._mapping) for r in s.execute(query.order_by(Metric.id))]


def get_run(run_id: int) -> RunInfo:
    """One run with its job state; RunNotFound if absent."""
    with read_session() as s:
        row = s.execute(_select_runs().where(Run.id == run_id)).first()
        if row is None:
            raise RunNotFound(f"there is no run {run_id}")
        return _info(*row)


def list_runs(dataset_id: int | None = None, kind: str | None = None, status: str | None = None,
              limit: int = 500, include_archived: bool = False) -> list[RunInfo]:
    """Runs newest first, optionally filtered; archived ("deleted") runs only when asked for."""
    query = _select_runs()
    if not include_archived:
        query = query.where(Run.archived_at.is_(None))
    if dataset_id is not None:
        query = query.where(Run.dataset_id == dataset_id)
    if kind is not None:
        query = query.where(Run.kind == kind)
    if status is not None:
        query = query.where(Run.status == status)
    with read_session() as s:
        return [_info(*row) for row in s.execute(query.order_by(Run.id.desc()).limit(limit))]


def archive_run(run_id: int, by: str) -> None:
    """Archive an ended run: hidden from lists and pickers, its row, metrics and files kept. Active runs refuse."""
    with write_session() as s:
        run = s.get(Run, run_id)
        if run is None or run.archived_at is not None:
            raise RunNotFound(f"there is no run {run_id} (or it was deleted already)")
        if run.status in ACTIVE_STATUSES:
            raise ValueError(f"run {run_id} is {run.status}; cancel it and wait for it to end before deleting it")
        run.archived_at, run.archived_by = utcnow(), by


def active_runs() -> list[RunInfo]:
    """Runs queued or running, for the reaper that detects dead workers."""
    with read_session() as s:
        return [_info(*row) for row in s.execute(_select_runs().where(Run.status.in_(ACTIVE_STATUSES)))]


def stale_before(seconds: float) -> datetime:
    """The heartbeat time before which a running job counts as dead."""
    return utcnow() - timedelta(seconds=seconds)


def add_checkpoint(run_id: int, step: int, path: str, grid_path: str | None) -> None:
    """Record a saved checkpoint (and its sample grid) of a GAN run; re-saving a step updates nothing."""
    with write_session() as s:
        exists = s.scalar(select(Checkpoint.id).where(Checkpoint.run_id == run_id, Checkpoint.step == step))
        if exists is None:
            s.add(Checkpoint(run_id=run_id, step=step, path=path, grid_path=grid_path))
        elif grid_path is not None:
            s.execute(update(Checkpoint).where(Checkpoint.id == exists).values(grid_path=grid_path, path=path))


def checkpoints(run_id: int) -> list[dict[str, Any]]:
    """Checkpoints of a run as {step, path, grid_path}, by step."""
    with read_session() as s:
        rows = s.execute(select(Checkpoint.step, Checkpoint.path, Checkpoint.grid_path)
                         .where(Checkpoint.run_id == run_id).order_by(Checkpoint.step))
        return [dict(r._mapping) for r in rows]


def set_executor(run_id: int, executor: str, external_id: str | None) -> None:
    """Record how a run's job was dispatched (local subprocess, or a Ray job and its submission id)."""
    with write_session() as s:
        s.execute(update(Job).where(Job.run_id == run_id).values(executor=executor, external_id=external_id))

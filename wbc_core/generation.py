"""Background jobs around a GAN run: generate candidates, score them, measure a checkpoint, train the judge.

Each `start_*` function checks what it cheaply can (the run exists and is a GAN run, a checkpoint exists, the
numbers are in range) so that a page or the CLI gets a plain error at once, then submits a job and returns its
run id. The matching `run_*_job` body executes in the worker process (`wbc_core.jobs.kinds` maps kinds to
bodies), so sampling, decoding and judge training never block the page server or die with a closed tab.
"""

from __future__ import annotations

from typing import Any

from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import jobs, limits
from wbc_core.auth import User, authorize
from wbc_core.steering import DEFAULT_STEER_GUARD
from wbc_core.types import ProgressEvent

# Who may start each of these jobs: they write candidates or metrics that decide what reviewers see.
PERMISSION = "train"


def _actor(user: User) -> str:
    """The acting user's name after checking their role (PermissionDenied otherwise, also for no user)."""
    return authorize(user, PERMISSION).username


def _gan_run(run_id: int) -> runs_db.RunInfo:
    from wbc_core.gan_runs import GanRunError

    run = runs_db.get_run(run_id)
    if run.kind != "gan":
        raise GanRunError(f"run {run_id} is a {run.kind} run, not a GAN run")
    return run


def start_generation(gan_run_id: int, per_class: int, step: int | None = None, seed: int | None = None,
                     classes: list[str] | None = None, *, user: User, launch: bool = True,
                     steer: int | None = None, steer_guard: str = DEFAULT_STEER_GUARD) -> int:
    """Queue a job that samples per_class candidates per class from a checkpoint, then scores them.

    steer=K keeps the best per_class of K x per_class samples by the dataset's acceptance model (wbc_core.steering),
    under the diversity guard steer_guard (one of steering.STEER_GUARDS).
    """
    from wbc_core.gan_runs import checkpoint_path
    from wbc_core.steering import check_guard

    who = _actor(user)
    check_guard(steer_guard)
    limits.check("candidates_per_class", per_class)
    run = _gan_run(gan_run_id)
    _, step = checkpoint_path(gan_run_id, step)  # a plain error now if that checkpoint does not exist
    if steer:
        from db import acceptance as acc_db
        from wbc_core.feedback import FeedbackError

        limits.check("steer_factor", steer)
        if acc_db.latest_model(run.dataset_id) is None:
            raise FeedbackError("steering needs the dataset's acceptance model, and it has none yet: review some "
                                "candidates, then train it (python -m wbc_core feedback train)")
    config = {"gan_run_id": gan_run_id, "per_class": int(per_class), "step": step, "seed": seed,
              "classes": classes}
    if steer:
        config["steer"] = int(steer)
        config["steer_guard"] = steer_guard
    return jobs.submit("generate", run.dataset_id, config, seed=int(seed or 0), started_by=who, launch=launch)


def run_generate_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body of "generate"."""
    from wbc_core.gan_runs import generate_candidates

    c = run.config

    def progress(done: int, total: int) -> None:
        ctx.progress(ProgressEvent(step=done, total=total + 1, message=f"sampled {done} of {total} classes"))

    return generate_candidates(int(c["gan_run_id"]), int(c["per_class"]), step=c.get("step"), seed=c.get("seed"),
                               classes=c.get("classes"), progress=progress, should_stop=ctx.should_stop,
                               # a config without a guard was saved when radius was the only one
                               steer=c.get("steer"), steer_guard=c.get("steer_guard", "radius"))


def start_scoring(dataset: str | int, gan_run_id: int | None = None, *, user: User, launch: bool = True) -> int:
    """Queue a job that (re)scores a dataset's candidates (of one GAN run, or all) for review sorting."""
    who = _actor(user)
    info = ds_db.get_dataset(dataset)
    if gan_run_id is not None:
        _gan_run(gan_run_id)
    return jobs.submit("score", info.id, {"gan_run_id": gan_run_id}, started_by=who, launch=launch)


def run_score_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body of "score"."""
    from wbc_core.gan_runs import score_candidates

    ctx.progress(ProgressEvent(step=0, total=1, message="scoring candidates (the first time trains the judge)"))
    return score_candidates(run.dataset_id, run.config.get("gan_run_id"))


def start_quality(gan_run_id: int, step: int | None = None, per_class: int = 64, *, user: User,
                  launch: bool = True) -> int:
    """Queue a job that measures a checkpoint's quality (stored as run metrics at its step)."""
    from wbc_core.gan_runs import checkpoint_path

    who = _actor(user)
    limits.check("quality_cells_per_class", per_class)
    run = _gan_run(gan_run_id)
    _, step = checkpoint_path(gan_run_id, step)
    config = {"gan_run_id": gan_run_id, "step": step, "per_class": int(per_class)}
    return jobs.submit("quality", run.dataset_id, config, started_by=who, launch=launch)


def run_quality_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body of "quality"."""
    from wbc_core.gan_runs import measure_checkpoint

    c = run.config
    ctx.progress(ProgressEvent(step=0, total=1, message=f"scoring checkpoint {c['step']}"))
    return measure_checkpoint(int(c["gan_run_id"]), step=c.get("step"), per_class=int(c["per_class"]))


def start_judge(dataset: str | int, size: int | None = None, *, user: User, launch: bool = True) -> int:
    """Queue a job that trains (or loads) the dataset's quality judge at size, so later scoring is quick."""
    who = _actor(user)
    info = ds_db.get_dataset(dataset)
    config = {"image_size": int(size or info.image_size)}
    return jobs.submit("judge", info.id, config, started_by=who, launch=launch)


def run_judge_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body of "judge"."""
    from wbc_core.gan_runs import quality_reference

    size = int(run.config["image_size"])
    ctx.progress(ProgressEvent(step=0, total=1, message=f"training the judge at {size} px"))
    ref = quality_reference(run.dataset_id, size)
    return {"image_size": size, "classes": list(ref.class_names)}


def latest_job(dataset_id: int, kind: str, gan_run_id: int | None = None) -> runs_db.RunInfo | None:
    """The newest job of a kind for a dataset (and GAN run), for pages that show the last one's outcome."""
    for r in runs_db.list_runs(dataset_id=dataset_id, kind=kind, limit=50):
        if gan_run_id is None or r.config.get("gan_run_id") == gan_run_id:
            return r
    return None

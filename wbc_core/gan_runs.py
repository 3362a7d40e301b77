"""GAN runs: start one as a background job, the job body, candidate generation and quality scoring of checkpoints."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from PIL import Image

from db import datasets as ds_db
from db import runs as runs_db
from db.datasets import ImageRow
from wbc_core import jobs, limits, options
from wbc_core.auth import User, authorize
from wbc_core.context import BoundedCache, current
from wbc_core.provenance import JudgeKey, candidate_seed, quality_seed, training_set_record
from wbc_core.steering import DEFAULT_STEER_GUARD


class GanRunError(ValueError):
    """A GAN run that cannot be started or used as asked."""


def gan_training_rows(dataset_id: int) -> list[ImageRow]:
    """The real cells a GAN may learn from: the train split only, never val or test."""
    rows = ds_db.real_images(dataset_id, split="train")
    leaked = [r.id for r in rows if r.split != "train" or r.origin != "real"]
    if leaked:  # defence in depth: the query already filters, this guards future edits of it
        raise GanRunError(f"refusing to train a GAN on non-train or synthetic images: {leaked[:10]}")
    return rows


GAN_PRESETS = options.GAN_PRESETS  # the preset table and its suggestion live in wbc_core.options
suggested_preset = options.suggested_preset


def preset_values(preset: str, dataset_size: int) -> dict[str, Any]:
    """Every GanConfig field of a preset (wbc_core.options.preset_values)."""
    return options.preset_values(preset, dataset_size)


def start_gan_run(dataset: str | int, overrides: dict[str, Any] | None = None, launch: bool = True, *,
                  user: User) -> int:
    """Validate a GAN config for a dataset, record the run and its exact training set, and launch its job.

    user is the acting account (needs the train permission); the run records it as its starter."""
    from wbc_core.gan.config import GanConfig
    from wbc_core.hardware import cuda_visible

    who = authorize(user, "train").username
    info = ds_db.get_dataset(dataset)
    values = {"image_size": info.image_size, **(overrides or {})}
    config = GanConfig.from_dict(values)  # raises ValueError with a plain message on bad values
    if config.device.startswith("cuda") and not cuda_visible() and not current().settings.ray_address:
        # Checked here, not only in the worker: a job that can only fail should not be queued at all. With a Ray
        # cluster the run asks Ray for a GPU instead (entrypoint_num_gpus=1) and waits for one there.
        raise GanRunError("this machine has no CUDA GPU: choose the CPU preset (or device 'auto'), or start the "
                          "run on a GPU server")
    rows = gan_training_rows(info.id)
    if not rows:
        raise GanRunError(f"dataset {info.name!r} has no real train cells to learn from")
    limits.check_gan_job(config, len(rows))  # plain refusal: batch above the train cells, or it cannot fit in memory
    digest, summary = training_set_record(rows)
    run_id = runs_db.create_run("gan", info.id, config.to_dict(), seed=config.seed, split_hash=info.split_hash,
                                started_by=who)
    runs_db.set_training_set(run_id, digest, len(rows), summary)
    if launch:
        jobs.launch(run_id)
    return run_id


def run_gan_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body: train the GAN on the recorded training set, reporting through ctx."""
    from wbc_core.gan import GanConfig, latest_full_checkpoint, train_gan

    info = ds_db.get_dataset(run.dataset_id)
    config = GanConfig.from_dict(run.config)
    rows = gan_training_rows(info.id)
    digest, _ = training_set_record(rows)
    if run.train_set_hash and digest != run.train_set_hash:
        raise GanRunError("the dataset's train split changed since this run was created; start a new run")
    from wbc_core import store  # the job process only: the page server never loads torch

    data = store.labelled(info.id, rows, info.class_names, config.image_size)
    out_dir = jobs.run_dir(run.id)
    resume = latest_full_checkpoint(out_dir) or _parent_checkpoint(run)
    runs_db.set_device(run.id, _device_name(config.device))
    hooks = None
    if run.config.get("finetune"):  # a fine-tune: the acceptance model is one more term of G's loss (gan_finetune)
        from wbc_core.gan_finetune import training_hooks

        hooks = training_hooks(run, info.class_names, config.device)
    progress = ctx.progress
    if config.quality_every_checkpoint:
        def progress(event):  # noqa: ANN001, ANN202 - wraps ctx.progress: metrics for each checkpoint it records
            ctx.progress(event)
            if event.artifacts.get("checkpoint"):
                from wbc_core.quality.judge import QualityError

                try:
                    measure_checkpoint_file(run.id, info.id, Path(event.artifacts["checkpoint"]),
                                            config.quality_per_class)
                except QualityError as exc:  # unmeasurable data must not cost the GAN run; the log says why
                    print(f"quality not measured at step {event.step}: {exc}", flush=True)
    result = train_gan(data, info.class_names, config, out_dir, progress=progress, should_stop=ctx.should_stop,
                       resume_from=resume, hooks=hooks)
    out = {"steps_done": result.steps_done, "stopped": result.stopped, "sec_per_step": result.sec_per_step,
           "last_checkpoint": ctx.relative(result.last_checkpoint), "device": result.device}
    if hooks is not None:
        out["finetune"] = {**hooks.checkpoint_extra["finetune"], **_reward_metrics(result.last_checkpoint)}
    return out


def _reward_metrics(checkpoint: Path) -> dict[str, float]:
    """The fine-tune's last reward metric, as its final checkpoint recorded it."""
    from wbc_core.gan.checkpoint import load_checkpoint

    metrics = load_checkpoint(checkpoint).get("metrics", {})
    return {k: float(v) for k, v in metrics.items() if k.startswith("reward_")}


def _parent_checkpoint(run: runs_db.RunInfo) -> Path | None:
    parent = run.config.get("resume_from_checkpoint")
    return current().home / parent if parent else None


def _device_name(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resume_gan_run(run_id: int, launch: bool = True, *, user: User) -> int:
    """Continue a cancelled or failed GAN run from its last checkpoint, as a new run that records its parent.

    user is the acting account (needs the train permission); the new run records it as its starter."""
    from wbc_core.gan import latest_full_checkpoint

    who = authorize(user, "train").username
    old = runs_db.get_run(run_id)
    if old.kind != "gan" or old.active:
        raise GanRunError(f"run {run_id} is not a finished GAN run")
    checkpoint = latest_full_checkpoint(jobs.run_dir(run_id))
    if checkpoint is None:
        raise GanRunError(f"run {run_id} saved no checkpoint to resume from; start a new run instead")
    config = {**old.config, "resume_from_checkpoint": str(checkpoint.relative_to(current().home)),
              "resumed_from_run": run_id}
    new_id = runs_db.create_run("gan", old.dataset_id, config, seed=old.seed, split_hash=old.split_hash,
                                started_by=who)
    runs_db.set_training_set(new_id, old.train_set_hash or "", old.train_set_size or 0, old.train_set_summary)
    if launch:
        jobs.launch(new_id)
    return new_id


def checkpoint_path(run_id: int, step: int | None = None) -> tuple[Path, int]:
    """The checkpoint file of a run at step (default: the newest) and its step."""
    saved = [c for c in runs_db.checkpoints(run_id) if c["path"]]
    if not saved:
        raise GanRunError(f"GAN run {run_id} has no checkpoint yet; wait for it to save one or train longer")
    chosen = saved[-1] if step is None else next((c for c in saved if c["step"] == step), None)
    if chosen is None:
        steps = ", ".join(str(c["step"]) for c in saved)
        raise GanRunError(f"GAN run {run_id} has no checkpoint at step {step} (saved steps: {steps})")
    return current().home / chosen["path"], int(chosen["step"])


def generate_candidates(run_id: int, per_class: int, step: int | None = None, seed: int | None = None,
                        classes: list[str] | None = None, progress=None,  # noqa: ANN001
                        score: bool = True, should_stop=None, steer: int | None = None,  # noqa: ANN001
                        steer_guard: str = DEFAULT_STEER_GUARD) -> dict[str, Any]:
    """Sample per_class cells of each class from a GAN checkpoint into the review queue, then score them.

    Runs inside a "generate" job (wbc_core.generation.start_generation); should_stop() is asked between classes.
    steer=K: oversample K x per class and keep the best by the dataset's acceptance model (wbc_core.steering),
    under the diversity guard steer_guard (one of steering.STEER_GUARDS).
    """
    from wbc_core.gan import load_generator, sample_cells
    from wbc_core.steering import check_guard

    check_guard(steer_guard)

    limits.check("candidates_per_class", per_class)
    run = runs_db.get_run(run_id)
    if run.kind != "gan":
        raise GanRunError(f"run {run_id} is a {run.kind} run, not a GAN run")
    path, step = checkpoint_path(run_id, step)
    loaded = load_generator(path)
    wanted = classes or loaded.class_names
    unknown = [c for c in wanted if c not in loaded.class_names]
    if unknown:
        raise GanRunError(f"unknown classes {unknown}; this generator knows {loaded.class_names}")
    if seed is None:  # a fresh seed per call, so generating twice adds new cells instead of copies
        seed = _next_seed(run_id)
    folder = current().paths.images / f"dataset_{run.dataset_id}" / "synthetic" / f"run_{run_id:05d}"
    rows: list[dict[str, Any]] = []
    generated: list[Any] = []
    steering = _steering(run.dataset_id, steer) if steer else None
    # A fine-tuned generator's cells are steered too: by the acceptance model it was tuned with (gan_finetune).
    tuned = run.config.get("finetune") or {}
    steer_model = steering[0]["id"] if steering else tuned.get("acceptance_model_id")
    reports: dict[str, Any] = {}
    for done, class_name in enumerate(wanted):
        if should_stop is not None and should_stop():
            break
        class_index = loaded.class_names.index(class_name)
        if steering is not None:
            from wbc_core.steering import steer_class

            chosen = steer_class(loaded, class_index, per_class, int(steer), candidate_seed(seed, class_index),
                                 steering[1], steering[2], guard=steer_guard)
            cells, reports[class_name] = chosen.cells, chosen.report
        else:
            cells = sample_cells(loaded, class_index, per_class, seed=candidate_seed(seed, class_index))
        generated.append(cells)
        (folder / class_name).mkdir(parents=True, exist_ok=True)
        for i, cell in enumerate(cells):
            content = _png_bytes(cell)
            sha = hashlib.sha256(content).hexdigest()
            target = folder / class_name / f"s{seed}_{i:05d}_{sha[:12]}.png"
            target.write_bytes(content)
            rows.append({"origin": "synthetic", "class_name": class_name, "split": None, "sha256": sha,
                         "path": str(target.relative_to(current().home)), "width": cell.shape[2],
                         "height": cell.shape[1], "source": f"gan:run_{run_id}/step_{step}/seed_{seed}#{i}",
                         "gan_run_id": run_id, "checkpoint_step": step, "seed": seed,
                         "steered": steer_model is not None, "steer_model_id": steer_model})
        if progress is not None:
            progress(done + 1, len(wanted))
    ids = ds_db.add_images(run.dataset_id, rows)
    out = {"run_id": run_id, "checkpoint_step": step, "seed": seed, "per_class": per_class,
           "classes": wanted, "candidates": len(ids), "first_id": ids[0] if ids else None}
    if tuned:
        out["finetune"] = tuned
    if steering is not None:
        from wbc_core.steering import overall_report

        out["steering"] = {"factor": int(steer), "guard": steer_guard, "model_id": steering[0]["id"],
                           "model_version": steering[0]["version"],
                           **overall_report(reports, steering[2])}
    if score and ids:
        import torch

        images = torch.cat(generated)
        labels = [r["class_name"] for r in rows]
        out["scoring"] = _score_or_reason(run.dataset_id, loaded.config.image_size, ids, images, labels)
    return out


def _steering(dataset_id: int, factor: int) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(model row, saved model, judge Reference) of the dataset's latest acceptance model, for steer_class."""
    from db import acceptance as acc_db
    from wbc_core.feedback import FeedbackError, load_model

    limits.check("steer_factor", factor)
    model = acc_db.latest_model(dataset_id)
    if model is None:
        raise FeedbackError("steering needs the dataset's acceptance model, and it has none yet: review some "
                            "candidates, then train it (python -m wbc_core feedback train)")
    blob = load_model(model)
    return model, blob, quality_reference(dataset_id, int(blob["image_size"]))


def _next_seed(run_id: int) -> int:
    latest = ds_db.max_candidate_seed(run_id)
    return 0 if latest is None else latest + 1


def _png_bytes(cell) -> bytes:  # noqa: ANN001
    buffer = io.BytesIO()
    Image.fromarray(cell.permute(1, 2, 0).numpy(), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# -- quality -----------------------------------------------------------------------------------------

def quality_reference(dataset_id: int, size: int):  # noqa: ANN201
    """The dataset's judge Reference at size, trained and cached on first use (then kept in this process)."""
    from wbc_core.judges import dataset_reference
    from wbc_core.quality.judge import app_quality_config

    info = ds_db.get_dataset(dataset_id)
    key = JudgeKey(info.id, int(size), info.split_hash, app_quality_config().key())
    # A few references at most (each holds a judge and the features of every train cell), least recent dropped.
    cache = current().caches.get("quality.references", lambda: BoundedCache(4))
    return cache.get_or_compute(key, lambda: dataset_reference(info.id, size))


def _score_or_reason(dataset_id: int, size: int, ids: list[int], images, labels: list[str]) -> dict[str, Any]:  # noqa: ANN001
    from wbc_core.quality.judge import QualityError

    try:
        return _store_scores(dataset_id, size, ids, images, labels)
    except QualityError as exc:  # e.g. no val cells: candidates stay unscored, generation still succeeds
        return {"scored": 0, "reason": str(exc)}


def _store_scores(dataset_id: int, size: int, ids: list[int], images, labels: list[str]) -> dict[str, Any]:  # noqa: ANN001
    import torch

    from db import quality as quality_db
    from wbc_core.quality.evaluate import score_cells

    ref = quality_reference(dataset_id, size)
    index = {n: i for i, n in enumerate(ref.class_names)}
    y = torch.tensor([index[n] for n in labels], dtype=torch.int64)
    s = score_cells(ref, images, y)
    rows = [{"id": i, "judge_prob": float(p), "judge_top_class": ref.class_names[int(t)],
             "nearest_real_id": int(n) if int(n) >= 0 else None, "nearest_real_distance": float(d),
             "memorised": bool(m)}
            for i, p, t, n, d, m in zip(ids, s.judge_prob, s.judge_top, s.nearest_id, s.nearest_distance,
                                        s.memorised, strict=True)]
    quality_db.set_candidate_scores(rows)
    return {"scored": len(rows), "memorised": int(s.memorised.sum()),
            "mean_judge_prob": float(s.judge_prob.mean()) if len(rows) else None}


def score_candidates(dataset: str | int, run_id: int | None = None) -> dict[str, Any]:
    """(Re)score a dataset's candidates (of one GAN run, or all) with the judge, for review sorting."""
    from wbc_core.store import decode_many

    info = ds_db.get_dataset(dataset)
    rows = ds_db.candidates(info.id, gan_run_id=run_id)
    if not rows:
        return {"scored": 0}
    size = int(runs_db.get_run(run_id).config.get("image_size", info.image_size)) if run_id else info.image_size
    images = decode_many([current().home / r.path for r in rows], size)
    return _store_scores(info.id, size, [r.id for r in rows], images, [r.class_name for r in rows])


def measure_checkpoint_file(run_id: int, dataset_id: int, path: Path, per_class: int = 64) -> dict[str, float]:
    """Sample per_class cells per class from a checkpoint file, compute quality metrics, store them at its step."""
    import torch

    from wbc_core.gan import load_generator, sample_cells
    from wbc_core.quality.evaluate import compute_metrics

    if per_class < 2:
        raise GanRunError("per_class must be at least 2 to measure quality")
    loaded = load_generator(path)
    ref = quality_reference(dataset_id, loaded.config.image_size)
    # A fixed seed per class: every checkpoint is measured on the same noise, so curves compare like with like.
    cells = [sample_cells(loaded, c, per_class, seed=quality_seed(c)) for c in range(len(loaded.class_names))]
    labels = torch.arange(len(loaded.class_names)).repeat_interleave(per_class)
    values = compute_metrics(ref, torch.cat(cells), labels)
    runs_db.add_metrics(run_id, loaded.step, values)
    return values


def measure_checkpoint(run_id: int, step: int | None = None, per_class: int = 64) -> dict[str, Any]:
    """Quality metrics of a GAN run's checkpoint (default: newest), stored as run metrics at its step."""
    run = runs_db.get_run(run_id)
    if run.kind != "gan":
        raise GanRunError(f"run {run_id} is a {run.kind} run, not a GAN run")
    path, step = checkpoint_path(run_id, step)
    values = measure_checkpoint_file(run_id, run.dataset_id, path, per_class)
    return {"run_id": run_id, "step": step, "per_class": per_class, "metrics": values}

"""GAN runs: start one as a background job, the job body, and candidate generation from a checkpoint."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from db import datasets as ds_db
from db import runs as runs_db
from db.datasets import ImageRow
from wbc_core import jobs, store
from wbc_core.settings import images_dir, wbc_home


class GanRunError(ValueError):
    """A GAN run that cannot be started or used as asked."""


def gan_training_rows(dataset_id: int) -> list[ImageRow]:
    """The real cells a GAN may learn from: the train split only, never val or test."""
    rows = ds_db.real_images(dataset_id, split="train")
    leaked = [r.id for r in rows if r.split != "train" or r.origin != "real"]
    if leaked:  # defence in depth: the query already filters, this guards future edits of it
        raise GanRunError(f"refusing to train a GAN on non-train or synthetic images: {leaked[:10]}")
    return rows


def training_set_record(rows: list[ImageRow], labels: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """Hash and per-class/origin composition of an exact training set."""
    labels = labels or [r.class_name for r in rows]
    digest = store.image_set_hash((r.id, r.sha256, label) for r, label in zip(rows, labels, strict=True))
    counts = Counter(f"{r.origin}/{label}" for r, label in zip(rows, labels, strict=True))
    return digest, {"by_origin_class": dict(sorted(counts.items())), "total": len(rows)}


def start_gan_run(dataset: str | int, overrides: dict[str, Any] | None = None, launch: bool = True) -> int:
    """Validate a GAN config for a dataset, record the run and its exact training set, and launch its job."""
    from wbc_core.gan import GanConfig

    info = ds_db.get_dataset(dataset)
    values = {"image_size": info.image_size, **(overrides or {})}
    config = GanConfig.from_dict(values)  # raises ValueError with a plain message on bad values
    rows = gan_training_rows(info.id)
    if not rows:
        raise GanRunError(f"dataset {info.name!r} has no real train cells to learn from")
    digest, summary = training_set_record(rows)
    run_id = runs_db.create_run("gan", info.id, config.to_dict(), seed=config.seed, split_hash=info.split_hash)
    runs_db.set_training_set(run_id, digest, len(rows), summary)
    if launch:
        jobs.launch(run_id)
    return run_id


def run_gan_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body: train the GAN on the recorded training set, reporting through ctx."""
    from wbc_core.gan import GanConfig, latest_checkpoint, train_gan

    info = ds_db.get_dataset(run.dataset_id)
    config = GanConfig.from_dict(run.config)
    rows = gan_training_rows(info.id)
    digest, _ = training_set_record(rows)
    if run.train_set_hash and digest != run.train_set_hash:
        raise GanRunError("the dataset's train split changed since this run was created; start a new run")
    data = store.labelled(info.id, rows, info.class_names, config.image_size)
    out_dir = jobs.run_dir(run.id)
    resume = latest_checkpoint(out_dir) or _parent_checkpoint(run)
    runs_db.set_device(run.id, _device_name(config.device))
    result = train_gan(data, info.class_names, config, out_dir, progress=ctx.progress, should_stop=ctx.should_stop,
                       resume_from=resume)
    return {"steps_done": result.steps_done, "stopped": result.stopped, "sec_per_step": result.sec_per_step,
            "last_checkpoint": ctx.relative(result.last_checkpoint), "device": result.device}


def _parent_checkpoint(run: runs_db.RunInfo) -> Path | None:
    parent = run.config.get("resume_from_checkpoint")
    return wbc_home() / parent if parent else None


def _device_name(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resume_gan_run(run_id: int, launch: bool = True) -> int:
    """Continue a cancelled or failed GAN run from its last checkpoint, as a new run that records its parent."""
    from wbc_core.gan import latest_checkpoint

    old = runs_db.get_run(run_id)
    if old.kind != "gan" or old.active:
        raise GanRunError(f"run {run_id} is not a finished GAN run")
    checkpoint = latest_checkpoint(jobs.run_dir(run_id))
    if checkpoint is None:
        raise GanRunError(f"run {run_id} saved no checkpoint to resume from; start a new run instead")
    config = {**old.config, "resume_from_checkpoint": str(checkpoint.relative_to(wbc_home())),
              "resumed_from_run": run_id}
    new_id = runs_db.create_run("gan", old.dataset_id, config, seed=old.seed, split_hash=old.split_hash)
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
    return wbc_home() / chosen["path"], int(chosen["step"])


def generate_candidates(run_id: int, per_class: int, step: int | None = None, seed: int | None = None,
                        classes: list[str] | None = None, progress=None) -> dict[str, Any]:  # noqa: ANN001
    """Sample per_class cells of each class from a GAN checkpoint into the review queue."""
    from wbc_core.gan import load_generator, sample_cells

    if per_class < 1:
        raise GanRunError("per_class must be at least 1")
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
    folder = images_dir() / f"dataset_{run.dataset_id}" / "synthetic" / f"run_{run_id:05d}"
    rows: list[dict[str, Any]] = []
    for done, class_name in enumerate(wanted):
        class_index = loaded.class_names.index(class_name)
        cells = sample_cells(loaded, class_index, per_class, seed=seed * 1009 + class_index)
        (folder / class_name).mkdir(parents=True, exist_ok=True)
        for i, cell in enumerate(cells):
            content = _png_bytes(cell)
            sha = hashlib.sha256(content).hexdigest()
            target = folder / class_name / f"s{seed}_{i:05d}_{sha[:12]}.png"
            target.write_bytes(content)
            rows.append({"origin": "synthetic", "class_name": class_name, "split": None, "sha256": sha,
                         "path": str(target.relative_to(wbc_home())), "width": cell.shape[2],
                         "height": cell.shape[1], "source": f"gan:run_{run_id}/step_{step}/seed_{seed}#{i}",
                         "gan_run_id": run_id, "checkpoint_step": step, "seed": seed})
        if progress is not None:
            progress(done + 1, len(wanted))
    ids = ds_db.add_images(run.dataset_id, rows)
    return {"run_id": run_id, "checkpoint_step": step, "seed": seed, "per_class": per_class,
            "classes": wanted, "candidates": len(ids), "first_id": ids[0] if ids else None}


def _next_seed(run_id: int) -> int:
    latest = ds_db.max_candidate_seed(run_id)
    return 0 if latest is None else latest + 1


def _png_bytes(cell) -> bytes:  # noqa: ANN001
    buffer = io.BytesIO()
    Image.fromarray(cell.permute(1, 2, 0).numpy(), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()

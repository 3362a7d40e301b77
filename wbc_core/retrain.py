"""Classifier runs: build the training set for a recipe, run it as a job, score on real test cells.

Groups (an ablation over the recipes, or one recipe over several seeds) are created as queued runs that
share a group name and are trained one after another by a small chain process
(`python -m wbc_core.retrain RUN_ID...`): two cores cannot train three models at once without each
taking three times as long, and a sequential chain finishes its first arm (the baseline) soonest.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from db import datasets as ds_db
from db import decisions as decisions_db
from db import runs as runs_db
from db.datasets import ImageRow
from db.vocabulary import LAUNCH_CHOICES, RECIPES  # noqa: F401 - LAUNCH_CHOICES: the Train form's choices
from wbc_core import jobs, limits
from wbc_core.provenance import decisions_snapshot_hash, read_train_set, training_set_record, write_train_set
from wbc_core.review_model import ConsensusRule, accepted_candidates, get_review_settings

# Offered in the UI; any torchvision classification model name is accepted as well.
MODEL_CHOICES = ("resnet18", "small_cnn", "resnet34", "resnet50", "mobilenet_v3_large", "efficientnet_b0",
                 "convnext_tiny")
QUEUED_BEAT_SECONDS = 10.0  # the chain refreshes its waiting runs this often (jobs reaps silent queued runs)


def form_defaults() -> dict[str, Any]:
    """ClassifierConfig's defaults plus the augmentation preset names, so the Train form never drifts from them."""
    from wbc_core.classifier import ClassifierConfig  # lazy: page imports must not pay for torch
    from wbc_core.classifier.presets import PRESETS

    return {**ClassifierConfig().to_dict(), "augment_choices": tuple(PRESETS)}


class RetrainError(ValueError):
    """A classifier run that cannot be started as asked."""


def build_training_set(dataset_id: int, recipe: str, rule: ConsensusRule | None = None,
                       synthetic_cap: float | None = None, seed: int = 0) -> tuple[list[ImageRow], list[str]]:
    """Rows and labels of the training set for a recipe: real train cells plus the recipe's candidates.

    synthetic_cap limits synthetic cells per class to cap x that class's real train count.
    """
    if recipe not in RECIPES:
        raise RetrainError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    real = ds_db.real_images(dataset_id, split="train")
    synthetic: list[tuple[ImageRow, str]] = []
    if recipe == "curated":
        synthetic = accepted_candidates(dataset_id, rule)
    elif recipe == "all-synthetic":
        synthetic = [(row, row.class_name) for row in ds_db.candidates(dataset_id)]
    if synthetic_cap is not None:
        synthetic = _cap(synthetic, real, synthetic_cap, seed)
    rows = real + [row for row, _ in synthetic]
    labels = [row.class_name for row in real] + [label for _, label in synthetic]
    assert_trainable(rows)
    return rows, labels


def assert_trainable(rows: list[ImageRow]) -> None:
    """Science hygiene: a training set holds real train cells and split-less synthetic candidates only."""
    bad = [r.id for r in rows if (r.origin == "real" and r.split != "train") or
           (r.origin == "synthetic" and r.split is not None)]
    if bad:
        raise RetrainError(f"refusing to train on val/test images: ids {bad[:10]}")


def assert_evaluable(rows: list[ImageRow], split: str) -> None:
    """Science hygiene: a run is validated and scored on real cells of that split only."""
    bad = [r.id for r in rows if r.origin != "real" or r.split != split]
    if bad:
        raise RetrainError(f"refusing to score on non-real or non-{split} images: ids {bad[:10]}")


def _cap(synthetic: list[tuple[ImageRow, str]], real: list[ImageRow], cap: float, seed: int
         ) -> list[tuple[ImageRow, str]]:
    real_counts: dict[str, int] = defaultdict(int)
    for row in real:
        real_counts[row.class_name] += 1
    by_class: dict[str, list[tuple[ImageRow, str]]] = defaultdict(list)
    for item in synthetic:
        by_class[item[1]].append(item)
    rng = random.Random(seed)
    kept: list[tuple[ImageRow, str]] = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda it: it[0].id)
        rng.shuffle(items)
        kept.extend(items[: int(cap * real_counts[label])])
    return kept


def start_classifier_run(dataset: str | int, recipe: str = "real", overrides: dict[str, Any] | None = None,
                         rule: ConsensusRule | None = None, synthetic_cap: float | None = None,
                         group_name: str | None = None, launch: bool = True) -> int:
    """Freeze the recipe's training set, record the run, and launch the training job."""
    from wbc_core.classifier import ClassifierConfig

    info = ds_db.get_dataset(dataset)
    config = ClassifierConfig.from_dict({"image_size": info.image_size, **(overrides or {})})
    if config.pretrained_path and not Path(config.pretrained_path).is_file():
        # Checked here, not only in the job: an ablation would otherwise queue three runs that all fail.
        raise RetrainError(f"pretrained weights {config.pretrained_path!r} not found on this machine "
                           "(weights are never downloaded)")
    synthetic_cap = None if synthetic_cap is None else limits.check("synthetic_cap", synthetic_cap)  # NaN refused
    rule = rule or get_review_settings(info.id).rule  # the dataset's own consensus rule unless overridden
    rows, labels = build_training_set(info.id, recipe, rule, synthetic_cap, seed=config.seed)
    if not rows:
        raise RetrainError(f"dataset {info.name!r} has no train cells")
    limits.check_classifier_job(config, len(rows))  # plain refusal when a training step cannot fit in memory
    if not ds_db.real_images(info.id, split="val", limit=1):
        raise RetrainError(f"dataset {info.name!r} has no val cells; re-import it with a val fraction above 0")
    digest, summary = training_set_record(rows, labels)
    decisions = decisions_db.current_decisions(info.id) if recipe == "curated" else []
    summary["decisions_snapshot"] = decisions_snapshot_hash(decisions)
    run_config = {**config.to_dict(), "recipe": recipe, "consensus_rule": asdict(rule),
                  "synthetic_cap": synthetic_cap}
    run_id = runs_db.create_run("classifier", info.id, run_config, seed=config.seed, recipe=recipe,
                                group_name=group_name, split_hash=info.split_hash)
    runs_db.set_training_set(run_id, digest, len(rows), summary)
    # The exact list is frozen now: reviewers may keep deciding while the job waits or trains.
    write_train_set(jobs.run_dir(run_id), rows, labels)
    if launch:
        jobs.launch(run_id)
    return run_id


# -- the job ------------------------------------------------------------------------------------------

def run_classifier_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body: train on the frozen training set, pick the best epoch on val, score on real test cells."""
    from wbc_core import results, store
    from wbc_core.classifier import ClassifierConfig, train_classifier

    info = ds_db.get_dataset(run.dataset_id)
    known = set(ClassifierConfig.__dataclass_fields__)
    config = ClassifierConfig.from_dict({k: v for k, v in run.config.items() if k in known})
    out_dir = jobs.run_dir(run.id)
    manifest = read_train_set(out_dir)
    rows = ds_db.images_by_ids([m["id"] for m in manifest])
    if len(rows) != len(manifest):
        raise RetrainError("some images of the frozen training set no longer exist")
    assert_trainable(rows)
    labels = [m["label"] for m in manifest]
    size = config.image_size
    val_rows = ds_db.real_images(info.id, split="val")
    assert_evaluable(val_rows, "val")
    train = store.labelled(info.id, rows, info.class_names, size, labels)
    val = store.labelled(info.id, val_rows, info.class_names, size)
    result = train_classifier(train, val, info.class_names, config, out_dir, progress=ctx.progress,
                              should_stop=ctx.should_stop)
    runs_db.set_device(run.id, result.device)
    test_rows = ds_db.real_images(info.id, split="test")
    summary: dict[str, Any] = {"best_epoch": result.best_epoch, "epochs_done": result.epochs_done,
                               "stopped": result.stopped, "early_stopped": result.early_stopped,
                               "train_seconds": round(result.seconds, 2),
                               "images_per_sec": round(result.images_per_sec, 1), "device": result.device,
                               "model_path": ctx.relative(result.checkpoint), "val": _headline(result.val)}
    if test_rows:  # always real test cells: synthetic cells have no split and cannot be here
        assert_evaluable(test_rows, "test")
        test = store.labelled(info.id, test_rows, info.class_names, size)
        summary["test"] = results.score_and_save(result.checkpoint, test, [r.id for r in test_rows],
                                                 [r.id for r in val_rows], info.class_names, result.device, out_dir)
        summary["test_size"] = len(test_rows)
    return summary


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("accuracy", "macro_f1", "per_class_f1") if k in report}



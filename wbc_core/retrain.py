"""Classifier runs: build the training set for a recipe, run it as a job, score on real test cells."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import asdict
from typing import Any

from db import datasets as ds_db
from db import review as review_db
from db import runs as runs_db
from db.datasets import ImageRow
from wbc_core import jobs, store
from wbc_core.gan_runs import training_set_record
from wbc_core.review import ConsensusRule, accepted_candidates, get_review_settings

RECIPES = ("real", "curated", "all-synthetic")


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
    rule = rule or get_review_settings(info.id).rule  # the dataset's own consensus rule unless overridden
    rows, labels = build_training_set(info.id, recipe, rule, synthetic_cap, seed=config.seed)
    if not rows:
        raise RetrainError(f"dataset {info.name!r} has no train cells")
    if not ds_db.real_images(info.id, split="val", limit=1):
        raise RetrainError(f"dataset {info.name!r} has no val cells; re-import it with a val fraction above 0")
    digest, summary = training_set_record(rows, labels)
    decisions = review_db.current_decisions(info.id) if recipe == "curated" else []
    summary["decisions_snapshot"] = store.image_set_hash((d["id"], d["verdict"], str(d["image_id"]))
                                                         for d in decisions)
    run_config = {**config.to_dict(), "recipe": recipe, "consensus_rule": asdict(rule),
                  "synthetic_cap": synthetic_cap}
    run_id = runs_db.create_run("classifier", info.id, run_config, seed=config.seed, recipe=recipe,
                                group_name=group_name, split_hash=info.split_hash)
    runs_db.set_training_set(run_id, digest, len(rows), summary)
    # The exact list is frozen now: reviewers may keep deciding while the job waits or trains.
    manifest = [{"id": r.id, "sha256": r.sha256, "label": label, "origin": r.origin}
                for r, label in zip(rows, labels, strict=True)]
    (jobs.run_dir(run_id) / "train_set.json").write_text(json.dumps(manifest))
    if launch:
        jobs.launch(run_id)
    return run_id


def run_classifier_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body: train on the frozen training set, pick the best epoch on val, score on real test cells."""
    from wbc_core.classifier import ClassifierConfig, evaluate, train_classifier

    info = ds_db.get_dataset(run.dataset_id)
    known = set(ClassifierConfig.__dataclass_fields__)
    config = ClassifierConfig.from_dict({k: v for k, v in run.config.items() if k in known})
    out_dir = jobs.run_dir(run.id)
    manifest = json.loads((out_dir / "train_set.json").read_text())
    rows = ds_db.images_by_ids([m["id"] for m in manifest])
    if len(rows) != len(manifest):
        raise RetrainError("some images of the frozen training set no longer exist")
    assert_trainable(rows)
    labels = [m["label"] for m in manifest]
    size = config.image_size
    train = store.labelled(info.id, rows, info.class_names, size, labels)
    val = store.labelled(info.id, ds_db.real_images(info.id, split="val"), info.class_names, size)
    result = train_classifier(train, val, info.class_names, config, out_dir, progress=ctx.progress,
                              should_stop=ctx.should_stop)
    runs_db.set_device(run.id, result.device)
    test_rows = ds_db.real_images(info.id, split="test")
    summary: dict[str, Any] = {"best_epoch": result.best_epoch, "epochs_done": result.epochs_done,
                               "stopped": result.stopped, "train_seconds": round(result.seconds, 2),
                               "images_per_sec": round(result.images_per_sec, 1), "device": result.device,
                               "model_path": ctx.relative(result.checkpoint), "val": _headline(result.val)}
    if test_rows:  # always real test cells: synthetic cells have no split and cannot be here
        test = store.labelled(info.id, test_rows, info.class_names, size)
        summary["test"] = evaluate(result.checkpoint, test, info.class_names, device=result.device)
        summary["test_size"] = len(test_rows)
    return summary


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("accuracy", "macro_f1", "per_class_f1") if k in report}

"""Classifier runs: build the training set for a recipe, run it as a job, score on real test cells.

Groups (an ablation over the recipes, or one recipe over several seeds) are created as queued runs that
share a group name and are trained one after another by a small chain process
(`python -m wbc_core.retrain RUN_ID...`): two cores cannot train three models at once without each
taking three times as long, and a sequential chain finishes its first arm (the baseline) soonest.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from db import datasets as ds_db
from db import decisions as decisions_db
from db import runs as runs_db
from db.datasets import ImageRow
from db.vocabulary import LAUNCH_CHOICES, RECIPES  # noqa: F401 - LAUNCH_CHOICES: the Train form's choices
from wbc_core import jobs, limits
from wbc_core.auth import User, authorize
from wbc_core.mixing import MixConfig, Mixed, mix_cells
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


# A class with fewer real train cells than this share of the largest class's is rare enough that the default
# (shuffled) sampling almost never predicts it. Measured (bench/product_loop.py, PBC with basophil and ig cut to 30
# of 6,514 train cells, ResNet-18, 3 seeds): default sampling 66.9 test macro-F1 (ig F1 0), balanced sampling 86.1
# (basophil +62.8, ig +56.0 F1). PBC's full train split (smallest/largest 0.37) is not flagged.
RARE_CLASS_RATIO = 0.1


def class_balance_advice(dataset_id: int) -> str | None:
    """A plain-words recommendation of balanced sampling when the dataset's real train split has a rare class
    (fewer than RARE_CLASS_RATIO x the largest class's cells); None when the classes are balanced enough."""
    counts = {c: 0 for c in ds_db.get_dataset(dataset_id).class_names}
    for row in ds_db.image_counts(dataset_id):  # one grouped count, as the page reruns this on every interaction
        if row["origin"] == "real" and row["split"] == "train":
            counts[row["class_name"]] = counts.get(row["class_name"], 0) + row["n"]
    largest = max(counts.values(), default=0)
    rare = sorted((n, c) for c, n in counts.items() if n < RARE_CLASS_RATIO * largest)
    if not rare:
        return None
    names = ", ".join(f"{c} ({n})" for n, c in rare)
    return (f"Rare classes: {names} real train cells against {largest} in the largest class. Balanced sampling "
            "(draw every class equally often) is recommended and is on by default here: with classes this rare, "
            "shuffled sampling almost never predicts them (on PBC with two classes cut to 30 cells it scored those "
            "classes near 0 F1, and balanced sampling added about 19 points of macro-F1).")


class RetrainError(ValueError):
    """A classifier run that cannot be started as asked."""


def build_training_set(dataset_id: int, recipe: str, rule: ConsensusRule | None = None,
                       synthetic_cap: float | None = None, seed: int = 0) -> tuple[list[ImageRow], list[str]]:
    """Rows and labels of the training set for a recipe: real train cells plus the recipe's candidates.

    synthetic_cap limits synthetic cells per class to cap x that class's real train count (the share strategy).
    """
    mix = None if synthetic_cap is None else MixConfig("share", share=synthetic_cap)
    mixed = mixed_training_set(dataset_id, recipe, rule, mix, seed)
    return mixed.rows, mixed.labels


def mixed_training_set(dataset_id: int, recipe: str, rule: ConsensusRule | None = None,
                       mix: MixConfig | None = None, seed: int = 0) -> Mixed:
    """Rows, labels and per-row weights of a recipe's training set under a mixing strategy (see wbc_core.mixing)."""
    if recipe not in RECIPES:
        raise RetrainError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    real = ds_db.real_images(dataset_id, split="train")
    synthetic: list[tuple[ImageRow, str]] = []
    if recipe == "curated":
        synthetic = accepted_candidates(dataset_id, rule)
    elif recipe == "all-synthetic":
        synthetic = [(row, row.class_name) for row in ds_db.candidates(dataset_id)]
    mixed = mix_cells(real, synthetic, mix, seed)
    assert_trainable(mixed.rows)
    return mixed


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


def start_classifier_run(dataset: str | int, recipe: str = "real", overrides: dict[str, Any] | None = None,
                         rule: ConsensusRule | None = None, synthetic_cap: float | None = None,
                         group_name: str | None = None, launch: bool = True, mix: MixConfig | None = None, *,
                         user: User, training_set: Mixed | None = None) -> int:
    """Freeze the recipe's training set, record the run, and launch the training job.

    mix: the mixing strategy (wbc_core.mixing); synthetic_cap is the older spelling of MixConfig("share", cap).
    user is the acting account (needs the train permission); the run records it as its starter.
    training_set: an explicit set (rows, labels, weights) instead of the recipe's, e.g. a benchmark's random subset
    of candidates; it is checked like any other (real train cells and candidates only) and the run says so.
    """
    from wbc_core.classifier import ClassifierConfig

    who = authorize(user, "train").username
    info = ds_db.get_dataset(dataset)
    config = ClassifierConfig.from_dict({"image_size": info.image_size, **(overrides or {})})
    if config.pretrained_path and not Path(config.pretrained_path).is_file():
        # Checked here, not only in the job: an ablation would otherwise queue three runs that all fail.
        raise RetrainError(f"pretrained weights {config.pretrained_path!r} not found on this machine "
                           "(weights are never downloaded)")
    synthetic_cap = None if synthetic_cap is None else limits.check("synthetic_cap", synthetic_cap)  # NaN refused
    mix = _resolve_mix(recipe, mix, synthetic_cap, config.epochs)
    rule = rule or get_review_settings(info.id).rule  # the dataset's own consensus rule unless overridden
    if training_set is not None:
        assert_trainable(training_set.rows)
    rows, labels, weights = training_set or mixed_training_set(info.id, recipe, rule, mix, seed=config.seed)
    if not rows:
        raise RetrainError(f"dataset {info.name!r} has no train cells")
    limits.check_classifier_job(config, len(rows))  # plain refusal when a training step cannot fit in memory
    if not ds_db.real_images(info.id, split="val", limit=1):
        raise RetrainError(f"dataset {info.name!r} has no val cells; re-import it with a val fraction above 0")
    digest, summary = training_set_record(rows, labels, weights, mix.schedule() if mix else None)
    decisions = decisions_db.current_decisions(info.id) if recipe == "curated" else []
    summary["decisions_snapshot"] = decisions_snapshot_hash(decisions)
    run_config = {**config.to_dict(), "recipe": recipe, "consensus_rule": asdict(rule),
                  "synthetic_cap": mix.share if mix else None, "mix": mix.to_dict() if mix else None}
    if training_set is not None:
        run_config["training_set"] = "explicit"
    run_id = runs_db.create_run("classifier", info.id, run_config, seed=config.seed, recipe=recipe,
                                group_name=group_name, split_hash=info.split_hash, started_by=who)
    runs_db.set_training_set(run_id, digest, len(rows), summary)
    # The exact list is frozen now: reviewers may keep deciding while the job waits or trains.
    write_train_set(jobs.run_dir(run_id), rows, labels, weights)
    if launch:
        jobs.launch(run_id)
    return run_id


def _resolve_mix(recipe: str, mix: MixConfig | dict[str, Any] | None, synthetic_cap: float | None,
                 epochs: int) -> MixConfig | None:
    """The run's mix: the given one, or the share strategy for an older synthetic_cap; None on the real recipe."""
    if isinstance(mix, dict):
        mix = MixConfig.from_dict(mix)
    if mix is not None and synthetic_cap is not None:
        raise RetrainError("give either a mixing strategy or a synthetic cap, not both (a cap is the share strategy)")
    if mix is not None and recipe == "real":
        raise RetrainError(f"the real recipe has no synthetic cells to mix ({mix.strategy} strategy); choose the "
                           "curated or all-synthetic recipe, or no mixing strategy")
    if mix is None and synthetic_cap is not None and recipe != "real":
        mix = MixConfig("share", share=synthetic_cap)
    if mix is not None:
        try:
            mix.stage_epochs(epochs)
        except ValueError as exc:
            raise RetrainError(str(exc)) from None
    return mix


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
    weights = _frozen_weights(manifest)
    mix = MixConfig.from_dict(run.config["mix"]) if run.config.get("mix") else None
    stages: list[dict[str, Any]] = []
    if mix is not None and mix.strategy == "two-stage":
        result, stages = _train_two_stages(train, val, rows, info.class_names, config, mix, out_dir, ctx, weights)
    else:
        result = train_classifier(train, val, info.class_names, config, out_dir, progress=ctx.progress,
                                  should_stop=ctx.should_stop, train_weights=weights)
    runs_db.set_device(run.id, result.device)
    test_rows = ds_db.real_images(info.id, split="test")
    summary: dict[str, Any] = {"best_epoch": result.best_epoch, "epochs_done": result.epochs_done,
                               "stopped": result.stopped, "early_stopped": result.early_stopped,
                               "train_seconds": round(result.seconds, 2),
                               "images_per_sec": round(result.images_per_sec, 1), "device": result.device,
                               "world_size": result.world_size,
                               "model_path": ctx.relative(result.checkpoint), "val": _headline(result.val)}
    if stages:
        summary["stages"] = stages
    if test_rows:  # always real test cells: synthetic cells have no split and cannot be here
        assert_evaluable(test_rows, "test")
        test = store.labelled(info.id, test_rows, info.class_names, size)
        summary["test"] = results.score_and_save(result.checkpoint, test, [r.id for r in test_rows],
                                                 [r.id for r in val_rows], info.class_names, result.device, out_dir)
        summary["test_size"] = len(test_rows)
    summary["exports"] = _write_exports(run.id, result.checkpoint, summary.get("test"))
    return summary


def _frozen_weights(manifest: list[dict[str, Any]]) -> Any:  # noqa: ANN401 - a torch tensor; torch is lazy here
    """The frozen per-cell weights as the trainer's train_weights, or None when every cell counts 1.

    The trainer draws each cell with probability proportional to its weight (classifier.sampling): in expectation
    the same gradient as a loss weighted by it, without touching the loss.
    """
    import torch

    if not any("weight" in m for m in manifest):
        return None
    return torch.tensor([float(m.get("weight", 1.0)) for m in manifest], dtype=torch.float64)


def _train_two_stages(train: Any, val: Any, rows: list[ImageRow], class_names: list[str], config: Any,  # noqa: ANN401
                      mix: MixConfig, out_dir: Path, ctx: Any, weights: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Stage 1 on the whole frozen set, then stage 2 on its real cells only, starting from stage 1's best weights.

    The run's epochs are split between the stages (mix.stage_epochs); stage 2 runs at FINETUNE_LR_SCALE x the peak
    learning rate and writes the run's model.pt, stage 1 its own in stage1/. Both validate on real val cells.
    """
    import shutil

    import torch

    from wbc_core.classifier import train_classifier
    from wbc_core.mixing import FINETUNE_LR_SCALE
    from wbc_core.types import LabelledImages

    first_epochs, last_epochs = mix.stage_epochs(config.epochs)
    first = train_classifier(train, val, class_names, replace(config, epochs=first_epochs), out_dir / "stage1",
                             progress=_staged(ctx.progress, 0, config.epochs, "stage 1/2, real + synthetic"),
                             should_stop=ctx.should_stop, train_weights=weights)
    stages = [_stage_summary("real + synthetic", len(train), first_epochs, config.lr, first)]
    if first.stopped:
        shutil.copyfile(first.checkpoint, out_dir / first.checkpoint.name)  # the run's model.pt is stage 1's
        return replace(first, checkpoint=out_dir / first.checkpoint.name), stages
    real = [i for i, r in enumerate(rows) if r.origin == "real"]
    assert_evaluable([rows[i] for i in real], "train")  # science hygiene: the fine-tune sees real train cells only
    if len(real) < 2:
        raise RetrainError(f"the two-stage strategy fine-tunes on real train cells, and this set has {len(real)}")
    index = torch.tensor(real, dtype=torch.int64)
    real_train = LabelledImages(train.images[index], train.labels[index])
    second_config = replace(config, epochs=last_epochs, lr=config.lr * FINETUNE_LR_SCALE,
                            pretrained_path=str(first.checkpoint))
    second = train_classifier(real_train, val, class_names, second_config, out_dir,
                              progress=_staged(ctx.progress, first.epochs_done, config.epochs,
                                               "stage 2/2, real only"),
                              should_stop=ctx.should_stop)
    stages.append(_stage_summary("real only", len(real_train), last_epochs, second_config.lr, second))
    seconds = first.seconds + second.seconds
    speed = (first.images_per_sec * first.seconds + second.images_per_sec * second.seconds) / max(seconds, 1e-9)
    # Epochs on the run's axis: stage 2's epoch e is the run's epoch (stage 1's epochs done) + e.
    best = first.epochs_done + second.best_epoch if second.best_epoch else first.best_epoch
    return replace(second, best_epoch=best, epochs_done=first.epochs_done + second.epochs_done,
                   early_stopped=first.early_stopped or second.early_stopped, seconds=seconds,
                   images_per_sec=speed, history=first.history + second.history), stages


def _stage_summary(cells: str, n: int, epochs: int, lr: float, result: Any) -> dict[str, Any]:  # noqa: ANN401
    return {"cells": cells, "train_size": n, "epochs": epochs, "lr": lr, "epochs_done": result.epochs_done,
            "best_epoch": result.best_epoch, "stopped": result.stopped, "val": _headline(result.val)}


def _staged(progress: Any, offset: int, total: int, label: str) -> Any:  # noqa: ANN401
    """A progress callback that puts a stage's epochs on the run's epoch axis and names the stage."""
    def emit(event: Any) -> None:  # noqa: ANN401
        progress(replace(event, step=event.step + offset, total=total, message=f"{label}: {event.message}"))

    return emit


def _write_exports(run_id: int, checkpoint: Path, test: dict[str, Any] | None) -> str:
    """TorchScript and the model card, written now so downloads never compute in the page server."""
    from wbc_core import results

    try:
        results.write_exports(run_id, checkpoint, test)
    except Exception as exc:  # noqa: BLE001 - an exporter that cannot handle a model must not fail the run
        print(f"model exports not written: {type(exc).__name__}: {exc}", flush=True)
        return f"not written: {exc}"
    return "written"


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("accuracy", "macro_f1", "per_class_f1") if k in report}



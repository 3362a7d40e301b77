"""Classifier runs: build the training set for a recipe, run it as a job, score on real test cells.

Groups (an ablation over the recipes, or one recipe over several seeds) are created as queued runs that
share a group name and are trained one after another by a small chain process
(`python -m wbc_core.retrain RUN_ID...`): two cores cannot train three models at once without each
taking three times as long, and a sequential chain finishes its first arm (the baseline) soonest.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from db import datasets as ds_db
from db import review as review_db
from db import runs as runs_db
from db.datasets import ImageRow
from wbc_core import jobs
from wbc_core.review import ConsensusRule, accepted_candidates, get_review_settings
from wbc_core.settings import wbc_home

RECIPES = ("real", "curated", "all-synthetic")
ABLATION = "ablation"  # not a recipe: every recipe with the same seed(s) and settings, as one group
LAUNCH_CHOICES = (*RECIPES, ABLATION)
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


@dataclass(frozen=True)
class Launched:
    """What a start call created."""

    run_ids: list[int]  # in the order they train
    group_name: str | None  # shared by the runs of an ablation or multi-seed launch; None for a single run


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
    from wbc_core import store  # imported here so the chain process never loads torch
    from wbc_core.classifier import ClassifierConfig
    from wbc_core.gan_runs import training_set_record

    info = ds_db.get_dataset(dataset)
    config = ClassifierConfig.from_dict({"image_size": info.image_size, **(overrides or {})})
    if config.pretrained_path and not Path(config.pretrained_path).is_file():
        # Checked here, not only in the job: an ablation would otherwise queue three runs that all fail.
        raise RetrainError(f"pretrained weights {config.pretrained_path!r} not found on this machine "
                           "(weights are never downloaded)")
    if synthetic_cap is not None and synthetic_cap < 0:
        raise RetrainError(f"synthetic_cap must be >= 0 (x real count per class), got {synthetic_cap}")
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


# -- groups: ablation and multi-seed ----------------------------------------------------------------

def parse_seeds(seeds: Sequence[int] | str | int | None, default: int = 0) -> list[int]:
    """Seeds from a list, one int, or text such as "0 1 2" / "0,1,2"; unique, >= 0, order kept."""
    if seeds is None:
        values = [default]
    elif isinstance(seeds, int):
        values = [seeds]
    elif isinstance(seeds, str):
        parts = [p for p in re.split(r"[\s,;]+", seeds.strip()) if p]
        if not all(p.isdigit() for p in parts):
            raise RetrainError(f"seeds must be whole numbers >= 0 separated by spaces or commas, got {seeds!r}")
        values = [int(p) for p in parts] or [default]
    else:
        values = [int(s) for s in seeds]
    if any(s < 0 for s in values):
        raise RetrainError(f"seeds must be >= 0, got {values}")
    if len(set(values)) != len(values):
        raise RetrainError(f"seeds must be distinct, got {values}")
    return values


def _group_name(dataset_id: int, prefix: str) -> str:
    name = f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    taken = {r.group_name for r in runs_db.list_runs(dataset_id=dataset_id, kind="classifier")}
    suffix = 2
    unique = name
    while unique in taken:  # two launches within one second
        unique, suffix = f"{name}-{suffix}", suffix + 1
    return unique


def start_group(dataset: str | int, recipes: Sequence[str], seeds: Sequence[int], prefix: str,
                overrides: dict[str, Any] | None = None, rule: ConsensusRule | None = None,
                synthetic_cap: float | None = None, launch: bool = True) -> Launched:
    """One queued run per (seed, recipe), all with the same settings and group name, trained in sequence."""
    info = ds_db.get_dataset(dataset)
    seeds = parse_seeds(list(seeds))
    rule = rule or get_review_settings(info.id).rule  # one rule for every arm, even if settings change meanwhile
    group = _group_name(info.id, prefix)
    created: list[int] = []
    try:
        for seed in seeds:  # seed-major: the first complete comparison (all arms of seed 0) comes first
            for recipe in recipes:
                created.append(start_classifier_run(info.id, recipe, {**(overrides or {}), "seed": seed}, rule,
                                                    synthetic_cap, group_name=group, launch=False))
    except Exception:
        for run_id in created:  # never leave half a group queued
            jobs.cancel(run_id)
        raise
    if launch:
        launch_chain(created)
    return Launched(created, group)


def start_ablation(dataset: str | int, overrides: dict[str, Any] | None = None,
                   seeds: Sequence[int] | str | None = None, rule: ConsensusRule | None = None,
                   synthetic_cap: float | None = None, launch: bool = True) -> Launched:
    """real vs curated vs all-synthetic with the same seed(s) and settings, grouped as "ablation-<time>"."""
    seed_list = parse_seeds(seeds, default=int((overrides or {}).get("seed", 0)))
    return start_group(dataset, RECIPES, seed_list, ABLATION, overrides, rule, synthetic_cap, launch)


def start_seeds(dataset: str | int, recipe: str, seeds: Sequence[int] | str,
                overrides: dict[str, Any] | None = None, rule: ConsensusRule | None = None,
                synthetic_cap: float | None = None, launch: bool = True) -> Launched:
    """One run of a recipe per seed, grouped as "seeds-<recipe>-<time>" (mean ± std in the comparison)."""
    if recipe not in RECIPES:
        raise RetrainError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return start_group(dataset, [recipe], parse_seeds(seeds), f"seeds-{recipe}", overrides, rule, synthetic_cap,
                       launch)


def start_training(dataset: str | int, recipe: str, overrides: dict[str, Any] | None = None,
                   seeds: Sequence[int] | str | None = None, synthetic_cap: float | None = None,
                   launch: bool = True) -> Launched:
    """The Train page's one call: a single run, a multi-seed group, or an ablation."""
    seed_list = parse_seeds(seeds, default=int((overrides or {}).get("seed", 0)))
    if recipe == ABLATION:
        return start_ablation(dataset, overrides, seed_list, synthetic_cap=synthetic_cap, launch=launch)
    if len(seed_list) > 1:
        return start_seeds(dataset, recipe, seed_list, overrides, synthetic_cap=synthetic_cap, launch=launch)
    run_id = start_classifier_run(dataset, recipe, {**(overrides or {}), "seed": seed_list[0]},
                                  synthetic_cap=synthetic_cap, launch=launch)
    return Launched([run_id], None)


def group_runs(group_name: str) -> list[runs_db.RunInfo]:
    """Runs of a group in creation (= training) order."""
    return sorted((r for r in runs_db.list_runs(kind="classifier", limit=100_000) if r.group_name == group_name),
                  key=lambda r: r.id)


def cancel_group(group_name: str) -> list[int]:
    """Ask every active run of a group to stop (queued ones end at once); returns their ids."""
    active = [r for r in group_runs(group_name) if r.active]
    # Queued runs first, so the chain cannot start the next arm between two of our cancels.
    for run in sorted(active, key=lambda r: r.status != "queued"):
        jobs.cancel(run.id)
    return [r.id for r in active]


_chains: dict[int, subprocess.Popen] = {}  # chain processes started here, kept so they can be reaped


def launch_chain(run_ids: Sequence[int]) -> int:
    """Start the detached chain process that trains queued runs one after another; returns its pid."""
    for pid, proc in list(_chains.items()):
        if proc.poll() is not None:
            del _chains[pid]
    log_path = jobs.run_dir(run_ids[0]) / "chain.log"
    env = dict(os.environ)
    env["WBC_HOME"] = str(wbc_home())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(jobs.PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see jobs.launch
    with open(log_path, "ab") as log:
        # Own session, like a worker: closing the UI or pressing Ctrl-C in a terminal must not end the group.
        proc = subprocess.Popen([sys.executable, "-m", "wbc_core.retrain", *map(str, run_ids)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(jobs.PROJECT_ROOT), start_new_session=True)
    _chains[proc.pid] = proc
    return proc.pid


def run_chain(run_ids: Sequence[int]) -> int:
    """Body of the chain process: launch each still-queued run and wait for it to end before the next."""
    from db.migrate import ensure_schema

    ensure_schema()
    host = socket.gethostname()
    for run_id in run_ids:
        # The chain answers for its waiting runs: if it dies, jobs.reconcile marks them failed. Set here, before
        # any launch, so this can never overwrite the pid of a worker that already started.
        if runs_db.get_run(run_id).status == "queued":
            runs_db.set_pid(run_id, os.getpid(), host)
    for i, run_id in enumerate(run_ids):
        if runs_db.get_run(run_id).status != "queued":
            print(f"run {run_id} is no longer queued; skipped", flush=True)
            continue
        pid = jobs.launch(run_id)
        print(f"run {run_id} launched, pid {pid}", flush=True)
        info = jobs.wait(run_id, poll=1.0, on_poll=_WaitingBeat(run_id, list(run_ids[i + 1:])))
        deadline = time.monotonic() + 30
        while jobs.pid_alive(pid) and time.monotonic() < deadline:  # let it exit before the next one starts
            time.sleep(0.2)
        print(f"run {run_id} {info.status}", flush=True)
    return 0


class _WaitingBeat:
    """jobs.wait callback of the chain: keeps the heartbeat of the runs still waiting fresh (rate-limited)."""

    def __init__(self, current: int, waiting: list[int]) -> None:
        self.current, self.waiting, self.last = current, waiting, 0.0

    def __call__(self, _info: runs_db.RunInfo) -> None:
        if time.monotonic() - self.last < QUEUED_BEAT_SECONDS:
            return
        self.last = time.monotonic()
        for other in self.waiting:
            if runs_db.get_run(other).status == "queued":
                runs_db.heartbeat(other, 0.0, f"queued: waits for run {self.current}")


# -- the job ------------------------------------------------------------------------------------------

def run_classifier_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body: train on the frozen training set, pick the best epoch on val, score on real test cells."""
    from wbc_core import results, store
    from wbc_core.classifier import ClassifierConfig, train_classifier

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


if __name__ == "__main__":
    sys.exit(run_chain([int(a) for a in sys.argv[1:]]))

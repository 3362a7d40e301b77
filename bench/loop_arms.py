"""The product loop's arms: training sets, image budgets, runs through the app's classifier job, paired scores.

Arms of a regime (all retrained with the app's classifier job, wbc_core.retrain, the default recipe: ResNet-18 at
the dataset's 64 px, with a fixed image budget):
- real: recipe "real";
- unfiltered: recipe "all-synthetic" (every candidate) under the strategy;
- curated: recipe "curated" (accepted by the reviewers' consensus) under the strategy;
- matched: an explicit set (start_classifier_run(training_set=...)): real cells plus a random subset of all
  candidates with the curated arm's per-class synthetic counts, the same weights and schedule as the strategy.
Image budget: the trainer runs whole epochs, so an arm of n cells runs round(budget / n) epochs (arm_epochs) and
sees the budget to within half an epoch; every run records the images it saw ("images_seen").
"""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import gain_report as gr
from bench.loop_support import budget_epochs, cells_hash, finetune_epochs, run_inline, validation_interval

ARMS = ("real", "unfiltered", "curated", "matched")
RECIPE_OF = {"real": "real", "unfiltered": "all-synthetic", "curated": "curated", "matched": "all-synthetic"}
STRATEGIES = ("none", "share", "fill", "weight", "two-stage")


@dataclass(frozen=True)
class StrategyParams:
    """The numbers of the mixing strategies the benchmark compares (two-stage's fine-tune comes from the budget)."""

    share: float = 1.0
    target: int = 1000
    synthetic_weight: float = 0.5


def strategy_mix(strategy: str, params: StrategyParams, finetune: int | None = None) -> Any:  # noqa: ANN401
    """The app's MixConfig for a strategy name (None for "none": every synthetic cell, weight 1)."""
    from wbc_core.mixing import mix_from_options

    if strategy == "none":
        return None
    values = {"share": {"share": params.share}, "fill": {"target": params.target},
              "weight": {"synthetic_weight": params.synthetic_weight},
              "two-stage": {"finetune_epochs": max(1, finetune or 1)}}
    if strategy not in values:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    return mix_from_options(strategy, **values[strategy])


def per_class_synthetic(rows: Sequence[Any], labels: Sequence[str]) -> dict[str, int]:
    """Synthetic cells per class (by the label they train as) of a training set."""
    return dict(Counter(label for row, label in zip(rows, labels, strict=True) if row.origin == "synthetic"))


def matched_subset(candidates: Sequence[tuple[Any, str]], counts: dict[str, int], seed: int) -> list[tuple[Any, str]]:
    """A random subset of candidates with exactly counts[class] of each class, drawn as the app's mixing strategies
    draw theirs (wbc_core.mixing: per class sorted by id, then one seeded shuffle stream)."""
    from wbc_core.mixing import _pick as draw_per_class

    have = Counter(label for _, label in candidates)
    short = {c: (n, have[c]) for c, n in counts.items() if n > have[c]}
    if short:
        name, (n, there) = next(iter(sorted(short.items())))
        raise ValueError(f"class {name}: {n} matched cells asked for, only {there} candidates")
    return draw_per_class([item for item in candidates if item[1] in counts], counts, seed)


def arm_epochs(budget: int, n: int, n_real: int, batch: int, two_stage: bool) -> tuple[int, int]:
    """(epochs, fine-tune epochs) so that the arm sees about `budget` images.

    One stage: epochs x n. Two stages: (epochs - f) x n on the whole set, then f x n_real on its real cells."""
    epochs = budget_epochs(budget, n, batch)
    if not two_stage:
        return epochs, 0
    f = finetune_epochs(epochs)
    if f == 0:
        raise ValueError(f"the two-stage strategy needs at least 2 epochs; a budget of {budget} images gives "
                         f"{epochs} over {n} cells: raise the budget")
    first = max(1, round((budget - f * n_real) / n), budget_epochs(0, n, batch))
    return first + f, f


class ArmRunner:
    """Runs one arm of a regime through the app's classifier job and keeps its paired test scores."""

    def __init__(self, dataset_id: int, user: Any, overrides: dict[str, Any], budget: int,  # noqa: ANN401
                 params: StrategyParams, index: np.ndarray) -> None:
        from db import datasets as ds_db

        self.dataset_id, self.user, self.overrides, self.budget = dataset_id, user, overrides, budget
        self.params, self.index = params, index
        self.names = ds_db.get_dataset(dataset_id).class_names
        self.test_rows = ds_db.real_images(dataset_id, split="test")
        self.sha = {r.id: r.sha256 for r in self.test_rows}
        self.n_real = len(ds_db.real_images(dataset_id, split="train"))

    def training_set(self, arm: str, strategy: str, seed: int, curated_counts: dict[str, int] | None = None,
                     finetune: int | None = None) -> tuple[Any, Any]:  # noqa: ANN401
        """(Mixed, mix) the app's job would receive for this arm."""
        from db import datasets as ds_db
        from wbc_core.mixing import mix_cells
        from wbc_core.retrain import mixed_training_set

        mix = None if arm == "real" else strategy_mix(strategy, self.params, finetune)
        if arm != "matched":
            return mixed_training_set(self.dataset_id, RECIPE_OF[arm], mix=mix, seed=seed), mix
        if curated_counts is None:
            raise ValueError("the matched arm needs the curated arm's per-class counts")
        pool = [(row, row.class_name) for row in ds_db.candidates(self.dataset_id)]
        chosen = matched_subset(pool, curated_counts, seed=10_000 + seed)
        real = ds_db.real_images(self.dataset_id, split="train")
        weighted = mix if mix is not None and mix.strategy == "weight" else None
        mixed = mix_cells(real, chosen, weighted, seed)  # weight only: the counts are already chosen
        return mixed, mix

    def run(self, arm: str, strategy: str, seed: int, curated_counts: dict[str, int] | None = None,
            keep_model: bool = False) -> dict[str, Any]:
        """Train and score one arm; the record holds its paired scores under "_scored" (dropped before writing)."""
        from dataclasses import replace

        from db import runs as runs_db
        from wbc_core import jobs
        from wbc_core.results import PREDICTIONS_FILE
        from wbc_core.retrain import start_classifier_run

        two = strategy == "two-stage" and arm != "real"
        mixed, mix = self.training_set(arm, strategy, seed, curated_counts, finetune=1)
        batch = int(self.overrides.get("batch_size", 128))
        epochs, f = arm_epochs(self.budget, len(mixed.rows), self.n_real, batch, two)
        if two:
            mix = replace(mix, finetune_epochs=f)
        explicit = mixed if arm == "matched" else None
        values = {**self.overrides, "epochs": epochs, "seed": seed, "val_every": validation_interval(epochs)}
        run_id = start_classifier_run(self.dataset_id, RECIPE_OF[arm], values,
                                      mix=mix, launch=False, user=self.user, training_set=explicit,
                                      group_name=f"bench {arm} {strategy}")
        result = run_inline(run_id)
        run_dir = jobs.run_dir(run_id)
        pred = np.load(run_dir / PREDICTIONS_FILE)
        ids = pred["ids"].tolist()
        if ids != [r.id for r in self.test_rows]:
            raise AssertionError(f"run {run_id} was scored on other cells than the regime's real test cells")
        point, boots = gr.scores(pred["y_true"], pred["y_pred"], len(self.names), self.index)
        run = runs_db.get_run(run_id)
        n_syn = per_class_synthetic(mixed.rows, mixed.labels)
        images = (epochs - f) * len(mixed.rows) + f * self.n_real
        record = {"arm": arm, "strategy": strategy, "seed": seed, "run_id": run_id, "epochs": epochs,
                  "finetune_epochs": f, "train_cells": len(mixed.rows), "images_seen": images,
                  "synthetic_per_class": n_syn, "synthetic": sum(n_syn.values()),
                  "training_set_hash": run.train_set_hash,
                  "balanced_sampling": bool(run.config.get("balanced_sampling")), "mix": mix.to_dict() if mix else None,
                  "test_cells_hash": cells_hash([self.sha[i] for i in ids]), "test_cells": len(ids),
                  "val_macro_f1": round(float(result["val"]["macro_f1"]), 4),
                  "test_macro_f1": round(float(point[0]), 4), "test_accuracy": round(float(point[1]), 4),
                  "best_epoch": result["best_epoch"], "train_seconds": result["train_seconds"],
                  "images_per_sec": result["images_per_sec"], "_scored": (point, boots)}
        if keep_model:
            record["model_path"] = result["model_path"]
        else:  # ~100 MB of weights and exports per run: a full run would fill the temp disk
            for pattern in ("*.pt", "*.onnx", "*.ts", "stage1"):
                for p in run_dir.glob(pattern):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return record


def summarise(records: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per (arm, strategy): means over seeds; and the paired gains the issue's goals ask for."""
    metric_names = gr.metric_names(names)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[f"{r['arm']}@{r['strategy']}" if r["arm"] != "real" else "real"].append(r)
    absolute = {key: {"seeds": len(rs), "test_macro_f1": round(float(np.mean([r["test_macro_f1"] for r in rs])), 4),
                      "val_macro_f1": round(float(np.mean([r["val_macro_f1"] for r in rs])), 4),
                      "test_accuracy": round(float(np.mean([r["test_accuracy"] for r in rs])), 4),
                      "synthetic": float(np.mean([r["synthetic"] for r in rs])),
                      "images_seen": float(np.mean([r["images_seen"] for r in rs]))}
                for key, rs in groups.items()}

    def scored(key: str) -> list[tuple[np.ndarray, np.ndarray]]:
        return [r["_scored"] for r in sorted(groups[key], key=lambda r: r["seed"])]

    gains: dict[str, Any] = {}
    if "real" in groups:
        for key in groups:
            if key != "real" and len(groups[key]) == len(groups["real"]):
                gains[f"{key} - real"] = gr.paired_gain(scored(key), scored("real"), metric_names)
    for strategy in {r["strategy"] for r in records if r["arm"] == "curated"}:
        cur = f"curated@{strategy}"
        for other in ("matched", "unfiltered"):
            key = f"{other}@{strategy}"
            if key in groups and len(groups[key]) == len(groups[cur]):
                gains[f"{cur} - {key}"] = gr.paired_gain(scored(cur), scored(key), metric_names)
    return {"absolute": absolute, "gains": gains}


def best_strategy(absolute: dict[str, Any], strategies: Sequence[str]) -> str:
    """The strategy whose curated arm has the highest mean VAL macro-F1 (never test: hygiene); ties: listed first."""
    scored = [(absolute[f"curated@{s}"]["val_macro_f1"], -i, s) for i, s in enumerate(strategies)
              if f"curated@{s}" in absolute]
    if not scored:
        raise ValueError("no curated arm was run, so no strategy can be chosen")
    return max(scored)[2]


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A run record without its in-memory scores."""
    return {k: v for k, v in record.items() if not k.startswith("_")}

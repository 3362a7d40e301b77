"""Does curated synthetic data improve the product's classifier? The augmentation-gain benchmark on the app's loop.

Everything runs through the app's own code paths in a throw-away WBC_HOME (bench/loop_support.py):
  1. import the folder once with the app's import (wbc_core.importing, its fixed seeded split);
  2. per regime, a GAN job body (wbc_core.gan_runs.start_gan_run + the "gan" job, the app's GanConfig: the CPU
     preset, or CUDA_PRESET with --device cuda; --gan-steps steps);
  3. candidates through wbc_core.gan_runs.generate_candidates, scored by the dataset's judge;
  4. a scripted reviewer (a user account with the reviewer role) decides every candidate through
     wbc_core.review_model.decide with the four-rule ReferenceClassifierPolicy on a ResNet-18 reference trained
     once, with the default recipe for --reference-epochs epochs, on the import's full real train split (never
     val or test; its best epoch chosen on val). The reference stands in for an expert, who knows every class:
     a reference trained on a regime's 30 basophils (the first design) agreed on no rare-class candidate at all.
     Per class and rule rejection counts are recorded. --policy expert uses the decisions already in a database
     instead (ExpertDecisionsPolicy; see run_expert);
  5. arms real / unfiltered / curated / matched (bench/loop_arms.py), >= 3 seeds, each the app's classifier job
     (the default recipe, ResNet-18 at 64 px) with the same image budget within a regime: --cls-epochs x the
     regime's real train cells, clipped to [--cls-min-images, --cls-images];
  6. scored on the regime's real test cells (the job's own per-cell predictions), paired bootstrap CIs
     (bench/gain_report.py).
Mixing strategies: first none/share/fill/weight/two-stage on the curated arm of the first regime (rare), on
--strategy-seeds seeds, best by VAL macro-F1; the best then runs every seed, and every arm with it in every regime.
Every strategy's test numbers are reported too.

How a regime is expressed with the app: one import, then one derived dataset per regime (loop_support.
derive_dataset: the same stored files and splits, with the regime's train rows only). A dataset is the app's unit
of "what a GAN, a judge and a classifier may learn from": gan_training_rows, the judge and mixed_training_set all
read the dataset's train split, so cells cut from a regime cannot reach its GAN, judge, reference or arms by any
code path, and no filter had to be threaded through the app. Val and test rows are copied in the import's order,
so every regime and arm is scored on the same real test cells (checked per run by their sha256s).
Compile: left to the app's plan (wbc_core.compile), which compiles only where the planned steps win it back.
    .venv/bin/python bench/augmentation_gain.py [--quick] [--regimes rare,n50,all] [--gan-steps N] [--device cuda]
--budget-minutes (default 120) fits the run to this machine: each regime's GAN steps and arm images shrink
by one factor to what is left at the measured pace (loop_plan.fit_regime); 0 runs exactly as configured.
Writes product_loop[_quick][_TAG].json / .md after every stage. Every arm samples classes evenly by default
(--no-balanced for the recipe's plain default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the cores are shared

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from bench import gain_report as gr  # noqa: E402
from bench import loop_arms as la  # noqa: E402
from bench import loop_report  # noqa: E402
from bench import loop_resume as lr  # noqa: E402
from bench import loop_support as ls  # noqa: E402
from bench.loop_plan import (  # noqa: E402, F401 (planned_seconds, train_estimate: the tests' names for them)
    PACE_KINDS,
    SPEED,
    RegimeBudget,
    arm_budget,
    arm_seconds,
    fit_regime,
    plan,
    planned_seconds,
    train_estimate,
)


@dataclass(frozen=True)
class LoopConfig:
    """Every knob of one run (defaults: the full CPU run, planned at 120 min on 2 idle AVX512-BF16 cores).

    What the 120 minutes bought (planned_seconds; the measured stage speeds are SPEED): 1,800 GAN steps per regime
    (2,000 planned 123 min), a 6-epoch reference (val 97.3 at 10 epochs), at most 25,000 images per arm (about 3
    passes over the all-data regime's train cells) and three strategies compared (weight and two-stage lost by 3.7
    and 7.5 val points to fill in the rare regime, product_loop_rare.json; both stay selectable). The science runs in
    BENCHMARKS.md used --gan-steps 3000 --cls-images 40000 --reference-epochs 10 and take about 3 h for all regimes."""

    data: str = os.environ.get("WBC_PBC128", str(ROOT.parent / "shared" / "data" / "pbc128"))
    out: str = str(ROOT / "bench" / "results")
    quick: bool = False
    size: int = 64  # the app's default working size
    cells_per_class: int = 0  # real cells imported per class (0 = all)
    regimes: tuple[str, ...] = ("rare", "n50", "all")  # the first one compares the strategies
    rare_classes: tuple[str, ...] = ("basophil", "ig")
    rare_n: int = 30
    split_seed: int = 0
    seeds: int = 3
    gan_steps: int = 1800
    per_class: int = 400  # candidates generated per class and regime
    reference_epochs: int = 6  # the scripted reviewer's reference: default recipe on the full real train split
    cls_epochs: int = 5  # an arm's image budget: this many passes over the regime's real train cells, clipped to
    cls_min_images: int = 10_000  # ... at least this (a 400-cell regime still gets ~80 optimiser steps) ...
    cls_images: int = 25_000  # ... and at most this many images per classifier arm
    strategy_seeds: int = 1  # seeds per strategy in the comparison; the chosen one then runs all `seeds`
    cls_batch: int = 128  # the default recipe's batch
    strategies: tuple[str, ...] = ("none", "share", "fill")  # any of la.STRATEGIES
    # Every arm samples classes evenly (the recipe's balanced_sampling). The rare run of 2026-12-02 without it
    # measured the class prior, not the synthetic cells: real cells sampled evenly beat every synthetic arm.
    balanced: bool = True
    share: float = 1.0
    fill_target: int = 1000
    synthetic_weight: float = 0.5
    min_confidence: float = 0.9
    bootstrap: int = 1000
    threads: int = 2
    device: str = "cpu"
    policy: str = "reference"  # "reference" (scripted reviewer) or "expert" (decisions already in a database)
    expert_home: str = ""  # --policy expert: the WBC_HOME holding the dataset and its decisions
    expert_dataset: str = ""  # --policy expert: that dataset's name
    tag: str = ""  # results go to product_loop[_quick][_TAG].json / .md, so a run never overwrites another's
    resume: bool = False  # carry on a stopped run of the same tag and config (bench/loop_resume.py)
    # Fit the whole run into this many minutes on the machine at hand (0: run as configured): before each regime
    # the pace measured so far scales its GAN steps and arm images down (loop_plan.fit_regime). The plan's speeds
    # are one machine's; the Xeon with AMX ran the configured run in 238 min, not 120.
    budget_minutes: float = 120.0


QUICK = dict(cells_per_class=40, regimes=("rare", "all"), rare_n=8, seeds=1, gan_steps=20, per_class=12,
             reference_epochs=1, cls_images=400, cls_min_images=400, cls_batch=32, strategies=("none", "share"),
             fill_target=30, bootstrap=200, budget_minutes=0.0,
             min_confidence=0.0)  # a 20-step GAN convinces no reference: let the other three rules decide


class ProductLoop:
    """One run: import, then every regime's GAN, review and arms; results written after every stage."""

    def __init__(self, cfg: LoopConfig, bar: tqdm | None = None) -> None:
        self.cfg, self.bar = cfg, bar
        self.started = time.monotonic()
        self.results: dict[str, Any] = {"benchmark": "product_loop", "quick": cfg.quick, "partial": True,
                                        "config": dataclasses.asdict(cfg), "machine": ls.machine(), "stages": {},
                                        "regimes": {}}
        self.previous: dict[str, Any] | None = None
        self.earlier_minutes = 0.0  # the stopped sessions' wall time, when resumed
        if cfg.resume:
            self.previous = lr.load_partial(results_paths(cfg)["json"], cfg)
            self.results = lr.resumed_state(self.previous, cfg.seeds)
            self.earlier_minutes = sum(s.get("wall_minutes") or 0 for s in self.results["sessions"])
            self.results["sessions"].append({"machine": ls.machine(), "resumed": True, "kept_regimes":
                                             list(self.results["regimes"])})
        self.params = la.StrategyParams(cfg.share, cfg.fill_target, cfg.synthetic_weight)
        # This session's stages per kind: seconds taken and planned (the pace of each kind of stage).
        self.measured: dict[str, float] = {}
        self.planned: dict[str, float] = {}
        self.reference_images = 0  # images the reference job trained on (its pace stands in for the arms' at first)
        # A resumed run's first fit: the stopped sessions' paces, until this session measures its own.
        self.carried_paces: dict[str, float] = dict(self.previous.get("paces", {})) if self.previous else {}
        self.stage_plan = plan(cfg)  # planned seconds per kind of stage, for the regime being run

    # -- plumbing --------------------------------------------------------------------------------------------
    def stage(self, name: str, seconds: float) -> None:
        self.results["stages"][name] = round(seconds, 1)
        kind = next((k for k in ("import", "gan", "review", "reference") if k in name.lower()), "arm")
        self.measured[kind] = self.measured.get(kind, 0.0) + seconds
        self.planned[kind] = self.planned.get(kind, 0.0) + self.stage_plan[kind]
        self.results["paces"] = self.paces()  # kept for a resumed run's first fit
        if self.bar is not None:  # the bar counts planned seconds, so its ETA scales the plan by the measured pace
            self.bar.set_postfix_str(name)
            self.bar.update(round(self.stage_plan[kind]))
        self.write()

    def paces(self) -> dict[str, float]:
        """Measured / planned seconds per kind of stage so far; before the first arm, the reference (a classifier
        job like an arm) re-planned at the arms' speed stands in for them."""
        pace = {k: self.measured[k] / self.planned[k] for k in PACE_KINDS if self.planned.get(k)}
        if "arm" not in pace and self.measured.get("reference") and self.reference_images:
            pace["arm"] = self.measured["reference"] / arm_seconds(self.cfg, self.reference_images)
        return {**self.carried_paces, **pace}  # loop_plan.usable_paces fills in the kinds not measured yet

    def fit_budget(self, index: int, n_real: int) -> RegimeBudget:
        """This regime's GAN steps and arm images under --budget-minutes, at the pace measured so far."""
        elapsed = self.earlier_minutes * 60 + time.monotonic() - self.started
        fitted = fit_regime(self.cfg, index, n_real, elapsed, self.paces())
        self.stage_plan = {**plan(self.cfg), "gan": fitted.gan_steps * SPEED["gan_step_s"],
                           "arm": arm_seconds(self.cfg, fitted.arm_images)}
        message = fitted.message(self.cfg.regimes[index], self.cfg.budget_minutes)
        if self.bar is None:
            print(message)
        else:  # the bar's total follows the fitted plan, so it still ends at 100%
            self.bar.write(message)
            self.bar.total = self.bar.n + round(fitted.plan_seconds)
            self.bar.refresh()
        return fitted

    def write(self) -> dict[str, Path]:
        paths = results_paths(self.cfg)
        paths["json"].parent.mkdir(parents=True, exist_ok=True)
        minutes = (time.monotonic() - self.started) / 60
        self.results["wall_minutes"] = round(self.earlier_minutes + minutes, 2)  # all sessions of the run
        if self.cfg.resume:
            self.results["sessions"][-1]["wall_minutes"] = round(minutes, 2)
        self.results["goals"] = loop_report.goals(self.results, self.cfg.rare_classes)
        paths["json"].write_text(json.dumps(self.results, indent=2, default=float) + "\n")
        paths["md"].write_text(loop_report.markdown(self.results, self.cfg.rare_classes))
        return paths

    def overrides(self, arm: bool = True) -> dict[str, Any]:
        """The default recipe's config, with the bench's device, threads and batch; an arm's also with --balanced
        (the reference keeps the default recipe: it learns from every real train cell, so no class is rare)."""
        cfg = self.cfg
        values: dict[str, Any] = {"batch_size": cfg.cls_batch, "device": cfg.device, "num_threads": cfg.threads,
                                  "progress_every_s": 60.0}
        return {**values, "balanced_sampling": cfg.balanced} if arm else values

    # -- the protocol ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import torch

        torch.set_num_threads(max(1, self.cfg.threads))
        home = ls.ThrowawayHome("bench_product_loop_")
        try:
            with home:
                self.admin, self.reviewer = home.accounts()
                self.tmp = home.tmp
                if self.cfg.policy == "expert":
                    raise SystemExit("--policy expert runs on an existing home: use run_expert (see --help)")
                self._run()
        finally:
            home.close()
        self.results["partial"] = False
        self.write()
        return self.results

    def _run(self) -> None:
        from db import datasets as ds_db
        from wbc_core import importing

        cfg = self.cfg
        t = time.monotonic()
        source = ls.subset_folder(Path(cfg.data), self.tmp / "subset", cfg.cells_per_class)
        info = importing.import_folder(source, "pbc", size=cfg.size, user=self.admin)
        self.base = info.dataset_id
        self.names = ds_db.get_dataset(self.base).class_names
        self.base_rows = ds_db.real_images(self.base)
        self.results["data"] = {"class_names": self.names, "cells": len(self.base_rows),
                                "splits": importing.class_split_counts(self.base)}
        kept = lr.reference_checkpoint(results_paths(cfg)["json"])
        if self.previous is not None:
            test = ds_db.real_images(self.base, split="test")
            lr.check_test_cells(self.previous, ls.cells_hash([r.sha256 for r in test]))
        self.stage("import" if self.previous is None else "resume: import", time.monotonic() - t)
        t = time.monotonic()
        if self.previous is not None and kept.is_file():  # the stopped run's own scripted reviewer
            self.reference = {**self.previous["reference"], "model_path": str(kept)}
        else:
            self.reference = self.train_reference()
            self.results["reference"] = la.public({k: v for k, v in self.reference.items() if k != "model_path"})
            lr.keep_reference(current_absolute(self.reference["model_path"]), results_paths(cfg)["json"])
            self.stage("reference" if self.previous is None else "resume: reference retrained",
                       time.monotonic() - t)
        done = lr.finished_regimes(self.previous, cfg.seeds) if self.previous is not None else []
        strategy = self.results.get("strategy", {}).get("chosen") if done else None
        for i, regime in enumerate(cfg.regimes):
            if regime in done:  # kept as the stopped run wrote it
                continue
            strategies = cfg.strategies if i == 0 else (strategy,)
            self.results["regimes"][regime] = self.regime(regime, strategies, i)
            if i == 0:
                strategy = self.results["regimes"][regime]["best_strategy"]
                self.results["strategy"] = {"chosen": strategy, "by": "curated arm's mean val macro-F1",
                                            "regime": regime}

    def train_reference(self) -> dict[str, Any]:
        """The scripted reviewer's reference: the default recipe on the import's full real train split, scored on
        the same real test cells as every arm (reported, never used to decide anything)."""
        from db import datasets as ds_db

        cfg = self.cfg
        n_train = len(ds_db.real_images(self.base, split="train"))
        self.reference_images = cfg.reference_epochs * n_train
        index = gr.boot_index(len(ds_db.real_images(self.base, split="test")), 1, cfg.split_seed)
        runner = la.ArmRunner(self.base, self.admin, self.overrides(arm=False), self.reference_images, self.params,
                              index)
        return runner.run("real", "none", 0, keep_model=True)

    def regime(self, name: str, strategies: tuple[str, ...], index: int = 0) -> dict[str, Any]:
        """GAN, reference, candidates, scripted review and every arm of one regime."""
        from db import datasets as ds_db

        cfg = self.cfg
        out: dict[str, Any] = {}
        self.results["regimes"][name] = out  # filled in place: every partial write shows the stages done
        t = time.monotonic()
        caps = ls.regime_caps(name, self.names, cfg.rare_classes, cfg.rare_n)
        rows = ls.regime_rows(self.base_rows, caps, cfg.split_seed)
        dataset_id = ls.derive_dataset(self.base, f"pbc-{name}", rows, {"regime": name, "caps": caps})
        train = ds_db.real_images(dataset_id, split="train")
        test = ds_db.real_images(dataset_id, split="test")
        out["real_train_per_class"] = {c: sum(r.class_name == c for r in train) for c in self.names}
        out["audit"] = {"train_cells_hash": ls.cells_hash([r.sha256 for r in train]),
                        "test_cells_hash": ls.cells_hash([r.sha256 for r in test]), "test_cells": len(test),
                        "test_cells_in_train": len({r.sha256 for r in train} & {r.sha256 for r in test})}
        fitted = self.fit_budget(index, len(train)) if cfg.budget_minutes > 0 else None
        if fitted is not None:
            out["budget"] = dataclasses.asdict(fitted)
        out["gan"] = self.gan(dataset_id, fitted.gan_steps if fitted else cfg.gan_steps)
        self.stage(f"{name}: GAN", time.monotonic() - t)

        index = gr.boot_index(len(test), cfg.bootstrap, cfg.split_seed)
        budget = fitted.arm_images if fitted else arm_budget(cfg, len(train))
        out["image_budget_per_arm"] = budget
        runner = la.ArmRunner(dataset_id, self.admin, self.overrides(), budget, self.params, index)
        records: list[dict[str, Any]] = []
        for seed in range(cfg.seeds):
            t = time.monotonic()
            records.append(runner.run("real", "none", seed))
            self._summarise(out, records)
            self.stage(f"{name}: real seed {seed}", time.monotonic() - t)

        t = time.monotonic()
        from wbc_core.gan_runs import generate_candidates

        gen = generate_candidates(out["gan"]["run_id"], cfg.per_class, seed=cfg.split_seed)
        out["generation"] = {k: gen.get(k) for k in ("candidates", "checkpoint_step", "scoring")}
        out["generation"]["seconds"] = round(time.monotonic() - t, 1)
        out["curation"] = self.review(dataset_id, self.reference)
        self.stage(f"{name}: generate + review", time.monotonic() - t)

        compare = range(min(cfg.seeds, cfg.strategy_seeds)) if len(strategies) > 1 else range(cfg.seeds)
        # Each arm is summarised before its stage is written, so a stopped run's files hold every finished arm.
        for strategy in strategies:
            for seed in compare:
                t = time.monotonic()
                records.append(runner.run("curated", strategy, seed))
                self._summarise(out, records)
                self.stage(f"{name}: curated {strategy} seed {seed}", time.monotonic() - t)
        best = la.best_strategy(out["absolute"], strategies)
        out["best_strategy"] = best
        for seed in (range(len(compare), cfg.seeds) if len(strategies) > 1 else ()):
            t = time.monotonic()
            records.append(runner.run("curated", best, seed))
            self._summarise(out, records)
            self.stage(f"{name}: curated {best} seed {seed}", time.monotonic() - t)
        for arm in ("unfiltered", "matched"):
            for seed in range(cfg.seeds):
                t = time.monotonic()
                counts = next(r["synthetic_per_class"] for r in records
                              if r["arm"] == "curated" and r["strategy"] == best and r["seed"] == seed)
                records.append(runner.run(arm, best, seed, curated_counts=counts))
                self._summarise(out, records)
                self.stage(f"{name}: {arm} {best} seed {seed}", time.monotonic() - t)
        return out

    def _summarise(self, out: dict[str, Any], records: list[dict[str, Any]]) -> None:
        out.update(la.summarise(records, self.names))
        out["runs"] = [la.public(r) for r in records]
        out["test_cells_identical"] = len({r["test_cells_hash"] for r in records}) == 1
        seen = [r["images_seen"] for r in records]  # whole epochs: the budget is met to within half an epoch
        out["image_budget"] = {"target": out.get("image_budget_per_arm"), "min": min(seen), "max": max(seen)}

    def gan(self, dataset_id: int, steps: int) -> dict[str, Any]:
        """The regime's GAN: the app's preset (CPU, or CUDA_PRESET on cuda) with `steps` steps, as a job body."""
        from db import runs as runs_db
        from wbc_core.gan_runs import preset_values, start_gan_run

        cfg = self.cfg
        preset = "cuda" if cfg.device.startswith("cuda") else "cpu"
        values = {**preset_values(preset, cfg.size), "steps": steps, "checkpoint_every": steps,
                  "sample_every": steps, "seed": cfg.split_seed, "device": cfg.device, "num_threads": cfg.threads,
                  "ema_start": min(500, steps // 4), "log_every": max(1, steps // 10)}
        if cfg.quick:
            values.update(g_width=16, d_width=16, batch_size=32)
        run_id = start_gan_run(dataset_id, values, launch=False, user=self.admin)
        t = time.monotonic()
        result = ls.run_inline(run_id)
        seconds = time.monotonic() - t
        run = runs_db.get_run(run_id)
        return {"run_id": run_id, "preset": preset, "steps": result["steps_done"], "seconds": round(seconds, 1),
                "sec_per_step": round(float(result["sec_per_step"]), 4), "device": result["device"],
                "training_set_hash": run.train_set_hash, "train_cells": run.train_set_size,
                "config": {k: values[k] for k in ("steps", "batch_size", "g_width", "d_width", "image_size")}}

    def review(self, dataset_id: int, reference: dict[str, Any]) -> dict[str, Any]:
        """The scripted reviewer decides every candidate through the app's review API; rejections per class/rule."""
        from db import datasets as ds_db
        from wbc_core import store
        from wbc_core.classifier import load_classifier
        from wbc_core.context import current
        from wbc_core.curation import (
            ClassifierReference,
            CurationContext,
            ReferenceClassifierPolicy,
            ReferencePolicyConfig,
        )

        cfg = self.cfg
        t = time.monotonic()
        model = load_classifier(current().absolute(reference["model_path"]), cfg.device)
        policy = ReferenceClassifierPolicy(ClassifierReference(model, cfg.device),
                                           ReferencePolicyConfig(cfg.min_confidence))
        real = ds_db.real_images(dataset_id, split="train")
        context = CurationContext(self.names, train=store.labelled(dataset_id, real, self.names, cfg.size),
                                  val=store.labelled(dataset_id, ds_db.real_images(dataset_id, split="val"),
                                                     self.names, cfg.size))
        rows = ds_db.candidates(dataset_id)
        decisions = policy.explain(store.labelled(dataset_id, rows, self.names, cfg.size), context)
        ls.decide_as_reviewer(rows, decisions, self.names, self.reviewer)
        return {"policy": "reference", "reference_run": reference["run_id"],
                "reference_val_macro_f1": reference["val_macro_f1"], "min_confidence": cfg.min_confidence,
                "candidates": len(rows), "accepted": int(decisions.accepted.sum()),
                "accepted_per_class": {c: int(sum(bool(a) for r, a in zip(rows, decisions.accepted.tolist(),
                                                                          strict=True) if r.class_name == c))
                                       for c in self.names},
                "rejections": decisions.rejections, "seconds": round(time.monotonic() - t, 1)}


def results_paths(cfg: LoopConfig) -> dict[str, Path]:
    """product_loop[_quick][_TAG].json / .md in the output folder."""
    prefix = ("product_loop_quick" if cfg.quick else "product_loop") + (f"_{cfg.tag}" if cfg.tag else "")
    return {"json": Path(cfg.out) / f"{prefix}.json", "md": Path(cfg.out) / f"{prefix}.md"}


def current_absolute(stored: str) -> Path:
    from wbc_core.context import current

    return current().absolute(stored)


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> LoopConfig:
    """CLI -> LoopConfig; --quick sets the smoke budgets, explicit options still override them."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few cells, tiny GAN and classifier budgets")
    for f in dataclasses.fields(LoopConfig):
        if f.name == "quick":
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):  # type=bool would read "--balanced False" as True
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
            continue
        kind = _names if isinstance(f.default, tuple) else type(f.default)
        p.add_argument(flag, type=kind, default=None)
    args = vars(p.parse_args(argv))
    values: dict[str, Any] = dict(QUICK) if args.pop("quick") else {}
    values["quick"] = bool(values)
    values.update({k: v for k, v in args.items() if v is not None})
    cfg = LoopConfig(**values)
    unknown = [s for s in cfg.strategies if s not in la.STRATEGIES]
    if unknown or cfg.policy not in ("reference", "expert"):
        p.error(f"strategies must be among {', '.join(la.STRATEGIES)} and policy reference or expert")
    return cfg


def main(argv: list[str] | None = None) -> int:
    return main_config(parse_args(argv))


def main_config(cfg: LoopConfig) -> int:
    """Run one configuration (the expert path or the loop), write its files, print its tables."""
    if threading.current_thread() is not threading.main_thread():
        return _main(cfg)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still removes its temp home
    try:
        return _main(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(cfg: LoopConfig) -> int:
    try:
        return _run_main(cfg)
    except lr.ResumeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run_main(cfg: LoopConfig) -> int:
    if cfg.policy == "expert":
        results = loop_report.run_expert(cfg)
        path = Path(cfg.out) / "product_loop_expert.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"config": dataclasses.asdict(cfg), **results}, indent=2, default=float) + "\n")
        print(f"wrote {path}")
        return 0
    loop = ProductLoop(cfg)  # a resumed run reads and checks the stopped one's results here
    done: tuple[str, ...] = ()
    if loop.previous is not None:
        done = tuple(lr.finished_regimes(loop.previous, cfg.seeds))
        print(f"resuming {results_paths(cfg)['json']}: keeping {', '.join(done) or 'no regime'}")
    planned = planned_seconds(cfg, done, reference=not (loop.previous is not None and lr.reference_checkpoint(
        results_paths(cfg)["json"]).is_file()))
    print(f"planned: about {planned / 60:.0f} min on 2 idle cores ({json.dumps(plan(cfg))} s per stage)")
    if cfg.budget_minutes > 0:
        print(f"budget: {cfg.budget_minutes:.0f} min; before each regime the pace measured so far scales its GAN "
              "steps and arm images to fit (--budget-minutes 0 runs as configured)")
    with tqdm(total=round(planned), unit="s", smoothing=0.05) as bar:
        loop.bar = bar
        results = loop.run()
    print(loop_report.markdown(results, cfg.rare_classes))
    print(f"done in {results['wall_minutes']:.1f} min; results in {Path(cfg.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

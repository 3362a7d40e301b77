"""Does curated synthetic data improve the classifier on real cells? Four arms per data regime, paired CIs.

The one entry point of the augmentation-gain benchmark. Without --proxy it runs the product's loop
(bench/product_loop.py: the app's import, GAN, generation, review API and classifier recipes); with --proxy it runs
the protocol below, kept for the CI smoke run (--proxy --quick) and for comparison.

Arms: (1) real only, (2) real + unfiltered synthetic, (3) real + curated synthetic (arm 2 minus what the curation
policy rejects), (4) real + a random subset of arm 2 with arm 3's count per class. The GAN of a regime trains on that
regime's real train cells only; the classifier is scored on real test cells that neither ever saw.
Run: .venv/bin/python bench/augmentation_gain.py --proxy --data ../shared/data/pbc128 [--quick] [--out bench/results]
Writes augmentation_gain[_quick].json / .md / .png (+ _sets.json with the exact cell keys, + GAN sample grids).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep: the cores are shared

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench import gain_data as gd  # noqa: E402
from bench import gain_report as gr  # noqa: E402
from wbc_core import options  # noqa: E402
from wbc_core.classifier import load_classifier, predict_logits, train_classifier  # noqa: E402
from wbc_core.curation import (  # noqa: E402
    ClassifierReference,
    CurationContext,
    ReferenceClassifierPolicy,
    ReferencePolicyConfig,
)
from wbc_core.gan import load_generator, sample_cells, train_gan  # noqa: E402
from wbc_core.types import LabelledImages  # noqa: E402


@dataclass(frozen=True)
class GainConfig:
    """Every knob of one benchmark run (defaults: the full run, sized for ~2 h on 2 CPU cores)."""

    data: str = "../shared/data/pbc128"  # ImageFolder: one subfolder of images per class
    out: str = str(ROOT / "bench" / "results")  # where the JSON, markdown and PNG go
    quick: bool = False  # smoke mode (names outputs *_quick); see QUICK for its budgets
    size: int = 32  # working side in pixels for GAN and classifiers (32 keeps CPU runs affordable)
    # nK = K real train cells per class. Ordered by the goals they answer (n50, rare, all), then the rest of the
    # curve: results are written after every regime, so an interrupted run still answers the goals first.
    regimes: tuple[str, ...] = ("n50", "rare", "all", "n25", "n100")
    rare_classes: tuple[str, ...] = ("basophil", "ig")  # cut to rare_n in the "rare" regime, others stay full
    rare_n: int = 30  # real train cells kept for each rare class
    shares: tuple[float, ...] = (0.25, 0.5, 1.0)  # synthetic cells per class as a multiple of its real count
    seeds: int = 3  # classifier seeds per arm (also redraws the candidate pool); the GAN is trained once per regime
    split_seed: int = 0  # seeds the train/val/test split (as the app's import) and the regimes' subsets
    val_per_class: int = 40  # real val cells per class for the arms' best-epoch choice (0 = all); never test cells
    gan_steps: int = 1500  # GAN optimiser steps per regime
    gan_width: int = 48  # generator and discriminator base width
    gan_batch: int = 64  # GAN batch size
    gan_aux_weight: float = 0.0  # GAN AC-GAN class-loss weight (GanConfig.aux_weight); 0 = projection only
    gan_lr_g: float = 2e-4  # GAN generator learning rate (TTUR: e.g. 1e-4 with gan_lr_d 4e-4)
    gan_lr_d: float = 2e-4  # GAN discriminator learning rate
    ref_epochs: int = 15  # epochs of the reference classifier behind the curation policy
    cls_model: str = "small_cnn"  # classifier for reference and arms
    cls_epochs: int = 40  # epochs over the regime's real cells: the image budget every arm of the regime gets
    cls_max_images: int = 40_000  # cap on that budget (large regimes)
    cls_batch: int = 64  # classifier batch size
    min_confidence: float = 0.9  # curation: reference must give the intended class at least this probability
    percentile: float = 1.0  # curation: copy/duplicate threshold percentile of real val->train distances
    bootstrap: int = 1000  # bootstrap resamples of the test cells
    threads: int = 1  # torch intra-op threads (shared machine)
    device: str = "cpu"  # "cpu" or "cuda"
    amp: bool = True  # mixed precision for GAN and classifiers (CUDA; CPU bf16 where native); False = fp32 everywhere
    keep_gan_grids: bool = True  # copy each regime's final GAN sample grid next to the results


# Budgets of --quick: one regime, one seed, small GAN and classifiers; a smoke test of the whole pipeline.
QUICK = dict(regimes=("n50",), shares=(0.5, 1.0), seeds=1, gan_steps=600, gan_width=32, gan_batch=32,
             ref_epochs=3, cls_epochs=20, cls_max_images=8_000, bootstrap=300)


def epochs_for(budget: int, n: int, batch: int) -> int:
    """Epochs so a training set of n cells sees about `budget` images: every arm of a regime gets the same budget."""
    # At least 8 optimiser steps: below that make_scheduler swaps one-cycle for cosine, and arms must share a schedule.
    return max(1, round(budget / n), math.ceil(8 / math.ceil(n / batch)))


def _classes_in(arr: torch.Tensor, k: int) -> dict[int, int]:
    return {c: int(n) for c, n in enumerate(torch.bincount(arr, minlength=k).tolist())}


class Benchmark:
    """One run: shared data and reference policy, then every regime's GAN, pools and arms."""

    def __init__(self, cfg: GainConfig, bar: tqdm | None = None) -> None:
        self.cfg, self.bar = cfg, bar
        self.tmp = Path(tempfile.mkdtemp(prefix="augmentation_gain_"))
        self.data = gd.load_folder(Path(cfg.data), cfg.size, cfg.split_seed, workers=max(1, cfg.threads))
        self.names = self.data.class_names
        self.k = len(self.names)
        self.test_idx = self.data.split_index("test")
        self.test = self.data.subset(self.test_idx)
        self.y_test = self.test.labels.numpy()
        self.val_all = self.data.subset(self.data.split_index("val"))
        self.val_sel = self.data.subset(gd.capped_split(self.data, "val", cfg.val_per_class, cfg.split_seed))
        self.test_keys = {self.data.keys[i] for i in self.test_idx.tolist()}
        self.index = gr.boot_index(len(self.test), cfg.bootstrap, cfg.split_seed)
        self.runs = 0

    def log(self, message: str) -> None:
        """Print above the progress bar."""
        (self.bar.write if self.bar else print)(message)

    def tick(self, what: str) -> None:
        """Advance the progress bar by one job."""
        if self.bar:
            self.bar.set_postfix_str(what)
            self.bar.update(1)

    def fit(self, train: LabelledImages, val: LabelledImages, epochs: int, seed: int) -> tuple[np.ndarray, dict]:
        """Train one classifier and return its test predictions and a summary."""
        cfg = self.cfg
        self.runs += 1
        # The protocol pins its recipe (cell augmentation, balanced sampling) instead of following the app's defaults.
        ccfg = options.classifier_config(cfg.size, dict(
            model=cfg.cls_model, epochs=epochs, batch_size=cfg.cls_batch, balanced_sampling=True, augment="cell",
            seed=seed, device=cfg.device, amp=cfg.amp, num_threads=cfg.threads, progress_every_s=30.0))
        res = train_classifier(train, val, self.names, ccfg, self.tmp / f"cls_{self.runs}")
        logits = predict_logits(load_classifier(res.checkpoint, cfg.device), self.test.images, cfg.device)
        shutil.rmtree(self.tmp / f"cls_{self.runs}", ignore_errors=True)
        return logits.argmax(1).numpy(), {"epochs": epochs, "best_epoch": res.best_epoch,
                                           "seconds": round(res.seconds, 1)}

    def reference(self) -> tuple[ReferenceClassifierPolicy, dict[str, Any]]:
        """Reference classifier on the full real train split (never val/test), wrapped as the curation policy."""
        cfg = self.cfg
        train = self.data.subset(self.data.split_index("train"))
        ccfg = options.classifier_config(cfg.size, dict(
            model=cfg.cls_model, epochs=max(cfg.ref_epochs, epochs_for(0, len(train), cfg.cls_batch * 2)),
            batch_size=cfg.cls_batch * 2, augment="cell", balanced_sampling=True, seed=cfg.split_seed,
            device=cfg.device, amp=cfg.amp, num_threads=cfg.threads, progress_every_s=30.0))
        res = train_classifier(train, self.val_all, self.names, ccfg, self.tmp / "reference")
        model = load_classifier(res.checkpoint, cfg.device)
        test_pred = predict_logits(model, self.test.images, cfg.device).argmax(1).numpy()
        point, _ = gr.scores(self.y_test, test_pred, self.k, self.index[:1])
        info = {"train_cells": len(train), "epochs": cfg.ref_epochs, "seconds": round(res.seconds, 1),
                "val_macro_f1": round(res.val["macro_f1"], 4), "test_macro_f1": round(float(point[0]), 4)}
        policy = ReferenceClassifierPolicy(ClassifierReference(model, cfg.device),
                                           ReferencePolicyConfig(cfg.min_confidence, cfg.percentile))
        return policy, info

    def regime(self, name: str, policy: ReferenceClassifierPolicy) -> tuple[dict[str, Any], dict[str, Any]]:
        """Train the regime's GAN, then every arm for every seed and share; return (results, cell keys)."""
        cfg, data, k = self.cfg, self.data, self.k
        caps = gd.regime_caps(name, self.names, cfg.rare_classes, cfg.rare_n)
        idx = gd.regime_train(data, caps, cfg.split_seed)
        keys = [data.keys[i] for i in idx.tolist()]
        if any(data.splits[i] != "train" for i in idx.tolist()):
            raise AssertionError(f"{name}: regime cells outside the train split")
        real = data.subset(idx)
        counts = _classes_in(real.labels, k)
        gcfg = options.gan_config(cfg.size, None, dict(
            steps=cfg.gan_steps, batch_size=cfg.gan_batch, width=cfg.gan_width, aux_weight=cfg.gan_aux_weight,
            lr_g=cfg.gan_lr_g, lr_d=cfg.gan_lr_d, ema_start=min(500, cfg.gan_steps // 3), seed=cfg.split_seed,
            device=cfg.device, amp=cfg.amp, num_threads=cfg.threads, checkpoint_every=10**9, sample_every=10**9,
            log_every=max(1, cfg.gan_steps // 10)))
        gan = train_gan(real, self.names, gcfg, self.tmp / f"gan_{name}")
        self.tick(f"{name}: GAN done")
        grid = None
        if cfg.keep_gan_grids:
            grid = Path(cfg.out) / f"{_prefix(cfg)}_gan_{name}.png"
            grid.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(gan.last_grid, grid)
        generator = load_generator(gan.last_checkpoint, cfg.device)
        pool_n = gd.pool_sizes(counts, cfg.shares)
        context = CurationContext(self.names, train=real, val=self.val_all)
        budget = min(cfg.cls_epochs * len(real), cfg.cls_max_images)
        scored: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        absolute: dict[str, dict[str, float]] = {}
        runs, curation, accepted_share = [], [], {str(s): [] for s in cfg.shares}

        def record(arm: str, share: float | None, seed: int, train: LabelledImages, n_syn: torch.Tensor,
                   preds: np.ndarray, info: dict) -> None:
            key = arm if share is None else f"{arm}@{share}"
            point, boots = gr.scores(self.y_test, preds, k, self.index)
            scored.setdefault(key, []).append((point, boots))
            runs.append({"arm": arm, "share": share, "seed": seed, "train_cells": len(train),
                         "synthetic_per_class": gd.per_class_counts(n_syn, self.names), **info,
                         "test_macro_f1": round(float(point[0]), 4), "test_accuracy": round(float(point[1]), 4)})

        for seed in range(cfg.seeds):
            real_only_preds, info = self.fit(real, self.val_sel, epochs_for(budget, len(real), cfg.cls_batch), seed)
            record("real", None, seed, real, torch.zeros(0, dtype=torch.long), real_only_preds, info)
            self.tick(f"{name}: seed {seed} real")
            pool_imgs = [sample_cells(generator, c, pool_n[c], seed=10_000 * (seed + 1) + c) for c in range(k)]
            pool_lbls = [torch.full((pool_n[c],), c, dtype=torch.long) for c in range(k)]
            pool = LabelledImages(torch.cat(pool_imgs), torch.cat(pool_lbls))
            decisions = policy.explain(pool, context)
            curation.append({"seed": seed, "threshold": round(decisions.threshold, 4), **decisions.stats,
                             "accepted_per_class": gd.per_class_counts(pool.labels[decisions.accepted], self.names)})
            for share in cfg.shares:
                target = gd.targets(counts, share)
                sets = gd.arm_sets(pool.labels, decisions.accepted, target, seed)
                accepted_share[str(share)].append(len(sets.curated) / max(1, len(sets.unfiltered)))
                for arm in gd.SYNTHETIC_ARMS:
                    pick = getattr(sets, arm)
                    train = LabelledImages(torch.cat([real.images, pool.images[pick]]),
                                           torch.cat([real.labels, pool.labels[pick]]))
                    preds, info = self.fit(train, self.val_sel, epochs_for(budget, len(train), cfg.cls_batch), seed)
                    record(arm, share, seed, train, pool.labels[pick], preds, info)
                    self.tick(f"{name}: seed {seed} x{share} {arm}")
        names = gr.metric_names(self.names)
        gains: dict[str, dict[str, Any]] = {}
        for share in cfg.shares:
            by = {arm: gr.paired_gain(scored[f"{arm}@{share}"], scored["real"], names) for arm in gd.SYNTHETIC_ARMS}
            cur = scored[f"curated@{share}"]
            by["curated_vs_unfiltered"] = gr.paired_gain(cur, scored[f"unfiltered@{share}"], names)
            by["curated_vs_matched"] = gr.paired_gain(cur, scored[f"matched@{share}"], names)
            gains[str(share)] = by
        for key, vals in scored.items():
            syn = [sum(r["synthetic_per_class"].values()) for r in runs
                   if (r["arm"] if r["share"] is None else f"{r['arm']}@{r['share']}") == key]
            absolute[key] = {"macro_f1": round(float(np.mean([p[0] for p, _ in vals])), 4),
                             "accuracy": round(float(np.mean([p[1] for p, _ in vals])), 4),
                             "synthetic": float(np.mean(syn))}
        result = {
            "real_train_per_class": gd.per_class_counts(real.labels, self.names),
            "classifier_image_budget": budget,
            "gan": {"steps": gan.steps_done, "seconds": round(gan.seconds, 1),
                    "sec_per_step": round(gan.sec_per_step, 4), "train_cells": len(real),
                    "train_keys_hash": gd.keys_hash(keys), "grid": str(grid) if grid else None},
            "audit": {"regime_train_keys_hash": gd.keys_hash(keys),
                      "test_cells_in_train": len(set(keys) & self.test_keys),
                      "val_cells_in_train": sum(data.splits[i] == "val" for i in idx.tolist())},
            "curation": curation,
            "acceptance": {s: round(float(np.mean(v)), 4) for s, v in accepted_share.items()},
            "absolute": absolute, "gains": gains, "runs": runs,
        }
        return result, {"train_keys": keys}


def _prefix(cfg: GainConfig) -> str:
    return "augmentation_gain_quick" if cfg.quick else "augmentation_gain"


def jobs(cfg: GainConfig) -> int:
    """Progress-bar units: the reference, one GAN per regime and every classifier run."""
    return 1 + len(cfg.regimes) * (1 + cfg.seeds * (1 + 3 * len(cfg.shares)))


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    summary = f"{os.cpu_count()}-core CPU ({platform.machine()}), load avg {load[0]:.1f}"
    return {"summary": summary, "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "load_avg_start": [round(x, 2) for x in load], "python": platform.python_version()}


def run_benchmark(cfg: GainConfig, progress: bool = True) -> dict[str, Any]:
    """Run every regime and write JSON, markdown, PNG and the keys file; returns the JSON object."""
    t0 = time.perf_counter()
    info = machine()
    torch.set_num_threads(cfg.threads)
    with tqdm(total=jobs(cfg), disable=not progress, unit="job", smoothing=0.1) as bar:
        bench = Benchmark(cfg, bar)
        try:
            policy, reference = bench.reference()
            bench.tick("reference done")
            bench.log(f"reference classifier: val macro-F1 {reference['val_macro_f1']:.3f}, test "
                      f"{reference['test_macro_f1']:.3f} ({reference['seconds']:.0f} s)")
            regimes, sets = {}, {"test_keys": sorted(bench.test_keys)}
            for name in cfg.regimes:
                regimes[name], sets[name] = bench.regime(name, policy)
                g = regimes[name]["gains"]
                for share, by in g.items():
                    bench.log(f"{name} x{share}: curated {by['curated']['macro_f1']['mean']:+.1f}, unfiltered "
                              f"{by['unfiltered']['macro_f1']['mean']:+.1f}, matched "
                              f"{by['matched']['macro_f1']['mean']:+.1f} macro-F1 points vs real only")
                if name != cfg.regimes[-1]:
                    # Hours of work must not hinge on the last regime: each finished one is on disk, marked partial.
                    write_outputs(_results(cfg, bench, info, reference, regimes, t0, partial=True), sets, cfg)
        finally:
            shutil.rmtree(bench.tmp, ignore_errors=True)
    results = _results(cfg, bench, info, reference, regimes, t0, partial=False)
    write_outputs(results, sets, cfg)
    return results


def _results(cfg: GainConfig, bench: Benchmark, info: dict[str, Any], reference: dict[str, Any],
             regimes: dict[str, Any], t0: float, partial: bool) -> dict[str, Any]:
    """The JSON object for the regimes finished so far."""
    d = bench.data
    results: dict[str, Any] = {
        "benchmark": "augmentation_gain", "quick": cfg.quick, "partial": partial,
        "config": {**dataclasses.asdict(cfg), "out": str(cfg.out)},
        "machine": {**info, "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "data": {"class_names": d.class_names, "cells": len(d.keys),
                 "splits": {s: gd.per_class_counts(d.labels[d.split_index(s)], d.class_names)
                            for s in ("train", "val", "test")},
                 "val_cells_for_selection": len(bench.val_sel)},
        "reference": reference, "regimes": dict(regimes), "classifier_runs": bench.runs,
    }
    results["goals"] = gr.goals(results, cfg.rare_classes)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def write_outputs(results: dict[str, Any], sets: dict[str, Any], cfg: GainConfig) -> dict[str, Path]:
    """JSON with every number, the cell-key audit file, the markdown table and the PNG chart."""
    out, prefix = Path(cfg.out), _prefix(cfg)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{prefix}.json", "sets": out / f"{prefix}_sets.json", "md": out / f"{prefix}.md",
             "png": out / f"{prefix}.png"}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["sets"].write_text(json.dumps(sets) + "\n")
    paths["md"].write_text(gr.markdown(results, cfg.rare_classes))
    gr.chart(results, paths["png"])
    return paths


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> GainConfig:
    """CLI -> GainConfig; --quick sets the smoke budgets, explicit options still override them."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=GainConfig.data, help="ImageFolder with one subfolder per class")
    p.add_argument("--out", default=GainConfig.out, help="output folder (default bench/results)")
    p.add_argument("--quick", action="store_true", help="smoke run: n50 only, 1 seed, small budgets (< 5 min)")
    p.add_argument("--regimes", type=_names, help="comma list of nK, all, rare (default n25,n50,n100,all,rare)")
    p.add_argument("--shares", type=_floats, help="comma list of synthetic shares (default 0.25,0.5,1.0)")
    p.add_argument("--rare-classes", type=_names, help="classes cut in the rare regime (default basophil,ig)")
    for name in ("seeds", "size", "rare_n", "split_seed", "val_per_class", "gan_steps", "gan_width", "gan_batch",
                 "ref_epochs", "cls_epochs", "cls_max_images", "cls_batch", "bootstrap", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    for name in ("min_confidence", "percentile", "gan_aux_weight", "gan_lr_g", "gan_lr_d"):
        p.add_argument("--" + name.replace("_", "-"), type=float)
    p.add_argument("--cls-model", help="classifier model name (default small_cnn)")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.add_argument("--no-amp", dest="amp", action="store_const", const=False,
                   help="fp32 everywhere (default: CUDA AMP, CPU bf16 where the CPU runs it natively)")
    args = vars(p.parse_args(argv))
    values: dict[str, Any] = dict(QUICK) if args.pop("quick") else {}
    values["quick"] = bool(values)
    values.update({k: v for k, v in args.items() if v is not None})
    return GainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """Entry point: --proxy runs this protocol; without it the product loop (bench/product_loop.py) runs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--proxy" not in argv:
        from bench import product_loop

        return product_loop.main(argv)
    argv.remove("--proxy")
    cfg = parse_args(argv)
    results = run_benchmark(cfg)
    print(gr.markdown(results, cfg.rare_classes))
    print(f"done in {results['seconds'] / 60:.1f} min; results in {Path(cfg.out) / _prefix(cfg)}.*")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

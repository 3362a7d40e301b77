"""The product loop's plan: seconds per stage on 2 idle cores, for the printed estimate and the progress bar's ETA.

The speeds were measured on the AMD EPYC (AVX512-BF16) machine. The Xeon with AMX ran the full default run
(sessions 10-11, product_loop_full.json) with its stages 1.5-2.9x slower than this plan, 238 min in all instead of
120 (BENCHMARKS.md), so there the bar's ETA, which scales the plan by the measured pace, is what to read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import loop_support as ls

# Speeds for the plan and the ETA, 2 idle cores, bf16: a CPU-preset GAN step at 64 px in the app's GAN job
# (compiled bf16: 0.33 s in bench/options.py's idle run, 0.37 with the job's logging, EMA and checkpoints),
# ResNet-18 64 px training images per second (the classifier jobs of product_loop_rare_reduced_partial.json: 181-238),
# the fixed cost of one classifier job besides training (val/test scoring), and of a regime's generation (its
# judge's training, scoring) + review (product_loop_rare_small.json, load ~1.5, so on the safe side).
# The reference trains at about 120-130 images/s (ten epochs with a val pass each, unbalanced: 705-816 s for 84,950
# images in product_loop_rare.json and product_loop_balanced.json), so it has a speed of its own.
SPEED = {"gan_step_s": 0.37, "cls_images_per_s": 200.0, "reference_images_per_s": 120.0, "arm_overhead_s": 10.0,
         "import_s": 15.0, "review_s": 170.0}
TRAIN_SHARE = 0.7  # the app's split: 70% of each class is train


def train_estimate(cfg: Any, regime: str) -> int:
    """Real train cells of a regime, estimated from the folder before anything is imported (for the plan)."""
    folder = Path(cfg.data)
    counts = {d.name: sum(1 for _ in d.iterdir()) for d in folder.iterdir() if d.is_dir()} if folder.is_dir() else {}
    if cfg.cells_per_class:
        counts = {c: min(n, cfg.cells_per_class) for c, n in counts.items()}
    train = {c: int(n * TRAIN_SHARE) for c, n in counts.items()}
    try:
        caps = ls.regime_caps(regime, sorted(train), cfg.rare_classes, cfg.rare_n)
    except ValueError:
        caps = {}
    return sum(min(n, caps.get(c, n)) for c, n in train.items())


def arm_budget(cfg: Any, n_real: int) -> int:
    """A regime's image budget per arm: cls_epochs passes over its real train cells, clipped to
    [cls_min_images, cls_images]."""
    return int(min(cfg.cls_images, max(cfg.cls_min_images, cfg.cls_epochs * n_real)))


def arm_seconds(cfg: Any, images: float) -> float:
    return images / SPEED["cls_images_per_s"] + SPEED["arm_overhead_s"]


def plan(cfg: Any) -> dict[str, float]:
    """Estimated seconds of each kind of stage on 2 idle cores (the progress bar counts these seconds; "arm" is
    the first regime's arm)."""
    first = train_estimate(cfg, cfg.regimes[0]) if cfg.regimes else 0
    budget = arm_budget(cfg, first)
    reference = cfg.reference_epochs * train_estimate(cfg, "all") / SPEED["reference_images_per_s"]
    return {"import": SPEED["import_s"], "reference": reference, "gan": cfg.gan_steps * SPEED["gan_step_s"],
            "arm": arm_seconds(cfg, budget), "review": SPEED["review_s"]}


def planned_seconds(cfg: Any, done: tuple[str, ...] = (), reference: bool = True) -> float:
    """The whole run's estimate: import, the reference, and per regime its GAN, review, and real + curated (per
    strategy) + unfiltered + matched arms, each at that regime's image budget. A resumed run leaves out the
    regimes `done` and, when the stopped run kept it, the reference."""
    p = plan(cfg)
    total = p["import"] + (p["reference"] if reference else 0.0)
    for i, regime in enumerate(cfg.regimes):
        if regime in done:
            continue
        budget = arm_budget(cfg, train_estimate(cfg, regime))
        compare = len(cfg.strategies) > 1 and i == 0
        curated = (len(cfg.strategies) * min(cfg.seeds, cfg.strategy_seeds)
                   + cfg.seeds - min(cfg.seeds, cfg.strategy_seeds)) if compare else cfg.seeds
        total += p["gan"] + p["review"] + (3 * cfg.seeds + curated) * arm_seconds(cfg, budget)
    return total



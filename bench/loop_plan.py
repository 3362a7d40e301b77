"""The product loop's plan: seconds per stage on 2 idle cores, for the printed estimate and the progress bar's ETA.

The speeds were measured on the AMD EPYC (AVX512-BF16) machine. The Xeon with AMX ran the full default run
(sessions 10-11, product_loop_full.json) with its stages 1.5-2.9x slower than this plan, 238 min in all instead of
120 (BENCHMARKS.md), so there the bar's ETA, which scales the plan by the measured pace, is what to read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def curated_arms(cfg: Any, index: int) -> int:
    """Curated arms of the regime at position `index`: the first regime compares the strategies on
    strategy_seeds seeds, then runs the chosen one on the other seeds."""
    if len(cfg.strategies) > 1 and index == 0:
        compared = min(cfg.seeds, cfg.strategy_seeds)
        return len(cfg.strategies) * compared + cfg.seeds - compared
    return cfg.seeds


def regime_parts(cfg: Any, index: int, regime: str, n_real: int | None = None) -> dict[str, float]:
    """Planned seconds of one regime on 2 idle cores, by what a budget can shrink: its GAN steps ("gan") and its
    arms' training images ("arm_images") scale; the arms' fixed costs ("arm_fixed") and the review do not.
    n_real: its real train cells when known (else estimated from the folder)."""
    p = plan(cfg)
    arms = 3 * cfg.seeds + curated_arms(cfg, index)  # real, unfiltered, matched on every seed, plus curated
    images = arm_budget(cfg, train_estimate(cfg, regime) if n_real is None else n_real)
    return {"gan": p["gan"], "arm_images": arms * images / SPEED["cls_images_per_s"],
            "arm_fixed": arms * SPEED["arm_overhead_s"], "review": p["review"]}


def planned_seconds(cfg: Any, done: tuple[str, ...] = (), reference: bool = True) -> float:
    """The whole run's estimate: import, the reference, and per regime its GAN, review, and real + curated (per
    strategy) + unfiltered + matched arms, each at that regime's image budget. A resumed run leaves out the
    regimes `done` and, when the stopped run kept it, the reference."""
    p = plan(cfg)
    total = p["import"] + (p["reference"] if reference else 0.0)
    for i, regime in enumerate(cfg.regimes):
        if regime not in done:
            total += sum(regime_parts(cfg, i, regime).values())
    return total


# A regime never gets less than this share of the configured GAN steps and arm images: below it the GAN renders
# no usable cell and an arm does not converge, so a run that cannot fit says so instead of reporting noise.
MIN_SCALE = 0.25
BUDGET_SAFETY = 0.93  # aim below the budget: the pace of a shared 2-core VM moved by 1.5x within one run


PACE_KINDS = ("gan", "arm", "review")  # the stage kinds a regime's budget depends on


@dataclass(frozen=True)
class RegimeBudget:
    """What a regime got under --budget-minutes, and why (saved with the regime's results)."""

    scale: float  # share of the configured GAN steps and arm images (1 = as configured)
    gan_steps: int
    arm_images: int
    pace: dict[str, float]  # per kind of stage: this machine's measured seconds per planned second so far
    minutes_left: float  # of the budget, when the regime started
    planned_minutes: float  # the remaining regimes at this scale and pace
    plan_seconds: float  # the same on the plan's machine (what the progress bar counts)
    note: str

    def message(self, regime: str, budget_minutes: float) -> str:
        paces = ", ".join(f"{k} {v:.2f}x" for k, v in self.pace.items())
        return (f"budget: {self.minutes_left:.0f} of {budget_minutes:.0f} min left, pace vs the plan {paces}; "
                f"{regime}: {self.gan_steps} GAN steps, {self.arm_images} images per arm ({self.note})")


def usable_paces(paces: dict[str, float]) -> dict[str, float]:
    """A pace for every kind in PACE_KINDS: a measured one where it is a positive number, else the slowest measured
    one (a kind not run yet is assumed no faster than the rest of this machine), else the plan (1.0)."""
    good = {k: float(v) for k, v in paces.items() if isinstance(v, (int, float)) and math.isfinite(v) and v > 0}
    fallback = max(good.values(), default=1.0)
    return {k: good.get(k, fallback) for k in PACE_KINDS}


def fit_regime(cfg: Any, index: int, n_real: int, elapsed_s: float, paces: dict[str, float]) -> RegimeBudget:
    """Scale the regime at `index` (and, for the estimate, every regime after it) so that the rest of the run fits
    in cfg.budget_minutes at this machine's measured pace per kind of stage: GAN steps and arm images shrink by one
    common factor, never grow, and never go below MIN_SCALE. elapsed_s: budget time used so far (every session)."""
    pace = usable_paces(paces)
    fixed = scalable = plan_fixed = plan_scalable = 0.0
    for i in range(index, len(cfg.regimes)):
        part = regime_parts(cfg, i, cfg.regimes[i], n_real if i == index else None)
        fixed += part["arm_fixed"] * pace["arm"] + part["review"] * pace["review"]
        scalable += part["gan"] * pace["gan"] + part["arm_images"] * pace["arm"]
        plan_fixed += part["arm_fixed"] + part["review"]
        plan_scalable += part["gan"] + part["arm_images"]
    left = cfg.budget_minutes * 60 * BUDGET_SAFETY - elapsed_s
    wanted = (left - fixed) / scalable if scalable > 0 else 1.0
    scale = min(1.0, max(MIN_SCALE, wanted))
    note = ("as configured: the rest fits" if scale >= 1.0 else
            f"scaled to {scale:.2f}: the rest would take {(fixed + scalable) / 60:.0f} min at this pace"
            if wanted >= MIN_SCALE else
            f"at the floor ({MIN_SCALE:.2f}): the run will overrun its budget at this pace; give it more minutes")
    return RegimeBudget(round(scale, 3), max(1, round(cfg.gan_steps * scale)),
                        max(1, round(arm_budget(cfg, n_real) * scale)), {k: round(v, 3) for k, v in pace.items()},
                        round(cfg.budget_minutes - elapsed_s / 60, 1), round((fixed + scalable * scale) / 60, 1),
                        round(plan_fixed + plan_scalable * scale, 1), note)

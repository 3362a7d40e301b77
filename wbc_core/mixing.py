"""Mixing strategies: how a recipe's synthetic cells join the real train cells (which cells, what weight, when).

A strategy is an option of the classifier recipe; the Train page, the CLI and the benchmark build it with
`mix_from_options` and the run stores `MixConfig.to_dict()` under "mix" in its config.

- share: per class, synthetic cells up to `share` x that class's real train count.
- fill: per class, accepted cells that top the class up to `target` cells; classes at or above it get none.
- weight: every synthetic cell counts `synthetic_weight` (0-1] as much as a real one (optionally capped by share).
- two-stage: train on real + synthetic, then fine-tune on real cells only for the last `finetune_epochs` epochs
  (optionally capped by share).

Nothing here imports torch or the database: the page server builds mixes too.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, Protocol, TypeVar

from wbc_core import limits

MIX_STRATEGIES = ("share", "fill", "weight", "two-stage")
NO_MIX = "none"  # not a strategy: every synthetic cell of the recipe, weight 1 (the recipe as it always was)
MIX_CHOICES = (NO_MIX, *MIX_STRATEGIES)  # what the Train page offers
# The fine-tune stage starts from trained weights, so it runs at a tenth of the run's peak learning rate.
FINETUNE_LR_SCALE = 0.1
# Starting values of the Train page's mixing numbers.
DEFAULTS = {"share": 1.0, "target": 1000, "synthetic_weight": 0.5, "finetune_epochs": 3}

# field -> (limit in wbc_core.limits, plain words, their article)
_FIELDS = {
    "share": ("synthetic_cap", "synthetic share (times the real cells per class)", "a "),
    "target": ("mix_target", "fill target (cells per class)", "a "),
    "synthetic_weight": ("synthetic_weight", "synthetic weight", "a "),
    "finetune_epochs": ("classifier_epochs", "fine-tune epochs", ""),
}
_NEEDS = {"share": "share", "fill": "target", "weight": "synthetic_weight", "two-stage": "finetune_epochs"}
# share is the strategy of "share" and an optional per-class cap of "weight" and "two-stage".
_USES = {"share": {"share"}, "fill": {"target"}, "weight": {"synthetic_weight", "share"},
         "two-stage": {"finetune_epochs", "share"}}


@dataclass(frozen=True)
class MixConfig:
    """One mixing strategy with its numbers; fields a strategy does not use stay None."""

    strategy: str  # one of MIX_STRATEGIES
    share: float | None = None  # synthetic cells per class as a multiple of its real count (cap for weight/two-stage)
    target: int | None = None  # fill: cells per class after topping up with synthetic ones
    synthetic_weight: float | None = None  # weight: how much a synthetic cell counts against a real one (0-1]
    finetune_epochs: int | None = None  # two-stage: the last epochs, trained on real cells only

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or self.strategy not in MIX_STRATEGIES:
            raise ValueError(f"the mixing strategy must be one of {', '.join(MIX_STRATEGIES)}, got {self.strategy!r}")
        for name, (limit, words, article) in _FIELDS.items():
            value = getattr(self, name)
            if value is None:
                if _NEEDS[self.strategy] == name:
                    raise ValueError(f"the {self.strategy} strategy needs {article}{words}")
                continue
            if name not in _USES[self.strategy]:
                users = [s for s in MIX_STRATEGIES if name in _USES[s]]
                kind = "strategy" if len(users) == 1 else "strategies"
                verb = "applies" if article else "apply"
                raise ValueError(f"{article}{words} {verb} to the {', '.join(users)} {kind} only, "
                                 f"not to {self.strategy}")
            object.__setattr__(self, name, limits.check(limit, value, words))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict of every field (stored under "mix" in a run's config)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixConfig:
        """Inverse of to_dict; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"a mix must be a mapping of its fields, got {data!r}")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown mix fields: {', '.join(unknown)}")
        return cls(**data)

    def stage_epochs(self, epochs: int) -> tuple[int, int]:
        """(epochs on real + synthetic, epochs on real cells only) for a run of `epochs` epochs in all."""
        if self.strategy != "two-stage":
            return epochs, 0
        assert self.finetune_epochs is not None
        if self.finetune_epochs >= epochs:
            raise ValueError(f"fine-tune epochs ({self.finetune_epochs}) must be fewer than the run's epochs "
                             f"({epochs}): the first stage on real + synthetic cells needs at least one epoch")
        return epochs - self.finetune_epochs, self.finetune_epochs

    def schedule(self) -> dict[str, int] | None:
        """How the training set is used over the epochs, when not all cells all the time (part of its hash)."""
        return {"finetune_real_epochs": int(self.finetune_epochs)} if self.strategy == "two-stage" else None

    def describe(self) -> str:
        """One line in plain words, e.g. "fill: every class topped up to 1000 cells"."""
        cap = f", at most {self.share:g} x real per class" if self.share is not None else ""
        if self.strategy == "share":
            return f"share: synthetic cells up to {self.share:g} x the real cells of each class"
        if self.strategy == "fill":
            return f"fill: every class topped up to {self.target} cells with synthetic ones"
        if self.strategy == "weight":
            return f"weight: synthetic cells count {self.synthetic_weight:g} of a real one{cap}"
        return f"two-stage: real + synthetic, then the last {self.finetune_epochs} epochs on real cells only{cap}"


def mix_from_options(strategy: str | None, share: float | None = None, target: int | None = None,
                     synthetic_weight: float | None = None, finetune_epochs: int | None = None,
                     drop_unused: bool = False) -> MixConfig | None:
    """The one mapping from user options (page, CLI, benchmark) to a MixConfig; None/"none" = no mixing.

    drop_unused: ignore the numbers the strategy does not use (a form shows all of them) instead of refusing them.
    For weight and two-stage a share of 0 then means "no cap".
    """
    if strategy is None or strategy == NO_MIX:
        given = [article + words for name, (_, words, article) in _FIELDS.items()
                 if {"share": share, "target": target, "synthetic_weight": synthetic_weight,
                     "finetune_epochs": finetune_epochs}[name] is not None]
        if given and not drop_unused:
            raise ValueError(f"{given[0]} needs a mixing strategy ({', '.join(MIX_STRATEGIES)})")
        return None
    values: dict[str, Any] = {"share": share, "target": target, "synthetic_weight": synthetic_weight,
                              "finetune_epochs": finetune_epochs}
    if drop_unused:
        uses = _USES.get(strategy, set())
        values = {k: (v if k in uses else None) for k, v in values.items()}
        if strategy in ("weight", "two-stage") and values["share"] == 0:
            values["share"] = None
    return MixConfig(strategy, **values)


# -- applying a mix -------------------------------------------------------------------------------------------

class _Row(Protocol):
    id: int
    class_name: str


R = TypeVar("R", bound=_Row)


class Mixed(NamedTuple):
    """The cells and weights a trainer receives: real rows first, then the chosen synthetic ones."""

    rows: list  # real rows, then synthetic rows
    labels: list[str]  # the class each row trains as (a relabelled candidate trains as its new class)
    weights: list[float] | None  # per-row weight, or None when every row counts 1


def mix_cells(real: Sequence[R], synthetic: Sequence[tuple[R, str]], mix: MixConfig | None,
              seed: int = 0) -> Mixed:
    """Apply a mix to real train rows and (synthetic row, label) pairs; deterministic for a seed.

    Where a strategy keeps fewer synthetic cells than there are, each class's cells are sorted by id, shuffled
    with random.Random(seed) (one stream over the classes in name order) and the first ones kept.
    """
    real_counts = Counter(row.class_name for row in real)
    quota: dict[str, int] | None = None
    if mix is not None and mix.strategy == "fill":
        assert mix.target is not None
        labels = {label for _, label in synthetic}
        quota = {label: max(0, mix.target - real_counts[label]) for label in labels}
    elif mix is not None and mix.share is not None:
        # floor with a little slack: 0.29 x 100 is 28.999999999999996 in floats, and means 29 cells
        quota = {label: math.floor(mix.share * real_counts[label] + 1e-9) for _, label in synthetic}
    chosen = list(synthetic) if quota is None else _pick(synthetic, quota, seed)
    rows = [*real, *(row for row, _ in chosen)]
    labels = [row.class_name for row in real] + [label for _, label in chosen]
    weights = None
    if mix is not None and mix.strategy == "weight" and mix.synthetic_weight != 1.0:
        weights = [1.0] * len(real) + [float(mix.synthetic_weight)] * len(chosen)
    return Mixed(rows, labels, weights)


def _pick(synthetic: Sequence[tuple[R, str]], quota: dict[str, int], seed: int) -> list[tuple[R, str]]:
    by_class: dict[str, list[tuple[R, str]]] = defaultdict(list)
    for item in synthetic:
        by_class[item[1]].append(item)
    rng = random.Random(seed)
    kept: list[tuple[R, str]] = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda it: it[0].id)
        rng.shuffle(items)
        kept.extend(items[: quota.get(label, 0)])
    return kept

"""Data side of the augmentation-gain benchmark: read a labelled folder (bench/cells.py), cut regimes, build arms."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.cells import Cells, load_cells
from wbc_core.data import SplitConfig

ARMS = ("real", "unfiltered", "curated", "matched")  # arms 1-4 of the issue, in order
SYNTHETIC_ARMS = ARMS[1:]


RealData = Cells  # every real cell of the folder, decoded once at the working size, with its key and split


def load_folder(folder: Path, size: int, split_seed: int = SplitConfig.seed,
                val_fraction: float = SplitConfig.val_fraction, test_fraction: float = SplitConfig.test_fraction,
                workers: int = 2) -> RealData:
    """The folder as every bench reads it (bench/cells.py: the app's ingest and sha256-keyed split), at `size`."""
    return load_cells(folder, size, SplitConfig(val_fraction, test_fraction, split_seed), workers=workers)


def seeded_order(index: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed permutation of `index` (same seed -> same order)."""
    gen = torch.Generator().manual_seed(seed)
    return index[torch.randperm(index.numel(), generator=gen)]


def regime_caps(regime: str, class_names: list[str], rare_classes: tuple[str, ...],
                rare_n: int) -> dict[str, int | None]:
    """Per-class cap on real train cells for a regime name ("n50", "all", "rare"); None means no cap."""
    if regime == "all":
        return {c: None for c in class_names}
    if regime == "rare":
        missing = [c for c in rare_classes if c not in class_names]
        if missing:
            raise ValueError(f"rare regime: classes {missing} are not in the data ({class_names})")
        return {c: (rare_n if c in rare_classes else None) for c in class_names}
    if regime.startswith("n") and regime[1:].isdigit() and int(regime[1:]) > 0:
        return {c: int(regime[1:]) for c in class_names}
    raise ValueError(f"unknown regime {regime!r}; use nK (K real cells per class), 'all' or 'rare'")


def regime_train(data: RealData, caps: dict[str, int | None], seed: int) -> torch.Tensor:
    """Indices of a regime's real train cells: per class, the first `cap` of one seeded order of the train split."""
    train = data.split_index("train")
    picked: list[torch.Tensor] = []
    for c, name in enumerate(data.class_names):
        # One order per class for all regimes makes them nested (n25 within n50 within n100), so regimes differ
        # by the amount of data, not by which cells happened to be drawn.
        order = seeded_order(train[data.labels[train] == c], seed * 1009 + c)
        cap = caps[name]
        picked.append(order if cap is None else order[:cap])
    return torch.cat(picked).sort().values


def capped_split(data: RealData, split: str, per_class: int, seed: int) -> torch.Tensor:
    """Indices of at most per_class cells of each class of a split (seeded); 0 means all of them."""
    index = data.split_index(split)
    if per_class <= 0:
        return index
    parts = [seeded_order(index[data.labels[index] == c], seed + c)[:per_class] for c in range(len(data.class_names))]
    return torch.cat(parts).sort().values


def targets(real_counts: dict[int, int], share: float) -> dict[int, int]:
    """Synthetic cells per class for a share of each class's real count (at least one when share > 0)."""
    return {c: (max(1, round(share * n)) if share > 0 and n > 0 else 0) for c, n in real_counts.items()}


def pool_sizes(real_counts: dict[int, int], shares: tuple[float, ...]) -> dict[int, int]:
    """Candidates to generate per class: enough for the largest share (smaller shares use a prefix)."""
    return {c: (math.ceil(max(shares) * n) if n > 0 else 0) for c, n in real_counts.items()}


@dataclass(frozen=True)
class ArmSets:
    """Indices into one seed's candidate pool for the three synthetic arms at one share."""

    unfiltered: torch.Tensor  # arm 2: the first target_c candidates of each class, no curation
    curated: torch.Tensor  # arm 3: those of arm 2 that the policy accepted
    matched: torch.Tensor  # arm 4: a random subset of arm 2 with arm 3's count per class (no curation)


def arm_sets(pool_labels: torch.Tensor, accepted: torch.Tensor, target: dict[int, int], seed: int) -> ArmSets:
    """Pick the arms' candidates: curated is arm 2 minus the rejected; matched drops as many at random instead."""
    unfiltered, curated, matched = [], [], []
    for c, t in target.items():
        rows = torch.nonzero(pool_labels == c)[:, 0][:t]
        if rows.numel() < t:
            raise ValueError(f"class {c}: pool holds {rows.numel()} candidates, {t} needed")
        keep = rows[accepted[rows]]
        # Same count as curation keeps, chosen blind: separates "curation picked better cells" from "fewer
        # synthetic cells helped" (arm 4 vs arm 2 measures the latter).
        gen = torch.Generator().manual_seed(seed * 7919 + c)
        blind = rows[torch.randperm(rows.numel(), generator=gen)[:keep.numel()]].sort().values
        unfiltered.append(rows)
        curated.append(keep)
        matched.append(blind)
    cat = (lambda parts: torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long))  # noqa: E731
    return ArmSets(cat(unfiltered), cat(curated), cat(matched))


def keys_hash(keys: list[str]) -> str:
    """sha256 over the sorted keys: equal hashes mean the same set of cells."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def per_class_counts(labels: torch.Tensor, class_names: list[str]) -> dict[str, int]:
    """{class name: count} for a label vector."""
    counts = np.bincount(labels.numpy(), minlength=len(class_names)) if labels.numel() else np.zeros(len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}

"""Stratified, seeded, input-order-independent train/val/test assignment, and a fingerprint of the result."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

TRAIN, VAL, TEST = "train", "val", "test"
MIN_CLASS_FOR_HOLDOUT = 3  # smaller classes go entirely to train: one image cannot be both learned and measured


@dataclass(frozen=True)
class SplitConfig:
    """How a dataset version is divided into train, validation and test images."""

    val_fraction: float = 0.15  # share of each class held out for validation (model selection)
    test_fraction: float = 0.15  # share of each class held out for the final test
    seed: int = 0  # changes which images are held out, not how many

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 so that something is left to train on, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )


def assign_splits(class_names: list[str], keys: list[str], config: SplitConfig) -> list[str]:
    """Return "train"/"val"/"test" for each item, stratified per class and deterministic in (seed, keys)."""
    if len(class_names) != len(keys):
        raise ValueError(f"need one key per item, got {len(class_names)} class names and {len(keys)} keys")
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(class_names):
        by_class[name].append(index)
    result = [TRAIN] * len(keys)
    for indices in by_class.values():
        # Ranking by a seeded hash of the key (not by position) makes the result independent of input order, and
        # adding images to a class later moves few existing ones across splits.
        ranked = sorted(indices, key=lambda i: (_rank(config.seed, keys[i]), keys[i], i))
        n_test, n_val = _holdout_sizes(len(ranked), config)
        for i in ranked[:n_test]:
            result[i] = TEST
        for i in ranked[n_test : n_test + n_val]:
            result[i] = VAL
    return result


def _holdout_sizes(n: int, config: SplitConfig) -> tuple[int, int]:
    """(test, val) counts for a class of n images."""
    if n < MIN_CLASS_FOR_HOLDOUT:
        return 0, 0
    n_test = round(n * config.test_fraction)
    n_val = round(n * config.val_fraction)
    # Every class big enough gets at least one held-out image per requested split, so per-class metrics exist.
    if config.test_fraction > 0:
        n_test = max(1, n_test)
    if config.val_fraction > 0:
        n_val = max(1, n_val)
    # Keep at least one training image; shrink the larger hold-out first (never below 1 if it was asked for).
    while n_test + n_val > n - 1:
        if n_test >= n_val and n_test > (1 if config.test_fraction > 0 else 0):
            n_test -= 1
        elif n_val > (1 if config.val_fraction > 0 else 0):
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).digest()


def split_fingerprint(items: Iterable[tuple[str, str, str]]) -> str:
    """Hex sha256 over the sorted (sha256, class, split) triples; equal fingerprints mean identical splits."""
    rows = sorted((str(sha), str(cls), str(split)) for sha, cls, split in items)
    # JSON keeps the encoding unambiguous even if a class name contains separators or newlines.
    payload = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()

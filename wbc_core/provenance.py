"""Provenance conventions, defined once: training-set records and hashes, the frozen training-set file,
the judge cache key, and the sampling seeds.

Every run records the exact cells it trained on (a hash over image ids, sha256s and labels), and classifier
runs also freeze that list as TRAIN_SET_FILE in the run folder. Judges are cached per (dataset, size, split,
judge) under a folder name built and parsed here only. Sampling seeds are fixed formulas so that quality
curves compare like with like and two generation calls never produce the same cells.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

TRAIN_SET_FILE = "train_set.json"  # the frozen training set of a classifier run, in its run folder
QUALITY_SEED_BASE = 900_001  # checkpoint quality samples class c with seed QUALITY_SEED_BASE + c
CANDIDATE_SEED_STRIDE = 1009  # generation call seed s samples class c with seed s * 1009 + c (a prime)


class _ImageLike(Protocol):
    id: int
    sha256: str
    origin: str
    class_name: str


def image_set_hash(rows: Iterable[tuple[int, str, str]]) -> str:
    """Hash of an exact training set: sorted (image id, sha256, label) triples."""
    digest = hashlib.sha256()
    for image_id, sha, label in sorted(rows):
        digest.update(f"{image_id}:{sha}:{label}\n".encode())
    return digest.hexdigest()


def weights_digest(rows: Iterable[tuple[int, str, float]]) -> str:
    """Hash of per-cell loss weights: sorted (image id, label, weight) triples, weights written exactly."""
    digest = hashlib.sha256()
    for image_id, label, weight in sorted((i, lab, float(w)) for i, lab, w in rows):
        digest.update(f"{image_id}:{label}:{weight!r}\n".encode())
    return digest.hexdigest()


def training_set_record(rows: Sequence[_ImageLike], labels: Sequence[str] | None = None,
                        weights: Sequence[float] | None = None, schedule: dict[str, Any] | None = None
                        ) -> tuple[str, dict[str, Any]]:
    """Hash and per-class/origin composition of an exact training set.

    weights (one per row) and schedule (how the set is used over the epochs, e.g. a real-only fine-tune) are part
    of what a trainer receives, so they enter the hash; without them the hash is image_set_hash of the cells.
    """
    labels = list(labels) if labels is not None else [r.class_name for r in rows]
    digest = image_set_hash((r.id, r.sha256, label) for r, label in zip(rows, labels, strict=True))
    counts = Counter(f"{r.origin}/{label}" for r, label in zip(rows, labels, strict=True))
    summary: dict[str, Any] = {"by_origin_class": dict(sorted(counts.items())), "total": len(rows)}
    if weights is None and not schedule:
        return digest, summary
    w_digest = None
    if weights is not None:
        w_digest = weights_digest((r.id, label, w) for r, label, w in zip(rows, labels, weights, strict=True))
        summary["weights_digest"] = w_digest
    if schedule:
        summary["schedule"] = dict(schedule)
    whole = f"{digest}\nweights:{w_digest}\nschedule:{json.dumps(schedule or None, sort_keys=True)}\n"
    return hashlib.sha256(whole.encode()).hexdigest(), summary


def decisions_snapshot_hash(decisions: Iterable[dict[str, Any]]) -> str:
    """Hash of the decisions a curated training set was built from (decision id, verdict, image id)."""
    return image_set_hash((d["id"], d["verdict"], str(d["image_id"])) for d in decisions)


def write_train_set(run_dir: Path, rows: Sequence[_ImageLike], labels: Sequence[str],
                    weights: Sequence[float] | None = None) -> Path:
    """Freeze a training set (ids, sha256, labels, origins and optional loss weights) in a run folder."""
    manifest = [{"id": r.id, "sha256": r.sha256, "label": label, "origin": r.origin}
                for r, label in zip(rows, labels, strict=True)]
    if weights is not None:
        for item, weight in zip(manifest, weights, strict=True):
            item["weight"] = float(weight)
    path = run_dir / TRAIN_SET_FILE
    path.write_text(json.dumps(manifest))
    return path


def read_train_set(run_dir: Path) -> list[dict[str, Any]]:
    """The frozen training set of a run folder."""
    return json.loads((run_dir / TRAIN_SET_FILE).read_text())


def quality_seed(class_index: int) -> int:
    """The fixed seed every checkpoint's quality samples of a class are drawn with."""
    return QUALITY_SEED_BASE + class_index


def candidate_seed(call_seed: int, class_index: int) -> int:
    """The seed of one class within one generation call."""
    return call_seed * CANDIDATE_SEED_STRIDE + class_index


# -- judge cache -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JudgeKey:
    """What a cached judge was trained for; its folder name is built and parsed here only."""

    dataset_id: int
    size: int
    split_hash: str  # a re-split dataset gets a new judge instead of one that saw today's val cells
    judge: str  # QualityConfig.key(): which judge recipe

    @property
    def folder_name(self) -> str:
        return f"dataset_{self.dataset_id}_size_{self.size}_{self.split_hash[:12]}_{self.judge}"

    @classmethod
    def parse(cls, name: str, split_hash: str, judge: str) -> JudgeKey | None:
        """The key of a folder name for the given split and judge, or None if it is another's."""
        match = re.fullmatch(rf"dataset_(\d+)_size_(\d+)_{re.escape(split_hash[:12])}_{re.escape(judge)}", name)
        return cls(int(match.group(1)), int(match.group(2)), split_hash, judge) if match else None

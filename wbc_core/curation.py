"""Pluggable curation policies: which generated candidates count as accepted cells.

A policy looks at a batch of candidates (uint8 images + the class each was generated for) and returns one
boolean per candidate. Two implementations:

- ReferenceClassifierPolicy: an automatic stand-in for an expert, for benchmarks without reviewers. A candidate
  is accepted when a reference classifier agrees with its intended class (p >= min_confidence), it is not a copy
  of a real training cell, and it is not a near-duplicate of a candidate of the same class accepted before it.
- ExpertDecisionsPolicy: the real thing, reading the consensus of expert decisions stored in the database.

Typical use:
    policy = ReferenceClassifierPolicy(ClassifierReference(load_classifier(path)))
    keep = policy.decide(candidates, CurationContext(class_names, train=real_train, val=real_val))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from wbc_core.quality.neighbours import memorisation_threshold, pairwise_nearest
from wbc_core.types import LabelledImages

__all__ = ["ClassifierReference", "CurationContext", "CurationPolicy", "Decisions", "ExpertDecisionsPolicy",
           "ReferenceClassifierPolicy", "ReferenceModel", "ReferencePolicyConfig", "greedy_dedupe"]


@dataclass(frozen=True)
class CurationContext:
    """What a policy may know besides the candidates themselves."""

    class_names: Sequence[str]  # label i of a candidate is class_names[i]
    train: LabelledImages | None = None  # real cells the generator trained on (copies of these are rejected)
    val: LabelledImages | None = None  # real cells unseen by generator and reference (calibrate distances)
    candidate_ids: Sequence[int] | None = None  # database image ids of the candidates, for policies that need them


@dataclass(frozen=True)
class Decisions:
    """Per-candidate outcome of ReferenceClassifierPolicy.explain, for reports and tests."""

    accepted: torch.Tensor  # bool [N], the final verdict
    agrees: torch.Tensor  # bool [N], reference p(intended class) >= min_confidence
    memorised: torch.Tensor  # bool [N], closer to a real training cell than the memorisation threshold
    duplicate: torch.Tensor  # bool [N], too close to an earlier accepted candidate of the same class
    confidence: torch.Tensor  # float [N], reference p(intended class)
    threshold: float  # distance threshold used for both the memorisation and the dedupe test
    stats: dict[str, Any] = field(default_factory=dict)  # counts per rejection reason


@runtime_checkable
class CurationPolicy(Protocol):
    """Anything that accepts or rejects candidates; must not look at val/test labels beyond the context."""

    def decide(self, candidates: LabelledImages, context: CurationContext) -> torch.Tensor:
        """Bool [N]: True where candidate i is accepted as a cell of class candidates.labels[i]."""
        ...


class ReferenceModel(Protocol):
    """A classifier seen only through class probabilities and a feature embedding."""

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Float [N, K] class probabilities for uint8 images [N,3,S,S]."""
        ...

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Float [N, D] embedding for uint8 images [N,3,S,S]; distances in it decide copies and duplicates."""
        ...


class ClassifierReference:
    """ReferenceModel backed by a trained wbc classifier (WBCClassifier or LoadedClassifier)."""

    def __init__(self, model: Any, device: str = "cpu", batch_size: int = 256) -> None:
        self.model, self.device, self.batch_size = model, device, batch_size

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax of the classifier's logits."""
        from wbc_core.classifier import predict_proba

        return predict_proba(self.model, images, self.device, self.batch_size)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features of the classifier."""
        from wbc_core.classifier import extract_features

        return extract_features(self.model, images, self.batch_size, self.device)


@dataclass(frozen=True)
class ReferencePolicyConfig:
    """Thresholds of ReferenceClassifierPolicy."""

    min_confidence: float = 0.9  # accept only when p(intended class) >= this
    percentile: float = 1.0  # copy/duplicate threshold: this percentile of real val -> nearest real train distances
    reject_memorised: bool = True  # reject candidates closer than the threshold to any real training cell
    dedupe: bool = True  # reject candidates closer than the threshold to an earlier accepted one of the same class

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 < self.percentile < 100.0:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile}")


class ReferenceClassifierPolicy:
    """Automatic stand-in for an expert: class agreement, no memorised copies, no near-duplicates.

    Agreement alone is not enough: a collapsed generator that emits one convincing cell per class would pass it
    with every candidate, so copies of real training cells and near-identical candidates are rejected too. Both
    distance tests share one threshold, calibrated on real data: the given percentile of distances from real
    validation cells to their nearest real training cell, i.e. "closer than real unseen cells almost ever get".
    The reference model must never have trained on val or test cells.
    Decisions are order-stable: deciding the first k candidates gives the first k decisions of the whole batch,
    so nested subsets (25%, 50%, 100% of a pool) are curated consistently.
    """

    def __init__(self, reference: ReferenceModel, config: ReferencePolicyConfig = ReferencePolicyConfig(),
                 threshold: float | None = None) -> None:
        self.reference, self.config = reference, config
        self.fixed_threshold = threshold  # when given, used instead of calibrating on context.val
        # (train, val, train features, threshold) of the last context; objects, not ids, so a reused id never hits.
        self._cache: tuple[Any, Any, torch.Tensor, float] | None = None

    def decide(self, candidates: LabelledImages, context: CurationContext) -> torch.Tensor:
        """Bool [N] verdicts; see explain() for the reasons."""
        return self.explain(candidates, context).accepted

    def explain(self, candidates: LabelledImages, context: CurationContext) -> Decisions:
        """Verdicts with the per-test outcomes behind them."""
        n, cfg = len(candidates), self.config
        labels = candidates.labels.long()
        if n == 0:
            empty = torch.zeros(0, dtype=torch.bool)
            return Decisions(empty, empty, empty, empty, torch.zeros(0), 0.0, {"candidates": 0})
        probs = self.reference.predict_proba(candidates.images)
        if probs.shape != (n, len(context.class_names)):
            raise ValueError(f"reference returned probabilities {tuple(probs.shape)} for {n} candidates and "
                             f"{len(context.class_names)} classes")
        confidence = probs.gather(1, labels[:, None])[:, 0]
        agrees = confidence >= cfg.min_confidence
        memorised = torch.zeros(n, dtype=torch.bool)
        duplicate = torch.zeros(n, dtype=torch.bool)
        threshold = 0.0
        if cfg.reject_memorised or cfg.dedupe:
            feats = self.reference.features(candidates.images).float()
            train_feats, threshold = self._calibrate(context)
            if cfg.reject_memorised:
                d, _ = pairwise_nearest(feats, train_feats, k=1)
                memorised = d[:, 0] < threshold
            if cfg.dedupe:
                keep = greedy_dedupe(feats, labels, threshold, eligible=agrees & ~memorised)
                duplicate = agrees & ~memorised & ~keep
        accepted = agrees & ~memorised & ~duplicate
        stats = {"candidates": n, "accepted": int(accepted.sum()), "disagree": int((~agrees).sum()),
                 "memorised": int((agrees & memorised).sum()), "duplicate": int(duplicate.sum())}
        return Decisions(accepted, agrees, memorised, duplicate, confidence, float(threshold), stats)

    def _calibrate(self, context: CurationContext) -> tuple[torch.Tensor, float]:
        """Train-cell features and the distance threshold, cached per (train, val) pair."""
        if context.train is None or len(context.train) == 0:
            raise ValueError("ReferenceClassifierPolicy needs context.train (the generator's real training cells)")
        if self._cache is not None and self._cache[0] is context.train and self._cache[1] is context.val:
            return self._cache[2], self._cache[3]
        train_feats = self.reference.features(context.train.images).float()
        if self.fixed_threshold is not None:
            threshold = float(self.fixed_threshold)
        elif context.val is None or len(context.val) == 0:
            raise ValueError("ReferenceClassifierPolicy needs context.val (real unseen cells) to calibrate distances")
        else:
            val_feats = self.reference.features(context.val.images).float()
            threshold = memorisation_threshold(val_feats, train_feats, self.config.percentile)
        self._cache = (context.train, context.val, train_feats, threshold)
        return train_feats, threshold


def greedy_dedupe(features: torch.Tensor, labels: torch.Tensor, threshold: float,
                  eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [N]: in input order, keep an eligible row unless it is within threshold of a kept row of its class."""
    n = features.shape[0]
    eligible = torch.ones(n, dtype=torch.bool) if eligible is None else eligible.bool()
    keep = torch.zeros(n, dtype=torch.bool)
    for cls in labels.unique().tolist():
        rows = torch.nonzero((labels == cls) & eligible)[:, 0]
        if rows.numel() == 0:
            continue
        # One distance matrix per class: pools are a few thousand cells per class at most.
        dist = torch.cdist(features[rows].float(), features[rows].float())
        kept: list[int] = []
        for j in range(rows.numel()):
            if not kept or bool((dist[j, kept] >= threshold).all()):
                kept.append(j)
        keep[rows[kept]] = True
    return keep


class ExpertDecisionsPolicy:
    """Accept exactly what the experts accepted (consensus or adjudication) for the intended class.

    Needs context.candidate_ids (database image ids of the candidates). A candidate relabelled by the experts to
    another class counts as rejected for the class it was generated for; use accepted_candidates() directly to
    train on relabelled cells under their new class.
    """

    def __init__(self, dataset_id: int, rule: Any = None) -> None:
        self.dataset_id = dataset_id
        self.rule = rule  # wbc_core.review_model.ConsensusRule; None = the dataset's own review settings

    def decide(self, candidates: LabelledImages, context: CurationContext) -> torch.Tensor:
        """Bool [N] from the stored decisions; undecided candidates are not accepted."""
        from wbc_core.review_model import accepted_candidates  # lazy: only this policy needs the database

        ids = context.candidate_ids
        if ids is None or len(ids) != len(candidates):
            raise ValueError("ExpertDecisionsPolicy needs context.candidate_ids, one database id per candidate")
        final = {row.id: cls for row, cls in accepted_candidates(self.dataset_id, self.rule)}
        names = list(context.class_names)
        verdicts = [final.get(int(i)) == names[int(y)] for i, y in zip(ids, candidates.labels.tolist(), strict=True)]
        return torch.tensor(verdicts, dtype=torch.bool)

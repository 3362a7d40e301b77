"""Pluggable curation policies: which generated candidates count as accepted cells.

A policy looks at a batch of candidates (uint8 images + the class each was generated for) and returns one
boolean per candidate. Two implementations:

- ReferenceClassifierPolicy: an automatic stand-in for an expert, for benchmarks without reviewers. A candidate
  is accepted when a reference classifier agrees with its intended class (p >= min_confidence), it looks real (its
  realism score, Kynkäänniemi et al. 2019, is within the range of real val cells of its class), it is not a copy
  of a real training cell, and it is not a near-duplicate of a candidate of the same class accepted before it.
- ExpertDecisionsPolicy: the real thing, reading the consensus of expert decisions stored in the database.

Both have explain(candidates, context), whose result holds `accepted` and `rejections`: per class, how many
candidates each rule rejected (each candidate counted once, by the first rule it fails, in the rules' order).

Typical use:
    policy = ReferenceClassifierPolicy(ClassifierReference(load_classifier(path)))
    keep = policy.decide(candidates, CurationContext(class_names, train=real_train, val=real_val))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from wbc_core.quality.neighbours import class_memorisation_thresholds, pairwise_nearest
from wbc_core.types import LabelledImages

__all__ = ["EXPERT_RULES", "REFERENCE_RULES", "ClassifierReference", "CurationContext", "CurationPolicy", "Decisions",
           "ExpertDecisions", "ExpertDecisionsPolicy", "RealManifold", "ReferenceClassifierPolicy", "ReferenceModel",
           "ReferencePolicyConfig", "greedy_dedupe"]

# Why the reference stand-in rejects a candidate, in the order the rules are applied.
REFERENCE_RULES = ("disagree", "unrealistic", "memorised", "duplicate")
# Why the experts' decisions do not accept a candidate for its intended class.
EXPERT_RULES = ("rejected", "relabelled", "disputed", "undecided")


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
    threshold: float  # distance threshold of the memorisation and dedupe tests (over all classes)
    stats: dict[str, Any] = field(default_factory=dict)  # counts per rejection reason
    realistic: torch.Tensor | None = None  # bool [N], realism score within the range of real val cells of its class
    realism: torch.Tensor | None = None  # float [N], realism score (>= 1: inside a real cell's k-NN ball)
    realism_thresholds: dict[str, float | None] = field(default_factory=dict)  # class -> lowest accepted score
    copy_thresholds: dict[str, float] = field(default_factory=dict)  # class -> its memorisation/dedupe distance
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> rule (REFERENCE_RULES) -> count


@dataclass(frozen=True)
class ExpertDecisions:
    """Per-candidate outcome of ExpertDecisionsPolicy.explain."""

    accepted: torch.Tensor  # bool [N]
    rejections: dict[str, dict[str, int]]  # class -> rule (EXPERT_RULES) -> count
    stats: dict[str, Any] = field(default_factory=dict)


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
    realism: bool = True  # reject candidates whose realism score is below the range of real val cells of the class
    realism_k: int = 3  # k of the k-NN balls around real train cells (the paper's k)
    realism_percentile: float = 1.0  # lowest accepted score: this percentile of the class's real val cells' scores
    realism_prune: float = 50.0  # balls with radii above this percentile are dropped (the paper's 50: outliers)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 < self.percentile < 100.0:
            raise ValueError(f"percentile must be in (0, 100), got {self.percentile}")
        if isinstance(self.realism_k, bool) or not isinstance(self.realism_k, int) or self.realism_k < 1:
            raise ValueError(f"realism_k must be a whole number of at least 1, got {self.realism_k!r}")
        if not 0.0 <= self.realism_percentile < 100.0:
            raise ValueError(f"realism_percentile must be in [0, 100), got {self.realism_percentile}")
        if not 0.0 < self.realism_prune <= 100.0:
            raise ValueError(f"realism_prune must be in (0, 100], got {self.realism_prune}")


class ReferenceClassifierPolicy:
    """Automatic stand-in for an expert: class agreement, realism, no memorised copies, no near-duplicates.

    Agreement alone is not enough: a collapsed generator that emits one convincing cell per class would pass it
    with every candidate, and a cell of the right class can still look wrong. So a candidate must also be realistic:
    its realism score (Kynkäänniemi et al. 2019) against the real train cells of its class must be at least the
    realism_percentile-th percentile of the scores of the real val cells of that class, i.e. it sits as close to
    the real cells' k-NN balls as real unseen cells do. Copies of real training cells and near-identical candidates
    are rejected too. Both distance tests share one threshold per class, calibrated on real data: the given
    percentile of distances from real validation cells of the class to their nearest real training cell, i.e.
    "closer than real unseen cells almost ever get" (classes with few val cells use the percentile over all classes;
    one threshold for all would call 7% of real unseen platelets copies, measured with a small CNN reference on PBC).
    The reference model must never have trained on val or test cells.
    Decisions are order-stable: deciding the first k candidates gives the first k decisions of the whole batch,
    so nested subsets (25%, 50%, 100% of a pool) are curated consistently.
    """

    def __init__(self, reference: ReferenceModel, config: ReferencePolicyConfig = ReferencePolicyConfig(),
                 threshold: float | None = None) -> None:
        self.reference, self.config = reference, config
        self.fixed_threshold = threshold  # when given, used instead of calibrating on context.val
        # The calibration of the last context; keyed by the objects, not ids, so a reused id never hits.
        self._cache: _Calibration | None = None

    def decide(self, candidates: LabelledImages, context: CurationContext) -> torch.Tensor:
        """Bool [N] verdicts; see explain() for the reasons."""
        return self.explain(candidates, context).accepted

    def explain(self, candidates: LabelledImages, context: CurationContext) -> Decisions:
        """Verdicts with the per-test outcomes behind them and the rejections per class and rule."""
        n, cfg = len(candidates), self.config
        names = [str(c) for c in context.class_names]
        labels = candidates.labels.long()
        if n == 0:
            empty = torch.zeros(0, dtype=torch.bool)
            return Decisions(empty, empty, empty, empty, torch.zeros(0), 0.0, {"candidates": 0}, realistic=empty,
                             realism=torch.zeros(0), rejections=_rejections(names, labels, REFERENCE_RULES, {}))
        probs = self.reference.predict_proba(candidates.images)
        if probs.shape != (n, len(names)):
            raise ValueError(f"reference returned probabilities {tuple(probs.shape)} for {n} candidates and "
                             f"{len(names)} classes")
        confidence = probs.gather(1, labels[:, None])[:, 0]
        agrees = confidence >= cfg.min_confidence
        realistic = torch.ones(n, dtype=torch.bool)
        realism = torch.full((n,), math.nan)
        memorised = torch.zeros(n, dtype=torch.bool)
        duplicate = torch.zeros(n, dtype=torch.bool)
        threshold, floors, copy = 0.0, {}, {}
        if cfg.reject_memorised or cfg.dedupe or cfg.realism:
            feats = self.reference.features(candidates.images).float()
            cal = self._calibrate(context)
            threshold = cal.threshold
            per_class = cal.class_thresholds[labels]
            copy = {name: float(cal.class_thresholds[c]) for c, name in enumerate(names)}
            if cfg.realism:
                for c, manifold in cal.manifolds.items():
                    rows = labels == c
                    if manifold is None or not bool(rows.any()):
                        continue
                    realism[rows] = manifold.realism(feats[rows])
                    realistic[rows] = realism[rows] >= cal.floors[c]
                floors = {names[c]: cal.floors.get(c) for c in range(len(names))}
            if cfg.reject_memorised:
                d, _ = pairwise_nearest(feats, cal.train_features, k=1)
                memorised = d[:, 0] < per_class
            if cfg.dedupe:
                keep = greedy_dedupe(feats, labels, cal.class_thresholds, eligible=agrees & realistic & ~memorised)
                duplicate = agrees & realistic & ~memorised & ~keep
        accepted = agrees & realistic & ~memorised & ~duplicate
        # Each rejected candidate is counted once, by the first rule it fails (REFERENCE_RULES order).
        first = {"disagree": ~agrees, "unrealistic": agrees & ~realistic, "memorised": agrees & realistic & memorised,
                 "duplicate": duplicate}
        stats = {"candidates": n, "accepted": int(accepted.sum()),
                 **{rule: int(first[rule].sum()) for rule in REFERENCE_RULES}}
        return Decisions(accepted, agrees, memorised, duplicate, confidence, float(threshold), stats,
                         realistic=realistic, realism=realism, realism_thresholds=floors, copy_thresholds=copy,
                         rejections=_rejections(names, labels, REFERENCE_RULES, first))

    def _calibrate(self, context: CurationContext) -> _Calibration:
        """Train-cell features, the distance threshold and the per-class realism manifolds, cached per context."""
        if context.train is None or len(context.train) == 0:
            raise ValueError("ReferenceClassifierPolicy needs context.train (the generator's real training cells)")
        cached = self._cache
        if cached is not None and cached.train is context.train and cached.val is context.val:
            return cached
        cfg = self.config
        train_feats = self.reference.features(context.train.images).float()
        val_feats = None
        if context.val is not None and len(context.val) > 0:
            val_feats = self.reference.features(context.val.images).float()
        k = len(context.class_names)
        if self.fixed_threshold is not None:
            threshold = float(self.fixed_threshold)
            class_thresholds = torch.full((k,), threshold)
        elif val_feats is None:
            raise ValueError("ReferenceClassifierPolicy needs context.val (real unseen cells) to calibrate distances")
        else:
            threshold, class_thresholds = class_memorisation_thresholds(val_feats, context.val.labels.long(),
                                                                        train_feats, k, cfg.percentile)
        manifolds: dict[int, RealManifold | None] = {}
        floors: dict[int, float | None] = {}
        if cfg.realism:
            train_labels = context.train.labels.long()
            for c in range(len(context.class_names)):
                mine = train_feats[train_labels == c]
                # A class with one real train cell has no k-NN ball: its candidates are not tested for realism.
                manifolds[c] = RealManifold.of(mine, cfg.realism_k, cfg.realism_prune) if len(mine) >= 2 else None
                floors[c] = None if manifolds[c] is None else REALISTIC
                if manifolds[c] is not None and val_feats is not None:
                    val_mine = val_feats[context.val.labels.long() == c]
                    if len(val_mine):  # else the paper's own test: inside at least one ball
                        scores = manifolds[c].realism(val_mine)
                        floors[c] = float(torch.quantile(scores, cfg.realism_percentile / 100.0))
        self._cache = _Calibration(context.train, context.val, train_feats, threshold, class_thresholds, manifolds,
                                   floors)
        return self._cache


REALISTIC = 1.0  # realism score of a point on the edge of a real cell's k-NN ball


@dataclass(frozen=True)
class RealManifold:
    """The real cells of one class as k-NN balls in reference features (Kynkäänniemi et al. 2019).

    realism(x) = max_j r_j / |x - f_j|, with r_j the distance of real cell j to its k-th nearest real neighbour:
    x lies inside the ball of at least one real cell exactly when realism(x) >= 1. As in the paper's realism
    score, the balls with the largest radii (above the prune percentile) are dropped, since an outlier's huge ball
    would call almost anything realistic.
    """

    features: torch.Tensor  # float [M, D] reference features of real cells
    radii: torch.Tensor  # float [M] k-NN radius of each; 0 for a pruned ball

    @classmethod
    def of(cls, features: torch.Tensor, k: int = 3, prune_percentile: float = 50.0) -> RealManifold:
        """Balls around real cells (at least 2): k is clamped to the cells there are besides each one."""
        features = features.float()
        if features.shape[0] < 2:
            raise ValueError(f"a realism manifold needs at least 2 real cells, got {features.shape[0]}")
        k = min(k, features.shape[0] - 1)
        d, _ = pairwise_nearest(features, features, k=k, exclude_self=True)
        radii = d[:, k - 1]
        if prune_percentile < 100.0:
            cutoff = torch.quantile(radii, prune_percentile / 100.0)
            radii = torch.where(radii > cutoff, torch.zeros_like(radii), radii)
        return cls(features, radii)

    def realism(self, query: torch.Tensor, eps: float = 1e-5, chunk: int = 2048) -> torch.Tensor:
        """Float [N] realism score of each query row (>= 1: inside at least one ball)."""
        query = query.float()
        out = [(self.radii[None, :] / (torch.cdist(query[i:i + chunk], self.features) + eps)).amax(dim=1)
               for i in range(0, query.shape[0], chunk)]
        return torch.cat(out) if out else torch.zeros(0)


@dataclass(frozen=True)
class _Calibration:
    """What a policy derives from one context's real cells."""

    train: Any  # the context's train cells (identity key of the cache)
    val: Any  # the context's val cells (identity key of the cache)
    train_features: torch.Tensor
    threshold: float  # copy/duplicate distance over all classes
    class_thresholds: torch.Tensor  # float [K] copy/duplicate distance per class
    manifolds: dict[int, RealManifold | None]  # class index -> its real cells' balls (None: too few cells)
    floors: dict[int, float | None]  # class index -> lowest realism score accepted (None: not tested)


def _rejections(names: list[str], labels: torch.Tensor, rules: Sequence[str],
                masks: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """Class name -> rule -> how many candidates of that intended class the rule rejected (every class, every rule)."""
    out = {name: dict.fromkeys(rules, 0) for name in names}
    for rule, mask in masks.items():
        for c, count in zip(*torch.unique(labels[mask], return_counts=True), strict=True):
            out[names[int(c)]][rule] = int(count)
    return out


def greedy_dedupe(features: torch.Tensor, labels: torch.Tensor, threshold: float | torch.Tensor,
                  eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [N]: in input order, keep an eligible row unless it is within threshold of a kept row of its class.

    threshold: one distance, or a tensor [K] with one per class index."""
    n = features.shape[0]
    eligible = torch.ones(n, dtype=torch.bool) if eligible is None else eligible.bool()
    keep = torch.zeros(n, dtype=torch.bool)
    for cls in labels.unique().tolist():
        rows = torch.nonzero((labels == cls) & eligible)[:, 0]
        if rows.numel() == 0:
            continue
        limit = float(threshold[cls]) if isinstance(threshold, torch.Tensor) else float(threshold)
        # One distance matrix per class: pools are a few thousand cells per class at most.
        dist = torch.cdist(features[rows].float(), features[rows].float())
        kept: list[int] = []
        for j in range(rows.numel()):
            if not kept or bool((dist[j, kept] >= limit).all()):
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
        return self.explain(candidates, context).accepted

    def explain(self, candidates: LabelledImages, context: CurationContext) -> ExpertDecisions:
        """Verdicts with the rejections per class and rule (EXPERT_RULES: rejected, relabelled, disputed, undecided)."""
        from wbc_core.review_model import consensus  # lazy: only this policy needs the database

        ids = context.candidate_ids
        if ids is None or len(ids) != len(candidates):
            raise ValueError("ExpertDecisionsPolicy needs context.candidate_ids, one database id per candidate")
        outcomes = consensus(self.dataset_id, self.rule)
        names = [str(c) for c in context.class_names]
        labels = candidates.labels.long()
        why: list[str | None] = []
        for image_id, y in zip(ids, labels.tolist(), strict=True):
            outcome = outcomes.get(int(image_id))
            if outcome is None or outcome.status == "pending":
                why.append("undecided")
            elif outcome.status == "accepted":
                why.append(None if outcome.final_class == names[y] else "relabelled")
            else:
                why.append(outcome.status)  # "rejected" or "disputed"
        accepted = torch.tensor([w is None for w in why], dtype=torch.bool)
        masks = {rule: torch.tensor([w == rule for w in why], dtype=torch.bool) for rule in EXPERT_RULES}
        stats = {"candidates": len(why), "accepted": int(accepted.sum()),
                 **{rule: int(m.sum()) for rule, m in masks.items()}}
        return ExpertDecisions(accepted, _rejections(names, labels, EXPERT_RULES, masks), stats)

"""Curation policies: agreement threshold, memorised copies, near-duplicates, expert decisions from the database."""

from __future__ import annotations

import torch

from db import datasets
from wbc_core import review_model
from wbc_core.curation import (
    CurationContext,
    CurationPolicy,
    ExpertDecisionsPolicy,
    ReferenceClassifierPolicy,
    ReferencePolicyConfig,
    greedy_dedupe,
)
from wbc_core.types import LabelledImages

NAMES = ["a", "b"]


class StubReference:
    """Reference model whose outputs are looked up by the id written into pixel (0, 0, 0) of each image."""

    def __init__(self, probs: dict[int, list[float]], feats: dict[int, list[float]]) -> None:
        self.probs, self.feats = probs, feats

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.probs.get(int(i), [0.5, 0.5]) for i in images[:, 0, 0, 0]])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.feats[int(i)] for i in images[:, 0, 0, 0]], dtype=torch.float32)


def cells(ids: list[int], labels: list[int]) -> LabelledImages:
    """Tiny uint8 images carrying their id in one pixel."""
    images = torch.zeros(len(ids), 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.uint8)
    return LabelledImages(images, torch.tensor(labels, dtype=torch.long))


# Real cells: train 200 at the origin, 201 at (100, 0); val 210 at distance 5 from 200 (threshold ~5).
REAL_FEATS = {200: [0.0, 0.0], 201: [100.0, 0.0], 210: [5.0, 0.0]}


def context() -> CurationContext:
    return CurationContext(NAMES, train=cells([200, 201], [0, 1]), val=cells([210], [0]))


def test_policies_satisfy_the_protocol():
    ref = StubReference({}, REAL_FEATS)
    assert isinstance(ReferenceClassifierPolicy(ref), CurationPolicy)
    assert isinstance(ExpertDecisionsPolicy(1), CurationPolicy)


def test_agreement_threshold_is_inclusive_and_per_intended_class():
    probs = {1: [0.95, 0.05], 2: [0.89, 0.11], 3: [0.90, 0.10], 4: [0.95, 0.05]}
    feats = {**REAL_FEATS, 1: [50.0, 50.0], 2: [50.0, -50.0], 3: [-50.0, 50.0], 4: [-50.0, -50.0]}
    policy = ReferenceClassifierPolicy(StubReference(probs, feats))
    # Candidate 4 is confidently "a" but was generated as "b": the reference disagrees with its intended class.
    out = policy.explain(cells([1, 2, 3, 4], [0, 0, 0, 1]), context())
    assert out.accepted.tolist() == [True, False, True, False]
    assert out.agrees.tolist() == [True, False, True, False]
    assert out.stats["disagree"] == 2
    loose = ReferenceClassifierPolicy(StubReference(probs, feats), ReferencePolicyConfig(min_confidence=0.5))
    assert loose.decide(cells([2], [0]), context()).tolist() == [True]


def test_memorised_candidates_are_rejected():
    probs = {1: [0.99, 0.01], 2: [0.99, 0.01], 3: [0.01, 0.99]}
    # 1 sits on real train cell 200, 3 next to 201; 2 is 40 away from everything: only 2 survives.
    feats = {**REAL_FEATS, 1: [0.5, 0.0], 2: [0.0, 40.0], 3: [100.0, 1.0]}
    policy = ReferenceClassifierPolicy(StubReference(probs, feats))
    out = policy.explain(cells([1, 2, 3], [0, 0, 1]), context())
    assert abs(out.threshold - 5.0) < 1e-6  # calibrated on real val -> train distances
    assert out.memorised.tolist() == [True, False, True]
    assert out.accepted.tolist() == [False, True, False]
    keep_copies = ReferenceClassifierPolicy(StubReference(probs, feats), ReferencePolicyConfig(reject_memorised=False))
    assert keep_copies.decide(cells([1, 2, 3], [0, 0, 1]), context()).tolist() == [True, True, True]


def test_near_duplicates_collapse_to_the_first_per_class():
    probs = {1: [0.99, 0.01], 2: [0.99, 0.01], 3: [0.99, 0.01], 4: [0.01, 0.99], 5: [0.99, 0.01]}
    # 1, 2, 3 are one collapsed "a" cell; 4 is a "b" at the same spot (another class: kept); 5 is a distinct "a".
    feats = {**REAL_FEATS, 1: [50.0, 50.0], 2: [50.5, 50.0], 3: [50.0, 50.5], 4: [50.0, 50.2], 5: [60.0, 50.0]}
    policy = ReferenceClassifierPolicy(StubReference(probs, feats))
    batch = cells([1, 2, 3, 4, 5], [0, 0, 0, 1, 0])
    out = policy.explain(batch, context())
    assert out.accepted.tolist() == [True, False, False, True, True]
    assert out.duplicate.tolist() == [False, True, True, False, False]
    # Order-stable: deciding a prefix gives the prefix of the decisions (nested synthetic shares rely on it).
    prefix = LabelledImages(batch.images[:3], batch.labels[:3])
    assert policy.decide(prefix, context()).tolist() == out.accepted[:3].tolist()


def test_a_rejected_candidate_does_not_block_its_neighbours():
    feats = torch.tensor([[0.0], [0.1], [0.2]])
    labels = torch.zeros(3, dtype=torch.long)
    # Row 0 is ineligible (e.g. the reference disagreed), so row 1 is the first kept and row 2 its duplicate.
    keep = greedy_dedupe(feats, labels, 0.15, eligible=torch.tensor([False, True, True]))
    assert keep.tolist() == [False, True, False]


def test_empty_batch_and_missing_context_are_handled():
    policy = ReferenceClassifierPolicy(StubReference({}, REAL_FEATS))
    assert policy.decide(cells([], []), context()).tolist() == []
    try:
        policy.decide(cells([200], [0]), CurationContext(NAMES))
    except ValueError as exc:
        assert "context.train" in str(exc)
    else:
        raise AssertionError("a policy without real training cells must refuse")


def test_expert_policy_reads_consensus_decisions(wbc_home):
    rows = [dict(origin="real", class_name="a", split="train", sha256=f"r{i}", path=f"p{i}", width=8, height=8)
            for i in range(3)]
    dataset_id = datasets.create_dataset("d", "real", "src", NAMES, {}, "h", {}, rows)
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name=c, split=None, sha256=f"s{i}",
                                                path=f"q{i}", width=8, height=8)
                                           for i, c in enumerate(["a", "a", "a", "b", "b"])])
    review_model.decide([ids[0], ids[3]], "ann", "accept")
    review_model.decide([ids[1]], "ann", "reject", reason="GAN texture artefact")
    review_model.decide([ids[2]], "ann", "relabel", new_class="b")  # accepted, but as another class
    # ids[4] stays undecided.
    candidates = cells(list(range(5)), [0, 0, 0, 1, 1])
    policy = ExpertDecisionsPolicy(dataset_id)
    keep = policy.decide(candidates, CurationContext(NAMES, candidate_ids=ids))
    assert keep.tolist() == [True, False, False, True, False]
    try:
        policy.decide(candidates, CurationContext(NAMES))
    except ValueError as exc:
        assert "candidate_ids" in str(exc)
    else:
        raise AssertionError("the expert policy needs database ids")

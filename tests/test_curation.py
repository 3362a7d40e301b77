"""Curation policies: agreement threshold, memorised copies, near-duplicates, expert decisions from the database."""

from __future__ import annotations

import pytest
import torch
from support import account

from db import datasets
from wbc_core import review_model
from wbc_core.curation import (
    EXPERT_RULES,
    REFERENCE_RULES,
    CurationContext,
    CurationPolicy,
    ExpertDecisionsPolicy,
    RealManifold,
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
    empty = policy.explain(cells([], []), context())
    assert empty.rejections == {name: dict.fromkeys(REFERENCE_RULES, 0) for name in NAMES}
    assert empty.copy_thresholds == {}
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
    review_model.decide([ids[0], ids[3]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[1]], "ann", "reject", reason="GAN texture artefact", user=account("reviewer", "ann"))
    # accepted, but as another class
    review_model.decide([ids[2]], "ann", "relabel", new_class="b", user=account("reviewer", "ann"))
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


# -- realism (Kynkäänniemi et al. 2019) and the rejections per class and rule -------------------------------------

SQUARE = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # four real cells: with k=1 every ball has radius 1


def test_realism_is_at_least_one_exactly_inside_a_real_cells_ball():
    manifold = RealManifold.of(torch.tensor(SQUARE), k=1, prune_percentile=100.0)
    assert manifold.radii.tolist() == [1.0, 1.0, 1.0, 1.0]
    scores = manifold.realism(torch.tensor([[0.5, 0.0], [2.5, 0.0], [1.0, 2.0]]))
    assert scores[0] > 1.0 and scores[1] < 1.0  # 0.5 from a cell: inside; 1.5 from the nearest: outside
    assert abs(float(scores[2]) - 1.0) < 1e-4  # on the edge of (1, 1)'s ball


def test_realism_drops_the_largest_balls_so_an_outlier_does_not_make_everything_look_real():
    cells = torch.tensor([*SQUARE, [10.0, 10.0]])  # the outlier's nearest neighbour is 12.7 away: a huge ball
    query = torch.tensor([[8.0, 8.0]])
    assert float(RealManifold.of(cells, k=1, prune_percentile=100.0).realism(query)[0]) > 4.0
    pruned = RealManifold.of(cells, k=1, prune_percentile=50.0)
    assert pruned.radii.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert float(pruned.realism(query)[0]) < 0.2
    with pytest.raises(ValueError, match="at least 2 real cells"):
        RealManifold.of(torch.tensor([[0.0, 0.0]]))


NAMES3 = ["a", "b", "c"]
# Real train cells: class a the unit square (ids 200-203), b one cell (210), c two cells 1 apart (220, 221).
# Real val cells of a: 230 in the middle of the square (score 1.41), 231 on the edge of a ball (score 1.0).
REAL3 = {200: SQUARE[0], 201: SQUARE[1], 202: SQUARE[2], 203: SQUARE[3], 210: [100.0, 0.0],
         220: [200.0, 0.0], 221: [201.0, 0.0], 230: [0.5, 0.5], 231: [2.0, 0.0]}


def context3() -> CurationContext:
    return CurationContext(NAMES3, train=cells([200, 201, 202, 203, 210, 220, 221], [0, 0, 0, 0, 1, 2, 2]),
                           val=cells([230, 231], [0, 0]))


def realism_policy(feats: dict[int, list[float]], probs: dict[int, list[float]], **config: float
                   ) -> ReferenceClassifierPolicy:
    cfg = ReferencePolicyConfig(realism_k=1, realism_prune=100.0, realism_percentile=0.0)
    cfg = ReferencePolicyConfig(**{**cfg.__dict__, **config})
    return ReferenceClassifierPolicy(StubReference(probs, {**REAL3, **feats}), cfg)


# Candidates of class a: 1 realistic and new; 2 far from every real cell; 3 a copy of real cell 200; 4 a
# near-duplicate of 1; 5 the reference calls b. Class b: 6, whose class has one real cell (no ball: not tested).
CANDIDATE_FEATS = {1: [0.5, 1.8], 2: [3.0, 3.0], 3: [0.05, 0.0], 4: [0.5, 1.85], 5: [0.5, -0.8], 6: [100.0, 50.0]}
A, B = [0.98, 0.01, 0.01], [0.01, 0.98, 0.01]
CANDIDATE_PROBS = {1: A, 2: A, 3: A, 4: A, 5: B, 6: B}


def test_each_rule_rejects_its_own_candidates_and_is_counted_per_class():
    policy = realism_policy(CANDIDATE_FEATS, CANDIDATE_PROBS)
    out = policy.explain(cells([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 1]), context3())
    assert out.accepted.tolist() == [True, False, False, False, False, True]
    assert out.realistic.tolist() == [True, False, True, True, True, True]  # a copy looks very real: caught later
    assert out.memorised.tolist() == [False, False, True, False, False, False]
    assert out.duplicate.tolist() == [False, False, False, True, False, False]
    assert out.rejections == {"a": {"disagree": 1, "unrealistic": 1, "memorised": 1, "duplicate": 1},
                              "b": dict.fromkeys(REFERENCE_RULES, 0), "c": dict.fromkeys(REFERENCE_RULES, 0)}
    assert out.stats == {"candidates": 6, "accepted": 2, "disagree": 1, "unrealistic": 1, "memorised": 1,
                         "duplicate": 1}
    # The floor is the lowest val score of class a (231, on a ball's edge); b has no ball; c has no val cells,
    # so the paper's own test applies there: inside at least one ball.
    assert abs(out.realism_thresholds["a"] - 1.0) < 1e-4
    assert out.realism_thresholds["b"] is None and out.realism_thresholds["c"] == 1.0


def test_the_realism_floor_follows_the_range_of_the_classs_real_val_cells():
    batch = cells([1, 6], [0, 1])
    assert realism_policy(CANDIDATE_FEATS, CANDIDATE_PROBS).decide(batch, context3()).tolist() == [True, True]
    # Asking for the median real val cell's realism (1.21) instead of the lowest: candidate 1 (1.06) falls short.
    strict = realism_policy(CANDIDATE_FEATS, CANDIDATE_PROBS, realism_percentile=50.0).explain(batch, context3())
    assert strict.accepted.tolist() == [False, True] and strict.rejections["a"]["unrealistic"] == 1
    assert 1.2 < strict.realism_thresholds["a"] < 1.22
    off = realism_policy(CANDIDATE_FEATS, CANDIDATE_PROBS, realism=False)
    assert off.decide(cells([2], [0]), context3()).tolist() == [True]  # without the rule, far cells pass


def test_a_class_without_val_cells_uses_the_papers_inside_a_ball_test():
    feats = {7: [200.5, 0.0], 8: [200.5, 3.0]}  # class c: 0.5 from a real cell (inside), 3 away (outside)
    probs = {7: [0.01, 0.01, 0.98], 8: [0.01, 0.01, 0.98]}
    out = realism_policy(feats, probs).explain(cells([7, 8], [2, 2]), context3())
    assert out.realistic.tolist() == [True, False] and out.rejections["c"]["unrealistic"] == 1


def test_reference_config_refuses_nonsense_realism_settings():
    for bad in ({"realism_k": 0}, {"realism_percentile": 100.0}, {"realism_percentile": float("nan")},
                {"realism_prune": 0.0}):
        with pytest.raises(ValueError, match="realism"):
            ReferencePolicyConfig(**bad)


def test_expert_policy_reports_why_each_class_lost_candidates(wbc_home):
    rows = [dict(origin="real", class_name="a", split="train", sha256=f"r{i}", path=f"p{i}", width=8, height=8)
            for i in range(3)]
    dataset_id = datasets.create_dataset("d", "real", "src", NAMES, {}, "h", {}, rows)
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name=c, split=None, sha256=f"s{i}",
                                                path=f"q{i}", width=8, height=8)
                                           for i, c in enumerate(["a", "a", "a", "b", "b", "b"])])
    review_model.decide([ids[0], ids[3]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[1]], "ann", "reject", reason="GAN texture artefact", user=account("reviewer", "ann"))
    review_model.decide([ids[2]], "ann", "relabel", new_class="b", user=account("reviewer", "ann"))
    review_model.decide([ids[5]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[5]], "bob", "reject", user=account("reviewer", "bob"))  # one accept, one reject: disputed
    out = ExpertDecisionsPolicy(dataset_id).explain(cells(list(range(6)), [0, 0, 0, 1, 1, 1]),
                                                    CurationContext(NAMES, candidate_ids=ids))
    assert out.accepted.tolist() == [True, False, False, True, False, False]
    assert out.rejections == {"a": {"rejected": 1, "relabelled": 1, "disputed": 0, "undecided": 0},
                              "b": {"rejected": 0, "relabelled": 0, "disputed": 1, "undecided": 1}}
    assert set(out.rejections["a"]) == set(EXPERT_RULES) and out.stats["accepted"] == 2


def test_copies_are_judged_against_their_own_classs_real_distances():
    # Class a's real val cells lie 3 from their nearest train cell, class b's only 0.5 (b is a tight class, like
    # platelets). With 50 val cells each, each class gets its own 1st percentile instead of the pooled 0.5.
    feats = {i: [10.0 * i, 0.0] for i in range(50)}
    feats.update({50 + i: [10.0 * i, 1000.0] for i in range(50)})
    feats.update({100 + i: [10.0 * i, 3.0] for i in range(50)})
    feats.update({150 + i: [10.0 * i, 1000.5] for i in range(50)})
    feats.update({200: [0.0, 2.0], 201: [0.0, 1000.8]})  # a: 2 from a real cell; b: 0.8 from one
    probs = {200: [0.99, 0.01], 201: [0.01, 0.99]}
    ctx = CurationContext(NAMES, train=cells(list(range(100)), [0] * 50 + [1] * 50),
                          val=cells(list(range(100, 200)), [0] * 50 + [1] * 50))
    out = ReferenceClassifierPolicy(StubReference(probs, feats)).explain(cells([200, 201], [0, 1]), ctx)
    assert abs(out.copy_thresholds["a"] - 3.0) < 1e-4 and abs(out.copy_thresholds["b"] - 0.5) < 1e-4
    assert abs(out.threshold - 0.5) < 1e-4  # pooled over both classes
    # Under the pooled 0.5 neither would be a copy; against its own class, the a candidate is closer than real
    # unseen a cells ever get, and the b candidate is farther than real unseen b cells get.
    assert out.memorised.tolist() == [True, False] and out.rejections["a"]["memorised"] == 1

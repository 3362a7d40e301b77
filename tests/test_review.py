"""Review service: queue, undo, consensus rules and the curated set."""

from __future__ import annotations

import pytest

from db import datasets
from wbc_core import review
from wbc_core.review import ConsensusRule, outcome_of


@pytest.fixture()
def queue(wbc_home):
    rows = [dict(origin="real", class_name="a", split="train", sha256=f"r{i}", path=f"p{i}", width=8, height=8)
            for i in range(3)]
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, rows)
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}",
                                                path=f"q{i}", width=8, height=8) for i in range(6)])
    return dataset_id, ids


def test_queue_shows_only_pending_for_that_reviewer(queue):
    dataset_id, ids = queue
    review.decide(ids[:2], "ann", "accept")
    pending, total = review.queue_page(dataset_id, "a", "ann")
    assert total == 4 and [p["id"] for p in pending] == ids[2:]
    _, total_bob = review.queue_page(dataset_id, "a", "bob")
    assert total_bob == 6
    decided, n = review.queue_page(dataset_id, "a", "ann", state="decided")
    assert n == 2 and {d["verdict"] for d in decided} == {"accept"}


def test_queue_pages(queue):
    dataset_id, ids = queue
    first, total = review.queue_page(dataset_id, "a", "ann", page=0, page_size=4)
    second, _ = review.queue_page(dataset_id, "a", "ann", page=1, page_size=4)
    assert total == 6 and [i["id"] for i in first + second] == ids


def test_undo_makes_the_last_decisions_pending_and_keeps_history(queue):
    dataset_id, ids = queue
    review.decide([ids[0]], "ann", "accept")
    review.decide([ids[1]], "ann", "reject", reason="GAN texture artefact")
    assert review.undo_last(dataset_id, "ann") == [ids[1]]
    assert review.undo_last(dataset_id, "ann") == [ids[0]]
    _, total = review.queue_page(dataset_id, "a", "ann")
    assert total == 6
    from db.review import decision_history

    assert [h["verdict"] for h in decision_history(ids[1])] == ["reject", "undo"]
    assert decision_history(ids[1])[0]["reason"] == "GAN texture artefact"


def test_latest_decision_of_a_reviewer_wins(queue):
    dataset_id, ids = queue
    review.decide([ids[0]], "ann", "accept")
    review.decide([ids[0]], "ann", "reject")
    assert review.consensus(dataset_id)[ids[0]].status == "rejected"


@pytest.mark.parametrize(
    ("votes", "rule", "status", "final"),
    [
        ({"a": "accept"}, ConsensusRule(), "accepted", "x"),
        ({"a": "reject"}, ConsensusRule(), "rejected", None),
        ({"a": "accept"}, ConsensusRule(min_agreeing=2), "pending", None),
        ({"a": "accept", "b": "reject"}, ConsensusRule(min_agreeing=2), "disputed", None),
        ({"a": "accept", "b": "accept", "c": "reject"}, ConsensusRule(min_agreeing=2, min_votes=3), "accepted", "x"),
        ({"a": "relabel:y", "b": "relabel:y"}, ConsensusRule(min_agreeing=2), "accepted", "y"),
        ({"a": "accept", "b": "reject"}, ConsensusRule(), "disputed", None),
    ],
)
def test_consensus_rule(votes, rule, status, final):
    outcome = outcome_of(votes, "x", rule)
    assert (outcome.status, outcome.final_class) == (status, final)


def test_curated_set_applies_relabels_and_consensus(queue):
    dataset_id, ids = queue
    review.decide([ids[0]], "ann", "accept")
    review.decide([ids[1]], "ann", "relabel", new_class="b")
    review.decide([ids[2]], "ann", "reject")
    accepted = {row.id: label for row, label in review.accepted_candidates(dataset_id)}
    assert accepted == {ids[0]: "a", ids[1]: "b"}
    assert review.accepted_candidates(dataset_id, ConsensusRule(min_agreeing=2)) == []
    summary = {r["class_name"]: r for r in review.class_summary(dataset_id)}
    assert summary["a"]["accepted"] == 2 and summary["a"]["rejected"] == 1 and summary["a"]["pending"] == 3

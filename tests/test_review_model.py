"""Review service: queue (orders, filters, blind cells), undo, consensus, adjudication, quotas, thumbnails."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from support import account, draw_cell

from db import datasets, review_queue
from db import decisions as decisions_db
from wbc_core import review_model
from wbc_core.review_model import ConsensusRule, outcome_of
from wbc_core.thumbnails import thumbnail_path

pytestmark = pytest.mark.databases("sqlite", "postgresql")


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
    review_model.decide(ids[:2], "ann", "accept", user=account("reviewer", "ann"))
    pending, total = review_model.queue_page(dataset_id, "a", "ann")
    assert total == 4 and [p["id"] for p in pending] == ids[2:]
    _, total_bob = review_model.queue_page(dataset_id, "a", "bob")
    assert total_bob == 6
    decided, n = review_model.queue_page(dataset_id, "a", "ann", state="decided")
    assert n == 2 and {d["verdict"] for d in decided} == {"accept"}


def test_queue_pages(queue):
    dataset_id, ids = queue
    first, total = review_model.queue_page(dataset_id, "a", "ann", page=0, page_size=4)
    second, _ = review_model.queue_page(dataset_id, "a", "ann", page=1, page_size=4)
    assert total == 6 and [i["id"] for i in first + second] == ids


def test_undo_makes_the_last_decisions_pending_and_keeps_history(queue):
    dataset_id, ids = queue
    review_model.decide([ids[0]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[1]], "ann", "reject", reason="GAN texture artefact", user=account("reviewer", "ann"))
    assert review_model.undo_last(dataset_id, "ann", user=account("reviewer", "ann")) == [ids[1]]
    assert review_model.undo_last(dataset_id, "ann", user=account("reviewer", "ann")) == [ids[0]]
    _, total = review_model.queue_page(dataset_id, "a", "ann")
    assert total == 6
    from db.decisions import decision_history

    assert [h["verdict"] for h in decision_history(ids[1])] == ["reject", "undo"]
    assert decision_history(ids[1])[0]["reason"] == "GAN texture artefact"


def test_latest_decision_of_a_reviewer_wins(queue):
    dataset_id, ids = queue
    review_model.decide([ids[0]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[0]], "ann", "reject", user=account("reviewer", "ann"))
    assert review_model.consensus(dataset_id)[ids[0]].status == "rejected"


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
    review_model.decide([ids[0]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[1]], "ann", "relabel", new_class="b", user=account("reviewer", "ann"))
    review_model.decide([ids[2]], "ann", "reject", user=account("reviewer", "ann"))
    accepted = {row.id: label for row, label in review_model.accepted_candidates(dataset_id)}
    assert accepted == {ids[0]: "a", ids[1]: "b"}
    assert review_model.accepted_candidates(dataset_id, ConsensusRule(min_agreeing=2)) == []
    summary = {r["class_name"]: r for r in review_model.class_summary(dataset_id)}
    assert summary["a"]["accepted"] == 2 and summary["a"]["rejected"] == 1 and summary["a"]["pending"] == 3


# -- adjudication, settings and quotas ---------------------------------------------------------------------------

@pytest.fixture()
def admin(wbc_home, monkeypatch):
    from wbc_core import auth

    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", 1_000)
    return auth.create_user("eve", "password1", "admin", user=account())


def test_adjudication_overrides_consensus_and_latest_wins(queue, admin):
    dataset_id, ids = queue
    review_model.decide([ids[0]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[0]], "bob", "reject", reason="GAN texture artefact", user=account("reviewer", "bob"))
    assert review_model.consensus(dataset_id)[ids[0]].status == "disputed"
    disputed = review_model.disputed_candidates(dataset_id)
    assert [(d["image_id"], d["votes"], d["reasons"]) for d in disputed] == [
        (ids[0], {"ann": "accept", "bob": "reject"}, {"bob": "GAN texture artefact"})]
    review_model.adjudicate([ids[0]], admin, "reject")
    review_model.adjudicate([ids[0]], admin, "relabel", new_class="b")
    outcome = review_model.consensus(dataset_id)[ids[0]]
    assert (outcome.status, outcome.final_class, outcome.adjudicated) == ("accepted", "b", True)
    assert outcome.votes == {"ann": "accept", "bob": "reject"}  # the reviewers' votes are kept, not replaced
    assert review_model.disputed_candidates(dataset_id) == []
    assert {row.id: label for row, label in review_model.accepted_candidates(dataset_id)} == {ids[0]: "b"}
    # The admin's ruling is not their vote: their own review queue still shows the cell as pending.
    assert ids[0] in [p["id"] for p in review_model.queue_page(dataset_id, "a", "eve")[0]]
    review_model.adjudicate([ids[0]], admin, "undo")  # withdrawn: back to the reviewers' dispute
    assert review_model.consensus(dataset_id)[ids[0]].status == "disputed"
    with pytest.raises(ValueError, match="unknown class"):
        review_model.adjudicate([ids[1]], admin, "relabel", new_class="zebra")


def test_review_settings_are_the_default_rule_and_quotas_count_final_classes(queue, admin):
    dataset_id, ids = queue
    assert review_model.get_review_settings(dataset_id) == review_model.ReviewSettings()
    review_model.decide(ids[:3], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[3]], "ann", "relabel", new_class="b", user=account("reviewer", "ann"))
    review_model.decide(ids[:2], "bob", "accept", user=account("reviewer", "bob"))
    settings = review_model.ReviewSettings(ConsensusRule(min_agreeing=2), {"a": 2, "b": 1})
    review_model.set_review_settings(dataset_id, settings, admin)
    expected = review_model.ReviewSettings(ConsensusRule(2, 2), {"a": 2, "b": 1})
    assert review_model.get_review_settings(dataset_id) == expected
    assert {row.id for row, _ in review_model.accepted_candidates(dataset_id)} == set(ids[:2])
    assert len(review_model.accepted_candidates(dataset_id, ConsensusRule())) == 4  # an explicit rule still wins
    summary = {r["class_name"]: r for r in review_model.class_summary(dataset_id)}
    assert (summary["a"]["accepted"], summary["a"]["pending"], summary["a"]["quota"], summary["a"]["quota_met"]) == (
        2, 4, 2, True)
    assert (summary["b"]["candidates"], summary["b"]["accepted_final"], summary["b"]["quota_met"]) == (0, 0, False)
    review_model.set_review_settings(dataset_id, review_model.ReviewSettings(ConsensusRule(), {"b": 1}), account())
    summary = {r["class_name"]: r for r in review_model.class_summary(dataset_id)}
    assert summary["b"]["accepted_final"] == 1 and summary["b"]["quota_met"] is True  # the relabel counts for b
    assert summary["a"]["quota"] is None and summary["a"]["quota_met"] is None
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        review_model.set_review_settings(dataset_id, review_model.ReviewSettings(quotas={"zebra": 3}), admin)


def test_reject_reasons_are_numbered_for_the_keyboard():
    assert len(review_model.REJECT_REASONS) == 6
    assert review_model.reject_reason(4) == review_model.reject_reason("4") == "GAN texture artefact"
    assert review_model.reject_reason("GAN texture artefact") == "GAN texture artefact"
    for bad in (0, 7, "nonsense"):
        with pytest.raises(ValueError):
            review_model.reject_reason(bad)


# -- queue ordering and filters ---------------------------------------------------------------------------------

@pytest.fixture()
def scored(wbc_home):
    from db import runs

    rows = [dict(origin="real", class_name=c, split=split, sha256=f"r{c}{split}{i}", path=f"p{c}{split}{i}",
                 width=8, height=8) for c in ("a", "b") for split in ("train", "val") for i in range(10)]
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, rows)
    run1 = runs.create_run("gan", dataset_id, {}, seed=0)
    run2 = runs.create_run("gan", dataset_id, {}, seed=1)
    probs = [0.2, None, 0.9, 0.5, 0.7, 0.1, None, 0.3, 0.8, 0.4]
    ids = datasets.add_images(dataset_id, [
        dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}", path=f"q{i}", width=8, height=8,
             gan_run_id=run1 if i < 6 else run2, checkpoint_step=100 * (i % 2), judge_prob=p,
             nearest_real_distance=float(10 - i)) for i, p in enumerate(probs)])
    return dataset_id, ids, (run1, run2), probs


def test_queue_orders_by_judge_prob_and_distance_with_unscored_last(scored):
    dataset_id, ids, _, probs = scored
    rows, total = review_model.queue_page(dataset_id, "a", "ann", order="judge_prob_desc")
    assert total == 10 and [r["judge_prob"] for r in rows] == [0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, None, None]
    rows, _ = review_model.queue_page(dataset_id, "a", "ann", order="judge_prob_asc")
    assert [r["judge_prob"] for r in rows][:3] == [0.1, 0.2, 0.3] and rows[-1]["judge_prob"] is None
    rows, _ = review_model.queue_page(dataset_id, "a", "ann", order="nearest_real_asc")
    assert [r["id"] for r in rows] == ids[::-1]
    assert set(rows[0]) == {"id", "path", "sha256", "class_name", "gan_run_id", "checkpoint_step", "judge_prob",
                            "nearest_real_distance", "verdict", "new_class", "reason"}
    with pytest.raises(ValueError, match="unknown order"):
        review_model.queue_page(dataset_id, "a", "ann", order="random")


def test_queue_filters_by_gan_run_and_checkpoint_step(scored):
    dataset_id, ids, (run1, run2), _ = scored
    assert [r["id"] for r in review_model.queue_page(dataset_id, "a", "ann", gan_run_id=run2)[0]] == ids[6:]
    rows, total = review_model.queue_page(dataset_id, "a", "ann", gan_run_id=run1, checkpoint_step=100)
    assert total == 3 and [r["id"] for r in rows] == [ids[1], ids[3], ids[5]]
    review_model.decide([ids[1]], "ann", "accept", user=account("reviewer", "ann"))
    assert review_model.queue_page(dataset_id, "a", "ann", gan_run_id=run1, checkpoint_step=100)[1] == 2


# -- blinded realism test -----------------------------------------------------------------------------------------

def test_blind_cells_are_interleaved_only_in_that_reviewers_queue(scored):
    dataset_id, ids, _, _ = scored
    val_a = {r.id for r in datasets.real_images(dataset_id, split="val", class_name="a")}
    added = review_model.enable_blind_test(dataset_id, "ann", fraction=0.3, seed=1, user=account())
    assert added == {"a": 4}  # 0.3 of the resulting queue: round(0.3 * 10 / 0.7) real cells
    blind = {b["image_id"] for b in decisions_db.blind_items(dataset_id, "ann")}
    assert len(blind) == 4 and blind <= val_a
    rows, total = review_model.queue_page(dataset_id, "a", "ann", page_size=100)
    assert total == 14 and {r["id"] for r in rows} == set(ids) | blind
    positions = [k for k, r in enumerate(rows) if r["id"] in blind]
    assert positions != list(range(4)) and positions != list(range(10, 14))  # mixed in, not first or last
    assert all(set(r) == set(rows[0]) for r in rows)
    # Blind mode hides provenance on every row, so a real cell does not stand out by its empty GAN run.
    assert all(r[k] is None for r in rows for k in review_queue.PROVENANCE_KEYS)
    assert all(review_model.is_blind_item(i, "ann") for i in blind) and not review_model.is_blind_item(ids[0], "ann")
    ordered, _ = review_model.queue_page(dataset_id, "a", "ann", order="judge_prob_desc", page_size=100)
    assert {k for k, r in enumerate(ordered) if r["id"] in blind} != set(range(10, 14))
    assert review_model.queue_page(dataset_id, "a", "ann", order="judge_prob_desc", page_size=100)[0] == ordered
    # Another reviewer's queue has no real cells and keeps its provenance.
    other, n = review_model.queue_page(dataset_id, "a", "bob", page_size=100)
    assert n == 10 and not {r["id"] for r in other} & blind and other[0]["gan_run_id"] is not None
    # already topped up
    assert review_model.enable_blind_test(dataset_id, "ann", fraction=0.3, seed=1, user=account()) == {"a": 0}


def test_blind_decisions_never_reach_consensus_or_the_curated_set(scored):
    dataset_id, ids, _, _ = scored
    review_model.enable_blind_test(dataset_id, "ann", fraction=0.3, seed=1, user=account())
    blind = [b["image_id"] for b in decisions_db.blind_items(dataset_id, "ann")]
    rows, _ = review_model.queue_page(dataset_id, "a", "ann", page_size=100)
    # "accept page" over candidates and hidden cells
    review_model.decide([r["id"] for r in rows], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([blind[0]], "ann", "reject", reason="GAN texture artefact", user=account("reviewer", "ann"))
    assert review_model.queue_page(dataset_id, "a", "ann")[1] == 0
    with pytest.raises(ValueError, match="real cells"):
        review_model.decide([blind[0]], "bob", "accept", user=account("reviewer", "bob"))  # not bob's blind item
    outcomes = review_model.consensus(dataset_id)
    assert set(outcomes) == set(ids) and not set(outcomes) & set(blind)
    assert {row.id for row, _ in review_model.accepted_candidates(dataset_id)} == set(ids)
    assert not {d["image_id"] for d in decisions_db.current_decisions(dataset_id)} & set(blind)
    from wbc_core.retrain import build_training_set

    rows, _ = build_training_set(dataset_id, "curated")
    assert {r.id for r in rows if r.origin == "synthetic"} == set(ids) and not {r.id for r in rows} & set(blind)
    assert sum(r["accepted"] for r in review_model.class_summary(dataset_id)) == 10
    progress = review_model.reviewer_progress(dataset_id)
    assert progress == [{"reviewer": "ann", "class_name": "a", "queue": 14, "decided": 14, "accepted": 13,
                         "rejected": 1, "relabelled": 0, "pending": 0}]
    # undo covers the hidden cells too
    assert review_model.undo_last(dataset_id, "ann", user=account("reviewer", "ann")) == [blind[0]]


def test_decision_rate_counts_cells_per_minute(queue):
    dataset_id, ids = queue
    assert review_model.decision_rate("ann") == 0.0
    review_model.decide(ids[:4], "ann", "accept", user=account("reviewer", "ann"))
    review_model.undo_last(dataset_id, "ann", user=account("reviewer", "ann"))
    # 4 cells within the last 10 s floor -> 4 / (10/60) = 24 per minute; the undo is not a cell decided.
    assert review_model.decision_rate("ann", window_minutes=5) == pytest.approx(24.0, rel=0.05)


@pytest.mark.databases("sqlite")  # files only: nothing here touches the database
def test_thumbnails_are_made_once_and_reused(wbc_home):
    src = wbc_home / "images" / "cell.jpg"
    src.parent.mkdir(parents=True, exist_ok=True)
    draw_cell(np.random.default_rng(0), 128, (120, 60, 160)).save(src)
    thumb = thumbnail_path("images/cell.jpg", size=48)
    assert thumb.is_relative_to(wbc_home / "cache" / "thumbs") and thumb.suffix == ".png"
    with Image.open(thumb) as im:
        assert im.size == (48, 48) and im.format == "PNG"
    os.utime(thumb, (1_000_000, 1_000_000))
    again = thumbnail_path({"path": "images/cell.jpg"}, size=48)
    assert again == thumb and thumb.stat().st_mtime == 1_000_000  # reused, not rewritten
    assert thumbnail_path(src, size=96) != thumb
    assert len(list((wbc_home / "cache" / "thumbs").rglob("*.png"))) == 2
    with pytest.raises(FileNotFoundError):
        thumbnail_path("images/missing.png")

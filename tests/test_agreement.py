"""Agreement statistics against textbook examples, the per-dataset report, and the blinded realism report."""

from __future__ import annotations

from collections import Counter

import pytest
from support import account

from db import datasets
from db import decisions as decisions_db
from wbc_core import review_model
from wbc_core.agreement import agreement_report, cohen_kappa, fleiss_kappa, realism_report

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters each, 5 categories -> kappa 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_cohen_kappa_wikipedia_example():
    # Wikipedia, "Cohen's kappa": 50 proposals; both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> 0.4.
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([]) is None
    assert cohen_kappa([("accept", "accept")] * 5) is None  # p_e = 1: undefined, not "perfect"
    assert cohen_kappa([("accept", "reject"), ("reject", "accept")]) == pytest.approx(-1.0)
    assert cohen_kappa([("accept", "accept"), ("reject", "reject")]) == pytest.approx(1.0)


def test_fleiss_kappa_wikipedia_example():
    items = [{f"c{j}": n for j, n in enumerate(row) if n} for row in FLEISS_TABLE]
    assert fleiss_kappa(items) == pytest.approx(0.20993, abs=5e-5)
    assert round(fleiss_kappa(items), 3) == 0.210


def test_fleiss_kappa_with_variable_rater_counts():
    # Hand computed: P_i = 1, 0, 1/3 -> P_bar = 4/9; p_a = 5/7, p_b = 2/7 -> P_e = 29/49; kappa = -13/36.
    items = [{"a": 2}, {"a": 1, "b": 1}, {"a": 2, "b": 1}, {"b": 1}]  # the last item has one rater: skipped
    assert fleiss_kappa(items) == pytest.approx(-13 / 36)
    assert fleiss_kappa([{"a": 1}, {"b": 1}]) is None
    assert fleiss_kappa([{"a": 3}, {"a": 2}]) is None


@pytest.fixture()
def voted(wbc_home):
    rows = [dict(origin="real", class_name=c, split="val", sha256=f"r{c}{i}", path=f"p{c}{i}", width=8, height=8)
            for c in ("a", "b") for i in range(10)]
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, rows)
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a" if i < 6 else "b", split=None,
                                                sha256=f"s{i}", path=f"q{i}", width=8, height=8) for i in range(8)])
    return dataset_id, ids


def test_agreement_report_from_current_votes(voted):
    dataset_id, ids = voted
    ann = ["accept", "accept", "reject", "reject", "accept", "relabel:b"]
    bob = ["accept", "reject", "reject", "reject", "accept", "relabel:b"]
    for name, votes in (("ann", ann), ("bob", bob)):
        for image_id, vote in zip(ids, votes, strict=False):
            verdict, _, new_class = vote.partition(":")
            review_model.decide([image_id], name, verdict, new_class=new_class or None, user=account("reviewer", name))
    # class b: one rater per item, no Fleiss kappa there
    review_model.decide(ids[6:], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([ids[1]], "cem", "reject", user=account("reviewer", "cem"))
    review_model.decide([ids[1]], "cem", "undo", user=account("reviewer", "cem"))  # withdrawn votes do not count
    report = agreement_report(dataset_id)
    pair = report["pairs"][0]
    assert (pair["reviewer_a"], pair["reviewer_b"], pair["n"]) == ("ann", "bob", 6)
    assert pair["percent_agreement"] == pytest.approx(5 / 6)
    assert pair["kappa"] == pytest.approx(cohen_kappa(list(zip(ann, bob, strict=True))))
    assert [c["class_name"] for c in report["classes"]] == ["a"]
    expected = fleiss_kappa([Counter([x, y]) for x, y in zip(ann, bob, strict=True)])
    assert report["classes"][0]["kappa"] == pytest.approx(expected) and report["classes"][0]["items"] == 6
    assert report["overall"]["kappa"] == pytest.approx(expected)


def test_realism_report_scores_blind_cells(voted):
    dataset_id, ids = voted
    # 2 real cells for a, 1 for b
    review_model.enable_blind_test(dataset_id, "ann", fraction=0.25, seed=0, user=account())
    blind = decisions_db.blind_items(dataset_id, "ann")
    assert Counter(b["class_name"] for b in blind) == {"a": 2, "b": 1}
    real_a = [b["image_id"] for b in blind if b["class_name"] == "a"]
    # a real cell called fake
    review_model.decide(real_a[:1], "ann", "reject", reason="GAN texture artefact", user=account("reviewer", "ann"))
    review_model.decide(real_a[1:], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide(ids[:4], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide(ids[4:6], "ann", "reject", user=account("reviewer", "ann"))
    # bob is not in blind mode: not part of the realism numbers
    review_model.decide(ids[:6], "bob", "reject", user=account("reviewer", "bob"))
    report = realism_report(dataset_id)
    assert report["reviewers"] == [{"reviewer": "ann", "real_shown": 3, "real_decided": 2, "real_rejected": 1,
                                    "rejected_as_fake_rate": 0.5}]
    by_class = {c["class_name"]: c for c in report["classes"]}
    assert by_class["a"]["candidate_pass_rate"] == pytest.approx(4 / 6)
    assert by_class["a"]["real_accept_rate"] == pytest.approx(0.5) and by_class["a"]["real_decided"] == 2
    # The real cells' verdicts stay out of agreement and consensus.
    assert agreement_report(dataset_id)["pairs"][0]["n"] == 6
    assert not set(review_model.consensus(dataset_id)) & {b["image_id"] for b in blind}

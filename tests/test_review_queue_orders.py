"""Every state x order of the review queue pages through exactly the queue sorted in Python, on SQLite and
PostgreSQL: keys descending or ascending, unscored candidates last by id, ties by id. Each state and order has its
own query shape (db.review_queue: index walks, the decided state's sort of the reviewer's own decisions, the
acceptance scores' walks, blind cells limited to the page), so each is checked against the same plain definition.
"""

from __future__ import annotations

import random

import pytest
from support import account

from db import acceptance as acc_db
from db import datasets
from wbc_core import review_model

pytestmark = pytest.mark.databases("sqlite", "postgresql")
N = 24


@pytest.fixture()
def queue(wbc_home):
    """Class "a": N candidates with judge_prob / nearest_real_distance (some missing) and acceptance scores (some
    missing, one tie); bob has decided 10 of them (one undone again), ann 4 others. Returns (dataset id, rows)."""
    rng = random.Random(3)
    real = [dict(origin="real", class_name=c, split="val", sha256=f"r{c}{i}", path=f"r{c}{i}", width=8, height=8)
            for c in "ab" for i in range(6)]
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, real)
    rows = [dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}", path=f"s{i}", width=8, height=8,
                 judge_prob=None if i % 5 == 0 else round(rng.random(), 3),
                 nearest_real_distance=None if i % 7 == 0 else round(rng.random() * 9, 3)) for i in range(N)]
    rows += [dict(origin="synthetic", class_name="b", split=None, sha256=f"t{i}", path=f"t{i}", width=8, height=8)
             for i in range(6)]  # another class: never in class a's queue
    ids = datasets.add_images(dataset_id, rows)
    by_id = {i: row for i, row in zip(ids, rows, strict=True) if row["class_name"] == "a"}
    model = acc_db.add_model(dataset_id, trained_on=1, cv_auc=None, calibration={}, summary={}, path="x")
    scores = {i: round(rng.random(), 3) for i in list(by_id)[:-4]}
    scores[list(by_id)[1]] = scores[list(by_id)[2]] = 0.5  # a tie, broken by id
    acc_db.set_scores(model["id"], scores)
    for i, row in by_id.items():
        row["p_accept"] = scores.get(i)
    a_ids = list(by_id)
    bob, ann = account("reviewer", "bob"), account("reviewer", "ann")
    review_model.decide(a_ids[0:6], "bob", "accept", user=bob)
    review_model.decide(a_ids[6:10], "bob", "reject", user=bob)
    review_model.decide([a_ids[3]], "bob", "undo", user=bob)  # pending for bob again
    review_model.decide(a_ids[12:16], "ann", "accept", user=ann)
    return dataset_id, by_id


def expected(by_id: dict[int, dict], order: str, members: set[int]) -> list[int]:
    def key(i: int):  # noqa: ANN202
        row = by_id[i]
        if order == "id":
            return (0, i, i)
        if order.startswith("p_accept_"):
            value = row["p_accept"]
            value = None if value is None else (-value if order.endswith("desc") else abs(value - 0.5))
        else:
            value = row["judge_prob" if order.startswith("judge") else "nearest_real_distance"]
            value = None if value is None else (-value if order.endswith("desc") else value)
        return (value is None, 0.0 if value is None else value, i)

    return sorted(members, key=key)


@pytest.mark.parametrize("state", review_model.QUEUE_STATES)
def test_every_order_pages_through_exactly_the_sorted_queue(queue, state):
    dataset_id, by_id = queue
    ids = list(by_id)
    decided = set(ids[0:10]) - {ids[3]}
    members = {"pending": set(ids) - decided, "decided": decided, "all": set(ids)}[state]
    for order in review_model.QUEUE_ORDERS:
        shown, totals = [], set()
        for page in range(N // 3 + 1):
            rows, total = review_model.queue_page(dataset_id, "a", "bob", state, order=order, page=page,
                                                  page_size=3)
            shown += [r["id"] for r in rows]
            totals.add(total)
        assert shown == expected(by_id, order, members), (state, order)
        assert totals == {len(members)}, (state, order)


def test_a_blind_reviewers_pages_are_slices_of_the_whole_queue_in_every_order(queue):
    dataset_id, by_id = queue
    review_model.enable_blind_test(dataset_id, "cem", fraction=0.5, seed=0, user=account())
    for order in review_model.QUEUE_ORDERS:
        whole, total = review_model.queue_page(dataset_id, "a", "cem", order=order, page_size=100)
        assert total == len(whole) > len(by_id), order  # blind real cells are mixed in
        paged = []
        for page in range(total // 4 + 1):
            paged += review_model.queue_page(dataset_id, "a", "cem", order=order, page=page, page_size=4)[0]
        assert [r["id"] for r in paged] == [r["id"] for r in whole], order

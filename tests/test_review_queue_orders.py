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


def test_a_blind_queue_by_an_acceptance_model_without_scores_mixes_its_real_cells_among_the_unscored(queue):
    """With no scores the blind real cells' keys are NULL like every candidate's, so they sort among them by id: a
    page full of real cells alone must not be taken as "the scored walks filled it" (db.review_queue counts the
    walks first for a blind queue). Pages of 4 must be slices of the whole queue."""
    dataset_id, by_id = queue
    acc_db.add_model(dataset_id, trained_on=2, cv_auc=None, calibration={}, summary={}, path="y")  # newest, no scores
    review_model.enable_blind_test(dataset_id, "cem", fraction=0.5, seed=0, user=account())
    for order in ("p_accept_desc", "p_accept_uncertain"):
        whole, total = review_model.queue_page(dataset_id, "a", "cem", order=order, page_size=100)
        assert total == len(whole) > len(by_id) and any(r["id"] in by_id for r in whole[:4]), order
        paged = []
        for page in range(total // 4 + 1):
            paged += review_model.queue_page(dataset_id, "a", "cem", order=order, page=page, page_size=4)[0]
        assert [r["id"] for r in paged] == [r["id"] for r in whole], order


@pytest.mark.parametrize("walk", [8, 64])
def test_decided_pages_by_a_key_are_exact_whether_the_bounded_walk_fills_them_or_the_sort_takes_over(queue, walk,
                                                                                                    monkeypatch):
    """The decided state by a judge or distance key first walks at most `walk` index entries of the class, bounded
    by the walk-th entry's key (db.review_queue._decided_walk), and sorts the reviewer's decisions when that does
    not fill the page: at 8 entries, one-row pages come from the bounded walk or from the sort, at 64 from an
    unbounded walk of the whole (small) class. Every page must be what the plain sort says."""
    from db import review_queue

    monkeypatch.setattr(review_queue, "DECIDED_WALK", walk)
    dataset_id, by_id = queue
    ids = list(by_id)
    decided = set(ids[0:10]) - {ids[3]}
    walked = []
    real_walk = review_queue._decided_walk
    monkeypatch.setattr(review_queue, "_decided_walk", lambda *a: walked.append(w := real_walk(*a)) or w)
    for order in [o for o in review_model.QUEUE_ORDERS if o != "id" and not o.startswith("p_accept_")]:
        for size in (1, 3):
            shown = []
            for page in range(len(decided) // size + 1):
                shown += [r["id"] for r in review_model.queue_page(dataset_id, "a", "bob", "decided", order=order,
                                                                   page=page, page_size=size)[0]]
            assert shown == expected(by_id, order, decided), (order, size, walk)
    assert any(w is not None for w in walked) and any(w is None for w in walked)  # both paths ran


def test_decided_pages_are_exact_when_sql_finds_the_decided_candidates_itself(queue, monkeypatch):
    """Past DECIDED_IDS_MAX decided candidates (and for a run, step or selection filter) the tally's ids are not
    handed over: SQL finds the reviewer's decided candidates and sorts them. Its pages must match as well."""
    from db import review_queue

    monkeypatch.setattr(review_queue, "DECIDED_IDS_MAX", 0)
    monkeypatch.setattr(review_queue, "DECIDED_WALK", 0)  # no walk either: only the SQL sort is left
    dataset_id, by_id = queue
    ids = list(by_id)
    decided = set(ids[0:10]) - {ids[3]}
    for order in review_model.QUEUE_ORDERS:
        shown = []
        for page in range(len(decided) // 4 + 1):
            shown += [r["id"] for r in review_model.queue_page(dataset_id, "a", "bob", "decided", order=order,
                                                               page=page, page_size=4)[0]]
        assert shown == expected(by_id, order, decided), order


@pytest.mark.parametrize("stale", [False, True])
@pytest.mark.parametrize("spare", [0, 1])
def test_decided_pages_by_acceptance_from_the_score_walks_are_exact(queue, spare, stale, monkeypatch):
    """By acceptance, the decided page first walks the score index kept to the tally's ids (db.review_queue.
    _top_scored) and falls back to reading every id's score when the walks cannot say. With no spare rows the
    walks decide most pages here (with the default spare this small class always falls back). A stale tally
    (ids whose decision no longer stands, as after a late-committed undo) must change nothing: each id is
    checked to stand, and a walk's rows past another walk's last row are not trusted."""
    from db import review_queue

    monkeypatch.setattr(review_model, "ScoreMemo", lambda: None)  # no remembered scores: the walks' path
    monkeypatch.setattr(review_queue, "TOP_SCORED_SPARE", spare)
    answers = decided_pages_by_acceptance_are_exact(queue, "_top_scored", stale, monkeypatch)
    assert any(a is not None for a in answers) and any(a is None for a in answers)


def decided_pages_by_acceptance_are_exact(queue, path: str, stale: bool, monkeypatch) -> list:  # noqa: ANN001
    """Page bob's decided queue by acceptance in every page size and check it against the plain sort; returns what
    db.review_queue's `path` (a function returning the page's ids or None) answered on each call. stale: the tally
    also names candidates pending for bob (as after a late-committed undo), which must never show."""
    from db import review_queue
    from wbc_core.decision_tally import DecisionTally

    dataset_id, by_id = queue
    ids = list(by_id)
    if stale:
        real_standing = DecisionTally.standing_candidates
        monkeypatch.setattr(DecisionTally, "standing_candidates", lambda self, r, c: sorted(
            {*real_standing(self, r, c), *ids[10:20]}))
    answers = []
    real = getattr(review_queue, path)
    monkeypatch.setattr(review_queue, path, lambda *a: answers.append(top := real(*a)) or top)
    decided = set(ids[0:10]) - {ids[3]}
    for order in ("p_accept_desc", "p_accept_uncertain"):
        for size in (1, 2, 4):
            shown = []
            for page in range(len(decided) // size + 1):
                shown += [r["id"] for r in review_model.queue_page(dataset_id, "a", "bob", "decided", order=order,
                                                                   page=page, page_size=size)[0]]
            assert shown == expected(by_id, order, decided), (order, size)
    return answers


@pytest.mark.parametrize("stale", [False, True])
def test_decided_pages_by_acceptance_from_remembered_scores_are_exact(queue, stale, monkeypatch):
    """The Review page's path: the process remembers the model's scores of the decided candidates (db.acceptance.
    ScoreMemo) and sorts them itself. Pages must equal the plain sort, with a stale tally too, and every page must
    come from the memo (the walks and the full read are the fallbacks)."""
    from db import review_queue

    monkeypatch.setattr(review_queue, "TOP_SCORED_SPARE", 0)
    answers = decided_pages_by_acceptance_are_exact(queue, "_top_remembered", stale, monkeypatch)
    assert answers and (stale or all(a is not None for a in answers))


def test_remembered_scores_take_in_a_score_written_after_they_were_read(queue):
    """A decided candidate the model had not scored is remembered as unscored; once set_scores scores it, the
    model's score_writes moves and the next page reads it again, so it moves to its place in the order."""
    dataset_id, by_id = queue
    ids = list(by_id)
    review_model.decide([ids[-1]], "bob", "accept", user=account("reviewer", "bob"))  # one the model did not score
    decided = set(ids[0:10]) - {ids[3]} | {ids[-1]}
    unscored = [ids[-1]]
    assert by_id[ids[-1]]["p_accept"] is None

    def page():  # noqa: ANN202
        return [r["id"] for r in review_model.queue_page(dataset_id, "a", "bob", "decided", order="p_accept_desc",
                                                         page_size=len(decided))[0]]

    assert page()[-len(unscored):] == unscored  # unscored last
    model = acc_db.latest_model(dataset_id)
    acc_db.set_scores(model["id"], {unscored[0]: 0.999})
    by_id[unscored[0]]["p_accept"] = 0.999
    assert page() == expected(by_id, "p_accept_desc", decided) and page()[0] == unscored[0]


def test_a_score_memo_reads_only_what_it_does_not_know(queue, monkeypatch):
    """ScoreMemo: a second look reads nothing; after a score write only the ids remembered as unscored are read again;
    a newer model, or a memo past its size limit, starts again."""
    from db.engine import read_session

    dataset_id, by_id = queue
    ids = list(by_id)
    model = acc_db.latest_model(dataset_id)
    reads: list[list[int]] = []
    real_read = acc_db._scores_of
    monkeypatch.setattr(acc_db, "_scores_of", lambda s, m, wanted: reads.append(wanted) or real_read(s, m, wanted))
    memo = acc_db.ScoreMemo()
    with read_session() as s:
        first = memo.scores(s, model["id"], 1, ids)
        assert first == {i: by_id[i]["p_accept"] for i in ids} and reads == [sorted(ids)]
        # db.acceptance.scores by ids goes through the same read, and leaves the unscored ones out
        assert acc_db.scores(model["id"], ids[::-1]) == {i: p for i, p in first.items() if p is not None}
        reads.pop()
        assert memo.scores(s, model["id"], 1, ids) == first and len(reads) == 1  # all known
        unscored = sorted(i for i in ids if by_id[i]["p_accept"] is None)
        memo.scores(s, model["id"], 2, ids)  # a write since: only the unscored ones may have changed
        assert reads[-1] == unscored
        newer = acc_db.add_model(dataset_id, trained_on=2, cv_auc=None, calibration={}, summary={}, path="y")
        assert set(memo.scores(s, newer["id"], 0, ids).values()) == {None} and reads[-1] == sorted(ids)
        monkeypatch.setattr(acc_db, "SCORE_MEMO_MAX", 3)
        memo.scores(s, newer["id"], 0, ids[:2])
        assert reads[-1] == sorted(ids[:2])  # more than the limit remembered: forgotten, read again


def test_a_score_walk_past_the_other_walks_last_row_is_not_trusted(wbc_home, monkeypatch):
    """Most uncertain: two walks out from 0.5. When the upper walk's rows are all stale ids (no standing
    decision), the lower walk's rows cannot be taken as the page: an unread upper row (0.60, key 0.10, lower id)
    ties with the lower walk's second row (0.40) and comes first. The walks must then give up to the full read."""
    from db import review_queue

    monkeypatch.setattr(review_queue, "TOP_SCORED_SPARE", 0)
    dataset_id = datasets.create_dataset("d", "real", "src", ["a"], {}, "h", {}, [
        dict(origin="real", class_name="a", split="val", sha256="r", path="r", width=8, height=8)])
    p_values = [0.60, 0.50, 0.51, 0.45, 0.40, 0.30]  # by id; 0.50 and 0.51 are the stale ones
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}",
                                                path=f"s{i}", width=8, height=8) for i in range(len(p_values))])
    model = acc_db.add_model(dataset_id, trained_on=1, cv_auc=None, calibration={}, summary={}, path="x")
    acc_db.set_scores(model["id"], dict(zip(ids, p_values, strict=True)))
    standing = [ids[0], ids[3], ids[4], ids[5]]
    review_model.decide(standing, "bob", "accept", user=account("reviewer", "bob"))
    rows, _ = review_queue.review_queue(dataset_id, "a", "bob", "decided", order="p_accept_uncertain", limit=2,
                                        decided_ids=ids)  # the stale tally: every id
    assert [r["id"] for r in rows] == [ids[3], ids[0]]


def test_a_reviewer_without_decisions_gets_an_empty_decided_queue_in_every_order(queue):
    """The tally hands over no ids: every decided order, by the walk, the ids or the score walks, shows nothing."""
    dataset_id, _ = queue
    for order in review_model.QUEUE_ORDERS:
        assert review_model.queue_page(dataset_id, "a", "cem", "decided", order=order) == ([], 0), order

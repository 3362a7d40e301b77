"""SQLite's plans for the queries a key press runs: index walks that stay small at 1M candidates.

The app leaves SQLite without statistics (no ANALYZE), so its planner's choice does not depend on table size: the
plan seen on a tiny dataset is the plan at 1M. bench/review_db.py measured what the wrong ones cost there: reading
the few rows above an id by walking every index entry of the dataset took 70-250 ms a call, and ordering a class
by its acceptance scores through per-row lookups 600 ms. These tests read EXPLAIN QUERY PLAN for the statements
each call actually executes.
"""

from __future__ import annotations

import re
import threading

import pytest
from sqlalchemy import event
from support import account

from db import acceptance as acc_db
from db import datasets
from db import decisions as decisions_db
from db.engine import get_engine
from wbc_core import review_model

pytestmark = pytest.mark.databases("sqlite")


def plans_of(call) -> list[str]:  # noqa: ANN001
    """EXPLAIN QUERY PLAN of every SELECT that call() executes, one string per statement.

    Only this thread's: a decision's retrain check runs on the process's check thread meanwhile.
    """
    engine = get_engine()
    seen: list[tuple[str, object]] = []
    caller = threading.get_ident()

    def keep(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
        if threading.get_ident() != caller:
            return
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and not executemany:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    raw = engine.raw_connection()
    try:
        return [" | ".join(row[-1] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall())
                for sql, params in seen]
    finally:
        raw.close()


@pytest.fixture()
def dataset(wbc_home):
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, [
        dict(origin="real", class_name="a", split="val", sha256="r0", path="r0", width=8, height=8)])
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="ab"[i % 2], split=None,
                                                sha256=f"s{i}", path=f"s{i}", width=8, height=8) for i in range(8)])
    review_model.decide(ids[:3], "ann", "accept", user=account("reviewer", "ann"))
    review_model.wait_for_retrain_checks()
    return dataset_id, ids


def test_rows_above_an_id_are_read_by_primary_key_not_by_walking_the_dataset(dataset):
    dataset_id, ids = dataset
    for call in (lambda: decisions_db.candidates_after(dataset_id, ids[2]),
                 lambda: decisions_db.decision_rows_after(dataset_id, 1),
                 lambda: acc_db.decisions_since(dataset_id, after_id=1, limit=50),
                 lambda: acc_db.decision_counts(dataset_id, after_id=1, limit=50)):
        (plan,) = plans_of(call)
        assert "INTEGER PRIMARY KEY (rowid>?)" in plan, plan
        assert "USING COVERING INDEX ix_images" not in plan and "USING INDEX ix_images" not in plan, plan


def test_acceptance_orders_walk_the_score_index(dataset):
    dataset_id, ids = dataset
    model = acc_db.add_model(dataset_id, trained_on=3, cv_auc=None, calibration={}, summary={}, path="x")
    acc_db.set_scores(model["id"], {i: i / 10 for i in ids})
    for order in ("p_accept_desc", "p_accept_uncertain"):
        plans = plans_of(lambda o=order: review_model.queue_page(dataset_id, "a", "bob", order=o, page_size=2))
        page = plans[-1]  # the page itself
        # The walks run once: every candidate is scored, so the full page needs no count of them first.
        assert sum("ix_acceptance_scores" in plan for plan in plans) == 1, plans
        found = re.search(r"SEARCH acceptance_scores USING (COVERING )?INDEX ix_acceptance_scores_(asc|desc)", page)
        assert found and page.find("SEARCH images USING INTEGER PRIMARY KEY (rowid=?)") > found.start(), page
        assert "RIGHT PART OF ORDER BY" not in page, page  # the index gives the walk's whole order, ties too
        assert "ix_images" not in page.split("SCALAR SUBQUERY")[0], page  # no walk of the class's own index



def test_the_decided_state_sorts_the_reviewers_decided_candidates_instead_of_walking_the_class_in_key_order(dataset):
    """Through queue_page the decided candidates come from the process's tally: their keys are read by primary key
    and sorted, the page rows read by id; without the tally (db.review_queue alone) SQL finds them among the
    reviewer's decisions and sorts those. Neither walks the class's index in the key's order."""
    from db import review_queue

    dataset_id, ids = dataset
    model = acc_db.add_model(dataset_id, trained_on=3, cv_auc=None, calibration={}, summary={}, path="x")
    acc_db.set_scores(model["id"], {i: i / 10 for i in ids})
    for order in ("judge_prob_desc", "nearest_real_asc", "p_accept_desc", "p_accept_uncertain"):
        plans = plans_of(lambda o=order: review_model.queue_page(dataset_id, "a", "ann", "decided", order=o,
                                                                 page_size=2))
        # (by judge or distance, the bounded walk runs first and finds no scored cell here: the ids take over; by
        # acceptance, the remembered scores' sort runs first and, with fewer ids than a page, the same)
        keys = [p for p in plans if p.startswith("SEARCH images USING INTEGER PRIMARY KEY (rowid=?) | LIST SUBQUERY")]
        assert len(keys) == 1 and "ix_decisions_current" in keys[0], plans  # each id's key, and that it stands
        # by acceptance, the scores of the ids come from the process's memo (db.acceptance.ScoreMemo): the first
        # acceptance order reads them by the (image, model) key, not by walking the model's score index; the second
        # reads none
        reads = [p for p in plans if p.startswith("SEARCH acceptance_scores")]
        if order == "p_accept_desc":
            assert len(reads) == 1 and re.match(r"SEARCH acceptance_scores USING INDEX sqlite_autoindex_acceptance_"
                                                r"scores_1 \(image_id=\?\).*LIST SUBQUERY", reads[0]), plans
        else:
            assert not reads, plans
        page = plans_of(lambda o=order: review_queue.review_queue(dataset_id, "a", "ann", "decided", order=o,
                                                                  limit=2))[-1]
        inner = page.split("SCAN anon")[0]  # the decided ids and keys, before the page rows are joined to them
        assert "LIST SUBQUERY" in inner and "SEARCH decisions_1 USING INDEX ix_decisions_reviewer" in inner, page
        assert inner.rstrip(" |").endswith("USE TEMP B-TREE FOR ORDER BY"), page  # sorted, not walked in order


def test_the_decided_state_by_a_judge_key_walks_the_key_index_and_probes_each_entry_for_a_decision(wbc_home):
    """A decided page by judge or distance first walks the class's key index in the page's order, one seek of the
    reviewer's latest decision per entry (a scalar subquery: no join a planner could turn into a scan of the
    class), and stops after the page: 5 ms at 1M candidates where sorting the decided set took ~50 ms."""
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, [
        dict(origin="real", class_name="a", split="val", sha256="r0", path="r0", width=8, height=8)])
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a", split=None, sha256=f"s{i}",
                                                path=f"s{i}", width=8, height=8, judge_prob=i / 10,
                                                nearest_real_distance=float(i)) for i in range(8)])
    review_model.decide(ids[:6], "ann", "accept", user=account("reviewer", "ann"))
    for order, index in (("judge_prob_desc", "ix_images_queue_judge_desc"),
                         ("nearest_real_asc", "ix_images_queue_nearest_asc")):
        plans = plans_of(lambda o=order: review_model.queue_page(dataset_id, "a", "ann", "decided", order=o,
                                                                 page_size=2))
        (walk,) = [p for p in plans if "CORRELATED SCALAR SUBQUERY" in p and index in p]
        assert f"SEARCH images USING COVERING INDEX {index}" in walk, walk
        assert "SEARCH decisions USING INDEX ix_decisions_current (image_id=?" in walk, walk  # one seek per entry
        assert "TEMP B-TREE" not in walk, walk  # the index gives the order: the walk stops after the page


def test_a_blind_queues_key_range_is_read_from_index_ends_not_by_walking_the_class(dataset):
    """A blind reviewer's real cells are spread over the class's id and key range. min and max of both in one SELECT
    walked the class's index (29 ms at 1M candidates, a blind page's slowest statement); one lone min() or max() per
    subquery is read from an index end (0.1 ms)."""
    dataset_id, _ = dataset
    review_model.enable_blind_test(dataset_id, "cem", fraction=0.5, seed=0, user=account())
    plans = plans_of(lambda: review_model.queue_page(dataset_id, "a", "cem", order="judge_prob_desc", page_size=2))
    (ends,) = [p for p in plans if p.startswith("SCAN CONSTANT ROW")]
    assert ends.count("SCALAR SUBQUERY") == 4 and ends.count("SEARCH images USING COVERING INDEX") == 4, ends
    whole_class = re.compile(r"SEARCH images USING COVERING INDEX ix_images_queue\w* "
                             r"\(dataset_id=\? AND origin=\? AND class_name=\?\)")
    assert not [p for p in plans if whole_class.fullmatch(p)], plans


def test_the_acceptance_scores_range_reads_two_ends_of_the_index_and_only_for_a_blind_queue(dataset):
    """The scores' lowest and highest value place a blind reviewer's real cells among the candidates. SQLite reads
    a lone min() or max() from an index end, but min and max in one SELECT read every score of the model (~200 ms
    at 1M); and a queue without blind cells needs neither."""
    dataset_id, ids = dataset
    model = acc_db.add_model(dataset_id, trained_on=3, cv_auc=None, calibration={}, summary={}, path="x")
    acc_db.set_scores(model["id"], {i: i / 10 for i in ids})
    plain = plans_of(lambda: review_model.queue_page(dataset_id, "a", "bob", order="p_accept_desc", page_size=2))
    review_model.enable_blind_test(dataset_id, "cem", fraction=0.5, seed=0, user=account())
    blind = plans_of(lambda: review_model.queue_page(dataset_id, "a", "cem", order="p_accept_desc", page_size=2))
    def ranges(plans: list[str]) -> list[str]:
        return [p for p in plans if "acceptance_scores" in p and "images" not in p and "decisions" not in p]

    (both_ends,) = ranges(blind)
    assert "SCAN acceptance_scores" not in both_ends, both_ends
    assert both_ends.count("SEARCH acceptance_scores USING COVERING INDEX ix_acceptance_scores_") == 2, both_ends
    assert ranges(plain) == [], plain

"""SQLite's plans for the queries a key press runs: index walks that stay small at 1M candidates.

The app leaves SQLite without statistics (no ANALYZE), so its planner's choice does not depend on table size: the
plan seen on a tiny dataset is the plan at 1M. bench/review_db.py measured what the wrong ones cost there: reading
the few rows above an id by walking every index entry of the dataset took 70-250 ms a call, and ordering a class
by its acceptance scores through per-row lookups 600 ms. These tests read EXPLAIN QUERY PLAN for the statements
each call actually executes.
"""

from __future__ import annotations

import re

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
    """EXPLAIN QUERY PLAN of every SELECT that call() executes, one string per statement."""
    engine = get_engine()
    seen: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
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
        page = plans[-1]  # the page itself; before it, the scored-rows count runs the same walks
        found = re.search(r"SEARCH acceptance_scores USING (COVERING )?INDEX ix_acceptance_scores_(asc|desc)", page)
        assert found and page.find("SEARCH images USING INTEGER PRIMARY KEY (rowid=?)") > found.start(), page
        assert "RIGHT PART OF ORDER BY" not in page, page  # the index gives the walk's whole order, ties too
        assert "ix_images" not in page.split("SCALAR SUBQUERY")[0], page  # no walk of the class's own index



def test_the_decided_state_sorts_the_reviewers_decided_candidates_instead_of_walking_the_class_in_key_order(dataset):
    dataset_id, ids = dataset
    model = acc_db.add_model(dataset_id, trained_on=3, cv_auc=None, calibration={}, summary={}, path="x")
    acc_db.set_scores(model["id"], {i: i / 10 for i in ids})
    for order in ("judge_prob_desc", "nearest_real_asc", "p_accept_desc", "p_accept_uncertain"):
        page = plans_of(lambda o=order: review_model.queue_page(dataset_id, "a", "ann", "decided", order=o,
                                                                page_size=2))[-1]
        inner = page.split("SCAN anon")[0]  # the decided ids and keys, before the page rows are joined to them
        assert "LIST SUBQUERY" in inner and "SEARCH decisions_1 USING INDEX ix_decisions_reviewer" in inner, page
        assert inner.rstrip(" |").endswith("USE TEMP B-TREE FOR ORDER BY"), page  # sorted, not walked in order

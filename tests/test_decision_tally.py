"""The in-memory decision tally gives the Review page the same counts as recounting every current vote."""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict

import pytest
from sqlalchemy import delete, insert
from support import account

from db import datasets, review_queue
from db import decisions as decisions_db
from db.engine import write_session
from db.models import Decision, Image
from wbc_core import decision_tally, review_model
from wbc_core.context import current
from wbc_core.review_model import ConsensusRule, ReviewSettings

pytestmark = pytest.mark.databases("sqlite", "postgresql")
CLASSES = ["a", "b", "c"]
REVIEWERS = ("ann", "bob", "cem")


@pytest.fixture()
def cells(wbc_home):
    real = [dict(origin="real", class_name=CLASSES[i % 3], split="val" if i % 2 else "train", sha256=f"r{i}",
                 path=f"p{i}", width=8, height=8) for i in range(12)]
    dataset_id = datasets.create_dataset("d", "real", "src", CLASSES, {}, "h", {}, real)
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name=CLASSES[i % 3], split=None,
                                                sha256=f"s{i}", path=f"q{i}", width=8, height=8) for i in range(18)])
    review_model.enable_blind_test(dataset_id, "ann", fraction=0.2, user=account("admin", "root"))
    blind = [b["image_id"] for b in decisions_db.blind_items(dataset_id, "ann")]
    assert blind, "the fixture needs blind real cells in ann's queue"
    return dataset_id, ids, blind


def _expected_summary(dataset_id: int) -> dict[str, dict[str, int]]:
    """class_summary recounted from every current vote (review_model.consensus reads them all)."""
    candidates = decisions_db.candidate_counts(dataset_id)
    outcomes = review_model.consensus(dataset_id)
    rows = {r.id: r for r in datasets.images_by_ids(sorted(outcomes))}
    out = {c: Counter(candidates=n) for c, n in candidates.items()}
    final = Counter()
    for image_id, outcome in outcomes.items():
        if outcome.status != "pending":
            out[rows[image_id].class_name][outcome.status] += 1
        if outcome.status == "accepted":
            final[outcome.final_class] += 1
    return {c: {"accepted": n["accepted"], "rejected": n["rejected"], "disputed": n["disputed"],
                "pending": n["candidates"] - n["accepted"] - n["rejected"] - n["disputed"],
                "accepted_final": final[c]} for c, n in out.items()}


def _shown_summary(dataset_id: int) -> dict[str, dict[str, int]]:
    keys = ("accepted", "rejected", "disputed", "pending", "accepted_final")
    return {r["class_name"]: {k: r[k] for k in keys} for r in review_model.class_summary(dataset_id)}


def _expected_verdicts(dataset_id: int) -> dict[tuple[str, str], dict[str, int]]:
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for row in decisions_db.current_decisions(dataset_id, origin=None):
        counts[(row["reviewer"], row["class_name"])][row["verdict"]] += 1
    return {k: {v: c[v] for v in ("accept", "reject", "relabel")} for k, c in counts.items()}


def _shown_verdicts(dataset_id: int) -> dict[tuple[str, str], dict[str, int]]:
    return {(r["reviewer"], r["class_name"]): {"accept": r["accepted"], "reject": r["rejected"],
                                               "relabel": r["relabelled"]}
            for r in review_model.reviewer_progress(dataset_id) if r["decided"]}


def test_random_decisions_undos_and_rulings_count_as_a_full_recount(cells):
    dataset_id, ids, blind = cells
    rng = random.Random(7)
    admin = account("admin", "root")
    users = {name: account("reviewer", name) for name in REVIEWERS}
    for step in range(45):
        reviewer = rng.choice(REVIEWERS)
        action = rng.choice(("accept", "accept", "reject", "relabel", "undo", "rule", "withdraw"))
        cell = rng.choice(ids + (blind if reviewer == "ann" else []))
        if action == "undo":
            review_model.undo_last(dataset_id, reviewer, rng.randint(1, 2), user=users[reviewer])
        elif action == "rule":
            verdict = rng.choice(("accept", "reject", "relabel"))
            review_model.adjudicate([rng.choice(ids)], admin, verdict, new_class="b" if verdict == "relabel" else None)
        elif action == "withdraw":
            review_model.adjudicate([rng.choice(ids)], admin, "undo")
        else:
            review_model.decide([cell], reviewer, action, new_class="c" if action == "relabel" else None,
                                user=users[reviewer])
        assert _shown_summary(dataset_id) == _expected_summary(dataset_id), f"class summary after step {step}"
        assert _shown_verdicts(dataset_id) == _expected_verdicts(dataset_id), f"reviewer progress after step {step}"


def test_a_rule_change_rejudges_every_cell(cells):
    dataset_id, ids, _ = cells
    review_model.decide(ids[:3], "ann", "accept", user=account("reviewer", "ann"))
    assert _shown_summary(dataset_id)["a"]["accepted"] == 1  # ids[0], ids[3], ... are class a
    stricter = ReviewSettings(rule=ConsensusRule(min_agreeing=2))
    review_model.set_review_settings(dataset_id, stricter, account("admin", "root"))
    shown = _shown_summary(dataset_id)
    assert shown == _expected_summary(dataset_id)
    assert sum(c["accepted"] for c in shown.values()) == 0  # one vote is no longer enough


def _late_row(image_id: int, below: int) -> None:
    """A decision row numbered below rows already read, as a slow PostgreSQL transaction commits one."""
    with write_session() as s:
        s.execute(insert(Decision).values(id=below, image_id=image_id, reviewer="dee", verdict="reject",
                                          adjudication=False))


def test_a_row_committed_late_with_a_lower_id_is_counted(cells, monkeypatch):
    dataset_id, ids, _ = cells
    review_model.decide([ids[0]], "ann", "accept", user=account("reviewer", "ann"))
    first = decisions_db.decision_rows_after(dataset_id, 0)[-1]["id"]
    # Leave a gap of ids, read past it, then fill the gap as a late commit would.
    with write_session() as s:
        s.execute(insert(Decision).values(id=first + 10, image_id=ids[1], reviewer="ann", verdict="accept",
                                          adjudication=False))
    assert _shown_summary(dataset_id) == _expected_summary(dataset_id)
    _late_row(ids[0], first + 5)  # within the look-back: counted on the next read
    assert _shown_summary(dataset_id) == _expected_summary(dataset_id)
    assert _shown_summary(dataset_id)["a"]["disputed"] == 1  # ann accepts ids[0], dee rejects it
    # Beyond the look-back a late row waits for the periodic re-read, then counts.
    monkeypatch.setattr(decision_tally, "LOOKBACK_IDS", 1)
    _late_row(ids[3], first + 7)
    assert _shown_summary(dataset_id)["a"]["rejected"] == 0
    monkeypatch.setattr(decision_tally, "FULL_REREAD_S", 0.0)
    monkeypatch.setattr(decision_tally.DecisionTally, "_late_commits_possible", staticmethod(lambda: True))
    # The periodic re-read runs on a thread of its own; the call that starts it still answers from the running
    # counts, so no key press waits for every row to be read again.
    tally = decision_tally.tally_for(current().caches, dataset_id)
    assert _shown_summary(dataset_id)["a"]["rejected"] == 0
    assert tally.rebuild.wait()
    assert _shown_summary(dataset_id) == _expected_summary(dataset_id)
    assert _shown_summary(dataset_id)["a"]["rejected"] == 1


def test_reading_a_row_twice_changes_nothing():
    tally = decision_tally.DecisionTally(1)
    row = dict(id=5, image_id=1, reviewer="ann", verdict="accept", new_class=None, adjudication=False,
               class_name="a", origin="synthetic")
    older = {**row, "id": 3, "verdict": "reject"}
    assert tally._apply(row) and not tally._apply(row) and not tally._apply(older)
    assert tally._votes[1]["ann"] == (5, "accept")
    assert tally._verdicts[("ann", "a")] == Counter(accept=1)


def test_only_postgresql_needs_the_periodic_re_read(cells, db_backend):
    # SQLite's single writer makes ids visible in commit order; PostgreSQL numbers rows before they commit.
    assert decision_tally.DecisionTally._late_commits_possible() == (db_backend == "postgresql")


def _sql_total(dataset_id: int, class_name: str, reviewer: str, state: str) -> int:
    return review_queue.review_queue(dataset_id, class_name, reviewer, state=state, limit=1)[1]


def test_queue_totals_from_running_counts_match_the_sql_count(cells):
    dataset_id, ids, blind = cells
    rng = random.Random(11)
    users = {name: account("reviewer", name) for name in REVIEWERS}
    n = 18
    for step in range(30):
        reviewer = rng.choice(REVIEWERS)
        action = rng.choice(("accept", "reject", "relabel", "undo", "add"))
        if action == "add":  # a generation job adds candidates while people review
            ids += datasets.add_images(dataset_id, [dict(origin="synthetic", class_name=rng.choice(CLASSES),
                                                         split=None, sha256=f"s{n + k}", path=f"q{n + k}",
                                                         width=8, height=8) for k in range(2)])
            n += 2
        elif action == "undo":
            review_model.undo_last(dataset_id, reviewer, 1, user=users[reviewer])
        else:
            cell = rng.choice(ids + (blind if reviewer == "ann" else []))
            review_model.decide([cell], reviewer, action, new_class="c" if action == "relabel" else None,
                                user=users[reviewer])
        for who in REVIEWERS:
            for c in CLASSES:
                for state in ("pending", "decided", "all"):
                    shown = review_model.queue_page(dataset_id, c, who, state=state, page_size=1)[1]
                    assert shown == _sql_total(dataset_id, c, who, state), (step, who, c, state)
    assert any(review_model.queue_page(dataset_id, c, "ann", state="decided")[1] for c in CLASSES)


def test_a_candidate_committed_late_with_a_lower_id_is_counted_once(cells, monkeypatch):
    dataset_id, ids, _ = cells
    summary = {r["class_name"]: r["candidates"] for r in review_model.class_summary(dataset_id)}
    assert summary == decisions_db.candidate_counts(dataset_id)
    top = max(ids)

    def candidate(image_id: int, class_name: str) -> None:
        with write_session() as s:
            s.execute(insert(Image).values(id=image_id, dataset_id=dataset_id, origin="synthetic",
                                           class_name=class_name, sha256=f"late{image_id}", path=f"l{image_id}",
                                           width=8, height=8))

    def shown() -> dict[str, int]:
        return {r["class_name"]: r["candidates"] for r in review_model.class_summary(dataset_id)}

    candidate(top + 1000, "a")  # ids well above the sequence's next ones: PostgreSQL's would collide otherwise
    assert shown() == decisions_db.candidate_counts(dataset_id)
    candidate(top + 995, "b")  # inside the look-back window below the newest: a late commit
    assert shown() == decisions_db.candidate_counts(dataset_id) and shown()["b"] == summary["b"] + 1
    assert shown() == decisions_db.candidate_counts(dataset_id)  # read again: counted once
    monkeypatch.setattr(decision_tally, "LOOKBACK_IDS", 1)
    candidate(top + 990, "c")  # beyond the look-back: waits for the periodic recount (PostgreSQL only)
    assert shown()["c"] == summary["c"]
    monkeypatch.setattr(decision_tally.DecisionTally, "_late_commits_possible", staticmethod(lambda: True))
    counter = decision_tally.candidate_count_for(current().caches, dataset_id)
    counter.rebuild.make_due()  # as two minutes later
    assert shown()["c"] == summary["c"]  # this call starts the recount on its own thread
    assert counter.rebuild.wait()
    assert shown() == decisions_db.candidate_counts(dataset_id) and shown()["c"] == summary["c"] + 1


def test_candidate_counts_start_over_when_the_newest_counted_candidate_is_gone(cells):
    # As after a dataset is deleted and its id reused: the newest candidate counted no longer exists.
    dataset_id, ids, _ = cells
    counter = decision_tally.CandidateCount(dataset_id)
    assert counter.per_class() == decisions_db.candidate_counts(dataset_id)
    with write_session() as s:
        s.execute(delete(Image).where(Image.id == max(ids)))
    assert counter.per_class() == decisions_db.candidate_counts(dataset_id)


def test_a_tally_built_from_scratch_is_kept_out_of_the_cyclic_collectors_walks(cells, monkeypatch):
    """A full collection walks every tracked object; the tally's tens of thousands live as long as the process, so
    its first read freezes them (gc.freeze), after collecting, so no garbage is frozen with them."""
    import gc

    dataset_id, ids, _ = cells
    review_model.decide(ids[:3], "bob", "accept", user=account("reviewer", "bob"))
    steps = []
    monkeypatch.setattr(gc, "collect", lambda *a: steps.append("collect"))
    monkeypatch.setattr(gc, "freeze", lambda: steps.append("freeze"))
    tally = decision_tally.DecisionTally(dataset_id)
    assert tally.decided_candidates("bob", CLASSES[0]) == 1 and steps == ["collect", "freeze"]
    review_model.decide(ids[3:4], "bob", "accept", user=account("reviewer", "bob"))
    tally.decided_candidates("bob", CLASSES[0])
    assert steps == ["collect", "freeze"]  # an incremental read freezes nothing more


def _in_rebuild() -> bool:
    return threading.current_thread().name.startswith("rebuild")


def test_the_periodic_re_read_runs_beside_the_callers_and_keeps_what_was_decided_meanwhile(cells, monkeypatch):
    dataset_id, ids, _ = cells
    ann = account("reviewer", "ann")
    review_model.decide([ids[0]], "ann", "accept", user=ann)
    tally = decision_tally.tally_for(current().caches, dataset_id)
    assert _shown_summary(dataset_id) == _expected_summary(dataset_id)  # the first read, on the caller's thread
    read_all, release = threading.Event(), threading.Event()
    every_row = decisions_db.decision_rows_after

    def rows_after(dataset: int, after: int) -> list:
        rows = every_row(dataset, after)
        if _in_rebuild():  # the rebuild holds its snapshot until the test lets it go
            read_all.set()
            release.wait(60)
        return rows

    monkeypatch.setattr(decisions_db, "decision_rows_after", rows_after)
    monkeypatch.setattr(decision_tally, "FULL_REREAD_S", 0.0)
    monkeypatch.setattr(decision_tally.DecisionTally, "_late_commits_possible", staticmethod(lambda: True))
    assert _shown_summary(dataset_id) == _expected_summary(dataset_id)  # starts the rebuild and answers at once
    assert read_all.wait(60)
    monkeypatch.setattr(decision_tally, "FULL_REREAD_S", 3600.0)  # no second rebuild
    review_model.decide([ids[1]], "ann", "reject", user=ann)  # after the rebuild's snapshot
    assert _shown_summary(dataset_id) == _expected_summary(dataset_id)  # callers go on while it runs
    release.set()
    assert tally.rebuild.wait()
    shown = _shown_summary(dataset_id)
    assert shown == _expected_summary(dataset_id)  # the swap lost nothing
    assert sum(c["rejected"] for c in shown.values()) == 1


def test_a_failed_re_read_is_logged_and_the_running_counts_go_on(cells, monkeypatch, caplog):
    dataset_id, ids, _ = cells
    review_model.decide([ids[0]], "ann", "accept", user=account("reviewer", "ann"))
    tally = decision_tally.tally_for(current().caches, dataset_id)
    _shown_summary(dataset_id)
    every_row = decisions_db.decision_rows_after

    def rows_after(dataset: int, after: int) -> list:
        if _in_rebuild():
            raise RuntimeError("the database went away")
        return every_row(dataset, after)

    monkeypatch.setattr(decisions_db, "decision_rows_after", rows_after)
    monkeypatch.setattr(decision_tally, "FULL_REREAD_S", 0.0)
    monkeypatch.setattr(decision_tally.DecisionTally, "_late_commits_possible", staticmethod(lambda: True))
    _shown_summary(dataset_id)
    assert tally.rebuild.wait()
    assert f"rebuilding the decision tally of dataset {dataset_id} failed" in caplog.text
    review_model.decide([ids[1]], "ann", "reject", user=account("reviewer", "ann"))
    assert _shown_summary(dataset_id) == _expected_summary(dataset_id)

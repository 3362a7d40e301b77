"""The acceptance model (wbc_core.feedback): training data, hygiene, training job, scores, orders, quota estimate.

The judge is replaced by a tiny fake (mean colour as features) so these tests run in seconds; the real judge is
exercised by bench/feedback.py --quick (tests/test_feedback_bench.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from support import account, draw_cell, drawn_candidates

from db import acceptance as acc_db
from db import datasets
from db import decisions as decisions_db
from wbc_core import feedback, review_model
from wbc_core.context import current

pytestmark = pytest.mark.databases("sqlite", "postgresql")

GOOD, BAD = (200, 40, 40), (40, 40, 200)


def _fake_features(ref, images):  # noqa: ANN001, ANN202 - stands in for the judge: mean colour as features
    import torch

    feats = images.float().mean(dim=(2, 3)) / 255.0
    probs = torch.stack([feats[:, 0], feats[:, 2]], dim=1).softmax(dim=1)
    return feats, probs, torch.zeros(images.shape[0])


@pytest.fixture()
def fake_judge(monkeypatch):
    import wbc_core.gan_runs

    monkeypatch.setattr(feedback, "cell_features", _fake_features)
    monkeypatch.setattr(wbc_core.gan_runs, "quality_reference", lambda dataset_id, size: object())


@pytest.fixture()
def cells(wbc_home):
    """Dataset "d" (classes a, b; 16 px): 4 real train and 4 real val cells per class, and per class 8 good (red)
    and 8 bad (blue) candidates as PNG files. Returns (dataset id, {class: (good ids, bad ids)})."""
    rng = np.random.default_rng(0)
    real = [dict(origin="real", class_name=c, split=split, sha256=f"r{c}{split}{i}", path=f"real/{c}{split}{i}.png",
                 width=16, height=16) for c in "ab" for split in ("train", "val") for i in range(4)]
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, real, image_size=16)
    for row in real:
        path = current().home / row["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_cell(rng, 16, GOOD).save(path)
    out = {}
    for c in "ab":
        rows = []
        for kind, colour in (("good", GOOD), ("bad", BAD)):
            rows += drawn_candidates(rng, c, kind, colour, 8, 16)
        ids = datasets.add_images(dataset_id, rows)
        out[c] = (ids[:8], ids[8:])
    return dataset_id, out


def _review(dataset_id, ids, n_good=6, n_bad=6, who="ann"):  # noqa: ANN001, ANN202
    """ann accepts the first n_good good and rejects the first n_bad bad candidates of every class."""
    me = account("reviewer", who)
    for good, bad in ids.values():
        review_model.decide(good[:n_good], who, "accept", user=me)
        review_model.decide(bad[:n_bad], who, "reject", user=me)


def test_examples_encode_accepts_rejects_and_relabels(cells):
    dataset_id, ids = cells
    me = account("reviewer", "ann")
    good_a, bad_a = ids["a"]
    review_model.decide([good_a[0]], "ann", "accept", user=me)
    review_model.decide([bad_a[0]], "ann", "reject", user=me)
    review_model.decide([good_a[1]], "ann", "relabel", new_class="b", user=me)
    got = {(e.image_id, e.class_name, e.label) for e in feedback.training_examples(dataset_id)}
    # a relabel is a reject for the intended class AND an accepted example of the new class
    assert got == {(good_a[0], "a", 1), (bad_a[0], "a", 0), (good_a[1], "a", 0), (good_a[1], "b", 1)}


def test_hidden_real_cells_of_the_blind_test_never_enter_the_training_data(cells, fake_judge, monkeypatch):
    dataset_id, ids = cells
    admin = account("admin")
    review_model.enable_blind_test(dataset_id, "ann", fraction=0.3, user=admin)
    blind = [b["image_id"] for b in decisions_db.blind_items(dataset_id, "ann")]
    assert blind, "the fixture must give ann some blind real cells"
    _review(dataset_id, ids)
    review_model.decide(blind, "ann", "accept", user=account("reviewer", "ann"))  # ann judges them as candidates
    seen: list[int] = []
    decode = feedback._decode

    def spy(dataset, image_ids, size):  # noqa: ANN001, ANN202
        seen.extend(image_ids)
        return decode(dataset, image_ids, size)

    monkeypatch.setattr(feedback, "_decode", spy)
    result = feedback.train_model(dataset_id)
    real_ids = {r.id for r in datasets.real_images(dataset_id)}
    assert result["trained_on"] == 24  # 6 + 6 per class; none of ann's blind verdicts
    assert not {e.image_id for e in feedback.training_examples(dataset_id)} & real_ids
    assert seen and not set(seen) & real_ids  # neither trained on nor scored


def test_training_scores_pending_candidates_and_leaves_decisions_unchanged(cells, fake_judge):
    dataset_id, ids = cells
    _review(dataset_id, ids)
    before = decisions_db.current_decisions(dataset_id, origin=None)
    history = [decisions_db.decision_history(i) for good, bad in ids.values() for i in good + bad]
    result = feedback.train_model(dataset_id)
    assert decisions_db.current_decisions(dataset_id, origin=None) == before
    assert [decisions_db.decision_history(i) for good, bad in ids.values() for i in good + bad] == history
    assert review_model.consensus(dataset_id).keys() == {i for good, bad in ids.values()
                                                         for i in good[:6] + bad[:6]}
    model = acc_db.latest_model(dataset_id)
    assert model["version"] == 1 and result["version"] == 1 and model["trained_on_decisions"] == 24
    assert model["cv_auc"] is not None and model["cv_auc"] > 0.9  # red vs blue is easy
    assert model["calibration"]["predicted"] and len(model["calibration"]["observed"]) == model["calibration"]["bins"]
    scores = acc_db.scores(model["id"])
    pending = {i for good, bad in ids.values() for i in good[6:] + bad[6:]}
    assert set(scores) == pending and result["scored"] == len(pending)
    for good, bad in ids.values():
        assert min(scores[i] for i in good[6:]) > max(scores[i] for i in bad[6:])
    blob = feedback.load_model(model)
    assert blob["version"] == 1 and blob["trained_on"] == 24 and blob["class_names"] == ["a", "b"]
    assert blob["feature_spec"]["order"] == list(feedback.FEATURES)
    assert feedback.train_model(dataset_id)["version"] == 2


def test_too_few_decisions_say_what_to_do(cells, fake_judge):
    dataset_id, ids = cells
    _review(dataset_id, ids, n_good=1, n_bad=1)
    with pytest.raises(feedback.FeedbackError, match="review more candidates"):
        feedback.train_model(dataset_id)


def test_review_orders_by_predicted_acceptance_and_uncertainty(cells, fake_judge):
    dataset_id, ids = cells
    _review(dataset_id, ids)
    model = acc_db.add_model(dataset_id, trained_on=1, cv_auc=None, calibration={}, summary={}, path="x")
    good, bad = ids["a"]
    pending = good[6:] + bad[6:]
    p = dict(zip(pending[:3], [0.9, 0.1, 0.55], strict=True))  # pending[3] stays unscored
    acc_db.set_scores(model["id"], p)
    rows, total = review_model.queue_page(dataset_id, "a", "bob", order="p_accept_desc", page_size=100)
    order = [r["id"] for r in rows]
    assert total == 16 and order[:3] == [pending[0], pending[2], pending[1]]
    rows, _ = review_model.queue_page(dataset_id, "a", "bob", order="p_accept_uncertain", page_size=100)
    assert [r["id"] for r in rows][:3] == [pending[2], pending[0], pending[1]]  # |p - 0.5|: 0.05, 0.4, 0.4
    assert "p_accept_desc" in review_model.QUEUE_ORDERS and "p_accept_uncertain" in review_model.QUEUE_ORDERS


@pytest.mark.parametrize("unscored", [0, 5], ids=["all scored", "some unscored"])
def test_acceptance_orders_page_through_exactly_the_sorted_queue(cells, unscored):
    """Every page, at a small page size, is the slice of the queue sorted in Python: scored by the key (ties by
    id), unscored last by id; some of them decided, so the pending filter applies inside the index walks."""
    dataset_id, ids = cells
    good, bad = ids["a"]
    review_model.decide(good[:2], "bob", "accept", user=account("reviewer", "bob"))
    model = acc_db.add_model(dataset_id, trained_on=1, cv_auc=None, calibration={}, summary={}, path="x")
    cand = good + bad
    values = [0.9, 0.1, 0.55, 0.45, 0.6, 0.4, 0.5, 0.5, 0.95, 0.05, 0.7, 0.3, 0.2, 0.8, 0.65, 0.35]
    scored = dict(zip(cand[:len(cand) - unscored], values, strict=False))
    acc_db.set_scores(model["id"], scored)
    pending = [i for i in cand if i not in good[:2]]
    for order, key in (("p_accept_desc", lambda i: -scored[i]), ("p_accept_uncertain", lambda i: abs(scored[i] - 0.5))):
        expected = sorted((i for i in pending if i in scored), key=lambda i: (key(i), i))
        expected += sorted(i for i in pending if i not in scored)
        shown = []
        for page in range(6):
            rows, total = review_model.queue_page(dataset_id, "a", "bob", order=order, page=page, page_size=3)
            shown += [r["id"] for r in rows]
            assert total == len(pending)
        assert shown == expected, order


def test_quota_estimate_uses_the_current_acceptance_rate(cells):
    dataset_id, ids = cells
    _review(dataset_id, ids, n_good=2, n_bad=6)  # 2 of 8 decided accepted: 25%
    review_model.set_review_settings(dataset_id, review_model.ReviewSettings(quotas={"a": 12, "b": 2}),
                                     user=account("admin"))
    est = {r["class_name"]: r for r in feedback.quota_estimate(dataset_id)}
    assert est["a"]["remaining"] == 10 and est["a"]["acceptance_rate"] == pytest.approx(0.25)
    assert est["a"]["decisions_needed"] == 40 and est["b"]["decisions_needed"] == 0
    row = next(r for r in review_model.class_summary(dataset_id) if r["class_name"] == "a")
    assert feedback.quota_estimate_text(row).startswith("About 40 more decisions to reach the quota")
    assert feedback.estimate_quota({**row, "accepted": 0, "accepted_final": 0})["decisions_needed"] is None


def test_decisions_enqueue_a_retrain_after_every_n(cells, monkeypatch):
    from db import quality as quality_db

    dataset_id, ids = cells
    submitted: list[tuple] = []
    monkeypatch.setattr(feedback.jobs, "submit", lambda *a, **k: submitted.append((a, k)) or len(submitted))
    review_model.set_review_settings(dataset_id, review_model.ReviewSettings(retrain_every=10), user=account("admin"))
    assert review_model.get_review_settings(dataset_id).retrain_every == 10
    _review(dataset_id, ids, n_good=3, n_bad=3)  # 12 decisions, but the judge never scored a candidate
    review_model.wait_for_retrain_checks()
    assert submitted == []
    quality_db.set_candidate_scores([{"id": ids["a"][0][7], "judge_prob": 0.5, "judge_top_class": "a",
                                      "nearest_real_id": None, "nearest_real_distance": 1.0, "memorised": False}])
    review_model.decide([ids["b"][0][6]], "ann", "accept", user=account("reviewer", "ann"))
    review_model.wait_for_retrain_checks()  # the check runs on the process's check thread, after the decision
    assert len(submitted) == 1 and submitted[0][0][:2] == ("feedback", dataset_id)
    assert submitted[0][1]["started_by"] == "ann"


def test_a_decision_returns_before_its_retrain_check_has_run(cells, monkeypatch):
    """The check after a decision runs on the process's check thread: a slow one never holds up the key press."""
    import threading

    dataset_id, ids = cells
    release, checked = threading.Event(), []

    def slow_check(dataset, every, started_by):  # noqa: ANN001, ANN202
        release.wait(20)
        checked.append((dataset, started_by))

    monkeypatch.setattr(feedback, "maybe_retrain", slow_check)
    review_model.set_review_settings(dataset_id, review_model.ReviewSettings(retrain_every=10), user=account("admin"))
    review_model.decide([ids["a"][0][0]], "ann", "accept", user=account("reviewer", "ann"))  # every 10 // 10: checked
    assert checked == []  # recorded, and the check still waiting
    release.set()
    review_model.wait_for_retrain_checks()
    assert checked == [(dataset_id, "ann")]


def test_closing_the_context_runs_the_pending_retrain_check_first(cells, monkeypatch):
    """A check still queued when a context closes would read a database that is gone (a test's is dropped)."""
    import threading

    from wbc_core import context

    dataset_id, ids = cells
    release, checked = threading.Event(), []

    def slow_check(dataset, every, started_by):  # noqa: ANN001, ANN202
        release.wait(20)
        checked.append(dataset)

    monkeypatch.setattr(feedback, "maybe_retrain", slow_check)
    review_model.set_review_settings(dataset_id, review_model.ReviewSettings(retrain_every=10), user=account("admin"))
    review_model.decide([ids["a"][0][0]], "ann", "accept", user=account("reviewer", "ann"))
    threading.Timer(0.3, release.set).start()
    context.current().caches.clear()  # what Context.close() does first
    assert checked == [dataset_id]


def test_retrain_waits_for_n_new_decisions_and_for_the_running_job(cells, fake_judge):
    from db import quality as quality_db

    dataset_id, ids = cells
    good, _ = ids["a"]
    quality_db.set_candidate_scores([{"id": good[7], "judge_prob": 0.5, "judge_top_class": "a",
                                      "nearest_real_id": None, "nearest_real_distance": 1.0, "memorised": False}])
    _review(dataset_id, ids, n_good=3, n_bad=3)
    assert not feedback.retrain_due(dataset_id, 0)  # 0 = never
    assert not feedback.retrain_due(dataset_id, 13)
    run_id = feedback.maybe_retrain(dataset_id, 12, started_by="ann", launch=False)
    assert run_id is not None and feedback.active_job(dataset_id).id == run_id
    assert feedback.maybe_retrain(dataset_id, 12, started_by="ann", launch=False) is None  # one at a time
    assert feedback.start_training(dataset_id, user=account("admin"), launch=False) == run_id
    from db import runs as runs_db

    runs_db.finish_run(run_id, "failed", error="test")
    feedback.train_model(dataset_id)  # the model remembers how many decision rows it saw
    assert not feedback.retrain_due(dataset_id, 1)


def test_a_failed_retrain_is_not_queued_again_before_n_more_decisions(cells):
    """The check runs after every decision: a retrain that failed must not be queued again at each key press."""
    from db import quality as quality_db
    from db import runs as runs_db

    dataset_id, ids = cells
    good, bad = ids["a"]
    quality_db.set_candidate_scores([{"id": good[7], "judge_prob": 0.5, "judge_top_class": "a",
                                      "nearest_real_id": None, "nearest_real_distance": 1.0, "memorised": False}])
    _review(dataset_id, ids, n_good=3, n_bad=3)  # 12 decision rows
    run_id = feedback.maybe_retrain(dataset_id, 4, started_by="ann", launch=False)
    assert run_id is not None
    runs_db.finish_run(run_id, "failed", error="test")
    reviewer = account("reviewer", "ann")
    review_model.decide([good[6]], "ann", "accept", user=reviewer)
    assert not feedback.retrain_due(dataset_id, 4)  # 1 new decision since the failed job was queued
    review_model.decide([bad[6], bad[7], good[5]], "ann", "reject", user=reviewer)
    assert feedback.retrain_due(dataset_id, 4)  # 4 new: the next chance
    assert acc_db_count(dataset_id) == 16


def acc_db_count(dataset_id: int) -> int:
    from db import acceptance as acc_db

    return sum(acc_db.decision_counts(dataset_id).values())


def test_feedback_is_a_registered_job_kind():
    from wbc_core.jobs.kinds import kind

    assert kind("feedback").load() is feedback.run_feedback_job


def test_calibration_figure_draws_the_curve_and_the_diagonal():
    status = {"version": 3, "cv_auc": 0.8, "calibration": {"predicted": [0.2, 0.7], "observed": [0.1, 0.8]}}
    fig = feedback.calibration_figure(status)
    assert len(fig.data) == 2 and list(fig.data[1].x) == [0.2, 0.7] and "0.80" in fig.layout.title.text


def test_cli_feedback_train_and_status(cells, fake_judge, monkeypatch, capsys):
    import json

    from db import runs as runs_db
    from wbc_core.cli import main as cli_main
    from wbc_core.jobs.worker import JobContext

    dataset_id, ids = cells
    _review(dataset_id, ids)
    assert cli_main.main(["feedback", "status", "--dataset", "d", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] is None
    start = feedback.start_training

    def start_in_process(dataset, *, user, launch=True):  # noqa: ANN001, ANN202 - the body runs here, faked judge
        run_id = start(dataset, user=user, launch=False)
        run = runs_db.get_run(run_id)
        runs_db.finish_run(run_id, "succeeded", result=feedback.run_feedback_job(run, JobContext(run)))
        return run_id

    monkeypatch.setattr(feedback, "start_training", start_in_process)
    account("admin")
    assert cli_main.main(["feedback", "train", "--dataset", "d", "--as", "admin", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["status"] == "succeeded" and trained["version"] == 1 and trained["scored"] == 8
    assert cli_main.main(["feedback", "status", "--dataset", "d"]) == 0
    text = capsys.readouterr().out
    assert "acceptance model v1" in text and "trained on 24 decided candidates" in text
    assert "8 candidates scored" in text


def test_cluster_guard_keeps_the_best_cell_of_each_region_not_the_best_overall():
    import torch

    from wbc_core.steering import select_diverse, select_per_cluster

    # Two regions: the model likes the left one much more. Radius selection piles into it; clusters keep one each.
    p = np.array([0.9, 0.85, 0.8, 0.2, 0.3, 0.1])
    feats = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [50.0, 0.0], [50.5, 0.0], [51.0, 0.0]])
    assert select_diverse(p, feats, 2, radius=0.1) == [0, 1]
    assert select_per_cluster(p, feats, 2, seed=0) == [0, 4]  # the best of each, best first
    assert select_per_cluster(p, feats, 0, seed=0) == []
    assert sorted(select_per_cluster(p, feats, 10, seed=0)) == list(range(6))  # never more than the pool


def test_coverage_guard_buys_back_the_real_cells_the_best_p_order_leaves_uncovered():
    import torch

    from wbc_core.steering import COVERAGE_SLACK, select_for_coverage

    # Real train cells in two regions; the model likes the generated cells of the left one far more.
    line = torch.arange(8, dtype=torch.float32)[:, None] * torch.tensor([[1.0, 0.0]])
    real = torch.cat([line, line + torch.tensor([100.0, 0.0])])
    pool = torch.cat([line + 0.1, line + torch.tensor([100.1, 0.0])])
    p = np.array([0.9 - 0.01 * i for i in range(8)] + [0.2 - 0.01 * i for i in range(8)])
    kept, report = select_for_coverage(p, pool, 6, real, k=2, seed=0)
    assert report["target_met"] and report["lambda"] > 0
    assert report["train_coverage_steered"] >= report["train_coverage_unsteered"] - COVERAGE_SLACK
    assert any(i >= 8 for i in kept) and any(i < 8 for i in kept)  # both regions, not the best-p six of the left
    assert kept == sorted(kept, key=lambda i: -p[i])  # best first, as the other guards return them
    # Where the best-p order already covers as much as a plain draw, the guard changes nothing.
    even = np.array([0.9 - 0.01 * i for i in range(16)])
    even[8:] = even[:8]
    plain, report = select_for_coverage(even, pool, 16, real, k=2, seed=0)
    assert report["lambda"] == 0.0 and sorted(plain) == list(range(16))
    assert select_for_coverage(p, pool, 0, real)[0] == []


def test_diversity_guard_skips_near_duplicates_of_kept_cells():
    import torch

    from wbc_core.steering import select_diverse

    p = np.array([0.9, 0.89, 0.5, 0.3])
    feats = torch.tensor([[0.0, 0.0], [0.01, 0.0], [5.0, 0.0], [10.0, 0.0]])
    assert select_diverse(p, feats, 2, radius=0.1) == [0, 2]  # 1 is a near-copy of 0
    assert select_diverse(p, feats, 3, radius=0.1) == [0, 2, 3]
    assert select_diverse(p, feats, 4, radius=0.1) == [0, 2, 3, 1]  # too few far apart: the best skipped fills up
    assert select_diverse(p, feats, 2, radius=0.0) == [0, 1]


def test_steering_keeps_the_most_likely_accepted_and_reports_coverage(cells, fake_judge, monkeypatch):
    import torch

    import wbc_core.gan
    from wbc_core.steering import overall_report, steer_class

    dataset_id, ids = cells
    _review(dataset_id, ids)
    feedback.train_model(dataset_id)
    blob = feedback.load_model(acc_db.latest_model(dataset_id))
    rng = np.random.default_rng(1)
    pool = torch.stack([torch.from_numpy(np.array(draw_cell(rng, 16, GOOD if i % 4 == 0 else BAD))).permute(2, 0, 1)
                        for i in range(24)])
    monkeypatch.setattr(wbc_core.gan, "sample_cells", lambda loaded, c, n, seed: pool[:n])

    class Loaded:
        class_names = ["a", "b"]

    class Ref:
        image_size = 16
        class_names = ["a", "b"]
        val_features = torch.rand(20, 3) * 1e-3  # real balls far smaller than red vs blue: the guard skips none
        val_labels = torch.tensor([0, 1] * 10)
        train_features = torch.rand(80, 3) * 1e-3  # the coverage guard counts train balls, never val ones
        train_labels = torch.tensor([0, 1] * 40)

        def thresholds_for(self, labels):  # noqa: ANN001, ANN202
            return torch.full(labels.shape, 0.0)

    chosen = steer_class(Loaded(), 0, per_class=6, factor=4, seed=0, blob=blob, ref=Ref())
    assert chosen.cells.shape == (6, 3, 16, 16)
    red = (chosen.cells[:, 0].float().mean(dim=(1, 2)) > chosen.cells[:, 2].float().mean(dim=(1, 2))).tolist()
    assert red == [True] * 6  # the 6 red (good) cells of the 24 are the ones kept
    assert chosen.report["mean_p_steered"] > chosen.report["mean_p_unsteered"]
    report = overall_report({"a": chosen.report}, Ref())
    assert set(report["overall"]) >= {"steered", "unsteered"} and "_feats" not in report["per_class"]["a"]
    clustered = steer_class(Loaded(), 0, per_class=6, factor=4, seed=0, blob=blob, ref=Ref(), guard="clusters")
    assert clustered.cells.shape == (6, 3, 16, 16) and clustered.report["guard"] == "clusters"
    covering = steer_class(Loaded(), 0, per_class=6, factor=4, seed=0, blob=blob, ref=Ref(), guard="coverage")
    assert covering.cells.shape == (6, 3, 16, 16) and covering.report["search"]["train_balls"] == 40


def test_steered_generation_needs_an_acceptance_model(cells):
    from wbc_core.gan_runs import _steering

    with pytest.raises(ValueError, match="has none yet"):
        _steering(cells[0], 4)
    with pytest.raises(ValueError, match="steering oversampling factor"):
        _steering(cells[0], 51)


def test_an_unknown_steering_guard_is_refused_before_anything_is_queued(cells):
    from db import runs as runs_db
    from wbc_core.generation import start_generation

    before = len(runs_db.list_runs())
    with pytest.raises(ValueError, match="must be one of radius, clusters, coverage, got 'nearest'"):
        start_generation(1, 4, user=account("admin"), launch=False, steer=4, steer_guard="nearest")
    assert len(runs_db.list_runs()) == before


def test_the_acceptance_migration_goes_down_and_up_again(empty_db_url, tmp_path):
    from alembic import command
    from sqlalchemy import inspect

    from db.engine import Database
    from db.migrate import alembic_config, current_revision, ensure_schema, head_revision

    database = Database(empty_db_url or f"sqlite:///{tmp_path / 'wbc.db'}")
    try:
        ensure_schema(database)
        with database.engine.begin() as conn:
            cfg = alembic_config(database.url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
            assert "acceptance_models" not in inspect(conn).get_table_names()
            assert "steered" not in {c["name"] for c in inspect(conn).get_columns("images")}
            command.upgrade(cfg, "head")
            assert {"acceptance_models", "acceptance_scores"} <= set(inspect(conn).get_table_names())
        assert current_revision(database) == head_revision()
    finally:
        database.dispose()


def test_acceptance_orders_keep_blind_real_cells_among_the_candidates(cells):
    dataset_id, ids = cells
    review_model.enable_blind_test(dataset_id, "ann", fraction=0.3, user=account("admin"))
    blind = {b["image_id"] for b in decisions_db.blind_items(dataset_id, "ann") if b["class_name"] == "a"}
    model = acc_db.add_model(dataset_id, trained_on=1, cv_auc=None, calibration={}, summary={}, path="x")
    good, bad = ids["a"]
    acc_db.set_scores(model["id"], {i: 0.1 + 0.05 * k for k, i in enumerate(good + bad)})
    for order in ("p_accept_desc", "p_accept_uncertain"):
        rows, total = review_model.queue_page(dataset_id, "a", "ann", order=order, page_size=100)
        assert total == 16 + len(blind) and blind <= {r["id"] for r in rows}
        assert all(r["judge_prob"] is None for r in rows)  # blind mode: no provenance for anyone's rows


def test_guard_radius_is_half_the_real_neighbourhood_unless_copies_reach_further():
    import torch

    from wbc_core.steering import GUARD_SHARE, guard_radius

    class Ref:
        def __init__(self, copy: float) -> None:
            self.copy = copy

        def thresholds_for(self, labels):  # noqa: ANN001, ANN202
            return torch.full(labels.shape, self.copy)

    real = torch.arange(10, dtype=torch.float32).view(-1, 1)  # 5th neighbour of each point: 5 apart at most
    from wbc_core.quality.metrics import knn_radii

    half = GUARD_SHARE * float(knn_radii(real, 5).median())
    assert guard_radius(Ref(0.1), 0, real) == pytest.approx(half)
    assert guard_radius(Ref(99.0), 0, real) == 99.0
    assert guard_radius(Ref(0.1), 0, real[:5]) == pytest.approx(0.1)  # too few real cells for k-NN balls

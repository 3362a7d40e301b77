"""Science hygiene: synthetic cells never reach val/test; the GAN and classifiers train on train cells only."""

from __future__ import annotations

import json

import pytest
from support import account

from db import datasets as ds_db
from db.datasets import ImageRow
from wbc_core import jobs, review_model
from wbc_core.gan_runs import gan_training_rows
from wbc_core.importing import import_folder
from wbc_core.retrain import RetrainError, assert_trainable, build_training_set, start_classifier_run


@pytest.fixture()
def reviewed(wbc_home, tiny_folder):
    result = import_folder(tiny_folder, "tiny", size=32, user=account())
    ids = ds_db.add_images(result.dataset_id, [
        dict(origin="synthetic", class_name="platelet", split=None, sha256=f"s{i}", path=f"q{i}", width=32,
             height=32) for i in range(4)])
    review_model.decide(ids[:2], "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide(ids[2:3], "ann", "reject", user=account("reviewer", "ann"))
    return result.dataset_id, ids


def test_gan_learns_from_train_cells_only(reviewed):
    dataset_id, _ = reviewed
    rows = gan_training_rows(dataset_id)
    assert rows and {r.split for r in rows} == {"train"} and {r.origin for r in rows} == {"real"}
    assert len(rows) == sum(1 for r in ds_db.real_images(dataset_id) if r.split == "train")


@pytest.mark.parametrize(("recipe", "synthetic"), [("real", 0), ("curated", 2), ("all-synthetic", 4)])
def test_training_sets_hold_real_train_cells_and_candidates_only(reviewed, recipe, synthetic):
    dataset_id, ids = reviewed
    rows, labels = build_training_set(dataset_id, recipe)
    assert {r.split for r in rows if r.origin == "real"} == {"train"}
    assert sum(r.origin == "synthetic" for r in rows) == synthetic
    eval_ids = {r.id for r in ds_db.real_images(dataset_id) if r.split in ("val", "test")}
    assert eval_ids and not eval_ids & {r.id for r in rows}


def test_synthetic_cap_limits_candidates_per_class(reviewed):
    dataset_id, _ = reviewed
    rows, _ = build_training_set(dataset_id, "all-synthetic", synthetic_cap=0.25)
    real_platelets = sum(r.class_name == "platelet" and r.origin == "real" for r in rows)
    assert sum(r.origin == "synthetic" for r in rows) == min(4, int(0.25 * real_platelets))


def test_assert_trainable_refuses_val_and_test_cells():
    with pytest.raises(RetrainError, match="val/test"):
        assert_trainable([ImageRow(1, "a", "val", "real", "p", "h")])
    with pytest.raises(RetrainError):
        assert_trainable([ImageRow(2, "a", "test", "synthetic", "p", "h")])
    assert_trainable([ImageRow(3, "a", "train", "real", "p", "h"), ImageRow(4, "a", None, "synthetic", "p", "h")])


def test_classifier_run_freezes_its_training_set_and_records_its_hash(reviewed):
    dataset_id, ids = reviewed
    run_id = start_classifier_run(dataset_id, "curated", {"epochs": 1, "model": "small_cnn"}, launch=False,
                                  user=account())
    manifest = json.loads((jobs.run_dir(run_id) / "train_set.json").read_text())
    frozen = {m["id"] for m in manifest}
    assert set(ids[:2]) <= frozen and not set(ids[2:]) & frozen
    from db.runs import get_run

    run = get_run(run_id)
    assert run.train_set_size == len(manifest) and len(run.train_set_hash) == 64
    assert run.split_hash == ds_db.get_dataset(dataset_id).split_hash
    assert run.train_set_summary["by_origin_class"]["synthetic/platelet"] == 2
    # Later decisions do not change a run that was already created.
    review_model.decide([ids[3]], "ann", "accept", user=account("reviewer", "ann"))
    assert json.loads((jobs.run_dir(run_id) / "train_set.json").read_text()) == manifest

"""Classifier results: ablation and multi-seed groups trained in-process, saved test predictions on real test
cells only, bootstrap CIs, comparison against a baseline, model export, predict on both model formats, and
the embedding map.

One small home (5 demo classes at 32 px, 3 candidates per class with real image files, 2 accepted) with a
finished ablation and a finished 2-seed group is built once for the module; runs execute in this process
through worker.main (no subprocess, no second torch import).
"""

from __future__ import annotations

import hashlib
import json
import signal
import statistics
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import account, module_home

from db import datasets as ds_db
from db import runs as runs_db
from db.migrate import ensure_schema
from wbc_core import embedding, jobs, results, retrain, review_model, worker
from wbc_core.cli import main as cli
from wbc_core.context import current
from wbc_core.jobs import groups

DATASET = "cells"
# cosine: OneCycleLR divides by zero when a run has exactly 4 optimiser steps (reported to the classifier owner).
FAST = {"model": "small_cnn", "epochs": 1, "batch_size": 8, "num_threads": 1, "device": "cpu", "schedule": "cosine"}


# -- helpers shared with test_pages_train.py --------------------------------------------------------------



def add_candidates(dataset_id: int, per_class: int = 3, size: int = 32) -> list[int]:
    """Synthetic candidates with real PNG files (noisy copies of real train cells), as a GAN would add them."""
    info = ds_db.get_dataset(dataset_id)
    rng = np.random.default_rng(5)
    folder = current().home / "images" / f"dataset_{dataset_id}" / "synthetic" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in info.class_names:
        sources = ds_db.real_images(dataset_id, split="train", class_name=name)
        for i in range(per_class):
            with Image.open(current().home / sources[i % len(sources)].path) as im:
                pixels = np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float64)
            pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
            target = folder / f"{name}_{i}.png"
            Image.fromarray(pixels).save(target)
            rows.append({"origin": "synthetic", "class_name": name, "split": None, "width": size, "height": size,
                         "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                         "path": str(target.relative_to(current().home))})
    return ds_db.add_images(dataset_id, rows)


def run_in_process(run_id: int) -> runs_db.RunInfo:
    """Execute a queued run in this process, as its worker would."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert worker.main(run_id) == 0, runs_db.get_run(run_id).error
    finally:
        signal.signal(signal.SIGTERM, previous)
    info = runs_db.get_run(run_id)
    assert info.status == "succeeded", info.error
    return info


def build_home(root: Path) -> dict:
    """Dataset, candidates (2 of 3 per class accepted), a finished ablation and a finished 2-seed group."""
    from wbc_core import importing
    from wbc_core.data.demo import write_demo_folder

    ensure_schema()
    importing.import_folder(write_demo_folder(root / "folder", per_class=10, size=32, seed=1), DATASET, size=32,
                            user=account())
    dataset_id = ds_db.get_dataset(DATASET).id
    cand = add_candidates(dataset_id)
    accepted = [i for k, i in enumerate(cand) if k % 3 != 2]
    review_model.decide(accepted, "ann", "accept", user=account("reviewer", "ann"))
    review_model.decide([i for i in cand if i not in accepted], "ann", "reject", user=account("reviewer", "ann"))
    ablation = groups.start_ablation(DATASET, FAST, seeds=[0], launch=False, user=account())
    seeds = groups.start_seeds(DATASET, "real", [3, 4], FAST, launch=False, user=account())
    for run_id in [*ablation.run_ids, *seeds.run_ids]:
        run_in_process(run_id)
    return {"dataset_id": dataset_id, "candidates": cand, "accepted": accepted, "ablation": ablation,
            "seeds": seeds}


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("results")
    with module_home(root / "home"):
        yield build_home(root)


# -- hygiene and grouping --------------------------------------------------------------------------------


def test_every_arm_is_validated_and_scored_on_real_val_and_test_cells_only(built):
    dataset_id = built["dataset_id"]
    test_ids = sorted(r.id for r in ds_db.real_images(dataset_id, split="test"))
    val_ids = sorted(r.id for r in ds_db.real_images(dataset_id, split="val"))
    synthetic = set(built["candidates"])
    for run_id in built["ablation"].run_ids:
        pred = results.load_predictions(run_id)
        assert pred is not None
        assert sorted(pred.ids.tolist()) == test_ids and sorted(pred.val_ids.tolist()) == val_ids
        assert not synthetic & set(pred.ids.tolist()) and not synthetic & set(pred.val_ids.tolist())
        rows = ds_db.images_by_ids(pred.ids.tolist() + pred.val_ids.tolist())
        assert {(r.origin, r.split) for r in rows} == {("real", "test"), ("real", "val")}
        # The saved predictions are the ones the stored report was computed from.
        test = runs_db.get_run(run_id).result["test"]
        assert test["accuracy"] == pytest.approx(float((pred.y_true == pred.y_pred).mean()))
        assert np.allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)
        assert (pred.probs.argmax(axis=1) == pred.y_pred).all()


def test_ablation_arms_share_seed_and_settings_and_differ_only_in_recipe(built):
    runs = [runs_db.get_run(r) for r in built["ablation"].run_ids]
    assert [r.recipe for r in runs] == list(retrain.RECIPES)
    assert {r.group_name for r in runs} == {built["ablation"].group_name}
    assert built["ablation"].group_name.startswith("ablation-")
    assert {r.seed for r in runs} == {0}
    configs = [{k: v for k, v in r.config.items() if k != "recipe"} for r in runs]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0]["model"] == "small_cnn" and configs[0]["epochs"] == 1
    synthetic = [r.train_set_summary["by_origin_class"] for r in runs]
    n_syn = [sum(v for k, v in s.items() if k.startswith("synthetic/")) for s in synthetic]
    assert n_syn == [0, len(built["accepted"]), len(built["candidates"])]


def test_multi_seed_runs_form_one_group_with_mean_and_std(built):
    group = built["seeds"].group_name
    runs = [runs_db.get_run(r) for r in built["seeds"].run_ids]
    assert group.startswith("seeds-real-") and [r.seed for r in runs] == [3, 4]
    assert {r.group_name for r in runs} == {group} and {r.recipe for r in runs} == {"real"}
    [summary] = results.group_summary(groups=[group])
    values = [r.result["test"]["macro_f1"] for r in runs]
    assert summary["n"] == 2 and summary["runs"] == built["seeds"].run_ids
    assert summary["macro_f1_mean"] == pytest.approx(statistics.fmean(values))
    assert summary["macro_f1_std"] == pytest.approx(statistics.stdev(values))
    arms = {g["recipe"]: g for g in results.group_summary(built["dataset_id"])
            if g["group"] == built["ablation"].group_name}
    assert set(arms) == set(retrain.RECIPES) and all(a["n"] == 1 and a["macro_f1_std"] is None
                                                     for a in arms.values())


# -- CIs and comparison -----------------------------------------------------------------------------------


def test_job_stores_bootstrap_cis_that_contain_the_point_estimate(built):
    for run_id in built["ablation"].run_ids:
        test = runs_db.get_run(run_id).result["test"]
        for metric in ("accuracy", "macro_f1"):
            low, high = test["ci"][metric]
            assert 0.0 <= low <= test[metric] + 1e-9 and test[metric] - 1e-9 <= high <= 1.0


def _predictions(y_true, y_pred, ids=None) -> results.Predictions:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = np.arange(len(y_true)) if ids is None else np.asarray(ids)
    return results.Predictions(ids, y_true, y_pred, np.eye(3, dtype=np.float32)[y_pred], ["a", "b", "c"],
                               np.array([], dtype=np.int64))


def test_paired_delta_sees_a_real_difference_and_none_between_equal_models():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    worse = np.where(rng.random(300) < 0.3, (y + 1) % 3, y)
    delta = results.paired_delta(_predictions(y, y), _predictions(y, worse), n=300)
    assert delta["accuracy"]["delta"] == pytest.approx(float((worse == y).mean()) - 1.0)
    assert delta["accuracy"]["ci"][1] < 0 and delta["macro_f1"]["ci"][1] < 0
    same = results.paired_delta(_predictions(y, worse), _predictions(y, worse), n=50)
    assert same["macro_f1"] == {"delta": 0.0, "ci": [0.0, 0.0]}
    # Shuffled order of the same cells is aligned by id; other cells cannot be compared.
    order = rng.permutation(300)
    shuffled = _predictions(y[order], worse[order], ids=order)
    assert results.paired_delta(_predictions(y, worse), shuffled, n=50)["accuracy"]["delta"] == 0.0
    assert results.paired_delta(_predictions(y, y), _predictions(y, y, ids=np.arange(300) + 1000)) is None


def test_compare_reports_cis_and_per_class_deltas_against_the_baseline(built, capsys):
    real, curated, allsyn = built["ablation"].run_ids
    out = results.compare_runs([real, curated, allsyn], baseline=real)
    f1 = {r: runs_db.get_run(r).result["test"]["per_class_f1"] for r in (real, curated, allsyn)}
    for name, deltas in out["per_class_delta"].items():
        assert deltas[f"run {curated}"] == pytest.approx(f1[curated][name] - f1[real][name])
        assert f"run {real}" not in deltas
    rows = {r["run"]: r for r in out["runs"]}
    assert "delta_vs_baseline" not in rows[real]
    paired = rows[curated]["delta_vs_baseline"]["macro_f1"]
    assert paired["delta"] == pytest.approx(rows[curated]["macro_f1"] - rows[real]["macro_f1"])
    assert paired["ci"][0] <= paired["delta"] + 1e-9 <= paired["ci"][1] + 2e-9
    assert cli.main(["--json", "compare", "--runs", str(real), str(curated), "--baseline", str(real)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in payload["runs"]] == [real, curated] and payload["baseline"] == real
    assert payload["runs"][0]["macro_f1_ci"] == runs_db.get_run(real).result["test"]["ci"]["macro_f1"]
    assert cli.main(["compare", "--runs", str(real), str(curated), "--baseline", str(real)]) == 0
    text = capsys.readouterr().out
    assert "per-class test F1" in text and "baseline" in text and "[" in text


# -- model files and predict ----------------------------------------------------------------------------


def test_export_and_predict_with_checkpoint_torchscript_and_onnx_agree_with_the_job(built, tmp_path, capsys):
    run_id = built["ablation"].run_ids[1]
    assert cli.main(["--json", "export-model", "--run", str(run_id), "--out", str(tmp_path)]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    card = json.loads(Path(files["card"]).read_text())
    assert card["class_names"] == ds_db.get_dataset(DATASET).class_names and card["image_size"] == 32
    pred = results.load_predictions(run_id)
    rows = ds_db.images_by_ids(pred.ids[:4].tolist())
    images = [str(current().home / r.path) for r in rows]
    outputs = {}
    for fmt in ("checkpoint", "torchscript", "onnx"):
        assert cli.main(["--json", "predict", "--model", files[fmt], *images]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["format"] == fmt and [p["image"] for p in out["predictions"]] == images
        outputs[fmt] = np.array([[p["probabilities"][c] for c in out["class_names"]] for p in out["predictions"]])
        assert [p["top_class"] for p in out["predictions"]] == [out["class_names"][i] for i in
                                                                outputs[fmt].argmax(axis=1)]
    # Decoded exactly like the training data: the same probabilities the job saved for those test cells.
    assert np.allclose(outputs["checkpoint"], pred.probs[:4], atol=1e-4)
    assert np.allclose(outputs["torchscript"], pred.probs[:4], atol=1e-4)
    assert np.allclose(outputs["onnx"], pred.probs[:4], atol=1e-4)
    assert results.model_bytes(run_id, "onnx") == Path(files["onnx"]).read_bytes()
    assert cli.main(["predict", "--model", files["checkpoint"], images[0]]) == 0
    assert capsys.readouterr().out.startswith(f"{images[0]}: ")


def test_predict_and_downloads_refuse_plainly(built, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    assert cli.main(["predict", "--model", str(junk), str(junk)]) == 2
    assert "neither a wbc checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="format must be"):
        results.model_bytes(built["ablation"].run_ids[0], "pickle")
    blob = torch.load(__import__("io").BytesIO(results.model_bytes(built["ablation"].run_ids[0], "checkpoint")),
                      weights_only=True)
    assert blob["format"] == "wbc-classifier" and "state_dict" in blob


# -- embedding map ----------------------------------------------------------------------------------------


def test_tsne_keeps_separated_clusters_apart():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    features = torch.randn(3, 64, generator=gen)[labels] * 4 + torch.randn(90, 64, generator=gen)
    y = embedding.tsne(features, embedding.TSNEConfig(iterations=300, exaggeration_iterations=100))
    assert y.shape == (90, 2) and torch.isfinite(y).all()
    d = torch.cdist(y, y)
    d.fill_diagonal_(float("inf"))
    assert (labels[d.argmin(dim=1)] == labels).float().mean() > 0.95


def test_embedding_map_has_one_row_per_sampled_cell_and_is_cached(built):
    run_id = built["ablation"].run_ids[1]
    assert embedding.cached_embedding(run_id, 40) is None
    frame = embedding.embedding_map(run_id, max_points=40, config=embedding.TSNEConfig(iterations=100))
    assert list(frame.columns) == embedding.COLUMNS and len(frame) == 40
    assert set(frame["origin"]) == set(embedding.ORIGINS) and frame["image_id"].is_unique
    assert set(frame["class"]) <= set(ds_db.get_dataset(DATASET).class_names)
    trained = {m["id"] for m in json.loads((jobs.run_dir(run_id) / "train_set.json").read_text())}
    assert frame["in_train_set"].tolist() == [i in trained for i in frame["image_id"]]
    assert frame[frame["origin"] == "real train"]["in_train_set"].all()
    assert not frame[frame["origin"] == "real test"]["in_train_set"].any()
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    cached = embedding.cached_embedding(run_id, 40)
    assert cached is not None and cached["image_id"].tolist() == frame["image_id"].tolist()
    with pytest.raises(ValueError, match="max_points"):
        embedding.embedding_map(run_id, max_points=5000)


def test_embedding_map_by_umap_is_cached_apart_from_the_tsne_map(built):
    run_id = built["ablation"].run_ids[1]
    frame = embedding.embedding_map(run_id, max_points=30, method="umap")
    assert list(frame.columns) == embedding.COLUMNS and len(frame) == 30
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    assert embedding.cached_embedding(run_id, 30, method="umap") is not None
    assert embedding.cached_embedding(run_id, 30) is None  # the t-SNE map of these settings is not computed yet
    with pytest.raises(ValueError, match="one of tsne, umap"):
        embedding.embedding_map(run_id, max_points=30, method="isomap")

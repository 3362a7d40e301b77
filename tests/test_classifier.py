"""Tests for wbc_core.classifier: config, presets, models, metrics, training, checkpoints and export."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from wbc_core.classifier import (
    BATCH_METRICS,
    EPOCH_METRICS,
    PRESETS,
    AugmentPreset,
    ClassifierConfig,
    accuracy,
    bootstrap_ci,
    build_model,
    classification_report,
    compute_limit_epoch_seconds,
    compute_mean_std,
    evaluate,
    export_torchscript,
    extract_features,
    get_eval_transform,
    get_train_transform,
    load_classifier,
    load_torchscript,
    macro_f1,
    normalize,
    predict_proba,
    sampling_weights,
    train_classifier,
)
from wbc_core.classifier.models import load_pretrained_weights
from wbc_core.classifier.presets import BatchAugment
from wbc_core.types import LabelledImages, ProgressEvent

CLASSES = ["red", "green", "blue"]
SIZE = 32


def make_blobs(n: int, seed: int) -> LabelledImages:
    """Easy 3-class data: one coloured disc of random position/radius per image on a noisy light background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    colours = torch.tensor([[200.0, 40, 40], [40, 200, 40], [40, 40, 200]])
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centre = torch.randint(9, SIZE - 9, (n, 2), generator=g)
    radius = torch.randint(4, 8, (n,), generator=g)
    disc = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2 <= radius[:, None, None] ** 2
    images = torch.where(disc[:, None], colours[labels][:, :, None, None], torch.tensor(230.0))
    images = images + torch.randn(images.shape, generator=g) * 20
    return LabelledImages(images.clamp(0, 255).round().to(torch.uint8), labels)


def fast_config(**overrides: object) -> ClassifierConfig:
    # One thread: these models are tiny, and two OpenMP threads on a shared 2-core machine can spin-wait
    # each other into 20x slowdowns.
    base = ClassifierConfig(model="small_cnn", image_size=SIZE, epochs=3, batch_size=32, device="cpu",
                            progress_every_s=1e-4, num_threads=1)
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def data() -> tuple[LabelledImages, LabelledImages]:
    return make_blobs(240, seed=1), make_blobs(90, seed=2)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[object, list[ProgressEvent]]:
    train, val = data
    events: list[ProgressEvent] = []
    result = train_classifier(train, val, CLASSES, fast_config(), tmp_path_factory.mktemp("run"), events.append)
    return result, events


# --- config -------------------------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    cfg = ClassifierConfig(model="mobilenet_v3_small", schedule="cosine", pretrained_path=Path("/x/w.pt"))
    restored = ClassifierConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    assert restored.pretrained_path == "/x/w.pt"


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("model", "resnet9000", "model must be"),
    ("image_size", 8, "image_size"),
    ("epochs", 0, "epochs"),
    ("batch_size", 1, "batch_size"),
    ("optimizer", "adam", "optimizer"),
    ("lr", 0.0, "lr"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("schedule", "step", "schedule"),
    ("augment", "heavy", "augment"),
    ("early_stopping_patience", -1, "early_stopping_patience"),
    ("device", "gpu", "device"),
    ("epochs", 2.5, "epochs must be int"),
    ("amp", 1, "amp must be bool"),
])
def test_config_rejects_bad_values(field, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        ClassifierConfig(**{field: value})


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown ClassifierConfig keys"):
        ClassifierConfig.from_dict({"epochs": 3, "learning_rate": 0.1})


# --- metrics ------------------------------------------------------------------------------------------------


def test_classification_report_matches_hand_computed_values():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 3, 2]  # class 3 is predicted but has no support; class 4 never occurs at all
    names = ["a", "b", "c", "d", "e"]
    rep = classification_report(torch.tensor(y_true), torch.tensor(y_pred), 5, names)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["per_class_precision"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 1.0, "d": 0.0, "e": 0.0})
    assert rep["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0, "d": 0.0, "e": 0.0})
    assert rep["per_class_f1"] == pytest.approx({"a": 0.8, "b": 0.5, "c": 1.0, "d": 0.0, "e": 0.0})
    # Macro over the classes seen in y_true or y_pred (a..d); "e" appears nowhere and is left out.
    assert rep["macro_f1"] == pytest.approx((0.8 + 0.5 + 1.0 + 0.0) / 4)
    assert macro_f1(y_true, y_pred) == pytest.approx(rep["macro_f1"])
    assert rep["per_class_support"] == {"a": 3, "b": 2, "c": 1, "d": 0, "e": 0}
    assert rep["confusion"][0] == [2, 1, 0, 0, 0]
    assert rep["confusion"][1] == [0, 1, 0, 1, 0]
    assert rep["confusion"][3] == [0, 0, 0, 0, 0]
    json.dumps(rep, allow_nan=False)  # JSON-safe and NaN-free


def test_classification_report_degenerate_inputs_have_no_nan():
    rep = classification_report([1, 1, 1], [0, 0, 0], 3, ["a", "b", "c"])
    assert rep["accuracy"] == 0.0 and rep["macro_f1"] == 0.0
    empty = classification_report([], [], 2, ["a", "b"])
    assert empty["num_samples"] == 0 and empty["macro_f1"] == 0.0
    json.dumps([rep, empty], allow_nan=False)
    with pytest.raises(ValueError, match="out of range"):
        classification_report([0, 3], [0, 0], 2, ["a", "b"])


@pytest.mark.parametrize("metric", [accuracy, macro_f1])
def test_bootstrap_ci_is_ordered_and_contains_point_estimate(metric):
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 300)
    y_pred = np.where(rng.random(300) < 0.8, y_true, rng.integers(0, 3, 300))
    low, high = bootstrap_ci(y_true, y_pred, metric, n=300, seed=0)
    point = metric(y_true, y_pred)
    assert low < point < high
    assert high - low < 0.2  # 300 samples: the interval is informative, not [0, 1]
    assert bootstrap_ci(y_true, y_pred, metric, n=300, seed=0) == (low, high)


# --- presets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_keep_dtype_shape_and_range(name, dtype):
    x = make_blobs(16, seed=3).images
    x = x if dtype == torch.uint8 else x.float() / 255
    out = get_train_transform(name)(x, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.shape == x.shape
    assert float(out.min()) >= 0 and float(out.max()) <= (255 if dtype == torch.uint8 else 1)


def test_none_preset_and_eval_transform_are_identity():
    x = make_blobs(8, seed=4).images
    assert torch.equal(get_train_transform("none")(x), x)
    assert torch.equal(get_eval_transform()(x), x)


def test_cell_preset_changes_samples_independently():
    x = make_blobs(1, seed=5).images.expand(32, -1, -1, -1).clone()
    out = get_train_transform("cell")(x, generator=torch.Generator().manual_seed(0))
    distinct = {out[i].numpy().tobytes() for i in range(32)}
    assert len(distinct) > 16  # per-sample randomness, not one draw for the whole batch


def test_flips_and_rot90_preserve_pixel_multiset():
    geometric = BatchAugment(AugmentPreset(hflip=True, vflip=True, rot90=True, brightness=0.0, contrast=0.0,
                                           saturation=0.0, hue=0.0))
    x = make_blobs(32, seed=6).images
    out = geometric(x, generator=torch.Generator().manual_seed(1))
    assert (out != x).flatten(1).any(dim=1).sum() > 16  # most samples really moved
    for a, b in zip(x, out, strict=True):
        assert torch.equal(a.flatten(1).sort(dim=1).values, b.flatten(1).sort(dim=1).values)


def test_normalize_accepts_uint8_and_float_and_standardises():
    x = make_blobs(64, seed=7).images
    mean, std = compute_mean_std(x)
    z = normalize(x, mean, std)
    assert z.dtype == torch.float32
    assert torch.allclose(z, normalize(x.float() / 255, mean, std), atol=1e-5)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


# --- models -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "mobilenet_v3_small"])
def test_build_model_produces_logits(name):
    net = build_model(name, 5, SIZE).eval()
    with torch.no_grad():
        assert net(torch.randn(3, 3, SIZE, SIZE)).shape == (3, 5)


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("not_a_net", 3, SIZE)


# --- training -----------------------------------------------------------------------------------------------


def test_training_reaches_high_accuracy_and_reports_progress(trained, data):
    result, events = trained
    assert result.val["accuracy"] > 0.9 and result.val["macro_f1"] > 0.9
    assert result.epochs_done == 3 and not result.stopped and result.checkpoint.is_file()
    epoch_events = [e for e in events if "val_macro_f1" in e.metrics]
    assert [e.step for e in epoch_events] == [1, 2, 3] and all(e.total == 3 for e in epoch_events)
    for e in epoch_events:
        assert set(EPOCH_METRICS) <= set(e.metrics)
        assert all(math.isfinite(v) for v in e.metrics.values())
        assert e.artifacts["checkpoint"] == str(result.checkpoint)
    batch_events = [e for e in events if "train_loss_running" in e.metrics]
    assert batch_events and all(set(BATCH_METRICS) <= set(e.metrics) for e in batch_events)
    assert all(0 < e.metrics["epoch_fraction"] <= 1 for e in batch_events)
    # The report kept is the best epoch's, and evaluating the checkpoint reproduces it.
    assert evaluate(result.checkpoint, data[1], CLASSES)["macro_f1"] == pytest.approx(result.val["macro_f1"])


def test_checkpoint_round_trips_and_is_self_describing(trained, data):
    result, _ = trained
    blob = torch.load(result.checkpoint, weights_only=True)
    assert blob["format"] == "wbc-classifier" and blob["format_version"] == 1
    assert blob["class_names"] == CLASSES and blob["image_size"] == SIZE
    assert set(blob["normalization"]) >= {"mean", "std"}
    loaded = load_classifier(result.checkpoint)
    assert loaded.config == fast_config() and loaded.class_names == CLASSES
    assert loaded.epoch == result.best_epoch and not loaded.model.training
    probs = predict_proba(loaded, data[1].images)
    assert probs.shape == (90, 3) and torch.allclose(probs.sum(dim=1), torch.ones(90), atol=1e-5)
    assert (probs.argmax(dim=1) == data[1].labels).float().mean() == pytest.approx(result.val["accuracy"])
    features = extract_features(loaded, data[1].images[:7])
    assert features.shape == (7, 256)


def test_load_classifier_refuses_foreign_files(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {}, "epoch": 1}, plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    for path in (plain, garbage, tmp_path / "missing.pt"):
        with pytest.raises(ValueError):
            load_classifier(path)


def test_should_stop_ends_run_with_a_checkpoint(data, tmp_path):
    calls = {"n": 0}

    def stop_during_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 8 + 3  # 240 images / 32 = 8 batches per epoch; stop 3 batches into epoch 2

    result = train_classifier(*data, CLASSES, fast_config(epochs=5), tmp_path, should_stop=stop_during_epoch_two)
    assert result.stopped and result.epochs_done == 1 and result.best_epoch == 1
    assert load_classifier(result.checkpoint).epoch == 1


def test_stop_before_first_epoch_still_saves_evaluated_checkpoint(data, tmp_path):
    result = train_classifier(*data, CLASSES, fast_config(), tmp_path, should_stop=lambda: True)
    assert result.stopped and result.epochs_done == 0 and result.best_epoch == 0
    assert result.val["num_samples"] == 90 and load_classifier(result.checkpoint).epoch == 0


def test_early_stopping_stops_after_patience(data, tmp_path):
    result = train_classifier(*data, CLASSES, fast_config(epochs=10, early_stopping_patience=1), tmp_path)
    assert result.early_stopped and not result.stopped
    assert result.epochs_done == result.best_epoch + 1 < 10


def test_val_every_validates_every_nth_epoch_and_the_last_and_keeps_the_best_of_those(data, tmp_path):
    events = []
    result = train_classifier(*data, CLASSES, fast_config(epochs=5, val_every=2), tmp_path, progress=events.append)
    validated = [int(h["epoch"]) for h in result.history if "val_macro_f1" in h]
    assert validated == [2, 4, 5] and [int(h["epoch"]) for h in result.history] == [1, 2, 3, 4, 5]
    assert result.best_epoch in validated and result.epochs_done == 5
    assert sum("validating" in e.message for e in events) == 3
    assert load_classifier(result.checkpoint).epoch == result.best_epoch
    with pytest.raises(ValueError, match="val_every"):
        fast_config(val_every=0)


def test_same_seed_gives_same_result_and_leaves_global_rng_alone(data, tmp_path):
    torch.manual_seed(123)
    rng_before = torch.random.get_rng_state()
    a = train_classifier(*data, CLASSES, fast_config(epochs=1), tmp_path / "a")
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    b = train_classifier(*data, CLASSES, fast_config(epochs=1), tmp_path / "b")
    c = train_classifier(*data, CLASSES, fast_config(epochs=1, seed=1), tmp_path / "c")
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"] != c.history[0]["train_loss"]
    assert a.val == b.val
    sa, sb = (torch.load(r.checkpoint, weights_only=True)["state_dict"] for r in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_validates_inputs(data, tmp_path):
    train, val = data
    with pytest.raises(ValueError, match="image_size"):
        train_classifier(train, val, CLASSES, fast_config(image_size=64), tmp_path)
    empty = LabelledImages(torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="train set is empty"):
        train_classifier(empty, val, CLASSES, fast_config(), tmp_path)
    with pytest.raises(ValueError, match="labels span"):
        train_classifier(train, val, CLASSES[:2], fast_config(), tmp_path)
    with pytest.raises(ValueError, match="train_weights"):
        train_classifier(train, val, CLASSES, fast_config(), tmp_path, train_weights=-torch.ones(len(train)))


def test_sampling_weights_balance_classes_and_respect_per_sample_weights():
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    w = sampling_weights(labels, 3, balanced=True)
    masses = torch.bincount(labels, weights=w, minlength=3)
    assert torch.allclose(masses, torch.full((3,), float(masses[0]), dtype=masses.dtype))
    tw = torch.tensor([1.0, 1.0, 1.0, 3.0, 0.0, 1.0, 1.0])  # class 1's only sample has weight 0
    w = sampling_weights(labels, 3, balanced=True, train_weights=tw)
    assert w[4] == 0 and torch.isfinite(w).all()
    assert w[3] == pytest.approx(3 * float(w[0]))  # within a class, proportional to train_weights
    assert float(w[:4].sum()) == pytest.approx(float(w[5:].sum()))
    assert sampling_weights(labels, 3, balanced=False) is None


def test_pretrained_weights_load_except_mismatched_head(trained):
    result, _ = trained
    net = build_model("small_cnn", 4, SIZE)  # 4 classes: the 3-class head must be skipped
    copied = load_pretrained_weights(net, result.checkpoint)
    total = len(net.state_dict())
    assert copied == total - 2  # everything except fc.weight and fc.bias
    expected = torch.load(result.checkpoint, weights_only=True)["state_dict"]["features.0.weight"]
    assert torch.equal(net.state_dict()["features.0.weight"], expected)


def test_torchscript_export_matches_eager(trained, data, tmp_path):
    result, _ = trained
    path = export_torchscript(result.checkpoint, tmp_path / "model.torchscript.pt")
    module, meta = load_torchscript(path)
    assert meta["class_names"] == CLASSES and meta["image_size"] == SIZE
    images = data[1].images[:13]
    with torch.no_grad():
        exported = module(images)
    eager = predict_proba(load_classifier(result.checkpoint), images)
    assert torch.allclose(exported, eager, atol=1e-5)


def test_compute_limit_epoch_seconds_is_positive(data):
    seconds = compute_limit_epoch_seconds(data[0], fast_config(), max_batches=2)
    assert 0 < seconds < 60


@pytest.mark.parametrize("eager_nhwc", [False, True])
def test_the_compute_limit_runs_in_the_trainers_eager_layout(data, eager_nhwc, monkeypatch):
    """The limit must time the layout the trainer would train in: on the AVX2 EPYC the trainer (eager NHWC) ran
    above a limit timed in NCHW."""
    from wbc_core import compile as wbc_compile
    from wbc_core.classifier import bench

    row = wbc_compile.Measured(1.0, 2.0, 1.0, "test", eager_channels_last=eager_nhwc)
    monkeypatch.setattr(wbc_compile, "MEASURED", {("classifier", "cpu", "fp32"): row})
    layouts = []
    real_build = bench.build_model

    def build(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        net = real_build(*args, **kwargs)
        net.register_forward_pre_hook(lambda _m, inputs: layouts.append(
            inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous()))
        return net

    monkeypatch.setattr(bench, "build_model", build)
    compute_limit_epoch_seconds(data[0], fast_config(model="resnet18", batch_size=8), max_batches=1)
    assert layouts and set(layouts) == {eager_nhwc}


@pytest.mark.parametrize("total_steps", range(1, 12))
@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_work_for_very_short_runs(total_steps, schedule):
    from wbc_core.classifier.train import make_scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer, ClassifierConfig(model="small_cnn", schedule=schedule), total_steps)
    for _ in range(total_steps):
        optimizer.step()
        scheduler.step()
    assert all(group["lr"] >= 0 for group in optimizer.param_groups)

"""Results of classifier runs: saved test predictions, bootstrap CIs, run comparison, model files, predict.

Every number here is measured on a dataset's real test cells; the per-sample predictions a job saves
make confidence intervals and paired comparisons (same test cells, two models) possible afterwards.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from db import runs as runs_db
from db.vocabulary import RECIPES
from wbc_core import jobs
from wbc_core.context import BoundedCache, current

PREDICTIONS_FILE = "test_predictions.npz"  # per-sample test predictions, written by every classifier job
TORCHSCRIPT_FILE = "model_torchscript.pt"  # written by the classifier job, next to model.pt
ONNX_FILE = "model.onnx"  # written by export-model on request, next to model.pt
MODEL_CARD_FILE = "model_card.json"  # class map and preprocessing, next to model.pt
BOOTSTRAP_SAMPLES = 1000  # resamples per interval: percentile CIs are stable to ~0.002 at this count
CONFIDENCE = 0.95
SMALL_CLASS_TEST_CELLS = 20  # fewer real test cells than this in a class: its F1 (and the macro mean) is shaky
CHANCE_MARGIN = 0.05  # macro-F1 at most 1/num_classes + this is flagged "at or near chance level"


@dataclass(frozen=True)
class Predictions:
    """A run's per-sample predictions on the real test cells."""

    ids: np.ndarray  # int64 [N] image ids of the test cells, in scoring order
    y_true: np.ndarray  # int64 [N] true class index
    y_pred: np.ndarray  # int64 [N] predicted class index (argmax of probs)
    probs: np.ndarray  # float32 [N, K] class probabilities
    class_names: list[str]  # index -> class name
    val_ids: np.ndarray  # int64 [M] ids of the real val cells the best epoch was chosen on


def score_and_save(checkpoint: Path, test: Any, test_ids: Sequence[int], val_ids: Sequence[int],
                   class_names: list[str], device: str, out_dir: Path) -> dict[str, Any]:
    """Score a checkpoint on test cells, save per-sample predictions, return the report with bootstrap CIs."""
    from wbc_core.classifier import load_classifier, predict_logits
    from wbc_core.classifier.inference import report_from_logits

    loaded = load_classifier(checkpoint, device)
    if loaded.class_names != list(class_names):
        raise ValueError(f"checkpoint classes {loaded.class_names} differ from the dataset's {class_names}")
    logits = predict_logits(loaded, test.images, device)
    report = report_from_logits(logits, test.labels, class_names)
    probs = logits.softmax(dim=1).numpy().astype(np.float32)
    y_true = test.labels.numpy().astype(np.int64)
    y_pred = probs.argmax(axis=1).astype(np.int64)
    np.savez_compressed(Path(out_dir) / PREDICTIONS_FILE, ids=np.asarray(test_ids, dtype=np.int64), y_true=y_true,
                        y_pred=y_pred, probs=probs, class_names=np.asarray(class_names, dtype=str),
                        val_ids=np.asarray(val_ids, dtype=np.int64))
    report["class_names"] = list(class_names)
    report["ci"] = confidence_intervals(y_true, y_pred)
    return report


# -- caveats: how far a headline test number can be trusted ----------------------------------------------

def chance_macro_f1(num_classes: int) -> float:
    """Macro-F1 of guessing: 1/K for uniform random guesses on balanced classes. A majority-class predictor scores
    2p/((1+p)K) <= 1/K, so 1/K is the larger of the two baselines and the one runs are held against."""
    return 1.0 / num_classes if num_classes else 0.0


def test_caveats(result: dict[str, Any]) -> dict[str, Any]:
    """What a run's headline test numbers rest on: test-cell count, 95% CI, classes with few test cells, and
    whether macro-F1 is at or near chance (<= 1/num_classes + CHANCE_MARGIN). warnings: plain sentences."""
    test = (result or {}).get("test") or {}
    support = {str(k): int(v) for k, v in (test.get("per_class_support") or {}).items()}
    if not support and test.get("confusion") and test.get("class_names"):  # reports older than per-class support
        support = {str(n): int(sum(row)) for n, row in zip(test["class_names"], test["confusion"], strict=False)}
    classes = len(support or test.get("per_class_f1") or {})
    cells = result.get("test_size") if result else None
    cells = int(cells if cells is not None else test.get("num_samples") or sum(support.values()))
    ci = (test.get("ci") or {}).get("macro_f1")
    small = {name: n for name, n in support.items() if n < SMALL_CLASS_TEST_CELLS}
    f1 = test.get("macro_f1")
    chance = chance_macro_f1(classes)
    near = f1 is not None and classes > 1 and float(f1) <= chance + CHANCE_MARGIN
    warnings = []
    if near:
        warnings.append(f"at or near chance level: macro-F1 {float(f1):.3f} against {chance:.3f} for guessing "
                        f"among {classes} classes")
    if small:
        listed = ", ".join(f"{name} {n}" for name, n in sorted(small.items(), key=lambda kv: kv[1]))
        warnings.append(f"few test cells (under {SMALL_CLASS_TEST_CELLS}) in {len(small)} class"
                        f"{'es' if len(small) != 1 else ''}: {listed}; their F1 can swing widely")
    return {"test_cells": cells, "macro_f1": f1, "accuracy": test.get("accuracy"), "macro_f1_ci": ci,
            "accuracy_ci": (test.get("ci") or {}).get("accuracy"), "small_classes": small, "near_chance": near,
            "chance_macro_f1": chance, "warnings": warnings}


def headline(result: dict[str, Any]) -> str:
    """'macro-F1 0.8123 [95% CI 0.79–0.83], accuracy 0.85 on 1,234 real test cells' (no test: '')."""
    c = test_caveats(result)
    if c["macro_f1"] is None:
        return ""
    ci = c["macro_f1_ci"]
    text = f"macro-F1 {float(c['macro_f1']):.4f}" + (f" [95% CI {ci[0]:.3f}–{ci[1]:.3f}]" if ci else "")
    if c["accuracy"] is not None:
        text += f", accuracy {float(c['accuracy']):.4f}"
    return text + f" on {c['test_cells']:,} real test cell{'s' if c['test_cells'] != 1 else ''}"


def load_predictions(run_id: int) -> Predictions | None:
    """The saved test predictions of a run, or None (run without test cells, or older than this feature)."""
    path = jobs.run_dir(run_id) / PREDICTIONS_FILE
    return _read_predictions(path) if path.exists() else None


def _read_predictions(path: Path) -> Predictions:
    with np.load(path, allow_pickle=False) as blob:
        return Predictions(ids=blob["ids"], y_true=blob["y_true"], y_pred=blob["y_pred"], probs=blob["probs"],
                           class_names=[str(c) for c in blob["class_names"]], val_ids=blob["val_ids"])


def confidence_intervals(y_true: np.ndarray, y_pred: np.ndarray, n: int = BOOTSTRAP_SAMPLES) -> dict[str, Any]:
    """Percentile bootstrap CIs of accuracy and macro-F1 over test cells (JSON-safe)."""
    from wbc_core.classifier.metrics import bootstrap_intervals

    ci = bootstrap_intervals(y_true, y_pred, n=n, confidence=CONFIDENCE)  # one set of resamples for both
    return {"accuracy": list(ci["accuracy"]), "macro_f1": list(ci["macro_f1"]), "confidence": CONFIDENCE,
            "samples": n, "method": "percentile bootstrap over real test cells"}


def paired_delta(base: Predictions, other: Predictions, n: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0) -> dict[str, dict[str, Any]] | None:
    """other - base for accuracy and macro-F1 with a paired bootstrap CI; None unless both saw the same cells."""
    from wbc_core.classifier.metrics import paired_bootstrap_delta

    if base.ids.shape != other.ids.shape or set(base.ids.tolist()) != set(other.ids.tolist()):
        return None
    order = {int(i): k for k, i in enumerate(other.ids.tolist())}
    aligned = other.y_pred[[order[int(i)] for i in base.ids.tolist()]]
    return paired_bootstrap_delta(base.y_true, base.y_pred, aligned, n=n, seed=seed, confidence=CONFIDENCE)


def compare_runs(run_ids: Sequence[int], baseline: int | None = None) -> dict[str, Any]:
    """Test metrics with CIs per run, per-class F1, and deltas (paired CIs) against a baseline run."""
    infos = {r: runs_db.get_run(r) for r in run_ids}
    if baseline is not None and baseline not in infos:
        infos[baseline] = runs_db.get_run(baseline)
    base_f1 = ((infos[baseline].result.get("test") or {}).get("per_class_f1") or {}) if baseline is not None else {}
    rows: list[dict[str, Any]] = []
    per_class: dict[str, dict[str, float]] = defaultdict(dict)
    deltas: dict[str, dict[str, float]] = defaultdict(dict)
    for run_id in run_ids:
        info = infos[run_id]
        test = info.result.get("test") or {}
        ci = test.get("ci") or {}
        row: dict[str, Any] = {"run": run_id, "recipe": info.recipe, "seed": info.seed, "group": info.group_name,
                               "status": info.status, "model": info.config.get("model"),
                               "accuracy": test.get("accuracy"), "accuracy_ci": ci.get("accuracy"),
                               "macro_f1": test.get("macro_f1"), "macro_f1_ci": ci.get("macro_f1"),
                               "test_size": info.result.get("test_size"), "train_set_hash": info.train_set_hash,
                               "warnings": test_caveats(info.result)["warnings"] if test else []}
        for name, f1 in (test.get("per_class_f1") or {}).items():
            per_class[name][f"run {run_id}"] = f1
            if baseline is not None and run_id != baseline and name in base_f1:
                deltas[name][f"run {run_id}"] = f1 - base_f1[name]
        if baseline is not None and run_id != baseline:
            row["delta_vs_baseline"] = _paired_runs(baseline, run_id)
        rows.append(row)
    return {"baseline": baseline, "runs": rows, "per_class_f1": dict(per_class),
            "per_class_delta": dict(deltas)}


def default_baseline(run_ids: Sequence[int]) -> tuple[int | None, str]:
    """The baseline the first of run_ids is best compared with, and a sentence saying which it is and why.

    The same group's real arm (same seed first), else the newest succeeded real run of the same model on the
    same dataset; never a real run of another model or group (that made a Δ meaningless)."""
    if not run_ids:
        return None, "no run picked, so no baseline"
    ref = runs_db.get_run(run_ids[0])
    reals = [r for r in runs_db.list_runs(dataset_id=ref.dataset_id, kind="classifier", status="succeeded",
                                          limit=100_000) if r.recipe == "real" and (r.result.get("test") or {})]
    if ref.group_name:
        arm = sorted((r for r in reals if r.group_name == ref.group_name),
                     key=lambda r: (r.seed != ref.seed, -r.id))
        if arm:
            return arm[0].id, (f"run {arm[0].id}: the real arm of group {ref.group_name} (seed {arm[0].seed}), "
                               f"run {ref.id}'s own group")
    model = ref.config.get("model")
    same = [r for r in reals if r.config.get("model") == model]
    if same:
        best = max(same, key=lambda r: r.id)
        if best.id == ref.id:
            return best.id, f"run {best.id} itself (the newest real run of {model} on this dataset)"
        return best.id, f"run {best.id}: the newest real run of the same model ({model}) on this dataset"
    return None, f"no succeeded real run of {model} on this dataset yet, so no baseline"


def _paired_runs(baseline: int, run_id: int) -> dict[str, dict[str, Any]] | None:
    """paired_delta of two runs' saved predictions, cached per file version (pages recompute on every rerun)."""
    files = [jobs.run_dir(r) / PREDICTIONS_FILE for r in (baseline, run_id)]
    if not all(f.exists() for f in files):
        return None
    key = tuple((str(f), f.stat().st_mtime_ns) for f in files)
    cache = current().caches.get("results.paired", lambda: BoundedCache(256))
    return cache.get_or_compute(key, lambda: paired_delta(*(_read_predictions(f) for f in files)))


def group_summary(dataset_id: int | None = None, groups: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Mean ± std (over seeds) of test accuracy and macro-F1 per group and arm (recipe), succeeded runs only."""
    arms: dict[tuple[str, str], list[runs_db.RunInfo]] = defaultdict(list)
    for r in runs_db.list_runs(dataset_id=dataset_id, kind="classifier", status="succeeded", limit=100_000):
        if r.group_name and (groups is None or r.group_name in groups) and (r.result.get("test") or {}):
            arms[(r.group_name, r.recipe or "")].append(r)
    newest = defaultdict(int)
    for (group, _), members in arms.items():
        newest[group] = max(newest[group], *(r.id for r in members))
    order = {name: k for k, name in enumerate(RECIPES)}
    out: list[dict[str, Any]] = []
    # Newest group first; within a group the baseline arm first, then the recipes in their usual order.
    for (group, recipe), members in sorted(arms.items(), key=lambda kv: (-newest[kv[0][0]], order.get(kv[0][1], 9),
                                                                         kv[0][1])):
        members.sort(key=lambda r: r.seed)
        row: dict[str, Any] = {"group": group, "recipe": recipe, "runs": [r.id for r in members],
                               "seeds": [r.seed for r in members], "n": len(members)}
        for metric in ("accuracy", "macro_f1"):
            values = [float(r.result["test"][metric]) for r in members]
            row[f"{metric}_mean"] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None  # sample std over seeds
        classes = sorted({c for r in members for c in (r.result["test"].get("per_class_f1") or {})})
        row["per_class_f1_mean"] = {c: statistics.fmean([r.result["test"]["per_class_f1"].get(c, 0.0)
                                                         for r in members]) for c in classes}
        out.append(row)
    return out


# -- model files ----------------------------------------------------------------------------------------

def checkpoint_path(run_id: int) -> Path:
    """model.pt of a finished classifier run (weights, class names, normalisation, config)."""
    info = runs_db.get_run(run_id)
    if info.kind != "classifier":
        raise ValueError(f"run {run_id} is a {info.kind} run, not a classifier run")
    rel = info.result.get("model_path")
    path = current().home / rel if rel else jobs.run_dir(run_id) / "model.pt"
    if info.active or not path.is_file():
        raise ValueError(f"run {run_id} has no trained model yet (status {info.status})")
    return path


def torchscript_path(run_id: int) -> Path:
    """The run's TorchScript export (uint8 images in, probabilities out); the classifier job writes it."""
    return _export(run_id, TORCHSCRIPT_FILE, "export_torchscript")


def onnx_path(run_id: int) -> Path:
    """The run's ONNX export (uint8 images in, probabilities out); written on request (export-model)."""
    return _export(run_id, ONNX_FILE, "export_onnx")


def _export(run_id: int, filename: str, exporter: str) -> Path:
    """The export next to a run's checkpoint, (re)written by wbc_core.classifier.<exporter> when missing or older."""
    return _export_of(checkpoint_path(run_id), filename, exporter)


def _export_of(source: Path, filename: str, exporter: str) -> Path:
    target = source.with_name(filename)
    if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
        import wbc_core.classifier as classifier  # torch only here, in the process that exports

        getattr(classifier, exporter)(source, target)
    return target


def onnx_ready(run_id: int) -> bool:
    """Whether the run's ONNX file exists (the Dashboard offers it for download only then)."""
    source = checkpoint_path(run_id)
    target = source.with_name(ONNX_FILE)
    return target.exists() and target.stat().st_mtime >= source.stat().st_mtime


def model_card(run_id: int) -> dict[str, Any]:
    """Class map and preprocessing of a run's model, as shipped next to the weights (written by the job)."""
    source = checkpoint_path(run_id)
    card_file = source.with_name(MODEL_CARD_FILE)
    if card_file.exists() and card_file.stat().st_mtime >= source.stat().st_mtime:
        return json.loads(card_file.read_text())
    return _card(run_id, source, runs_db.get_run(run_id).result.get("test"))


def _card(run_id: int, source: Path, test: dict[str, Any] | None) -> dict[str, Any]:
    from wbc_core.classifier import load_classifier

    loaded = load_classifier(source)
    info = runs_db.get_run(run_id)
    return {"run": run_id, "model": loaded.config.model, "class_names": loaded.class_names,
            "image_size": loaded.image_size, "normalization": loaded.normalization,
            "input": "RGB, centre-cropped to a square, resized (bicubic) to image_size, uint8 0..255, "
                     "divided by 255 then normalised with mean/std (the TorchScript file does this itself)",
            "epoch": loaded.epoch, "recipe": info.recipe, "seed": info.seed, "train_set_hash": info.train_set_hash,
            "test": {k: (test or {}).get(k) for k in ("accuracy", "macro_f1", "ci")}}


def write_exports(run_id: int, checkpoint: Path, test: dict[str, Any] | None) -> None:
    """Write the TorchScript export and the model card (with the test headline) next to the run's checkpoint.

    Called at the end of the classifier job, so that a download in the page server only reads files; the job
    names its own checkpoint because its run is still running (checkpoint_path serves finished runs only). ONNX
    (about 10 s per model on 2 cores) is written on request by `export-model`, in the CLI's own process.
    """
    _export_of(checkpoint, TORCHSCRIPT_FILE, "export_torchscript")
    card = _card(run_id, checkpoint, test)
    checkpoint.with_name(MODEL_CARD_FILE).write_text(json.dumps(card, indent=2))


def model_bytes(run_id: int, fmt: str) -> bytes:
    """File contents for a download: "checkpoint" (model.pt), "torchscript", "onnx" or "card" (JSON class map)."""
    if fmt == "checkpoint":
        return checkpoint_path(run_id).read_bytes()
    if fmt == "torchscript":
        return torchscript_path(run_id).read_bytes()
    if fmt == "onnx":
        return onnx_path(run_id).read_bytes()
    if fmt == "card":
        return json.dumps(model_card(run_id), indent=2).encode()
    raise ValueError(f"format must be checkpoint, torchscript, onnx or card, got {fmt!r}")


def export_model(run_id: int, out_dir: str | Path) -> dict[str, str]:
    """Write a run's checkpoint, TorchScript file, ONNX file and class map into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"checkpoint": out / f"run_{run_id}_model.pt", "torchscript": out / f"run_{run_id}_model.torchscript.pt",
             "onnx": out / f"run_{run_id}_model.onnx", "card": out / f"run_{run_id}_classes.json",
             "ood": out / f"run_{run_id}_ood.npz"}  # wbc_core.ood's calibration: predict finds it by this name
    shutil.copyfile(checkpoint_path(run_id), files["checkpoint"])
    shutil.copyfile(torchscript_path(run_id), files["torchscript"])
    shutil.copyfile(onnx_path(run_id), files["onnx"])
    files["card"].write_text(json.dumps(model_card(run_id), indent=2))
    from wbc_core import ood

    ood.export_calibration(run_id, files["ood"])
    return {k: str(v) for k, v in files.items()}


# -- predict ----------------------------------------------------------------------------------------------

def load_any_model(path: str | Path) -> tuple[Callable[[Any], Any], list[str], int, str]:
    """(uint8 batch -> probabilities, class names, image size, format) for a checkpoint, TorchScript or ONNX file."""
    from wbc_core.classifier.inference import load_model_file

    model = load_model_file(path)
    return model.predict, model.class_names, model.image_size, model.format


def predict_images(model_path: str | Path, image_paths: Sequence[str | Path],
                   abstain_above: float | None = None) -> dict[str, Any]:
    """Top class and probabilities per image, decoded and resized exactly as training data is, with an
    out-of-distribution score per image (wbc_core.ood; checkpoints only) and, given abstain_above, "abstain" as
    the prediction of images whose ood_ratio exceeds it (1.0 = the far threshold calibrated on real val cells)."""
    import torch

    from wbc_core import ood
    from wbc_core.store import decode_cell

    if not image_paths:
        raise ValueError("give at least one image")
    abstain_above = ood.check_abstain_above(abstain_above)
    run, class_names, size, fmt = load_any_model(model_path)
    arrays = []
    for p in image_paths:
        try:
            arrays.append(decode_cell(Path(p), size))
        except (OSError, ValueError) as exc:  # PIL raises UnidentifiedImageError (an OSError) for non-images
            raise ValueError(f"cannot read image {str(p)!r}: {exc}") from exc
    batch = torch.from_numpy(np.stack(arrays))
    probs = run(batch).float().numpy()
    scored, ood_note, calibration = _ood_scores(model_path, fmt, batch)
    if abstain_above is not None and scored is None:
        raise ValueError(f"cannot abstain: {ood_note}")
    items = []
    for k, (p, row) in enumerate(zip(image_paths, probs, strict=True)):
        top = int(row.argmax())
        item: dict[str, Any] = {"image": str(p), "top_class": class_names[top], "top_probability": float(row[top]),
                                "probabilities": {c: float(v) for c, v in zip(class_names, row, strict=True)},
                                "prediction": class_names[top], "abstained": False}
        if scored is not None:
            ratio = float(scored["ratio"][k])
            item.update(ood_score=float(scored["score"][k]), ood_ratio=ratio,
                        ood_val_percentile=float(scored["val_percentile"][k]), far=bool(scored["far"][k]))
            if abstain_above is not None and ratio > abstain_above:
                item.update(prediction="abstain", abstained=True)
        items.append(item)
    return {"model": str(model_path), "format": fmt, "image_size": size, "class_names": class_names,
            "abstain_above": abstain_above, "ood": calibration, "ood_note": ood_note, "predictions": items}


def _ood_scores(model_path: str | Path, fmt: str, batch: Any) -> tuple[dict[str, Any] | None, str,  # noqa: ANN401
                                                                        dict[str, Any] | None]:
    """(per-image OOD scores, a note, the calibration's description); scores None when they cannot be computed."""
    from wbc_core import ood

    if fmt != "checkpoint":
        return None, (f"the out-of-distribution score needs the classifier's features, which a {fmt} file does not "
                      "give; use the checkpoint (model.pt)"), None
    from wbc_core.classifier import load_classifier

    loaded = load_classifier(model_path)
    try:
        calibration = ood.calibration_for_model_file(model_path, loaded)
    except ood.OODUnavailable as exc:
        return None, str(exc), None
    note = (f"far = Mahalanobis distance of the features above the {calibration.percentile:.0f}th percentile of the "
            "model's real val cells (ood_ratio > 1)")
    return ood.score_images(loaded, batch, calibration), note, calibration.describe()

"""Out of distribution: is a cell (or a whole dataset) unlike the real cells a model or a reference was built on?

A model trained on one lab's cells answers confidently on another lab's: a PBC-trained model called all 12 BCCD
cells "monocyte", with probabilities up to 0.947. Its confidence says nothing about whether the input is like its
training cells, so two checks look at the features instead:

* **per image, for a classifier run** (`predict`, the "evaluate" job): the Mahalanobis distance of the
  classifier's penultimate features to the nearest class mean, with one covariance shared by all classes
  (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples"). Why this method:
  the energy score (Liu et al. 2020) comes from the same logits that were confidently wrong, and needs raw logits
  that the exported TorchScript / ONNX files do not give (they return probabilities); k-NN distance (Sun et al.
  2022) would need every train feature stored beside the model, while the Mahalanobis fit is K means plus one
  D x D matrix (256 x 256 for small_cnn, 512 x 512 for resnet18), so the calibration stays a small file next
  to model.pt. The "far" threshold is the 95th percentile of the scores of the run's real **val** cells (cells
  the fit never saw), so about 5% of in-distribution cells are flagged by construction; `ood_ratio` is the
  score divided by that threshold (1.0 = the threshold), and an abstain threshold is given on that scale.
* **per dataset, at import**: the distance of each new cell to its k-th nearest real train cell of a reference
  dataset, in the reference's quality-judge feature space (the features the Fréchet distance of `quality` uses:
  a small_cnn by default, trained on the reference's real train cells only, no ImageNet weights; cached).
  Calibrated the same way: the 95th percentile of the reference's own val-to-train distances. When most new
  cells lie beyond it the import says in plain words that the cells look like another lab or stain.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import jobs
from wbc_core.auth import User, authorize
from wbc_core.context import current
from wbc_core.types import ProgressEvent

OOD_FILE = "ood_calibration.npz"  # next to a run's model.pt; written on first use (predict, evaluate, export-model)
EXPORTED_SUFFIX = "_ood.npz"  # export-model writes run_<id>_ood.npz beside run_<id>_model.pt
METHOD = "mahalanobis"  # tied-covariance Mahalanobis distance to the nearest class mean (Lee et al. 2018)
FORMAT_VERSION = 1
FAR_PERCENTILE = 95.0  # of the real val cells' scores: above it an image is "far from the training cells"
FIT_PER_CLASS = 500  # real train cells per class the class means and the covariance are fitted on (seeded sample)
SHRINKAGE = 0.1  # covariance shrunk this much towards its mean eigenvalue: stays invertible with few train cells
# Import check.
NEIGHBOUR_K = 5  # the k-th nearest reference train cell (k = 5 as in density/coverage, Naeem et al. 2020)
COMPARE_CELLS = 1000  # at most this many new cells are compared (seeded sample): seconds on a CPU
MIN_REFERENCE_CELLS = 20  # a reference needs at least this many real train and val cells together
# Share of new cells beyond the reference's 95th percentile above which they "look unlike" it. A same-lab import
# lands near 5% (what the reference's own held-out cells give); half is ten times that, far outside sampling
# noise even for 50 cells, and still reached by a mild stain shift (tests/test_ood.py).
LOOKS_DIFFERENT_SHARE = 0.5
EVALUATE_MAX_CELLS = 20_000  # cells of the other dataset the evaluate job scores (seeded sample beyond that)


class OODUnavailable(ValueError):
    """The out-of-distribution score cannot be computed for this model file (the message says what to give)."""


# -- calibration: a fitted Mahalanobis model of one classifier's features --------------------------------------

@dataclass(frozen=True)
class Calibration:
    """Class means and a whitening matrix in a classifier's feature space, and the threshold from its val cells."""

    whitening: np.ndarray  # float64 [D, D]: x @ whitening has identity covariance (shared by all classes)
    means: np.ndarray  # float64 [K, D] class means, already whitened
    class_names: list[str]
    threshold: float  # FAR_PERCENTILE of the val cells' scores
    val_scores: np.ndarray  # float64 [M] sorted scores of the real val cells (for the percentile of a score)
    model_sha256: str  # of the checkpoint the features came from (a retrained model gets a new calibration)
    fit_cells: int  # real train cells the fit used
    percentile: float = FAR_PERCENTILE

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance [N] of features [N, D] to the nearest class mean."""
        z = np.asarray(features, dtype=np.float64) @ self.whitening
        d2 = (z * z).sum(1)[:, None] - 2 * z @ self.means.T + (self.means * self.means).sum(1)[None, :]
        return np.sqrt(np.clip(d2, 0.0, None)).min(axis=1)

    def describe(self) -> dict[str, Any]:
        """What the calibration is, JSON-safe (stored in the npz and shown by predict / evaluate)."""
        return {"method": METHOD, "percentile": self.percentile, "threshold": self.threshold,
                "val_cells": int(self.val_scores.size), "fit_cells": self.fit_cells, "classes": self.class_names,
                "model_sha256": self.model_sha256, "format_version": FORMAT_VERSION}

    def save(self, path: Path) -> None:
        """Write atomically (a half-written file would be trusted by the next reader otherwise)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, whitening=self.whitening, means=self.means, val_scores=self.val_scores,
                            meta=np.asarray(json.dumps(self.describe())))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read a calibration file; ValueError when it is not one this code wrote."""
        try:
            with np.load(path, allow_pickle=False) as blob:
                meta = json.loads(str(blob["meta"]))
                whitening, means, val_scores = blob["whitening"], blob["means"], blob["val_scores"]
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not an out-of-distribution calibration file: {exc}") from exc
        if meta.get("method") != METHOD or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} holds a {meta.get('method')!r} calibration of another version")
        return cls(whitening, means, list(meta["classes"]), float(meta["threshold"]), val_scores,
                   str(meta["model_sha256"]), int(meta["fit_cells"]), float(meta["percentile"]))

    def percentile_of(self, scores: np.ndarray) -> np.ndarray:
        """Share of the real val cells scoring lower than each score (0..1)."""
        return np.searchsorted(self.val_scores, scores, side="left") / max(self.val_scores.size, 1)


def fit_calibration(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                    class_names: Sequence[str], model_sha256: str = "") -> Calibration:
    """Fit class means and the shared covariance on train features; the far threshold on val features."""
    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[0] < 2 or len(val_features) < 1:
        raise ValueError(f"the out-of-distribution fit needs >= 2 train cells and >= 1 val cell, got {x.shape[0]} "
                         f"and {len(val_features)}")
    present = sorted(set(y.tolist()))
    means = np.stack([x[y == c].mean(0) for c in present])
    centred = x - means[np.searchsorted(present, y)]
    cov = centred.T @ centred / max(x.shape[0] - len(present), 1)
    dim = cov.shape[0]
    # Shrinkage towards a scaled identity keeps the inverse finite when there are fewer cells than dimensions.
    scale = max(float(np.trace(cov)) / dim, 1e-12)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * scale * np.eye(dim)
    w, v = np.linalg.eigh(cov)
    whitening = v / np.sqrt(np.clip(w, scale * 1e-6, None))[None, :]  # cov^(-1/2) up to a rotation
    partial = Calibration(whitening, means @ whitening, [str(class_names[c]) for c in present], 0.0,
                          np.zeros(0), model_sha256, int(x.shape[0]))
    val = np.sort(partial.scores(np.asarray(val_features, dtype=np.float64)))
    threshold = float(np.percentile(val, FAR_PERCENTILE))
    return Calibration(partial.whitening, partial.means, partial.class_names, threshold, val, model_sha256,
                       int(x.shape[0]))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _features(loaded: Any, images: Any) -> np.ndarray:  # noqa: ANN401 - LoadedClassifier, uint8 tensor
    from wbc_core.classifier.models import extract_features

    return extract_features(loaded, images).double().numpy()


def _sample_rows(rows: list[ds_db.ImageRow], per_class: int, seed: int = 0) -> list[ds_db.ImageRow]:
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[ds_db.ImageRow]] = {}
    for r in rows:
        by_class.setdefault(r.class_name, []).append(r)
    out: list[ds_db.ImageRow] = []
    for name in sorted(by_class):
        members = by_class[name]
        keep = sorted(rng.choice(len(members), size=min(per_class, len(members)), replace=False).tolist())
        out += [members[i] for i in keep]
    return out


def run_calibration(run_id: int, loaded: Any = None) -> Calibration:  # noqa: ANN401 - a LoadedClassifier
    """The calibration of a finished classifier run: read from its run folder, or fitted now and stored there.

    Fitted on (at most FIT_PER_CLASS per class of) the run's dataset's real train cells, thresholded on its real
    val cells; a file whose model hash differs from today's model.pt is fitted again."""
    from wbc_core import results, store
    from wbc_core.classifier import load_classifier

    checkpoint = results.checkpoint_path(run_id)
    path = checkpoint.with_name(OOD_FILE)
    sha = _sha256(checkpoint)
    if path.is_file():
        try:
            cached = Calibration.load(path)
        except ValueError:
            cached = None
        if cached is not None and cached.model_sha256 == sha:
            return cached
    info = runs_db.get_run(run_id)
    dataset = ds_db.get_dataset(info.dataset_id)
    loaded = loaded if loaded is not None else load_classifier(checkpoint)
    train_rows = _sample_rows(ds_db.real_images(dataset.id, split="train"), FIT_PER_CLASS)
    val_rows = ds_db.real_images(dataset.id, split="val")
    known = set(loaded.class_names)
    train_rows = [r for r in train_rows if r.class_name in known]
    val_rows = [r for r in val_rows if r.class_name in known]
    if len(train_rows) < 2 or not val_rows:
        raise OODUnavailable(f"run {run_id}'s dataset {dataset.name!r} has too few real train and val cells "
                             f"({len(train_rows)} and {len(val_rows)}) to calibrate an out-of-distribution check")
    size = loaded.image_size
    train = store.labelled(dataset.id, train_rows, loaded.class_names, size)
    val = store.images_for(dataset.id, val_rows, size)
    calibration = fit_calibration(_features(loaded, train.images), train.labels.numpy(), _features(loaded, val),
                                  loaded.class_names, sha)
    calibration.save(path)
    return calibration


def _run_of_checkpoint(path: Path) -> int | None:
    """The run id when path is model.pt inside a run folder of the current home, else None."""
    try:
        runs_root = current().paths.runs.resolve()
        resolved = path.resolve()
    except OSError:
        return None
    if resolved.parent.parent != runs_root or not resolved.parent.name.startswith("run_"):
        return None
    try:
        run_id = int(resolved.parent.name.removeprefix("run_"))
        from wbc_core import results

        return run_id if results.checkpoint_path(run_id).resolve() == resolved else None
    except (ValueError, LookupError):
        return None


def calibration_for_model_file(path: str | Path, loaded: Any = None) -> Calibration:  # noqa: ANN401
    """The calibration that belongs to a checkpoint file: beside it (a run folder, or export-model's folder),
    else fitted now when the file is a run's model.pt. OODUnavailable says what to do otherwise."""
    path = Path(path)
    candidates = [path.with_name(OOD_FILE)]
    if path.name.endswith("_model.pt"):
        candidates.insert(0, path.with_name(path.name.removesuffix("_model.pt") + EXPORTED_SUFFIX))
    sha = None
    for candidate in candidates:
        if candidate.is_file():
            try:
                calibration = Calibration.load(candidate)
            except ValueError:
                continue
            sha = sha or _sha256(path)
            if calibration.model_sha256 == sha:
                return calibration
    run_id = _run_of_checkpoint(path)
    if run_id is not None:
        return run_calibration(run_id, loaded)
    raise OODUnavailable(f"no out-of-distribution calibration for {path.name} was found next to it; use the run's "
                         "model.pt, or the folder `export-model` wrote (it includes the calibration)")


def export_calibration(run_id: int, target: Path) -> Path:
    """Copy (fitting first if needed) a run's calibration to target, for export-model."""
    run_calibration(run_id).save(Path(target))
    return Path(target)


def score_images(loaded: Any, images: Any, calibration: Calibration) -> dict[str, np.ndarray]:  # noqa: ANN401
    """Per image: the Mahalanobis score, its ratio to the far threshold, its val percentile and the far flag."""
    scores = calibration.scores(_features(loaded, images))
    ratio = scores / calibration.threshold if calibration.threshold > 0 else np.full_like(scores, np.inf)
    return {"score": scores, "ratio": ratio, "val_percentile": calibration.percentile_of(scores),
            "far": ratio > 1.0}


def check_abstain_above(value: float | None) -> float | None:
    """A valid abstain threshold (on the ood_ratio scale, > 0) or None; ValueError in plain words otherwise."""
    if value is None:
        return None
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"the abstain threshold must be a positive number (1 = the calibrated far threshold), "
                         f"got {value}")
    return value


# -- at import: does a new dataset look like the reference? ------------------------------------------------------

def default_reference(exclude: int | None = None) -> ds_db.DatasetInfo | None:
    """The biggest real dataset (most real cells), other than exclude; None when there is none."""
    best, best_n = None, 0
    for info in ds_db.list_datasets():
        if info.id == exclude or info.kind not in ("real", "bloodmnist"):
            continue
        n = sum(row["n"] for row in ds_db.image_counts(info.id) if row["origin"] == "real")
        if n > best_n:
            best, best_n = info, n
    return best


def _kth_distance(query: Any, reference: Any) -> np.ndarray:  # noqa: ANN401 - float tensors [N, D], [M, D]
    from wbc_core.quality.neighbours import pairwise_nearest

    k = min(NEIGHBOUR_K, int(reference.shape[0]))
    d, _ = pairwise_nearest(query, reference, k=k)
    return d[:, -1].double().numpy()


def dataset_shift(dataset: str | int, reference: str | int | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compare a dataset's real cells with a reference dataset's, in the reference judge's feature space.

    Returns {"checked", "reference", "share_far", "threshold", "median_ratio", "looks_different", "message",
    "cells"}; checked is False (with a reason in "message") when there is no usable reference."""
    from wbc_core import judges, store
    from wbc_core.quality.judge import judge_features

    info = ds_db.get_dataset(dataset)
    ref = ds_db.get_dataset(reference) if reference is not None else default_reference(exclude=info.id)
    if ref is None:
        return {"checked": False, "reference": None, "message": "no other real dataset to compare the cells with"}
    if ref.id == info.id:
        raise ValueError(f"compare {info.name!r} with another dataset, not with itself")
    ref_cells = sum(row["n"] for row in ds_db.image_counts(ref.id)
                    if row["origin"] == "real" and row["split"] in ("train", "val"))
    if ref_cells < MIN_REFERENCE_CELLS:
        return {"checked": False, "reference": ref.name,
                "message": f"the reference {ref.name!r} has too few real train and val cells ({ref_cells}) to "
                           "compare with"}
    if progress:
        progress(f"comparing the cells with {ref.name} (its judge is trained once, then cached)")
    judge = judges.dataset_reference(ref.id)
    rows = ds_db.real_images(info.id)
    if len(rows) > COMPARE_CELLS:
        keep = np.random.default_rng(0).choice(len(rows), size=COMPARE_CELLS, replace=False)
        rows = [rows[i] for i in sorted(keep.tolist())]
    images = store.images_for(info.id, rows, judge.image_size)
    features, _ = judge_features(judge.judge, images)
    new = _kth_distance(features, judge.train_features)
    val = _kth_distance(judge.val_features, judge.train_features)
    threshold = float(np.percentile(val, FAR_PERCENTILE))
    share = float((new > threshold).mean()) if new.size else 0.0
    ratio = float(np.median(new) / np.median(val)) if np.median(val) > 0 else float("inf")
    different = share >= LOOKS_DIFFERENT_SHARE
    if different:
        message = (f"These cells look unlike {ref.name}: different lab or stain? {share:.0%} of them lie farther "
                   f"from {ref.name}'s cells than {FAR_PERCENTILE:.0f}% of {ref.name}'s own held-out cells do. "
                   f"Predictions from models trained on {ref.name} may be unreliable.")
    else:
        message = (f"These cells look like {ref.name}'s ({share:.0%} beyond the distance that "
                   f"{100 - FAR_PERCENTILE:.0f}% of {ref.name}'s own held-out cells exceed).")
    return {"checked": True, "reference": ref.name, "reference_id": ref.id, "cells": int(new.size),
            "share_far": share, "threshold": threshold, "median_ratio": ratio, "looks_different": different,
            "expected_share": (100 - FAR_PERCENTILE) / 100, "message": message}


# -- "Evaluate a model on another dataset": a job --------------------------------------------------------------

def start_evaluation(run_id: int, dataset: str | int, abstain_above: float | None = None, *, user: User,
                     launch: bool = True) -> int:
    """Queue an "evaluate" job: a finished classifier run on another dataset's real cells; returns its run id.

    Any signed-in account may ask (the view permission, as for the embedding map); the job records who did."""
    who = authorize(user, "view").username
    abstain_above = check_abstain_above(abstain_above)
    run = runs_db.get_run(run_id)
    if run.kind != "classifier" or run.status != "succeeded":
        raise ValueError(f"run {run_id} is not a finished classifier run; pick one that succeeded")
    target = ds_db.get_dataset(dataset)
    config = {"classifier_run_id": int(run_id), "target_dataset_id": target.id, "target_name": target.name,
              "abstain_above": abstain_above}
    return jobs.submit("evaluate", target.id, config, started_by=who, launch=launch)


def _target_rows(model_dataset_id: int, target_id: int) -> tuple[list[ds_db.ImageRow], str]:
    """The other dataset's real cells (only its test cells when it is the model's own dataset)."""
    if target_id == model_dataset_id:
        return ds_db.real_images(target_id, split="test"), "its real test cells (the model's own dataset)"
    return ds_db.real_images(target_id), "all its real cells"


def run_evaluate_job(run: runs_db.RunInfo, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Job body of "evaluate": predictions, per-class metrics and the share flagged far, on another dataset."""
    from wbc_core import results, store
    from wbc_core.classifier import load_classifier
    from wbc_core.classifier.metrics import classification_report

    c = run.config
    model_run = runs_db.get_run(int(c["classifier_run_id"]))
    target = ds_db.get_dataset(int(c["target_dataset_id"]))
    abstain_above = check_abstain_above(c.get("abstain_above"))
    ctx.progress(ProgressEvent(step=0, total=3, message="loading the model and its calibration"))
    loaded = load_classifier(results.checkpoint_path(model_run.id))
    calibration = run_calibration(model_run.id, loaded)
    rows, which = _target_rows(model_run.dataset_id, target.id)
    if not rows:
        raise ValueError(f"dataset {target.name!r} has no real cells to evaluate on")
    if len(rows) > EVALUATE_MAX_CELLS:
        keep = np.random.default_rng(0).choice(len(rows), size=EVALUATE_MAX_CELLS, replace=False)
        rows = [rows[i] for i in sorted(keep.tolist())]
    if ctx.should_stop():
        return {"cancelled": "the evaluation was cancelled"}
    ctx.progress(ProgressEvent(step=1, total=3, message=f"scoring {len(rows):,} cells of {target.name}"))
    images = store.images_for(target.id, rows, loaded.image_size)
    from wbc_core.classifier import predict_proba

    probs = predict_proba(loaded, images).numpy()
    ood = score_images(loaded, images, calibration)
    ctx.progress(ProgressEvent(step=2, total=3, message="summarising"))
    names = loaded.class_names
    index = {n: i for i, n in enumerate(names)}
    labels = np.asarray([index.get(r.class_name, -1) for r in rows])
    pred = probs.argmax(1)
    abstain = (ood["ratio"] > abstain_above) if abstain_above is not None else np.zeros(len(rows), dtype=bool)
    known = labels >= 0
    report = classification_report(labels[known], pred[known], len(names), names) if known.any() else {}
    answered = known & ~abstain
    answered_report = (classification_report(labels[answered], pred[answered], len(names), names)
                       if answered.any() else {})
    per_class = []
    for name in sorted({r.class_name for r in rows}):
        mine = np.asarray([r.class_name == name for r in rows])
        row: dict[str, Any] = {"class": name, "cells": int(mine.sum()), "far_share": float(ood["far"][mine].mean()),
                               "known_to_model": name in index}
        if name in index and report:
            row.update(precision=report["per_class_precision"][name], recall=report["per_class_recall"][name],
                       f1=report["per_class_f1"][name])
        if abstain_above is not None:
            row["abstained"] = int(abstain[mine].sum())
        per_class.append(row)
    far_share = float(ood["far"].mean())
    predicted = {n: int((pred == i).sum()) for i, n in enumerate(names)}
    top_class, top_n = max(predicted.items(), key=lambda kv: kv[1])
    warnings = []
    if far_share >= LOOKS_DIFFERENT_SHARE:
        warnings.append(f"{far_share:.0%} of {target.name}'s cells are far from the cells run {model_run.id} was "
                        f"trained on (about {100 - FAR_PERCENTILE:.0f}% would be for cells like its own): "
                        "another lab or stain? Its predictions there may be unreliable")
    if len(rows) >= 10 and top_n / len(rows) >= 0.8 and len(names) > 2:
        warnings.append(f"the model calls {top_n / len(rows):.0%} of the cells {top_class!r}")
    unknown = sorted({r.class_name for r in rows} - set(names))
    if unknown:
        warnings.append(f"classes the model does not know (left out of the scores): {', '.join(unknown)}")
    return {"classifier_run_id": model_run.id, "model_dataset": model_run.dataset_name, "dataset": target.name,
            "dataset_id": target.id, "cells": len(rows), "which": which, "known_cells": int(known.sum()),
            "accuracy": report.get("accuracy"), "macro_f1": report.get("macro_f1"),
            "far_share": far_share, "far_threshold": calibration.threshold, "calibration": calibration.describe(),
            "mean_ood_ratio": float(np.mean(ood["ratio"])), "abstain_above": abstain_above,
            "abstained": int(abstain.sum()), "coverage": float(1 - abstain.mean()),
            "answered_accuracy": answered_report.get("accuracy"), "answered_macro_f1": answered_report.get("macro_f1"),
            "per_class": per_class, "predicted_counts": predicted, "warnings": warnings}


def evaluation_jobs(classifier_run_id: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The newest evaluate jobs (of one classifier run when given), newest first, as plain dicts for a panel."""
    out = []
    for r in runs_db.list_runs(kind="evaluate", limit=200):
        if classifier_run_id is not None and r.config.get("classifier_run_id") != classifier_run_id:
            continue
        out.append({"id": r.id, "status": r.status, "active": r.active, "progress": r.progress_fraction,
                    "message": r.progress_message, "error_line": (r.error or "").split("\n")[0],
                    "classifier_run_id": r.config.get("classifier_run_id"), "dataset": r.config.get("target_name"),
                    "result": r.result or {}})
        if len(out) >= limit:
            break
    return out


def evaluation_text(result: dict[str, Any]) -> str:
    """The evaluate job's result in a few lines (CLI text and the panel's caption)."""
    if not result or "cells" not in result:
        return ""
    lines = [f"run {result['classifier_run_id']} (trained on {result['model_dataset']}) on {result['dataset']}: "
             f"{result['cells']:,} cells ({result['which']})"]
    if result.get("macro_f1") is not None:
        lines.append(f"macro-F1 {result['macro_f1']:.3f}, accuracy {result['accuracy']:.3f} on "
                     f"{result['known_cells']:,} cells of classes the model knows")
    lines.append(f"far from the training cells: {result['far_share']:.0%} (threshold: the "
                 f"{result['calibration']['percentile']:.0f}th percentile of its real val cells)")
    if result.get("abstain_above") is not None:
        answered = (f"; on the rest macro-F1 {result['answered_macro_f1']:.3f}"
                    if result.get("answered_macro_f1") is not None else "")
        lines.append(f"abstained on {result['abstained']:,} cells (score above {result['abstain_above']:g}x the "
                     f"threshold), coverage {result['coverage']:.0%}{answered}")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines)

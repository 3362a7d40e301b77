"""Classification metrics: scikit-learn for the point estimates, one vectorised bootstrap for the intervals.

Conventions (scikit-learn's with zero_division=0 and labels=None), JSON-safe and NaN-free:
- precision of a class that is never predicted is 0; recall of a class with no support is 0;
  F1 is 0 when precision + recall is 0.
- macro-F1 averages over the classes that occur in y_true or y_pred. A class absent from both says nothing
  about the model, so it is left out of the average (a validation subset without, say, basophils is not
  penalised); its per-class entries are reported as 0.0 with support 0. A class with predictions but no
  support has F1 = 0 and does count: those predictions are all wrong.

The bootstrap (app and benches alike) draws every resample of the test cells at once and scores all of them
from one stack of confusion matrices, with the same conventions; tests/test_libraries.py checks each
resample's scores against scikit-learn. scikit-learn is imported on first use: importing the classifier
package (every worker, the CLI) does not pay for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # torch.Tensor, np.ndarray or a sequence of ints
MetricFn = Callable[[np.ndarray, np.ndarray], float]
BOOTSTRAP_METRICS = ("accuracy", "macro_f1")  # what bootstrap_ci and paired_bootstrap_delta can interval
RESAMPLE_CHUNK_CELLS = 1_000_000  # resampled cells counted per chunk: ~8 MB of codes at a time, whatever the set


def _as_labels(y: ArrayLike, name: str) -> np.ndarray:
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    arr = arr.reshape(-1) if arr.size else arr.reshape(0)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds negative class indices")
    return arr.astype(np.int64)


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    return t, p


def _in_range(t: np.ndarray, p: np.ndarray, num_classes: int) -> None:
    # scikit-learn silently drops labels outside `labels`; an index past the class list is a caller's bug.
    if t.size and max(t.max(), p.max()) >= num_classes:
        raise ValueError(f"class index {max(t.max(), p.max())} out of range for {num_classes} classes")


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts [K, K] with rows = true class, columns = predicted class."""
    from sklearn import metrics as skm

    t, p = _pair(y_true, y_pred)
    _in_range(t, p, num_classes)
    if not t.size:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return skm.confusion_matrix(t, p, labels=np.arange(num_classes))


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of correct predictions (0.0 for empty input)."""
    from sklearn import metrics as skm

    t, p = _pair(y_true, y_pred)
    return float(skm.accuracy_score(t, p)) if t.size else 0.0


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted mean F1 over the classes occurring in y_true or y_pred (0.0 for empty input)."""
    from sklearn import metrics as skm

    t, p = _pair(y_true, y_pred)
    return float(skm.f1_score(t, p, average="macro", zero_division=0)) if t.size else 0.0


def classification_report(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int,
                          class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix, JSON-safe."""
    from sklearn import metrics as skm

    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    t, p = _pair(y_true, y_pred)
    cm = confusion_matrix(t, p, num_classes)
    names = [str(n) for n in class_names]
    if t.size:
        precision, recall, f1, _ = skm.precision_recall_fscore_support(t, p, labels=np.arange(num_classes),
                                                                      average=None, zero_division=0)
    else:
        precision = recall = f1 = np.zeros(num_classes)
    return {
        "num_samples": int(t.size),
        "accuracy": accuracy(t, p),
        "macro_f1": macro_f1(t, p),
        "per_class_f1": {name: float(v) for name, v in zip(names, f1, strict=True)},
        "per_class_precision": {name: float(v) for name, v in zip(names, precision, strict=True)},
        "per_class_recall": {name: float(v) for name, v in zip(names, recall, strict=True)},
        "per_class_support": {name: int(v) for name, v in zip(names, cm.sum(axis=1), strict=True)},
        "confusion": cm.astype(int).tolist(),
    }


# -- bootstrap ---------------------------------------------------------------------------------------------


def resample_index(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, n] positions of the test cells in each resample; share one index to keep comparisons paired."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need at least one cell and one resample, got {n} cells and {n_boot} resamples")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy [...], macro_f1 [...] and per_class_f1 [..., K] of confusion counts [..., K, K] (vectorised)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support, predicted = cm.sum(-1).astype(np.float64), cm.sum(-2).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    return {"accuracy": tp.sum(-1) / np.maximum(cm.sum((-1, -2)), 1),
            "macro_f1": (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1), "per_class_f1": f1}


def bootstrap_confusions(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int, index: np.ndarray) -> np.ndarray:
    """Confusion counts [B, K, K] of every resample in index [B, N] (one bincount per chunk of resamples)."""
    t, p = _pair(y_true, y_pred)
    _in_range(t, p, num_classes)
    if index.ndim != 2 or (index.size and (index.min() < 0 or index.max() >= t.size)):
        raise ValueError(f"index must be [B, N] positions below {t.size}, got shape {index.shape}")
    k2 = num_classes * num_classes
    codes = t * num_classes + p
    out = np.empty((index.shape[0], k2), dtype=np.int64)
    step = max(1, RESAMPLE_CHUNK_CELLS // max(1, index.shape[1]))
    for start in range(0, index.shape[0], step):
        rows = index[start:start + step]
        chunk = codes[rows]
        chunk += (np.arange(rows.shape[0]) * k2)[:, None]  # resample b counts into its own K*K block
        out[start:start + step] = np.bincount(chunk.ravel(), minlength=rows.shape[0] * k2).reshape(-1, k2)
    return out.reshape(-1, num_classes, num_classes)


def bootstrap_scores(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int,
                     index: np.ndarray) -> dict[str, np.ndarray]:
    """scores_from_confusion of every resample: accuracy [B], macro_f1 [B], per_class_f1 [B, K]."""
    return scores_from_confusion(bootstrap_confusions(y_true, y_pred, num_classes, index))


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) percentile interval of bootstrap values."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _metric_name(metric: str | MetricFn) -> str:
    name = metric if isinstance(metric, str) else {accuracy: "accuracy", macro_f1: "macro_f1"}.get(metric, "")
    if name not in BOOTSTRAP_METRICS:
        raise ValueError(f"can only bootstrap accuracy or macro_f1, got {metric!r}")
    return name


def _labels_for_bootstrap(y_true: ArrayLike, *preds: ArrayLike) -> tuple[np.ndarray, list[np.ndarray], int]:
    t = _as_labels(y_true, "y_true")
    ps = [_pair(t, p)[1] for p in preds]
    if not t.size:
        raise ValueError("cannot bootstrap an empty sample")
    return t, ps, int(max(t.max(), *(p.max() for p in ps))) + 1


def bootstrap_intervals(y_true: ArrayLike, y_pred: ArrayLike, n: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (low, high) of accuracy and of macro_f1, from one set of resamples."""
    t, (p,), k = _labels_for_bootstrap(y_true, y_pred)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    scored = bootstrap_scores(t, p, k, resample_index(t.size, n, seed))
    return {name: percentile_interval(scored[name], confidence) for name in BOOTSTRAP_METRICS}


def bootstrap_ci(y_true: ArrayLike, y_pred: ArrayLike, metric_fn: str | MetricFn = accuracy, n: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap (low, high) of accuracy or macro_f1 (the function or its name) over resampled cells."""
    name = _metric_name(metric_fn)
    return bootstrap_intervals(y_true, y_pred, n, seed, confidence)[name]


def paired_bootstrap_delta(y_true: ArrayLike, pred_base: ArrayLike, pred_other: ArrayLike, n: int = 1000,
                           seed: int = 0, confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """other - base for accuracy and macro-F1, with a percentile CI over resamples shared by both models."""
    t, (p0, p1), k = _labels_for_bootstrap(y_true, pred_base, pred_other)
    # Resampling cells jointly for both models keeps their correlation: far tighter than two separate CIs.
    index = resample_index(t.size, n, seed)
    base, other = bootstrap_scores(t, p0, k, index), bootstrap_scores(t, p1, k, index)
    point = {"accuracy": (accuracy(t, p1) - accuracy(t, p0)), "macro_f1": macro_f1(t, p1) - macro_f1(t, p0)}
    return {name: {"delta": float(point[name]),
                   "ci": list(percentile_interval(other[name] - base[name], confidence))}
            for name in BOOTSTRAP_METRICS}

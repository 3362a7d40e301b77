"""Classification metrics with numpy only (no scikit-learn), JSON-safe and NaN-free.

Conventions (the same as scikit-learn with zero_division=0 and labels=None):
- precision of a class that is never predicted is 0; recall of a class with no support is 0;
  F1 is 0 when precision + recall is 0.
- macro-F1 averages over the classes that occur in y_true or y_pred. A class absent from both says nothing
  about the model, so it is left out of the average (a validation subset without, say, basophils is not
  penalised); its per-class entries are reported as 0.0 with support 0. A class with predictions but no
  support has F1 = 0 and does count: those predictions are all wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # torch.Tensor, np.ndarray or a sequence of ints
MetricFn = Callable[[np.ndarray, np.ndarray], float]


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


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts [K, K] with rows = true class, columns = predicted class."""
    t, p = _pair(y_true, y_pred)
    if t.size and max(t.max(), p.max()) >= num_classes:
        raise ValueError(f"class index {max(t.max(), p.max())} out of range for {num_classes} classes")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    return precision, recall, f1, present


def _macro_f1_from_cm(cm: np.ndarray) -> float:
    _, _, f1, present = _per_class(cm)
    return float(f1[present].mean()) if present.any() else 0.0


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of correct predictions (0.0 for empty input)."""
    t, p = _pair(y_true, y_pred)
    return float((t == p).mean()) if t.size else 0.0


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted mean F1 over the classes occurring in y_true or y_pred (0.0 for empty input)."""
    t, p = _pair(y_true, y_pred)
    if not t.size:
        return 0.0
    k = int(max(t.max(), p.max())) + 1
    return _macro_f1_from_cm(confusion_matrix(t, p, k))


def classification_report(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int,
                          class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix, JSON-safe."""
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    precision, recall, f1, _ = _per_class(cm)
    names = [str(n) for n in class_names]
    n = int(cm.sum())
    return {
        "num_samples": n,
        "accuracy": float(np.trace(cm) / n) if n else 0.0,
        "macro_f1": _macro_f1_from_cm(cm),
        "per_class_f1": {name: float(v) for name, v in zip(names, f1, strict=True)},
        "per_class_precision": {name: float(v) for name, v in zip(names, precision, strict=True)},
        "per_class_recall": {name: float(v) for name, v in zip(names, recall, strict=True)},
        "per_class_support": {name: int(v) for name, v in zip(names, cm.sum(axis=1), strict=True)},
        "confusion": cm.astype(int).tolist(),
    }


def bootstrap_ci(y_true: ArrayLike, y_pred: ArrayLike, metric_fn: MetricFn = accuracy, n: int = 1000,
                 seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap (low, high) interval of metric_fn(y_true, y_pred) over resampled samples."""
    t, p = _pair(y_true, y_pred)
    if not t.size:
        raise ValueError("cannot bootstrap an empty sample")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    values = np.empty(n, dtype=np.float64)
    for i in range(n):
        # One resample at a time keeps memory at O(N) even for large validation sets.
        row = rng.integers(0, t.size, size=t.size)
        values[i] = metric_fn(t[row], p[row])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)

"""Inference on trained classifiers: class probabilities and evaluation reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wbc_core.classifier.checkpoint import LoadedClassifier, load_classifier
from wbc_core.classifier.metrics import classification_report
from wbc_core.classifier.models import WBCClassifier, as_wbc_classifier, batched_forward
from wbc_core.types import LabelledImages

ModelLike = WBCClassifier | LoadedClassifier


def _check_size(model: WBCClassifier, images: torch.Tensor) -> None:
    size = model.image_size
    if size is not None and images.ndim == 4 and tuple(images.shape[2:]) != (size, size):
        raise ValueError(f"model expects {size}x{size} images, got {tuple(images.shape[2:])}; resize them first")


def predict_logits(model: ModelLike, images_uint8: torch.Tensor, device: str | torch.device = "cpu",
                   batch_size: int = 256) -> torch.Tensor:
    """Logits [N, K] (float32, CPU) for uint8 images [N,3,S,S]; moves the model to `device`."""
    wbc = as_wbc_classifier(model)
    _check_size(wbc, images_uint8)
    return batched_forward(wbc, images_uint8, batch_size, device)


def predict_proba(model: ModelLike, images_uint8: torch.Tensor, device: str | torch.device = "cpu",
                  batch_size: int = 256) -> torch.Tensor:
    """Class probabilities [N, K] (float32, CPU, rows sum to 1) for uint8 images [N,3,S,S]."""
    return predict_logits(model, images_uint8, device, batch_size).softmax(dim=1)


def report_from_logits(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """classification_report of argmax(logits) plus "loss" (plain cross-entropy, no label smoothing)."""
    labels = labels.to(logits.device)
    report = classification_report(labels, logits.argmax(dim=1), len(class_names), class_names)
    report["loss"] = float(F.cross_entropy(logits.float(), labels)) if labels.numel() else 0.0
    return report


def evaluate(model_or_checkpoint: ModelLike | str | Path, data: LabelledImages, class_names: Sequence[str],
             device: str | torch.device = "cpu", batch_size: int = 256) -> dict[str, Any]:
    """classification_report (+ "loss") of a model, LoadedClassifier or checkpoint path on labelled images."""
    if isinstance(model_or_checkpoint, (str, Path)):
        model_or_checkpoint = load_classifier(model_or_checkpoint, device)
    wbc = as_wbc_classifier(model_or_checkpoint)
    if len(class_names) != wbc.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {wbc.num_classes} classes")
    if isinstance(model_or_checkpoint, LoadedClassifier) and list(class_names) != model_or_checkpoint.class_names:
        # Same count but a different order would silently scramble every per-class number.
        raise ValueError(f"class_names {list(class_names)} differ from the checkpoint's "
                         f"{model_or_checkpoint.class_names}")
    if len(data) and int(data.labels.max()) >= len(class_names):
        raise ValueError(f"label {int(data.labels.max())} out of range for {len(class_names)} classes")
    logits = predict_logits(wbc, data.images, device, batch_size)
    return report_from_logits(logits, data.labels, class_names)

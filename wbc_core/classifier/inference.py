"""Inference on trained classifiers: class probabilities, evaluation reports, and model files of every format."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wbc_core.classifier.checkpoint import LoadedClassifier, load_classifier
from wbc_core.classifier.metrics import classification_report
from wbc_core.classifier.models import WBCClassifier, as_wbc_classifier, batched_forward
from wbc_core.types import LabelledImages

ModelLike = WBCClassifier | LoadedClassifier
MODEL_FORMATS = ("checkpoint", "torchscript", "onnx")  # files `load_model_file` (and `predict`) accept


@dataclass(frozen=True)
class ModelFile:
    """A classifier loaded from a file of any MODEL_FORMATS, behind one call."""

    predict: Callable[[torch.Tensor], torch.Tensor]  # uint8 [N,3,S,S] -> float32 probabilities [N,K] (CPU)
    class_names: list[str]  # index -> class name
    image_size: int  # expected input side in pixels
    format: str  # one of MODEL_FORMATS


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


def load_model_file(path: str | Path) -> ModelFile:
    """A wbc checkpoint (model.pt), exported TorchScript or exported ONNX file, recognised by its content."""
    from wbc_core.classifier.export import load_onnx, load_torchscript

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model file {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            # torch.load notices a TorchScript zip and says so; that file is handled just below.
            warnings.filterwarnings("ignore", message=".*TorchScript archive.*", category=UserWarning)
            loaded = load_classifier(path)
        return ModelFile(lambda x: predict_proba(loaded, x), loaded.class_names, loaded.image_size, "checkpoint")
    except ValueError as checkpoint_error:
        reasons = [f"a wbc checkpoint ({checkpoint_error})"]
    try:
        module, meta = load_torchscript(path)
    except Exception as exc:  # noqa: BLE001 - torch.jit raises RuntimeError for any foreign file
        reasons.append(f"an exported TorchScript classifier ({type(exc).__name__})")
    else:
        def run_torchscript(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x).float()

        return ModelFile(run_torchscript, list(meta["class_names"]), int(meta["image_size"]), "torchscript")
    try:
        session, meta = load_onnx(path)
    except ValueError:
        reasons.append("an exported ONNX classifier")
    else:
        return ModelFile(lambda x: torch.from_numpy(session(x.cpu().numpy())).float(), list(meta["class_names"]),
                         int(meta["image_size"]), "onnx")
    raise ValueError(f"{str(path)!r} is neither " + ", nor ".join(reasons))

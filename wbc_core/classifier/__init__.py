"""White-blood-cell classifier: config, augmentation presets, models, training, metrics, export.

Typical use:
    result = train_classifier(train, val, class_names, ClassifierConfig(), out_dir, progress, should_stop)
    loaded = load_classifier(result.checkpoint)
    probs = predict_proba(loaded, images_uint8)

Names are loaded on first use (PEP 562), so `from wbc_core.classifier import ClassifierConfig` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wbc_core.lazy import lazy_attributes

# name -> submodule that defines it
_WHERE = {
    "compute_limit_epoch_seconds": "bench",
    "CHECKPOINT_NAME": "checkpoint", "FORMAT": "checkpoint", "FORMAT_VERSION": "checkpoint",
    "LoadedClassifier": "checkpoint", "load_classifier": "checkpoint",
    "ClassifierConfig": "config", "available_models": "config",
    "export_onnx": "export", "export_torchscript": "export", "load_onnx": "export", "load_torchscript": "export",
    "evaluate": "inference", "predict_logits": "inference", "predict_proba": "inference",
    "accuracy": "metrics", "bootstrap_ci": "metrics", "classification_report": "metrics",
    "confusion_matrix": "metrics", "macro_f1": "metrics",
    "FeatureExtractor": "models", "SmallCNN": "models", "WBCClassifier": "models", "build_model": "models",
    "extract_features": "models", "feature_extractor": "models",
    "PRESETS": "presets", "AugmentPreset": "presets", "compute_mean_std": "presets",
    "get_eval_transform": "presets", "get_train_transform": "presets", "normalize": "presets",
    "sampling_weights": "sampling",
    "BATCH_METRICS": "train", "EPOCH_METRICS": "train", "ClassifierResult": "train", "train_classifier": "train",
}

__all__ = [  # the same names the package always exported (tests check they match _WHERE)
    "AugmentPreset", "BATCH_METRICS", "CHECKPOINT_NAME", "ClassifierConfig", "ClassifierResult", "EPOCH_METRICS",
    "FORMAT", "FORMAT_VERSION", "FeatureExtractor", "LoadedClassifier", "PRESETS", "SmallCNN", "WBCClassifier",
    "accuracy", "available_models", "bootstrap_ci", "build_model", "classification_report",
    "compute_limit_epoch_seconds", "compute_mean_std", "confusion_matrix", "evaluate", "export_onnx",
    "export_torchscript", "extract_features", "feature_extractor", "get_eval_transform", "get_train_transform",
    "load_classifier", "load_onnx", "load_torchscript", "macro_f1", "normalize", "predict_logits", "predict_proba",
    "sampling_weights", "train_classifier",
]


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from wbc_core.classifier.bench import compute_limit_epoch_seconds
    from wbc_core.classifier.checkpoint import (
        CHECKPOINT_NAME,
        FORMAT,
        FORMAT_VERSION,
        LoadedClassifier,
        load_classifier,
    )
    from wbc_core.classifier.config import ClassifierConfig, available_models
    from wbc_core.classifier.export import export_onnx, export_torchscript, load_onnx, load_torchscript
    from wbc_core.classifier.inference import evaluate, predict_logits, predict_proba
    from wbc_core.classifier.metrics import accuracy, bootstrap_ci, classification_report, confusion_matrix, macro_f1
    from wbc_core.classifier.models import (
        FeatureExtractor,
        SmallCNN,
        WBCClassifier,
        build_model,
        extract_features,
        feature_extractor,
    )
    from wbc_core.classifier.presets import (
        PRESETS,
        AugmentPreset,
        compute_mean_std,
        get_eval_transform,
        get_train_transform,
        normalize,
    )
    from wbc_core.classifier.sampling import sampling_weights
    from wbc_core.classifier.train import BATCH_METRICS, EPOCH_METRICS, ClassifierResult, train_classifier

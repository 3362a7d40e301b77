"""White-blood-cell classifier: config, augmentation presets, models, training, metrics, export.

Typical use:
    result = train_classifier(train, val, class_names, ClassifierConfig(), out_dir, progress, should_stop)
    loaded = load_classifier(result.checkpoint)
    probs = predict_proba(loaded, images_uint8)
"""

from wbc_core.classifier.bench import compute_limit_epoch_seconds
from wbc_core.classifier.checkpoint import CHECKPOINT_NAME, FORMAT, FORMAT_VERSION, LoadedClassifier, load_classifier
from wbc_core.classifier.config import ClassifierConfig, available_models
from wbc_core.classifier.export import export_torchscript, load_torchscript
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

__all__ = [
    "BATCH_METRICS", "CHECKPOINT_NAME", "EPOCH_METRICS", "FORMAT", "FORMAT_VERSION", "PRESETS",
    "AugmentPreset", "ClassifierConfig", "ClassifierResult", "FeatureExtractor", "LoadedClassifier", "SmallCNN",
    "WBCClassifier", "accuracy", "available_models", "bootstrap_ci", "build_model", "classification_report",
    "compute_limit_epoch_seconds", "compute_mean_std", "confusion_matrix", "evaluate", "export_torchscript",
    "extract_features", "feature_extractor", "get_eval_transform", "get_train_transform", "load_classifier",
    "load_torchscript", "macro_f1", "normalize", "predict_logits", "predict_proba", "sampling_weights",
    "train_classifier",
]

"""Classifier training configuration: one frozen, validated, JSON-safe dataclass."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from wbc_core import limits
from wbc_core.compile import REQUESTS as COMPILE_REQUESTS

SMALL_CNN = "small_cnn"
# The names of classifier.presets.PRESETS, repeated here so that reading or checking a config does not load torch
# (tests/test_limits.py checks that both stay the same).
AUGMENT_PRESETS = ("cell", "geometric", "none")
# Always valid without asking torchvision (importing it costs seconds and loads torch): the default and the CPU model.
BUILTIN_MODELS = (SMALL_CNN, "resnet18")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@lru_cache(maxsize=1)
def available_models() -> tuple[str, ...]:
    """Names accepted by ClassifierConfig.model: "small_cnn" plus torchvision's classification models."""
    import torchvision  # imported lazily: building a config should not pay for torchvision's import

    return (SMALL_CNN, *torchvision.models.list_models(module=torchvision.models))


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that determines a classifier training run (with the data and the seed)."""

    model: str = "resnet18"  # "resnet18", "small_cnn" (fast, for CPU/tests) or any torchvision classification name
    image_size: int = 64  # side of the square uint8 input images; data must already be this size
    epochs: int = 15  # planned epochs; the lr schedule spans all of them even if early stopping ends sooner
    batch_size: int = 128  # images per optimiser step
    optimizer: str = "adamw"  # "adamw" (robust across architectures) or "sgd" (nesterov, momentum 0.9)
    lr: float = 2e-3  # peak lr; AdamW from scratch likes ~2e-3 with one-cycle, use ~0.1-0.2 for "sgd"
    weight_decay: float = 0.05  # decoupled (AdamW) or L2 (SGD, use ~5e-4); never applied to norm weights/biases
    label_smoothing: float = 0.1  # cross-entropy label smoothing for training (val_loss is reported without it)
    schedule: str = "onecycle"  # "onecycle" (25% warm-up then cosine anneal) or "cosine" (5% warm-up then cosine)
    # Defaults measured on PBC (bench/train.py --full, BENCHMARKS.md): geometric augmentation without balanced
    # sampling gave 97.5% test accuracy (mean of 6 runs) vs 96.7% for "cell" + balanced (1 run; spread ~0.5).
    augment: str = "geometric"  # augmentation preset from presets.PRESETS: "geometric", "cell" or "none"
    balanced_sampling: bool = False  # draw every class equally often (with replacement); for strongly skewed data
    early_stopping_patience: int = 0  # stop after this many epochs without val macro-F1 improvement; 0 = off
    # Validate (and keep the best weights) every N epochs, and always after the last one. Many short epochs on a
    # small set otherwise spend most of their time validating: a 400-cell arm of 25 epochs spent ~60% of its wall
    # time on 25 val passes over 1,820 cells (product_loop_full.json, n50).
    val_every: int = 1
    seed: int = 0  # seeds weight init, sampling and augmentation; same seed + data -> same result on CPU
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N" or "mps"
    amp: bool = True  # mixed precision + channels_last: CUDA bf16/fp16(+GradScaler), CPU bf16 where native
    pretrained_path: str | None = None  # optional local state-dict / wbc checkpoint to start from; never downloaded
    num_threads: int = 0  # torch CPU threads during training; 0 = leave torch's default
    # torch.compile for the training step: "auto" follows the measurements for this device (wbc_core.compile:
    # compiled only where it measured faster and the planned steps win back the warm-up), "on" or "off" force it.
    compile: str = "auto"
    progress_every_s: float = 1.0  # seconds between within-epoch progress events (UI wants one at least every 2 s)
    # Data-parallel processes (DistributedDataParallel; gloo on CPU, nccl on CUDA with one GPU each). The global batch
    # stays batch_size (each process takes its shard), so 1 and N workers follow the same lr schedule.
    workers: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.pretrained_path, Path):
            # Paths are accepted for convenience but stored as str so to_dict() stays JSON-safe.
            object.__setattr__(self, "pretrained_path", str(self.pretrained_path))
        _check_types(self)
        if self.model not in BUILTIN_MODELS and self.model not in available_models():
            raise ValueError(f"model must be 'small_cnn' or a torchvision classification model name, "
                             f"got {self.model!r}")
        for name, limit_name in _BOUNDED:
            limits.check(limit_name, getattr(self, name), name)  # ValueError "<name> must be ..., got ..."
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.augment not in AUGMENT_PRESETS:
            raise ValueError(f"augment must be one of {AUGMENT_PRESETS}, got {self.augment!r}")
        if self.compile not in COMPILE_REQUESTS:
            raise ValueError(f"compile must be one of {COMPILE_REQUESTS}, got {self.compile!r}")
        if not _DEVICE_RE.match(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.pretrained_path is not None and not self.pretrained_path:
            raise ValueError("pretrained_path must be None or a non-empty path")
        if self.workers > 1 and self.device.startswith(("mps", "cuda:")):
            raise ValueError(f"several workers train on the CPU or on one CUDA GPU each: give device 'auto', 'cpu' "
                             f"or 'cuda' with workers {self.workers}, not {self.device!r}")
        if self.workers > 1 and self.batch_size < 2 * self.workers:
            raise ValueError(f"a batch of {self.batch_size} cannot be split over {self.workers} workers (batch norm "
                             f"needs at least 2 cells each): choose a batch of at least {2 * self.workers}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        """Inverse of to_dict; missing keys take defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ClassifierConfig keys: {unknown}")
        return cls(**data)


# Numeric fields and their limit in wbc_core.limits (the Train page's widgets take their ranges from there too).
_BOUNDED = (
    ("image_size", "classifier_image_size"), ("epochs", "classifier_epochs"), ("batch_size", "classifier_batch"),
    ("lr", "classifier_lr"), ("weight_decay", "classifier_weight_decay"),
    ("label_smoothing", "classifier_label_smoothing"), ("early_stopping_patience", "classifier_patience"),
    ("val_every", "classifier_val_every"), ("seed", "seed"), ("num_threads", "threads"),
    ("progress_every_s", "progress_every_s"),
    ("workers", "classifier_workers"),
)


def _check_types(cfg: ClassifierConfig) -> None:
    """Reject wrongly typed fields early (e.g. a JSON string where an int belongs)."""
    expected: dict[str, tuple[type, ...]] = {
        "model": (str,), "image_size": (int,), "epochs": (int,), "batch_size": (int,), "optimizer": (str,),
        "lr": (int, float), "weight_decay": (int, float), "label_smoothing": (int, float), "schedule": (str,),
        "augment": (str,), "balanced_sampling": (bool,), "early_stopping_patience": (int,), "seed": (int,),
        "val_every": (int,),
        "device": (str,), "amp": (bool,), "pretrained_path": (str, type(None)), "num_threads": (int,),
        "progress_every_s": (int, float), "workers": (int,), "compile": (str,),
    }
    for name, types in expected.items():
        value = getattr(cfg, name)
        # bool is an int subclass; a True where a count belongs is almost certainly a bug.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{name} must be {' or '.join(t.__name__ for t in types)}, got {value!r}")

"""The judge: a real-only classifier whose penultimate features and probabilities measure generated cells.

The judge is a small_cnn (wbc_core.classifier) trained on the dataset's real *train* cells at the GAN's image
size, selected on real val cells. It is trained once per (dataset, image size, split hash, judge settings) and
cached under WBC_HOME/cache/judges/, together with its features of every real train and val cell.
It never sees a generated cell and no GAN trains against it, so its acceptance rate is an independent check.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wbc_core.classifier import ClassifierConfig, LoadedClassifier, load_classifier, train_classifier
from wbc_core.classifier.models import classifier_head, feature_extractor
from wbc_core.threads import torch_threads
from wbc_core.types import LabelledImages


class QualityError(ValueError):
    """Quality cannot be measured as asked (e.g. a dataset without val cells)."""


@dataclass(frozen=True)
class QualityConfig:
    """How the judge is trained and how the metrics are computed."""

    judge_model: str = "small_cnn"  # judge architecture; small_cnn keeps training + features to seconds-minutes on CPU
    judge_epochs: int = 6  # judge training epochs (one-cycle schedule; best val macro-F1 epoch is kept)
    judge_batch: int = 64  # judge training batch size
    judge_max_per_class: int = 500  # judge trains on at most this many train cells per class (bounds the first call)
    k_density: int = 5  # k of the density/coverage balls (Naeem et al. 2020 use 5)
    k_pr: int = 3  # k of the precision/recall balls (Kynkäänniemi et al. 2019 use 3)
    memorisation_percentile: float = 1.0  # val-to-train distance percentile below which a candidate is a copy
    accept_prob: float = 0.9  # judge probability of the intended class that counts as "accepted"
    copy_cells: int = 10  # k-means cells for the data-copying test (fewer when the data is small)
    copy_min_per_cell: int = 5  # minimum generated and val points for a cell to count in C_T
    tstr_epochs: int = 4  # epochs of the train-on-synthetic classifier; 0 skips TSTR
    seed: int = 0  # seeds judge, TSTR classifier, val halves and k-means
    num_threads: int = 1  # CPU threads for judge/TSTR training; 1 because the box is shared (0 = torch default)
    device: str = "auto"  # device for judge and TSTR training and feature extraction

    def key(self) -> str:
        """Short hash of the settings that change the judge (not of the metric settings)."""
        judge = {k: v for k, v in asdict(self).items() if k.startswith("judge_") or k == "seed"}
        return hashlib.sha256(json.dumps(judge, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Reference:
    """A trained judge with its features of the real train and val cells."""

    judge: LoadedClassifier  # eval-mode real-only classifier
    class_names: list[str]  # class index -> name, shared with the labels below
    train_ids: torch.Tensor  # int64 [N] image ids of the real train cells (or -1 when unknown)
    train_features: torch.Tensor  # float [N, D] judge features of the real train cells
    train_labels: torch.Tensor  # int64 [N]
    val_images: torch.Tensor  # uint8 [M,3,S,S] real val cells (TSTR scores on them)
    val_features: torch.Tensor  # float [M, D]
    val_labels: torch.Tensor  # int64 [M]
    threshold: float  # memorisation distance: the chosen percentile of val-to-nearest-train distances
    judge_dir: Path  # cache folder of this judge
    class_thresholds: torch.Tensor | None = None  # float [C]: the same percentile per class (None: global for all)
    # float [M]: the judge's probability of each real val cell's true class. Its acceptance of real cells is the
    # ceiling for the acceptance of generated ones: a judge that accepts 5% of real ig cells cannot accept 50% of
    # good synthetic ones (measured on PBC with the small_cnn judge, bench/gan.py --baseline-only).
    val_true_prob: torch.Tensor | None = None

    def thresholds_for(self, labels: torch.Tensor) -> torch.Tensor:
        """The memorisation distance for each cell of the given intended classes."""
        if self.class_thresholds is None:
            return torch.full(labels.shape, self.threshold)
        return self.class_thresholds[labels]

    @property
    def image_size(self) -> int:
        """Side of the images the judge takes."""
        return int(self.val_images.shape[-1])


def judge_features(judge: LoadedClassifier, images: torch.Tensor, device: str = "cpu",
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features [N,D], class probabilities [N,K]) of uint8 images in one forward pass."""
    from wbc_core.classifier.models import batched_forward

    if images.shape[0] == 0:
        k = len(judge.class_names)
        return torch.zeros(0, 1), torch.zeros(0, k)
    feats = batched_forward(feature_extractor(judge), images, batch_size, device)
    return feats, probs_from_features(judge, feats)


def probs_from_features(judge: LoadedClassifier, feats: torch.Tensor) -> torch.Tensor:
    """Class probabilities [N,K] from penultimate features (cheap: cached features need no new forward pass)."""
    head = classifier_head(judge.model.net, len(judge.class_names)).to("cpu")
    with torch.no_grad():  # the head is a plain Linear (dropout is identity in eval), so logits = head(features)
        return head.float()(feats).softmax(dim=1)


def cap_per_class(data: LabelledImages, n: int, seed: int = 0) -> LabelledImages:
    """At most n cells of each class, drawn with a seeded permutation (all of them when a class has fewer)."""
    gen = torch.Generator().manual_seed(seed)
    keep = [rows[torch.randperm(rows.numel(), generator=gen)[:n]]
            for rows in ((data.labels == c).nonzero().flatten() for c in data.labels.unique())]
    keep_t = torch.cat(keep).sort().values
    return LabelledImages(data.images[keep_t], data.labels[keep_t])


def _judge_config(config: QualityConfig, size: int, n_train: int) -> ClassifierConfig:
    return ClassifierConfig(model=config.judge_model, image_size=size, epochs=config.judge_epochs,
                            batch_size=max(2, min(config.judge_batch, n_train // 4)), seed=config.seed,
                           device=config.device, schedule="cosine",
                            # No label smoothing: with it the judge's probabilities top out near 0.9, right where
                            # the acceptance threshold sits, and "accepted" would mean "lucky rounding".
                            label_smoothing=0.0,
                            # Pinned rather than inherited from ClassifierConfig's defaults: cached judges are keyed
                            # by split hash, and quality numbers must stay comparable across app versions.
                            augment="cell", balanced_sampling=True,
                            num_threads=config.num_threads, progress_every_s=30.0)


def build_reference(train: LabelledImages, val: LabelledImages, class_names: list[str], judge_dir: Path,
                    config: QualityConfig = QualityConfig(), train_ids: torch.Tensor | None = None) -> Reference:
    """Train (or load the cached) judge in judge_dir on real train cells and compute the reference features."""
    if len(train) < 2 or len(val) < 2:
        raise QualityError(f"quality needs >= 2 real train and val cells, got {len(train)} and {len(val)}")
    size = int(train.images.shape[-1])
    judge_dir = Path(judge_dir)
    model_path = judge_dir / "model.pt"
    if not model_path.is_file():
        # A seeded per-class cap keeps the one-off judge training to about a minute or two on CPU for PBC-sized
        # data; features (and so memorisation) still use every train cell.
        subset = cap_per_class(train, config.judge_max_per_class, config.seed)
        train_classifier(subset, val, class_names, _judge_config(config, size, len(subset)), judge_dir)
    judge = load_classifier(model_path)
    if judge.class_names != list(class_names):
        raise QualityError(f"cached judge {model_path} has classes {judge.class_names}, expected {class_names}")
    ids = train_ids if train_ids is not None else torch.full((len(train),), -1, dtype=torch.int64)
    feats_path = judge_dir / "reference.pt"
    cached = _load_features(feats_path, ids, len(val))
    if cached is None:
        with torch_threads(config.num_threads):
            train_f, _ = judge_features(judge, train.images)
            val_f, _ = judge_features(judge, val.images)
        _save_features(feats_path, ids, train_f, val_f)
    else:
        train_f, val_f = cached
    from wbc_core.quality.neighbours import class_memorisation_thresholds

    threshold, per_class = class_memorisation_thresholds(val_f, val.labels, train_f, len(class_names),
                                                         config.memorisation_percentile)
    val_true_prob = probs_from_features(judge, val_f).gather(1, val.labels.view(-1, 1)).squeeze(1)
    return Reference(judge, list(class_names), ids, train_f, train.labels, val.images, val_f, val.labels,
                     threshold, judge_dir, per_class, val_true_prob)


def _load_features(path: Path, ids: torch.Tensor, n_val: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
        return None
    # The ids guard against a cache computed for another set of cells under the same key.
    if not torch.equal(blob["train_ids"], ids) or blob["val"].shape[0] != n_val:
        return None
    return blob["train"], blob["val"]


def _save_features(path: Path, ids: torch.Tensor, train_f: torch.Tensor, val_f: torch.Tensor) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"train_ids": ids, "train": train_f, "val": val_f}, tmp)
    os.replace(tmp, path)


JUDGE_ENV = "WBC_QUALITY_JUDGE"  # which judge the app trains per dataset: "small" (default) or "full"
JUDGES = {
    # Seconds to a couple of minutes on a CPU. Unsure of look-alike classes even on real cells (on PBC it accepts
    # 4.5% of real ig cells at p >= 0.9), which the app shows as real_acceptance beside acceptance.
    "small": {},
    # The independent classifier: the app's ResNet-18 on every real train cell (val accuracy 0.968 on PBC
    # at 64 px, 70-100% of real cells accepted in every class). ~5 CPU minutes at 64 px, seconds on a GPU.
    "full": {"judge_model": "resnet18", "judge_max_per_class": 100_000, "judge_epochs": 15},
}


def app_quality_config() -> QualityConfig:
    """The QualityConfig the app measures with, chosen by WBC_QUALITY_JUDGE (a new judge gets its own cache)."""
    from wbc_core.context import current

    name = current().settings.quality_judge
    if name not in JUDGES:
        raise QualityError(f"{JUDGE_ENV} must be one of {', '.join(JUDGES)}, got {name!r}")
    return QualityConfig(**JUDGES[name])

"""Quality metrics of a set of cells against a judge Reference, overall and per class, as flat "quality/..." names.

Names: quality/<metric> overall and quality/<metric>/<class> per class, where metric is one of
fd, fd_baseline, fd_ratio, density, coverage, precision, recall, memorised, nearest_train, copy_ct,
acceptance, judge_accuracy, tstr_accuracy (overall only) and n.
FD: generated cells vs one half of the real val cells, at the size of the other half; the baseline is the
FD between the two val halves (same n, so the small-sample bias of FD cancels in the ratio; ~1 is ideal).
Density/coverage and precision/recall are against all real val cells; memorisation and C_T against train.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from wbc_core.quality import METRICS, PREFIX
from wbc_core.quality import metrics as qm
from wbc_core.quality.judge import QualityConfig, Reference, judge_features
from wbc_core.quality.neighbours import pairwise_nearest
from wbc_core.threads import torch_threads
from wbc_core.types import LabelledImages

__all__ = ["METRICS", "PREFIX", "CellScores", "acceptance_metrics", "compute_metrics", "per_class_table", "read_folder",
           "score_cells"]


@dataclass(frozen=True)
class CellScores:
    """Per-cell scores for review sorting."""

    judge_prob: torch.Tensor  # float [N] judge probability of the intended class
    judge_top: torch.Tensor  # int64 [N] judge's most likely class index
    nearest_index: torch.Tensor  # int64 [N] row of the nearest real train cell in the Reference
    nearest_id: torch.Tensor  # int64 [N] image id of that cell (-1 when the Reference has no ids)
    nearest_distance: torch.Tensor  # float [N] feature distance to it
    memorised: torch.Tensor  # bool [N] closer than the Reference's memorisation threshold for the cell's class
    features: torch.Tensor  # float [N, D] judge features (reused by the distribution metrics)


def score_cells(ref: Reference, images: torch.Tensor, labels: torch.Tensor) -> CellScores:
    """Judge probability, top class, nearest real train cell and memorised flag for each cell."""
    if images.shape[0] and tuple(images.shape[-2:]) != (ref.image_size, ref.image_size):
        raise ValueError(f"cells are {tuple(images.shape[-2:])} but the judge takes {ref.image_size} px")
    feats, probs = judge_features(ref.judge, images)
    n = images.shape[0]
    if n == 0:
        empty = torch.zeros(0)
        return CellScores(empty, empty.long(), empty.long(), empty.long(), empty, empty.bool(), feats)
    d, idx = pairwise_nearest(feats, ref.train_features, k=1)
    d, idx = d[:, 0], idx[:, 0]
    return CellScores(judge_prob=probs.gather(1, labels.view(-1, 1)).squeeze(1), judge_top=probs.argmax(1),
                      nearest_index=idx, nearest_id=ref.train_ids[idx], nearest_distance=d,
                      memorised=d < ref.thresholds_for(labels), features=feats)


def _val_halves(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks splitting real val cells into two halves, stratified by class, seeded."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.zeros(labels.numel(), dtype=torch.bool)
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        a[rows[: rows.numel() // 2]] = True
    return a, ~a


def _matched_rows(gen_labels: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """Row indices into gen_labels taking, per class, as many rows as target_labels has (or all there are)."""
    picks = [(gen_labels == c).nonzero().flatten()[: int((target_labels == c).sum())] for c in target_labels.unique()]
    return torch.cat(picks).sort().values if picks else torch.zeros(0, dtype=torch.int64)


def _groups(ref: Reference, labels: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(name suffix, generated mask, real val mask, real train mask) for all cells, then each class present."""
    groups = [("", torch.ones(labels.numel(), dtype=torch.bool), torch.ones_like(ref.val_labels, dtype=torch.bool),
               torch.ones_like(ref.train_labels, dtype=torch.bool))]
    groups += [(f"/{name}", labels == c, ref.val_labels == c, ref.train_labels == c)
               for c, name in enumerate(ref.class_names) if bool((labels == c).any())]
    return groups


def _acceptance(ref: Reference, cfg: QualityConfig, scores: CellScores, gen_mask: torch.Tensor,
                val_mask: torch.Tensor, intended: torch.Tensor) -> dict[str, float]:
    """The judge's verdicts for one group: acceptance, judge accuracy and the real cells' ceiling."""
    out = {"acceptance": float((scores.judge_prob[gen_mask] >= cfg.accept_prob).float().mean()),
           "judge_accuracy": float((scores.judge_top[gen_mask] == intended[gen_mask]).float().mean())}
    if ref.val_true_prob is not None and bool(val_mask.any()):
        out["real_acceptance"] = float((ref.val_true_prob[val_mask] >= cfg.accept_prob).float().mean())
    return out


def acceptance_metrics(ref: Reference, images: torch.Tensor, labels: torch.Tensor,
                       config: QualityConfig = QualityConfig()) -> dict[str, float]:
    """Only the judge's verdicts, flat like compute_metrics: for a second, independent judge (bench/gan.py)."""
    scores = score_cells(ref, images, labels)
    return {f"{PREFIX}{name}{suffix}": value for suffix, g, v, _ in _groups(ref, labels)
            for name, value in _acceptance(ref, config, scores, g, v, labels).items()}


def _group_metrics(ref: Reference, cfg: QualityConfig, scores: CellScores, gen_mask: torch.Tensor,
                   val_mask: torch.Tensor, train_mask: torch.Tensor, half_a: torch.Tensor,
                   intended: torch.Tensor) -> dict[str, float]:
    """Every metric for one group (a class, or all cells): nan where the group is too small for it."""
    fake = scores.features[gen_mask]
    real_val = ref.val_features[val_mask]
    out: dict[str, float] = {"n": float(fake.shape[0])}
    if fake.shape[0] == 0:
        return out
    out.update(_acceptance(ref, cfg, scores, gen_mask, val_mask, intended))
    out["memorised"] = float(scores.memorised[gen_mask].float().mean())
    out["nearest_train"] = float(scores.nearest_distance[gen_mask].median())
    a, b = ref.val_features[val_mask & half_a], ref.val_features[val_mask & ~half_a]
    matched = fake[_matched_rows(intended[gen_mask], ref.val_labels[val_mask & half_a])]
    if a.shape[0] >= 2 and b.shape[0] >= 2 and matched.shape[0] >= 2:
        # Matched sample size and class mix: FD is biased upwards by ~tr(cov)/n, so comparing at the same n
        # (and, overall, the same classes) as the val half keeps the ratio honest.
        out["fd_baseline"] = qm.frechet_distance(a, b)
        out["fd"] = qm.frechet_distance(matched, b)
        out["fd_ratio"] = out["fd"] / out["fd_baseline"] if out["fd_baseline"] > 0 else math.nan
    if real_val.shape[0] > cfg.k_density:
        out["density"], out["coverage"] = qm.density_coverage(real_val, fake, cfg.k_density)
    if real_val.shape[0] > cfg.k_pr and fake.shape[0] > cfg.k_pr:
        out["precision"], out["recall"] = qm.precision_recall(real_val, fake, cfg.k_pr)
    train = ref.train_features[train_mask]
    cells = max(1, min(cfg.copy_cells, real_val.shape[0] // (2 * cfg.copy_min_per_cell)))
    if train.shape[0] >= cells and real_val.shape[0] >= cfg.copy_min_per_cell:
        out["copy_ct"] = qm.data_copying_ct(train, real_val, fake, cells, cfg.copy_min_per_cell, cfg.seed)
    return out


def compute_metrics(ref: Reference, images: torch.Tensor, labels: torch.Tensor,
                    config: QualityConfig = QualityConfig(), scores: CellScores | None = None,
                    stage: Callable[[str], None] | None = None) -> dict[str, float]:
    """Flat {"quality/<metric>[/<class>]": value} for uint8 cells with intended class labels; nan values dropped.
    stage(text), when given, is called as each step starts (the CLI's progress bar)."""
    if images.shape[0] == 0:
        raise ValueError("no cells to measure")
    stage = stage or (lambda _text: None)
    with torch_threads(config.num_threads):
        stage(f"judge features of {images.shape[0]:,} cells")
        scores = scores or score_cells(ref, images, labels)
        half_a, _ = _val_halves(ref.val_labels, config.seed)
        out: dict[str, float] = {}
        groups = _groups(ref, labels)
        stage(f"distribution metrics for all cells and {len(groups) - 1} classes")
        for suffix, g, v, t in groups:
            for name, value in _group_metrics(ref, config, scores, g, v, t, half_a, labels).items():
                out[f"{PREFIX}{name}{suffix}"] = value
        if config.tstr_epochs > 0:
            stage(f"train-on-synthetic accuracy ({config.tstr_epochs} short epochs of a small CNN)")
            out[f"{PREFIX}tstr_accuracy"] = tstr_accuracy(ref, images, labels, config)
    return {k: float(v) for k, v in out.items() if not math.isnan(v)}


def tstr_accuracy(ref: Reference, images: torch.Tensor, labels: torch.Tensor, config: QualityConfig) -> float:
    """Train-on-synthetic-test-on-real: a small_cnn trained on the cells only, accuracy on the real val cells."""
    from wbc_core.classifier import ClassifierConfig, evaluate, train_classifier

    if images.shape[0] < 2:
        return math.nan
    cfg = ClassifierConfig(model="small_cnn", image_size=ref.image_size, epochs=config.tstr_epochs,
                           # Cosine, not one-cycle: torch's OneCycleLR divides by zero on a few-step schedule.
                           batch_size=max(2, min(64, images.shape[0] // 4)), seed=config.seed,
                           device=config.device, schedule="cosine",
                           augment="cell", balanced_sampling=True,  # pinned, like the judge's recipe
                           num_threads=config.num_threads, progress_every_s=30.0)
    val = LabelledImages(ref.val_images, ref.val_labels)
    with tempfile.TemporaryDirectory(prefix="tstr_") as tmp:
        # train_classifier keeps the best-val epoch, which peeks at val; with a handful of epochs that
        # selection is a small optimism, accepted to reuse the one training loop the app trusts.
        result = train_classifier(LabelledImages(images, labels), val, ref.class_names, cfg, Path(tmp))
        return float(evaluate(result.checkpoint, val, ref.class_names)["accuracy"])


def per_class_table(values: dict[str, float], class_names: list[str]) -> dict[str, dict[str, float]]:
    """{metric: {"all": v, class: v, ...}} from flat names, for printing and JSON."""
    table: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        parts = key[len(PREFIX):].split("/", 1)
        table.setdefault(parts[0], {})["all" if len(parts) == 1 else parts[1]] = value
    return table


def read_folder(folder: Path, class_names: list[str], size: int) -> LabelledImages:
    """Cells from a folder with one subfolder per class (names must be the dataset's), decoded at size."""
    from wbc_core.store import decode_many

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    paths: list[Path] = []
    labels: list[int] = []
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in class_names:
            raise ValueError(f"subfolder {sub.name!r} is not a class of the dataset ({', '.join(class_names)})")
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("._"))
        paths += files
        labels += [class_names.index(sub.name)] * len(files)
    if not paths:
        raise ValueError(f"no images found in class subfolders of {folder}")
    return LabelledImages(decode_many(paths, size), torch.tensor(labels, dtype=torch.int64))

"""Nearest-neighbour distances in a feature space, shared by memorisation checks and curation policies."""

from __future__ import annotations

import torch


def pairwise_nearest(query: torch.Tensor, reference: torch.Tensor, k: int = 1, chunk: int = 2048,
                     exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances [N, k] and indices [N, k] of each query row's k nearest reference rows (Euclidean).

    Computed in chunks so 100k x 10k comparisons never materialise a full distance matrix.
    exclude_self skips the zero distance of a row to itself when query and reference are the same set.
    """
    if query.ndim != 2 or reference.ndim != 2 or query.shape[1] != reference.shape[1]:
        raise ValueError(f"need [N,D] and [M,D] features, got {tuple(query.shape)} and {tuple(reference.shape)}")
    extra = 1 if exclude_self else 0
    if reference.shape[0] < k + extra:
        raise ValueError(f"need at least {k + extra} reference rows, got {reference.shape[0]}")
    query = query.float()
    reference = reference.float()
    distances, indices = [], []
    for start in range(0, query.shape[0], chunk):
        block = torch.cdist(query[start:start + chunk], reference)
        d, i = block.topk(k + extra, dim=1, largest=False)
        distances.append(d[:, extra:])
        indices.append(i[:, extra:])
    if not distances:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.int64)
    return torch.cat(distances), torch.cat(indices)


def memorisation_threshold(val_features: torch.Tensor, train_features: torch.Tensor, percentile: float = 1.0) -> float:
    """The given percentile of real-val-to-nearest-real-train distances: closer than this counts as a copy."""
    d, _ = pairwise_nearest(val_features, train_features, k=1)
    return float(torch.quantile(d[:, 0], percentile / 100.0))


MIN_VAL_PER_CLASS_THRESHOLD = 50  # below this many val cells a class percentile is noise: use the global one


def class_memorisation_thresholds(val_features: torch.Tensor, val_labels: torch.Tensor, train_features: torch.Tensor,
                                  num_classes: int, percentile: float = 1.0) -> tuple[float, torch.Tensor]:
    """(global threshold, per-class thresholds [num_classes]) from real-val-to-nearest-real-train distances.

    Why per class: cell types differ in how alike they are. Platelets are small and near-identical, so 9% of
    *real* held-out platelets fell under the global 1st percentile (bench/gan.py --baseline-only), and every
    platelet generator would look like a copier. A class's own percentile flags ~1% of its real cells by
    construction, and an exact copy (distance 0) is still caught. Classes with fewer than
    MIN_VAL_PER_CLASS_THRESHOLD val cells keep the global threshold.
    """
    d, _ = pairwise_nearest(val_features, train_features, k=1)
    d = d[:, 0]
    overall = float(torch.quantile(d, percentile / 100.0))
    per_class = torch.full((num_classes,), overall)
    for c in range(num_classes):
        mine = d[val_labels == c]
        if mine.numel() >= MIN_VAL_PER_CLASS_THRESHOLD:
            per_class[c] = float(torch.quantile(mine, percentile / 100.0))
    return overall, per_class

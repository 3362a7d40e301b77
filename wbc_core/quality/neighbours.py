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

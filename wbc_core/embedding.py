"""Embedding map: real train, real test and synthetic cells in a classifier's feature space, via t-SNE.

A self-contained exact t-SNE in torch (van der Maaten & Hinton 2008: perplexity-calibrated affinities,
early exaggeration, momentum with gains) on at most a few thousand sampled cells, after PCA to 50
dimensions. Exact t-SNE is O(N^2) per iteration, which at N <= 3000 takes seconds to tens of seconds on
a CPU, so no Barnes-Hut or new dependency is needed. Results are cached per run in the run folder.
torch is imported inside the functions: the dashboard reads cached maps without loading it.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from db import datasets as ds_db
from db import runs as runs_db
from db.datasets import ImageRow
from wbc_core import jobs
from wbc_core.provenance import TRAIN_SET_FILE

if TYPE_CHECKING:
    import torch

MAX_POINTS = 3000  # hard cap: exact t-SNE memory and time grow with N^2
ORIGINS = ("real train", "real test", "synthetic")
COLUMNS = ["image_id", "x", "y", "class", "origin", "in_train_set"]


@dataclass(frozen=True)
class TSNEConfig:
    """Settings of the t-SNE layout (defaults follow the original paper and openTSNE)."""

    perplexity: float = 30.0  # effective number of neighbours per point; lowered automatically for tiny N
    iterations: int = 600  # gradient steps in all, early exaggeration included
    exaggeration_iterations: int = 200  # first steps with P multiplied by early_exaggeration (forms clusters)
    early_exaggeration: float = 12.0  # attraction multiplier during the first phase
    pca_dims: int = 50  # features are reduced to this many principal components first (denoises, speeds up)
    seed: int = 0  # only breaks ties; the PCA initialisation makes the layout deterministic


def _pca(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Centre x and project it on its first `dims` principal components."""
    import torch

    x = x - x.mean(dim=0, keepdim=True)
    if x.shape[1] <= dims:
        return x
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:dims].T


def _affinities(x: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetric joint probabilities P (N x N) with each row's conditional entropy = log(perplexity)."""
    import torch

    d = torch.cdist(x, x).pow(2).double()
    n = d.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    d = d / d[~eye].mean().clamp_min(1e-12)  # scale-free: the search starts near the right precision
    d_shift = d - d.masked_fill(eye, math.inf).min(dim=1, keepdim=True).values  # no underflow in exp
    target = math.log(perplexity)
    beta = torch.ones(n, 1, dtype=torch.float64)
    lo = torch.zeros_like(beta)
    hi = torch.full_like(beta, math.inf)
    for _ in range(100):  # vectorised bisection on each row's precision beta
        p = torch.exp(-d_shift * beta).masked_fill(eye, 0.0)
        s = p.sum(dim=1, keepdim=True).clamp_min(1e-300)
        entropy = torch.log(s) + beta * (d_shift * p).sum(dim=1, keepdim=True) / s
        too_flat = entropy > target  # entropy too high -> sharpen (increase beta)
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    p = p / s
    p = (p + p.T) / (2.0 * n)
    return p.clamp_min(1e-12).float().masked_fill(eye, 0.0)


def tsne(features: torch.Tensor, config: TSNEConfig = TSNEConfig()) -> torch.Tensor:
    """2-D t-SNE layout [N, 2] of features [N, D] (float32, CPU)."""
    import torch

    x = features.detach().float().cpu()
    n = x.shape[0]
    if n < 3:
        return torch.zeros(n, 2)
    perplexity = min(config.perplexity, max(1.0, (n - 1) / 3.0))  # a perplexity above N/3 has no meaning
    x = _pca(x, config.pca_dims)
    p = _affinities(x, perplexity)
    gen = torch.Generator().manual_seed(config.seed)
    # PCA initialisation (Kobak & Berens 2019) keeps global structure and makes runs repeatable.
    init = x[:, :2] if x.shape[1] >= 2 else torch.randn(n, 2, generator=gen)
    y = init / init[:, 0].std().clamp_min(1e-12) * 1e-4 + 1e-6 * torch.randn(n, 2, generator=gen)
    lr = max(n / config.early_exaggeration / 4.0, 50.0)
    update = torch.zeros_like(y)
    gains = torch.ones_like(y)
    for it in range(config.iterations):
        early = it < config.exaggeration_iterations
        exaggeration = config.early_exaggeration if early else 1.0
        momentum = 0.5 if early else 0.8
        num = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        num.fill_diagonal_(0.0)
        q = (num / num.sum()).clamp_min(1e-12)
        w = (exaggeration * p - q) * num
        grad = 4.0 * (w.sum(dim=1, keepdim=True) * y - w @ y)  # sum_j w_ij (y_i - y_j) without an N x N x 2 tensor
        same_sign = (grad > 0) == (update > 0)
        gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_min(0.01)
        update = momentum * update - lr * gains * grad
        y = y + update
        y = y - y.mean(dim=0, keepdim=True)
    return y


def _sample(groups: dict[str, list[ImageRow]], max_points: int, seed: int) -> dict[str, list[ImageRow]]:
    """At most max_points rows, shared as evenly as possible between the origins."""
    rng = random.Random(seed)
    left = max_points
    quota: dict[str, int] = {}
    pending = sorted(groups, key=lambda g: len(groups[g]))
    while pending:  # smallest first: what a small group cannot use goes to the larger ones
        name = pending.pop(0)
        share = left // (len(pending) + 1)
        quota[name] = min(len(groups[name]), share)
        left -= quota[name]
    return {name: sorted(rng.sample(rows, quota[name]), key=lambda r: r.id) for name, rows in groups.items()}


def _cache_path(run_id: int, max_points: int, seed: int):  # noqa: ANN202
    return jobs.run_dir(run_id) / f"embedding_{max_points}_{seed}.csv"


def cached_embedding(run_id: int, max_points: int = 1500, seed: int = 0) -> pd.DataFrame | None:
    """The cached embedding map of a run for these settings, or None when not computed yet."""
    path = _cache_path(run_id, max_points, seed)
    return pd.read_csv(path) if path.exists() else None


def embedding_map(run_id: int, max_points: int = 1500, seed: int = 0, refresh: bool = False,
                  config: TSNEConfig | None = None) -> pd.DataFrame:
    """t-SNE of the run's penultimate features for sampled real train, real test and synthetic cells (COLUMNS)."""
    # "class" is the training label for cells in the run's training set (relabels applied), else the stored class.
    from wbc_core import results, store
    from wbc_core.classifier import extract_features, load_classifier

    if not 3 <= max_points <= MAX_POINTS:
        raise ValueError(f"max_points must be between 3 and {MAX_POINTS}, got {max_points}")
    if not refresh and (cached := cached_embedding(run_id, max_points, seed)) is not None:
        return cached
    info = runs_db.get_run(run_id)
    loaded = load_classifier(results.checkpoint_path(run_id))
    manifest_path = jobs.run_dir(run_id) / TRAIN_SET_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else []
    trained = {int(m["id"]): m["label"] for m in manifest}
    groups = {"real train": ds_db.real_images(info.dataset_id, split="train"),
              "real test": ds_db.real_images(info.dataset_id, split="test"),
              "synthetic": ds_db.candidates(info.dataset_id)}
    picked = _sample(groups, max_points, seed)
    rows = [r for name in ORIGINS for r in picked[name]]
    if len(rows) < 3:
        raise ValueError(f"run {run_id}'s dataset has too few cells for an embedding map")
    images = store.images_for(info.dataset_id, rows, loaded.image_size)
    features = extract_features(loaded, images)
    xy = tsne(features, config or TSNEConfig(seed=seed)).numpy()
    records: list[dict[str, Any]] = []
    k = 0
    for name in ORIGINS:
        for r in picked[name]:
            records.append({"image_id": r.id, "x": float(xy[k, 0]), "y": float(xy[k, 1]),
                            "class": trained.get(r.id, r.class_name), "origin": name, "in_train_set": r.id in trained})
            k += 1
    frame = pd.DataFrame(records, columns=COLUMNS)
    frame.to_csv(_cache_path(run_id, max_points, seed), index=False)
    return frame

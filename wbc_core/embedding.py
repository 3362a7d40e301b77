"""Embedding map: real train, real test and synthetic cells in a classifier's feature space, via t-SNE or UMAP.

The features of at most a few thousand sampled cells are reduced to 50 principal components (scikit-learn),
then laid out in 2-D by openTSNE (Barnes-Hut t-SNE with early exaggeration and PCA initialisation, Poličar
et al. 2019) or by umap-learn. Results are cached per run and method in the run folder. torch and the
layout libraries are imported inside the functions: the dashboard reads cached maps without loading them.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from db import datasets as ds_db
from db import runs as runs_db
from db.datasets import ImageRow
from wbc_core import jobs
from wbc_core.embedding_cache import cache_path, cached_embedding
from wbc_core.provenance import TRAIN_SET_FILE

if TYPE_CHECKING:
    import torch

MAX_POINTS = 3000  # cap of sampled cells: features are extracted in one pass, the page draws every point
EMBEDDING_METHODS = ("tsne", "umap")  # layout algorithms of the map (t-SNE: openTSNE; UMAP: umap-learn)
ORIGINS = ("real train", "real test", "synthetic")
COLUMNS = ["image_id", "x", "y", "class", "origin", "in_train_set"]


@dataclass(frozen=True)
class TSNEConfig:
    """Settings of the layout (t-SNE defaults follow the original paper and openTSNE; UMAP's its own)."""

    perplexity: float = 30.0  # t-SNE: effective number of neighbours per point; lowered automatically for tiny N
    iterations: int = 600  # t-SNE: optimisation steps in all, early exaggeration included
    exaggeration_iterations: int = 200  # t-SNE: first steps with attraction multiplied by early_exaggeration
    early_exaggeration: float = 12.0  # t-SNE: attraction multiplier during the first phase (forms clusters)
    pca_dims: int = 50  # features are reduced to this many principal components first (denoises, speeds up)
    seed: int = 0  # random state of both methods: the same seed gives the same map
    umap_neighbours: int = 15  # UMAP: size of the local neighbourhood (larger keeps more global structure)
    umap_min_dist: float = 0.1  # UMAP: how tightly points may pack in the map


def _check_method(method: str) -> None:
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"the map method must be one of {', '.join(EMBEDDING_METHODS)}, got {method!r}")


def _pca(features: torch.Tensor, config: TSNEConfig):  # noqa: ANN202 - numpy array [N, <= pca_dims]
    """Features as float64 numpy, centred and projected on their first principal components."""
    import numpy as np
    from sklearn.decomposition import PCA

    x = features.detach().double().cpu().numpy()
    dims = min(config.pca_dims, *x.shape)
    if dims >= x.shape[1]:
        return x - x.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(PCA(n_components=dims, random_state=config.seed).fit_transform(x))


def tsne(features: torch.Tensor, config: TSNEConfig = TSNEConfig()) -> torch.Tensor:
    """2-D t-SNE layout [N, 2] of features [N, D] (float32, CPU), by openTSNE."""
    import numpy as np
    import torch
    from openTSNE import TSNE

    n = features.shape[0]
    if n < 3:
        return torch.zeros(n, 2)
    x = _pca(features, config)
    model = TSNE(perplexity=min(config.perplexity, max(1.0, (n - 1) / 3.0)),  # above N/3 it has no meaning
                 early_exaggeration_iter=min(config.exaggeration_iterations, config.iterations),
                 early_exaggeration=config.early_exaggeration,
                 n_iter=max(0, config.iterations - config.exaggeration_iterations),
                 initialization="pca",  # keeps global structure (Kobak & Berens 2019)
                 random_state=config.seed, n_jobs=max(1, torch.get_num_threads()), verbose=False)
    return torch.from_numpy(np.asarray(model.fit(x), dtype=np.float32))


def umap(features: torch.Tensor, config: TSNEConfig = TSNEConfig()) -> torch.Tensor:
    """2-D UMAP layout [N, 2] of features [N, D] (float32, CPU), by umap-learn."""
    import warnings

    import numpy as np
    import torch

    n = features.shape[0]
    if n < 3:
        return torch.zeros(n, 2)
    x = _pca(features, config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # sklearn's renamings inside umap-learn
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        import umap as umap_learn

        # A fixed random_state makes UMAP single-threaded, and is what makes a cached map reproducible.
        model = umap_learn.UMAP(n_neighbors=max(2, min(config.umap_neighbours, n - 1)),
                                min_dist=config.umap_min_dist, random_state=config.seed, n_jobs=1,
                                init="spectral" if n > config.umap_neighbours + 1 else "random")
        y = model.fit_transform(x)
    return torch.from_numpy(np.asarray(y, dtype=np.float32))


def layout(features: torch.Tensor, method: str = "tsne", config: TSNEConfig | None = None) -> torch.Tensor:
    """2-D map [N, 2] of features [N, D] by one of EMBEDDING_METHODS."""
    _check_method(method)
    return {"tsne": tsne, "umap": umap}[method](features, config or TSNEConfig())


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


def embedding_map(run_id: int, max_points: int = 1500, seed: int = 0, refresh: bool = False,
                  config: TSNEConfig | None = None, method: str = "tsne") -> pd.DataFrame:
    """t-SNE or UMAP of the run's penultimate features for sampled real train, real test and synthetic cells."""
    # "class" is the training label for cells in the run's training set (relabels applied), else the stored class.
    from wbc_core import results, store
    from wbc_core.classifier import extract_features, load_classifier

    if not 3 <= max_points <= MAX_POINTS:
        raise ValueError(f"max_points must be between 3 and {MAX_POINTS}, got {max_points}")
    _check_method(method)
    if not refresh and (cached := cached_embedding(run_id, max_points, seed, method)) is not None:
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
    xy = layout(features, method, config or TSNEConfig(seed=seed)).numpy()
    records: list[dict[str, Any]] = []
    k = 0
    for name in ORIGINS:
        for r in picked[name]:
            records.append({"image_id": r.id, "x": float(xy[k, 0]), "y": float(xy[k, 1]),
                            "class": trained.get(r.id, r.class_name), "origin": name, "in_train_set": r.id in trained})
            k += 1
    frame = pd.DataFrame(records, columns=COLUMNS)
    frame.to_csv(cache_path(run_id, max_points, seed, method), index=False)
    return frame

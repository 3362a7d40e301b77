"""Where embedding maps are cached, readable without torch (the Dashboard shows them; a job computes them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wbc_core.context import current


def cache_path(run_id: int, max_points: int, seed: int, method: str = "tsne") -> Path:
    """The CSV of one run's map for these settings (t-SNE keeps its historical name)."""
    prefix = "embedding" if method == "tsne" else f"embedding_{method}"
    return current().paths.run_dir(run_id) / f"{prefix}_{max_points}_{seed}.csv"


def cached_embedding(run_id: int, max_points: int = 1500, seed: int = 0, method: str = "tsne") -> pd.DataFrame | None:
    """The cached embedding map of a run for these settings, or None when not computed yet."""
    path = cache_path(run_id, max_points, seed, method)
    return pd.read_csv(path) if path.exists() else None

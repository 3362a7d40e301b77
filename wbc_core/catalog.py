"""What a page can pick from: datasets, and a dataset's GAN runs and their checkpoints (reads only)."""

from __future__ import annotations

from db import runs as runs_db
from db.datasets import DatasetInfo, get_dataset, list_datasets

__all__ = ["DatasetInfo", "checkpoint_steps", "gan_run_ids", "get_dataset", "list_datasets"]


def gan_run_ids(dataset_id: int) -> list[int]:
    """Ids of a dataset's GAN runs, newest first."""
    return [r.id for r in runs_db.list_runs(dataset_id=dataset_id, kind="gan")]


def checkpoint_steps(gan_run_id: int) -> list[int]:
    """Steps at which a GAN run saved a checkpoint, in order."""
    return [c["step"] for c in runs_db.checkpoints(gan_run_id)]

"""The dataset's quality judge: a real-only classifier trained on its real train cells, cached by JudgeKey.

This is the domain side of `wbc_core.quality.judge` (which knows nothing of datasets or the database): it
reads a dataset's real train and val cells, and builds or loads the judge and its reference features.
"""

from __future__ import annotations

import torch

from db import datasets as ds_db
from wbc_core import store
from wbc_core.context import current
from wbc_core.provenance import JudgeKey
from wbc_core.quality.judge import QualityConfig, QualityError, Reference, app_quality_config, build_reference


def dataset_reference(dataset: str | int, size: int | None = None,
                      config: QualityConfig | None = None) -> Reference:
    """The cached judge and reference features for a dataset's real train/val cells at size (default: its own)."""
    config = config or app_quality_config()
    info = ds_db.get_dataset(dataset)
    size = int(size or info.image_size)
    train_rows = ds_db.real_images(info.id, split="train")
    val_rows = ds_db.real_images(info.id, split="val")
    if len(train_rows) < 2 or len(val_rows) < 2:
        raise QualityError(f"dataset {info.name!r} needs real train and val cells to measure quality "
                           f"(has {len(train_rows)} train, {len(val_rows)} val)")
    train = store.labelled(info.id, train_rows, info.class_names, size)
    val = store.labelled(info.id, val_rows, info.class_names, size)
    # Keyed by the split hash: a re-split dataset gets a new judge instead of one that saw today's val cells.
    key = JudgeKey(info.id, size, info.split_hash, config.key())
    judge_dir = current().paths.cache / "judges" / key.folder_name
    ids = torch.tensor([r.id for r in train_rows], dtype=torch.int64)
    return build_reference(train, val, info.class_names, judge_dir, config, train_ids=ids)

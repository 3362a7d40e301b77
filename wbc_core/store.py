"""Cached uint8 tensor store: each cell is decoded and resized once per (dataset, size).

Training loops then index one contiguous uint8 tensor instead of opening files every step,
which is what makes CPU training fast here (see bench/train.py). The cache is a plain file
under WBC_HOME/cache, rebuilt incrementally: a request decodes only the ids it lacks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from wbc_core.context import current
from wbc_core.types import LabelledImages

if TYPE_CHECKING:  # only for annotations: the store must import without SQLAlchemy (GPU boxes, bench scripts)
    from db.datasets import ImageRow



def decode_cell(path: Path, size: int) -> np.ndarray:
    """Decode one stored cell to uint8 [3, size, size]: centre-cropped to a square, then resized."""
    with Image.open(path) as im:
        # JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale directly: far cheaper
        # than decoding full size and resizing, and the final resize still sets the exact size.
        im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        if w != h:
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side))
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_many(paths: Sequence[Path], size: int, workers: int | None = None) -> torch.Tensor:
    """Decode many cells in parallel (Pillow releases the GIL while decoding) to uint8 [N,3,S,S]."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    if not paths:
        return torch.from_numpy(out)

    def work(i: int) -> None:
        out[i] = decode_cell(paths[i], size)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        list(pool.map(work, range(len(paths))))
    return torch.from_numpy(out)


def _cache_file(dataset_id: int, size: int) -> Path:
    folder = current().paths.cache / "tensors"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"dataset_{dataset_id}_size_{size}.pt"


_Entry = tuple[torch.Tensor, torch.Tensor, list[str]]  # ids, images, sha256 of each cached image


def _empty(size: int) -> _Entry:
    return torch.empty(0, dtype=torch.int64), torch.empty((0, 3, size, size), dtype=torch.uint8), []


class _Memory:
    """The in-process copies of the cache files of one context: (dataset, size) -> entry, and their lock."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, int], _Entry] = {}
        self.lock = threading.Lock()


def _memory() -> _Memory:
    return current().caches.get("store.tensors", _Memory)


def _load(memory: _Memory, key: tuple[int, int]) -> _Entry:
    if key in memory.entries:
        return memory.entries[key]
    dataset_id, size = key
    path = _cache_file(dataset_id, size)
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            return blob["ids"], blob["images"], list(blob["sha256"])
        except Exception:  # noqa: BLE001 - a damaged or old-format cache is rebuilt, never trusted
            path.unlink(missing_ok=True)
    return _empty(size)


def _save(dataset_id: int, size: int, entry: _Entry) -> None:
    path = _cache_file(dataset_id, size)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    ids, images, shas = entry
    torch.save({"ids": ids, "images": images, "sha256": shas}, tmp)
    os.replace(tmp, path)  # atomic: concurrent readers see the old or the new file, never half of one


def images_for(dataset_id: int, rows: Sequence[ImageRow], size: int) -> torch.Tensor:
    """uint8 [N,3,S,S] for rows (in their order), decoding and caching only what is not cached yet."""
    # The memory belongs to the context, so another home never sees these cells; SQLite may still reuse an id
    # after a dataset is deleted, which the sha256 check below catches.
    memory, key = _memory(), (dataset_id, size)
    with memory.lock:
        ids, images, shas = _load(memory, key)
        known = {int(i): pos for pos, i in enumerate(ids.tolist())}
        # Every cached picture is checked against the sha256 the database holds for that id; a
        # mismatch means the cache belongs to an older dataset with the same id: start afresh.
        if any(r.id in known and shas[known[r.id]] != r.sha256 for r in rows):
            ids, images, shas = _empty(size)
            known = {}
        missing = [r for r in rows if r.id not in known]
        if missing:
            home = current().home
            fresh = decode_many([home / r.path for r in missing], size)
            ids = torch.cat([ids, torch.tensor([r.id for r in missing], dtype=torch.int64)])
            images = torch.cat([images, fresh])
            shas = shas + [r.sha256 for r in missing]
            _save(dataset_id, size, (ids, images, shas))
            known.update({r.id: len(known) + k for k, r in enumerate(missing)})
        memory.entries[key] = (ids, images, shas)
        index = torch.tensor([known[r.id] for r in rows], dtype=torch.int64)
        return images.index_select(0, index) if len(rows) else images[:0]


def labelled(dataset_id: int, rows: Sequence[ImageRow], class_names: list[str], size: int,
             labels: Iterable[str] | None = None) -> LabelledImages:
    """Images of rows with class indices from class_names (labels overrides row.class_name, e.g. relabels)."""
    index = {name: i for i, name in enumerate(class_names)}
    names = list(labels) if labels is not None else [r.class_name for r in rows]
    return LabelledImages(images_for(dataset_id, rows, size), torch.tensor([index[n] for n in names],
                                                                             dtype=torch.int64))


def forget_memory() -> None:
    """Drop the in-process copies (a long-lived UI process after a dataset is deleted; tests)."""
    memory = _memory()
    with memory.lock:
        memory.entries.clear()


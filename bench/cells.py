"""The one cell-folder loader of bench/: the app's ingest and split, decoded once per size, cached on request.

A labelled folder (one subfolder per class) is read with wbc_core.data.ingest, so unreadable files and duplicates
are skipped exactly as the app's import skips them, and split with the app's assign_splits, keyed by sha256, with
the import's defaults (SplitConfig(): 70/15/15 per class, seed 0). Every bench therefore trains, selects and tests
on the same cells as the others, and as a dataset the app imported from the same folder with the same split
settings: `Cells.split_hash` equals that dataset's split hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from wbc_core.data import SplitConfig, assign_splits, ingest, split_fingerprint
from wbc_core.data.split import TEST, TRAIN, VAL
from wbc_core.store import decode_many
from wbc_core.types import LabelledImages

SPLITS = (TRAIN, VAL, TEST)
_FORMAT = 1  # bump when the cached content changes meaning


@dataclass(frozen=True)
class Cells:
    """Every accepted cell of a folder, decoded at one size, with its key, sha256 and split; in key order."""

    class_names: list[str]  # sorted class folder names; label i is class_names[i]
    images: torch.Tensor  # uint8 [N,3,S,S]
    labels: torch.Tensor  # int64 [N]
    keys: list[str]  # "class/file" relative to the folder: identifies a real cell in every audit
    sha256: list[str]  # of the file's bytes: the key the split is ranked by, as in the app
    splits: list[str]  # "train", "val" or "test" per cell
    split_hash: str  # wbc_core.data.split_fingerprint of (sha256, class, split): equal hashes, identical splits

    def split_index(self, split: str) -> torch.Tensor:
        """Indices of the cells in one split, in key order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return torch.tensor([i for i, s in enumerate(self.splits) if s == split], dtype=torch.long)

    def subset(self, index: torch.Tensor | list[int]) -> LabelledImages:
        """The cells at `index` as LabelledImages."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return LabelledImages(self.images[idx], self.labels[idx])

    def part(self, split: str) -> LabelledImages:
        """The cells of one split ("train", "val" or "test")."""
        return self.subset(self.split_index(split))

    def parts(self) -> dict[str, LabelledImages]:
        """{"train", "val", "test"}: the cells of each split."""
        return {s: self.part(s) for s in SPLITS}


def load_cells(folder: Path, size: int, split: SplitConfig = SplitConfig(), workers: int | None = None,
               cache_dir: Path | None = None) -> Cells:
    """Read, split and decode a labelled folder at `size`; with cache_dir, decoded once and reused after.

    The cache is keyed by every file's path, size and modification time, the size and the split settings, so an
    added, removed or rewritten file makes a new one instead of serving stale cells.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; unpack archives first (one subfolder per class)")
    cache = cache_dir and Path(cache_dir) / f"cells_{folder.name}_{size}px_{_listing_key(folder, size, split)}.pt"
    if cache and cache.is_file():
        return Cells(**torch.load(cache, weights_only=True))
    t0 = time.perf_counter()
    accepted, report = ingest(folder)
    accepted = sorted(accepted, key=lambda im: im.source)  # input-order independent, like the split itself
    if not accepted:
        raise ValueError(f"{folder}: no readable images\n{report.summary()}")
    class_names = sorted({im.class_name for im in accepted})
    splits = assign_splits([im.class_name for im in accepted], [im.sha256 for im in accepted], split)
    # Decoded from the bytes the app would store (a re-encode for files it converts), not from the original file.
    images = decode_many([io.BytesIO(im.content) for im in accepted], size, workers=workers)  # type: ignore[misc]
    cells = Cells(class_names, images,
                  torch.tensor([class_names.index(im.class_name) for im in accepted], dtype=torch.long),
                  [im.source for im in accepted], [im.sha256 for im in accepted], splits,
                  split_fingerprint((im.sha256, im.class_name, s) for im, s in zip(accepted, splits, strict=True)))
    if report.skipped:
        print(f"{folder}: {len(report.skipped)} file(s) skipped as the app's import would skip them "
              f"(first: {report.skipped[0].source}: {report.skipped[0].message})", flush=True)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save({f.name: getattr(cells, f.name) for f in fields(cells)}, partial)  # asdict would deep-copy
        partial.replace(cache)  # atomic: a bench started meanwhile never reads half a file
        print(f"read {len(accepted)} cells of {folder} at {size} px in {time.perf_counter() - t0:.1f} s "
              f"(cached at {cache})", flush=True)
    return cells


def _listing_key(folder: Path, size: int, split: SplitConfig) -> str:
    """16 hex digits over every file's relative path, size and mtime, the size and the split settings."""
    digest = hashlib.sha256(json.dumps([_FORMAT, size, asdict(split)]).encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            digest.update(f"{path.relative_to(folder).as_posix()}\x00{st.st_size}\x00{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


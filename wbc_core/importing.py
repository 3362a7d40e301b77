"""Datasets: import labelled cells (folder, zip, BloodMNIST npz, built-in demo) with a fixed split."""

from __future__ import annotations

import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from db import datasets as ds_db
from wbc_core.context import current
from wbc_core.data import (
    IngestConfig,
    IngestedImage,
    IngestReport,
    SplitConfig,
    assign_splits,
    ingest,
    split_fingerprint,
)

SIZES = (32, 64, 128)


@dataclass(frozen=True)
class ImportResult:
    """What an import produced, for the CLI's JSON and the Data page."""

    dataset_id: int
    name: str
    kind: str
    class_counts: dict[str, dict[str, int]]  # class -> split -> count
    report: dict[str, Any]  # IngestReport.to_dict()
    summary: str  # plain-words report for people
    seconds: float


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"--size must be one of {', '.join(map(str, SIZES))}, got {size}")


def _persist(name: str, kind: str, source: str, images: list[IngestedImage], splits: list[str],
             split_config: dict[str, Any], report: IngestReport, size: int) -> int:
    if not images:
        raise ValueError(f"nothing to import from {source}: no usable image was found.\n{report.summary()}")
    class_names = sorted({im.class_name for im in images})
    target = current().paths.images / f"import_{int(time.time() * 1000)}_{random.randrange(1 << 30)}"
    home = current().home
    rows = []
    for im, split in zip(images, splits, strict=True):
        folder = target / im.class_name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{im.sha256[:24]}{im.extension}"
        path.write_bytes(im.content)
        rows.append({"origin": "real", "class_name": im.class_name, "split": split, "sha256": im.sha256,
                     "path": str(path.relative_to(home)), "width": im.width, "height": im.height,
                     "source": im.source, "note": im.note})
    split_hash = split_fingerprint((im.sha256, im.class_name, sp) for im, sp in zip(images, splits, strict=True))
    return ds_db.create_dataset(name, kind, source, class_names, split_config, split_hash, report.to_dict(), rows,
                                image_size=size)


def _result(dataset_id: int, report: IngestReport, started: float) -> ImportResult:
    info = ds_db.get_dataset(dataset_id)
    return ImportResult(dataset_id, info.name, info.kind, class_split_counts(dataset_id), report.to_dict(),
                        report.summary(), round(time.monotonic() - started, 2))


def import_folder(source: str | Path, name: str, size: int = 64, split: SplitConfig = SplitConfig(),
                  config: IngestConfig = IngestConfig(), kind: str = "real",
                  progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Import a folder or zip of class subfolders; bad files are skipped and listed in the report."""
    _check_size(size)
    if not name or not name.strip():
        raise ValueError("a dataset name is required")
    name = name.strip()
    if not str(source).strip():  # Path("") would silently mean the current directory
        raise ValueError("a folder or .zip path is required")
    _refuse_existing(name)
    started = time.monotonic()
    images, report = ingest(Path(source).expanduser(), config, progress=progress)
    splits = assign_splits([im.class_name for im in images], [im.sha256 for im in images], split)
    dataset_id = _persist(name, kind, str(source), images, splits, asdict(split), report, size)
    return _result(dataset_id, report, started)


def _refuse_existing(name: str) -> None:
    try:
        ds_db.get_dataset(name)
    except ds_db.DatasetNotFound:
        return
    raise ds_db.DatasetExists(f"a dataset named {name!r} already exists; choose another name")


def import_demo(name: str = "demo", per_class: int = 60, size: int = 64, seed: int = 0) -> ImportResult:
    """Create the built-in demo dataset: procedurally drawn cell-like images, NOT real cells."""
    from wbc_core.data.demo import write_demo_folder

    _check_size(size)
    _refuse_existing(name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_demo_folder(Path(tmp) / "demo", per_class=per_class, size=size, seed=seed)
        for note in folder.glob("*.txt"):  # the folder's own README would only show up as a skipped file
            note.unlink()
        result = import_folder(folder, name, size=size, split=SplitConfig(seed=seed), kind="demo")
    return result


def import_bloodmnist(npz_path: str | Path, name: str, size: int = 64) -> ImportResult:
    """Import a BloodMNIST .npz keeping its official train/val/test split."""
    from wbc_core.data.bloodmnist import read_bloodmnist_npz

    _check_size(size)
    _refuse_existing(name)
    started = time.monotonic()
    images: list[IngestedImage] = []
    splits: list[str] = []
    report = IngestReport()
    seen: set[str] = set()
    for image, split in read_bloodmnist_npz(Path(npz_path)):
        if image.sha256 in seen:  # MedMNIST has a few pixel-identical cells; keep the first
            report.skipped.append(_duplicate_skip(image.source))
            continue
        seen.add(image.sha256)
        images.append(image)
        splits.append(split)
    counts: dict[str, int] = defaultdict(int)
    for im in images:
        counts[im.class_name] += 1
    report.classes = dict(sorted(counts.items()))
    dataset_id = _persist(name, "bloodmnist", str(npz_path), images, splits, {"official_split": True}, report, size)
    return _result(dataset_id, report, started)


def _duplicate_skip(source: str):  # noqa: ANN202
    """A SkippedFile for a pixel-identical duplicate inside an npz."""
    from wbc_core.data import SkippedFile

    return SkippedFile(source, "duplicate", "pixel-identical to an earlier image in the same file; kept the first")


def download_bloodmnist(name: str, size: int = 64) -> ImportResult:
    """Download BloodMNIST through the medmnist package (needs internet) and import it with its splits."""
    from wbc_core.data.bloodmnist import download_bloodmnist as fetch

    root = current().home / "downloads"
    root.mkdir(exist_ok=True)
    return import_bloodmnist(fetch(size, root), name, size=min(s for s in SIZES if s >= min(size, 128)))


def class_split_counts(dataset_id: int) -> dict[str, dict[str, int]]:
    """class -> {train, val, test, synthetic} counts."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "val": 0, "test": 0, "synthetic": 0})
    for row in ds_db.image_counts(dataset_id):
        key = row["split"] if row["origin"] == "real" else "synthetic"
        table[row["class_name"]][key] += row["n"]
    return {k: dict(v) for k, v in sorted(table.items())}


def sample_paths(dataset_id: int, class_name: str, n: int = 8, split: str = "train", seed: int = 0) -> list[Path]:
    """Paths of up to n real cells of a class (a stable random sample), for galleries."""
    rows = ds_db.real_images(dataset_id, split=split, class_name=class_name)
    rng = random.Random(seed)
    chosen = rng.sample(rows, min(n, len(rows)))
    return [current().home / r.path for r in chosen]

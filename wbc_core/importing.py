"""Datasets: import labelled cells (folder, zip, BloodMNIST npz, built-in demo) with a fixed split."""

from __future__ import annotations

import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from db import datasets as ds_db
from wbc_core.auth import User, authorize
from wbc_core.context import Context, current
from wbc_core.data import (
    IngestConfig,
    IngestedImage,
    IngestReport,
    SplitConfig,
    assign_splits,
    ingest_stream,
    split_fingerprint,
)
from wbc_core.diskspace import DiskFull, ensure_free, is_disk_full
from wbc_core.staging import Staging
from wbc_core.staging import clean_stale_staging as _clean_stale_staging

SIZES = (32, 64, 128)
_ROW_BYTES = 1024  # database bytes per image row (PBC: 830 with indexes and write-ahead log), for the estimate


# Importing creates datasets that everyone then reviews and trains on: admins only (wbc_core.auth.PERMISSIONS).
PERMISSION = "import"


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
        raise ValueError(f"the working size must be one of {', '.join(map(str, SIZES))}, got {size}")


def _persist(name: str, kind: str, source: str, images: Iterable[tuple[IngestedImage, str | None]],
             split: SplitConfig | None, split_config: dict[str, Any], report: IngestReport, size: int,
             expected_bytes: int = 0, expected_files: int = 0) -> int:
    """Stage every image's file, then insert the dataset in one transaction, then move the files in.

    Only metadata stays in memory (the bytes of one image at a time), and whatever goes wrong before the commit,
    from a bad file to a full disk or a lost race for the name, leaves no file behind. Each item is an image with
    its split, or None for "choose with split" once all images are known.
    """
    ctx = current()
    needed = expected_bytes + expected_files * _ROW_BYTES
    if expected_bytes:
        ensure_free(ctx.home, needed)
    staging = Staging(ctx)
    try:
        rows = []
        for im, im_split in images:
            path = staging.write(im.class_name, f"{im.sha256[:24]}{im.extension}", im.content)
            rows.append({"origin": "real", "class_name": im.class_name, "split": im_split, "sha256": im.sha256,
                         "path": path, "width": im.width, "height": im.height, "source": im.source, "note": im.note})
        if not rows:
            raise ValueError(f"nothing to import from {source}: no usable image was found.\n{report.summary()}")
        if split is not None:
            chosen = assign_splits([r["class_name"] for r in rows], [r["sha256"] for r in rows], split)
            for row, chosen_split in zip(rows, chosen, strict=True):
                row["split"] = chosen_split
        class_names = sorted({r["class_name"] for r in rows})
        split_hash = split_fingerprint((r["sha256"], r["class_name"], r["split"]) for r in rows)
        dataset_id = ds_db.create_dataset(name, kind, source, class_names, split_config, split_hash,
                                          report.to_dict(), rows, image_size=size)
    except BaseException as exc:
        staging.discard()  # first: frees the space, so the message shows what is really free
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(ctx.home, needed or None) from exc
        raise
    try:
        staging.commit()
    except BaseException:
        # The rows point at files that did not arrive: take the dataset back rather than keep a broken one.
        ds_db.delete_dataset(dataset_id)
        staging.discard()
        raise
    return dataset_id


def _result(dataset_id: int, report: IngestReport, started: float) -> ImportResult:
    info = ds_db.get_dataset(dataset_id)
    return ImportResult(dataset_id, info.name, info.kind, class_split_counts(dataset_id), report.to_dict(),
                        report.summary(), round(time.monotonic() - started, 2))


def import_folder(source: str | Path, name: str, size: int = 64, split: SplitConfig = SplitConfig(),
                  config: IngestConfig = IngestConfig(), kind: str = "real",
                  progress: Callable[[int, int], None] | None = None, *, user: User) -> ImportResult:
    """Import a folder or zip of class subfolders; bad files are skipped and listed in the report.

    user is the acting account: importing needs the import permission (PermissionDenied otherwise)."""
    authorize(user, PERMISSION)
    _check_size(size)
    if not name or not name.strip():
        raise ValueError("a dataset name is required")
    name = name.strip()
    if not str(source).strip():  # Path("") would silently mean the current directory
        raise ValueError("a folder or .zip path is required")
    _refuse_existing(name)
    started = time.monotonic()
    # Streamed: each image is decoded, staged and dropped, so memory does not grow with the source.
    report, stream = ingest_stream(Path(source).expanduser(), config, progress=progress)
    try:
        dataset_id = _persist(name, kind, str(source), ((im, None) for im in stream), split, asdict(split), report,
                              size, expected_bytes=stream.bytes_to_read, expected_files=stream.files)
    finally:
        stream.close()
    return _result(dataset_id, report, started)


def clean_stale_staging(ctx: Context | None = None) -> list[str]:
    """Remove what interrupted imports left under the home's staging folder; called when a context is built."""
    return _clean_stale_staging(ctx if ctx is not None else current())


def _refuse_existing(name: str) -> None:
    try:
        ds_db.get_dataset(name)
    except ds_db.DatasetNotFound:
        return
    raise ds_db.DatasetExists(f"a dataset named {name!r} already exists; choose another name")


def import_demo(name: str = "demo", per_class: int = 60, size: int = 64, seed: int = 0, *,
                user: User) -> ImportResult:
    """Create the built-in demo dataset: procedurally drawn cell-like images, NOT real cells."""
    from wbc_core.data.demo import write_demo_folder

    authorize(user, PERMISSION)
    _check_size(size)
    _refuse_existing(name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_demo_folder(Path(tmp) / "demo", per_class=per_class, size=size, seed=seed)
        for note in folder.glob("*.txt"):  # the folder's own README would only show up as a skipped file
            note.unlink()
        result = import_folder(folder, name, size=size, split=SplitConfig(seed=seed), kind="demo", user=user)
    return result


def import_bloodmnist(npz_path: str | Path, name: str, size: int = 64, *, user: User) -> ImportResult:
    """Import a BloodMNIST .npz keeping its official train/val/test split."""
    from wbc_core.data.bloodmnist import read_bloodmnist_npz

    authorize(user, PERMISSION)
    _check_size(size)
    _refuse_existing(name)
    started = time.monotonic()
    report = IngestReport()
    counts: dict[str, int] = defaultdict(int)

    def images():  # noqa: ANN202 - streamed into _persist, which fills in the report's counts on the way
        seen: set[str] = set()
        for image, split in read_bloodmnist_npz(Path(npz_path)):
            if image.sha256 in seen:  # MedMNIST has a few pixel-identical cells; keep the first
                report.skipped.append(_duplicate_skip(image.source))
                continue
            seen.add(image.sha256)
            counts[image.class_name] += 1
            yield image, split
        report.classes = dict(sorted(counts.items()))  # runs once the npz is exhausted, before the insert

    dataset_id = _persist(name, "bloodmnist", str(npz_path), images(), None, {"official_split": True}, report, size)
    return _result(dataset_id, report, started)


def _duplicate_skip(source: str):  # noqa: ANN202
    """A SkippedFile for a pixel-identical duplicate inside an npz."""
    from wbc_core.data import SkippedFile

    return SkippedFile(source, "duplicate", "pixel-identical to an earlier image in the same file; kept the first")


def download_bloodmnist(name: str, size: int = 64, *, user: User) -> ImportResult:
    """Download BloodMNIST through the medmnist package (needs internet) and import it with its splits."""
    from wbc_core.data.bloodmnist import download_bloodmnist as fetch

    authorize(user, PERMISSION)  # before the download, not only before the import
    root = current().home / "downloads"
    root.mkdir(exist_ok=True)
    return import_bloodmnist(fetch(size, root), name, size=min(s for s in SIZES if s >= min(size, 128)),
                            user=user)


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

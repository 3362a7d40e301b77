"""BloodMNIST (MedMNIST v2, the same PBC cells at 28-224 px): validate, stream and download its .npz files."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from wbc_core.data.records import IngestedImage, IngestError

# Index = label value in the .npz. "ig" = immature granulocytes (myelocytes, metamyelocytes, promyelocytes).
BLOODMNIST_CLASSES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]
BLOODMNIST_SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
_DOWNLOAD_TIMEOUT_S = 30  # per socket operation; without it a silently firewalled network hangs for minutes
_CHUNK = 1 << 20


def bloodmnist_filename(size: int) -> str:
    """File name MedMNIST uses for a size (so a file downloaded either way is found by both)."""
    return "bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz"


@dataclass(frozen=True)
class _ImagesMember:
    """Where one split's images live inside the .npz, with their validated shape."""

    member: str  # zip member name, e.g. "train_images.npy"
    shape: tuple[int, int, int, int]  # (N, H, W, 3)
    fortran_order: bool  # True only for arrays saved transposed; those are loaded whole instead of streamed


def read_bloodmnist_npz(path: Path) -> Iterator[tuple[IngestedImage, str]]:
    """Validate a BloodMNIST .npz now, then yield (image as PNG, official split) for every image in it."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path} does not exist or is not a file; give the path of a bloodmnist .npz file")
    if not zipfile.is_zipfile(path):
        raise IngestError(f"{path} is not a .npz file (NumPy archive); download bloodmnist_64.npz again")
    with zipfile.ZipFile(path) as zf:
        members = set(zf.namelist())
        needed = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
        missing = [key for key in needed if f"{key}.npy" not in members]
        if missing:
            found = ", ".join(sorted(m.removesuffix(".npy") for m in members)) or "nothing"
            raise IngestError(
                f"{path.name} is missing {', '.join(missing)} (found: {found}); is this a MedMNIST BloodMNIST file?"
            )
        layout = {split: _check_images(zf, f"{split}_images.npy", path.name) for split in SPLITS}
    # Labels are small (N integers), so they are read whole and checked before anything is yielded.
    labels = {split: _read_labels(path, split, layout[split].shape[0]) for split in SPLITS}
    return _iterate(path, layout, labels)


def _read_header(f: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError) as exc:
        raise IngestError(f"{where} is not a readable NumPy array ({exc})") from exc


def _check_images(zf: zipfile.ZipFile, member: str, name: str) -> _ImagesMember:
    where = f"{name}: {member.removesuffix('.npy')}"
    with zf.open(member) as f:
        shape, fortran_order, dtype = _read_header(f, where)
    if dtype != np.uint8:
        raise IngestError(f"{where} has dtype {dtype}, expected uint8 (0-255 pixel values)")
    if len(shape) != 4 or shape[3] != 3 or shape[1] < 1 or shape[2] < 1:
        raise IngestError(f"{where} has shape {tuple(shape)}, expected (N, height, width, 3) RGB images")
    return _ImagesMember(member, (shape[0], shape[1], shape[2], shape[3]), fortran_order)


def _read_labels(path: Path, split: str, count: int) -> np.ndarray:
    where = f"{path.name}: {split}_labels"
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = npz[f"{split}_labels"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise IngestError(f"{where} could not be read ({exc})") from exc
    if labels.dtype.kind not in "iu":
        raise IngestError(f"{where} has dtype {labels.dtype}, expected integers")
    if labels.shape not in ((count,), (count, 1)):
        raise IngestError(f"{where} has shape {labels.shape}, expected ({count}, 1) to match {count} images")
    labels = labels.reshape(-1).astype(np.int64)
    bad = (labels < 0) | (labels >= len(BLOODMNIST_CLASSES))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise IngestError(
            f"{where} has {int(bad.sum())} labels outside 0..{len(BLOODMNIST_CLASSES) - 1} "
            f"(first: {int(labels[first])} at index {first}); BloodMNIST has {len(BLOODMNIST_CLASSES)} classes"
        )
    return labels


def _iterate(
    path: Path, layout: dict[str, _ImagesMember], labels: dict[str, np.ndarray]
) -> Iterator[tuple[IngestedImage, str]]:
    with zipfile.ZipFile(path) as zf:
        for split in SPLITS:
            for index, pixels in enumerate(_images(zf, path, layout[split])):
                buf = io.BytesIO()
                Image.fromarray(pixels, "RGB").save(buf, format="PNG")
                content = buf.getvalue()
                image = IngestedImage(
                    class_name=BLOODMNIST_CLASSES[int(labels[split][index])],
                    source=f"{path.name}!{split}_images[{index}]",
                    sha256=hashlib.sha256(content).hexdigest(),
                    content=content,
                    extension=".png",
                    width=int(pixels.shape[1]),
                    height=int(pixels.shape[0]),
                    note=None,
                )
                yield image, split


def _images(zf: zipfile.ZipFile, path: Path, spec: _ImagesMember) -> Iterator[np.ndarray]:
    """Yield HxWx3 arrays one at a time; streamed so a 224 px file (~2.5 GB of pixels) never sits in memory."""
    n, h, w, c = spec.shape
    if spec.fortran_order:
        with np.load(path, allow_pickle=False) as npz:
            yield from np.ascontiguousarray(npz[spec.member.removesuffix(".npy")])
        return
    per_image = h * w * c
    with zf.open(spec.member) as f:
        _read_header(f, spec.member)
        for index in range(n):
            raw = f.read(per_image)
            if len(raw) != per_image:
                raise IngestError(f"{path.name}: {spec.member} ends early at image {index} of {n}; the file is damaged")
            yield np.frombuffer(raw, dtype=np.uint8).reshape(h, w, c)


def download_bloodmnist(size: int, root: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Download bloodmnist[_SIZE].npz into root (skipped if already there) and return its path."""
    if size not in BLOODMNIST_SIZES:
        raise IngestError(f"BloodMNIST comes in sizes {', '.join(map(str, BLOODMNIST_SIZES))} pixels, not {size}")
    root = Path(root)
    name = bloodmnist_filename(size)
    target = root / name
    if target.is_file():
        return target
    manual = f"Download {name} yourself and run `python -m wbc_core import-npz FILE`"
    try:
        from medmnist.info import INFO  # lazy: medmnist pulls in torch and friends
    except ImportError as exc:
        raise IngestError(f"could not download BloodMNIST: the medmnist package is not installed. {manual}") from exc
    flag = "" if size == 28 else f"_{size}"
    url, md5 = INFO["bloodmnist"][f"url{flag}"], INFO["bloodmnist"][f"MD5{flag}"]
    root.mkdir(parents=True, exist_ok=True)
    partial = root / (name + ".part")
    # Our own fetch rather than BloodMNIST(download=True): that class loads the whole split into memory right after
    # downloading and has no timeout. Same URL, checksum and file name as medmnist, so either finds the other's file.
    try:
        digest = _fetch(url, partial, progress)
    except Exception as exc:  # DNS, socket, TLS, HTTP and proxy errors all mean "could not get it" to the user
        partial.unlink(missing_ok=True)
        raise IngestError(f"could not download BloodMNIST: no internet connection? ({_reason(exc)}) {manual}") from exc
    if digest != md5:
        partial.unlink(missing_ok=True)
        raise IngestError(f"could not download BloodMNIST: {name} arrived damaged (checksum mismatch). {manual}")
    os.replace(partial, target)  # atomic: a half-downloaded file never appears under the final name
    return target


def _fetch(url: str, dest: Path, progress: Callable[[int, int], None] | None) -> str:
    """Stream url to dest; return the md5 hex digest of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)  # a checksum, not security
    request = urllib.request.Request(url, headers={"User-Agent": "wbc-curate"})
    with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            md5.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return md5.hexdigest()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).strip() or type(exc).__name__

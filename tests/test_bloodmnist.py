"""BloodMNIST .npz: validated up front, streamed as PNGs with the official split, and downloaded without the network."""

from __future__ import annotations

import hashlib
import io
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbc_core.data.bloodmnist import (
    BLOODMNIST_CLASSES,
    bloodmnist_filename,
    download_bloodmnist,
    read_bloodmnist_npz,
)
from wbc_core.data.ingest import IngestError

COUNTS = {"train": 4, "val": 2, "test": 2}


def arrays(size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for split, n in COUNTS.items():
        out[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, 8, (n, 1)).astype(np.uint8)
    out["train_labels"][:, 0] = [0, 3, 7, 4]  # first, last and "ig"
    return out


def write_npz(path: Path, data: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **data)
    return path


def test_reads_every_image_with_official_split_and_label(tmp_path: Path) -> None:
    data = arrays()
    path = write_npz(tmp_path / "bloodmnist.npz", data)
    items = list(read_bloodmnist_npz(path))
    assert [split for _, split in items] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    assert [img.class_name for img, _ in items[:4]] == ["basophil", "ig", "platelet", "lymphocyte"]
    index = {"train": 0, "val": 0, "test": 0}
    for image, split in items:
        pixels = np.asarray(Image.open(io.BytesIO(image.content)))
        assert np.array_equal(pixels, data[f"{split}_images"][index[split]])
        assert image.class_name == BLOODMNIST_CLASSES[int(data[f"{split}_labels"][index[split], 0])]
        assert image.sha256 == hashlib.sha256(image.content).hexdigest()
        assert (image.extension, image.width, image.height, image.note) == (".png", 28, 28, None)
        assert image.source == f"bloodmnist.npz!{split}_images[{index[split]}]"
        index[split] += 1
    assert [img.sha256 for img, _ in read_bloodmnist_npz(path)] == [img.sha256 for img, _ in items]


def test_flat_labels_and_fortran_order_are_accepted(tmp_path: Path) -> None:
    data = arrays(size=16)
    data["val_labels"] = data["val_labels"].reshape(-1).astype(np.int64)
    data["test_images"] = np.asfortranarray(data["test_images"])
    items = list(read_bloodmnist_npz(write_npz(tmp_path / "x.npz", data)))
    assert len(items) == 8
    last = np.asarray(Image.open(io.BytesIO(items[-1][0].content)))
    assert np.array_equal(last, data["test_images"][-1])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("val_labels"), "missing val_labels"),
        (lambda d: d.update(train_images=d["train_images"].astype(np.float32)), "dtype float32, expected uint8"),
        (lambda d: d.update(test_images=d["test_images"][..., 0]), r"shape \(2, 28, 28\), expected"),
        (lambda d: d.update(val_images=d["val_images"][..., :1]), r"expected \(N, height, width, 3\)"),
        (lambda d: d["train_labels"].__setitem__((1, 0), 8), "labels outside 0..7 .first: 8 at index 1"),
        (lambda d: d.update(test_labels=np.array([[0], [-1]])), "outside 0..7"),
        (lambda d: d.update(val_labels=np.zeros((3, 1), np.uint8)), r"shape \(3, 1\), expected \(2, 1\)"),
        (lambda d: d.update(train_labels=np.zeros((4, 1), np.float32)), "expected integers"),
    ],
)
def test_invalid_npz_is_rejected_before_anything_is_yielded(tmp_path: Path, change, match: str) -> None:
    data = arrays()
    change(data)
    path = write_npz(tmp_path / "bad.npz", data)
    with pytest.raises(IngestError, match=match):
        read_bloodmnist_npz(path)  # no iteration needed: validation is eager


def test_missing_or_non_npz_file(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="does not exist"):
        read_bloodmnist_npz(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(IngestError, match="not a .npz file"):
        read_bloodmnist_npz(tmp_path / "text.npz")


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every network attempt fail the way it does on a machine without internet."""

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def test_download_offline_gives_a_plain_message(tmp_path: Path, offline: None) -> None:
    with pytest.raises(IngestError) as info:
        download_bloodmnist(64, tmp_path / "mm")
    message = str(info.value)
    assert message.startswith("could not download BloodMNIST: no internet connection?")
    assert "Download bloodmnist_64.npz yourself and run `python -m wbc_core import-npz FILE`" in message
    assert list((tmp_path / "mm").iterdir()) == []  # no half-written file left behind


def test_download_rejects_unknown_size_and_reuses_an_existing_file(tmp_path: Path, offline: None) -> None:
    with pytest.raises(IngestError, match="sizes 28, 64, 128, 224"):
        download_bloodmnist(32, tmp_path)
    existing = write_npz(tmp_path / bloodmnist_filename(28), arrays())
    assert bloodmnist_filename(28) == "bloodmnist.npz" and bloodmnist_filename(128) == "bloodmnist_128.npz"
    assert download_bloodmnist(28, tmp_path) == existing  # offline, yet fine: nothing to fetch


def test_download_checks_md5_and_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medmnist.info import INFO

    source = write_npz(tmp_path / "upstream.npz", arrays(seed=3))
    digest = hashlib.md5(source.read_bytes()).hexdigest()
    monkeypatch.setitem(INFO["bloodmnist"], "url_64", source.as_uri())  # file:// keeps the test offline
    monkeypatch.setitem(INFO["bloodmnist"], "MD5_64", digest)
    calls: list[tuple[int, int]] = []
    path = download_bloodmnist(64, tmp_path / "root", progress=lambda done, total: calls.append((done, total)))
    assert path == tmp_path / "root" / "bloodmnist_64.npz"
    assert path.read_bytes() == source.read_bytes() and calls[-1][0] == source.stat().st_size
    assert len(list(read_bloodmnist_npz(path))) == 8

    monkeypatch.setitem(INFO["bloodmnist"], "MD5_64", "0" * 32)
    with pytest.raises(IngestError, match="checksum mismatch"):
        download_bloodmnist(64, tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []

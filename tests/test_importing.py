"""Dataset service: folder import persisted with a fixed split, npz with official splits, demo, tensor store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from support import account

from db import datasets as ds_db
from wbc_core import store
from wbc_core.data import SplitConfig
from wbc_core.importing import class_split_counts, import_bloodmnist, import_demo, import_folder


def test_folder_import_persists_images_hashes_and_a_fixed_split(wbc_home, tiny_folder):
    (tiny_folder / "lymphocyte" / "notes.jpg").write_text("not an image")
    result = import_folder(tiny_folder, "tiny", size=32, split=SplitConfig(0.25, 0.25, seed=1), user=account())
    assert result.class_counts["lymphocyte"] == {"train": 6, "val": 3, "test": 3, "synthetic": 0}
    assert [s["reason"] for s in result.report["skipped"]] == ["not_an_image"]
    info = ds_db.get_dataset("tiny")
    assert info.class_names == ["lymphocyte", "neutrophil", "platelet"] and info.image_size == 32
    assert len(info.split_hash) == 64
    rows = ds_db.real_images(info.id)
    assert len(rows) == 36 and all((wbc_home / r.path).is_file() and len(r.sha256) == 64 for r in rows)
    # Same files, same seed: the same split, so results are reproducible across machines.
    again = import_folder(tiny_folder, "tiny2", size=32, split=SplitConfig(0.25, 0.25, seed=1), user=account())
    assert ds_db.get_dataset(again.dataset_id).split_hash == info.split_hash


def test_import_refuses_a_taken_name_and_a_bad_size(wbc_home, tiny_folder):
    import_folder(tiny_folder, "tiny", size=32, user=account())
    with pytest.raises(ds_db.DatasetExists):
        import_folder(tiny_folder, "tiny", size=32, user=account())
    with pytest.raises(ValueError, match="working size must be one of"):
        import_folder(tiny_folder, "other", size=48, user=account())


def test_import_of_a_folder_with_no_usable_image_is_a_clear_error(wbc_home, tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no usable image"):
        import_folder(tmp_path / "src", "empty", user=account())
    assert ds_db.list_datasets() == []


def test_bloodmnist_npz_keeps_the_official_split(wbc_home, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 8).reshape(n, 1)
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    result = import_bloodmnist(tmp_path / "bloodmnist.npz", "bm", size=32, user=account())
    splits = {k: sum(v[k] for v in result.class_counts.values()) for k in ("train", "val", "test")}
    assert splits == {"train": 6, "val": 3, "test": 2}
    assert result.kind == "bloodmnist"


def test_demo_dataset_is_marked_demo(wbc_home):
    result = import_demo("demo", per_class=6, size=32, user=account())
    assert result.kind == "demo" and ds_db.get_dataset("demo").kind == "demo"
    assert all(sum(v.values()) == 6 for v in class_split_counts(result.dataset_id).values())


def test_tensor_store_decodes_once_and_caches(wbc_home, tiny_folder, monkeypatch):
    result = import_folder(tiny_folder, "tiny", size=32, user=account())
    rows = ds_db.real_images(result.dataset_id, split="train")
    first = store.images_for(result.dataset_id, rows, 32)
    assert first.dtype == torch.uint8 and first.shape == (len(rows), 3, 32, 32)
    store.forget_memory()  # as in a new process: only the file cache remains

    def fail(*_args, **_kwargs):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(store, "decode_many", fail)
    again = store.images_for(result.dataset_id, list(reversed(rows)), 32)
    assert torch.equal(again, first.flip(0))


def test_tensor_store_resizes_and_crops(wbc_home, tmp_path):
    from PIL import Image

    path = tmp_path / "wide.png"
    picture = np.zeros((40, 80, 3), dtype=np.uint8)
    picture[:, 20:60] = 200  # the centre square is bright, the sides dark
    Image.fromarray(picture).save(path)
    out = store.decode_cell(path, 16)
    assert out.shape == (3, 16, 16) and out.min() > 150






def test_tensor_store_never_serves_another_homes_cells(tmp_path):
    """Two homes whose datasets share id 1 (one process, e.g. a test run or a bench switching homes)."""
    from support import context_on

    seen = []
    for name, colour in (("first", 30), ("second", 220)):
        with context_on(tmp_path / name):
            seen.append(_one_home(tmp_path, name, colour))
    assert seen[0] < 60 and seen[1] > 200


def _one_home(tmp_path, name: str, colour: int) -> float:
    """Import 4 flat cells of one colour as dataset 1 of the current home; the store's mean pixel value."""
    folder = tmp_path / f"src_{name}" / "cls"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), colour + i, dtype=np.uint8)).save(folder / f"{i}.png")
    result = import_folder(folder.parent, name, size=32, split=SplitConfig(0.0, 0.0), user=account())
    assert result.dataset_id == 1
    return store.images_for(1, ds_db.real_images(1), 32).float().mean().item()

"""Review detail view: judge class probabilities and nearest real train cells of one cell, and the page section."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from support import TINY_CLASSES, account, context_on, draw_cell

from db import datasets as ds_db
from wbc_core import auth, cell_detail

ROOT = Path(__file__).resolve().parent.parent
FAST_HASH = 1_000
PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def scored_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Dataset 'cells' (3 classes x 16 cells, 32 px), its judge (trained once, cached), and two scored candidates
    of the first class: an exact copy of a real train cell and a freshly drawn cell; user rita (reviewer)."""
    from wbc_core import gan_runs, importing

    root = tmp_path_factory.mktemp("cell_detail")
    home = root / "home"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with context_on(home), pytest.MonkeyPatch.context() as mp:
            mp.setattr(auth, "PBKDF2_ITERATIONS", FAST_HASH)
            folder = root / "folder"
            rng = np.random.default_rng(0)
            for name, colour in TINY_CLASSES.items():
                (folder / name).mkdir(parents=True)
                for i in range(16):
                    draw_cell(rng, 32, colour).save(folder / name / f"{i:02d}.png")
            info = ds_db.get_dataset(importing.import_folder(folder, "cells", size=32, user=account()).dataset_id)
            first = info.class_names[0]
            train = ds_db.real_images(info.id, split="train", class_name=first)
            out = home / "images" / "test_candidates"
            out.mkdir(parents=True)
            shutil.copyfile(home / train[0].path, out / "copy.png")
            draw_cell(rng, 32, TINY_CLASSES[first]).save(out / "fresh.png")
            rows = [dict(origin="synthetic", class_name=first, split=None, path=f"images/test_candidates/{n}.png",
                         sha256=hashlib.sha256((out / f"{n}.png").read_bytes()).hexdigest(), width=32, height=32)
                    for n in ("copy", "fresh")]
            copy_id, fresh_id = ds_db.add_images(info.id, rows)
            assert gan_runs.score_candidates(info.id)["scored"] == 2  # trains and caches the judge
            auth.create_user("rita", PASSWORD, "reviewer", user=account())
        yield {"home": home, "dataset_id": info.id, "copy": copy_id, "fresh": fresh_id, "original": train[0].id,
               "classes": info.class_names}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture()
def home(scored_home: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The scored home, active (read-only) for this test, in a fresh context (no judge loaded yet)."""
    monkeypatch.setattr(auth, "PBKDF2_ITERATIONS", FAST_HASH)
    with context_on(scored_home["home"]):
        yield scored_home


def _check_shape(detail: dict, classes: list[str], k: int) -> None:
    probs = detail["probabilities"]
    assert set(probs) == set(classes)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert list(probs.values()) == sorted(probs.values(), reverse=True)
    neighbours = detail["neighbours"]
    assert len(neighbours) == k
    distances = [n["distance"] for n in neighbours]
    assert distances == sorted(distances)
    rows = ds_db.images_by_ids([n["image_id"] for n in neighbours])
    assert all(r.origin == "real" and r.split == "train" for r in rows) and len(rows) == k
    assert all(Path(n["path"]).is_absolute() and Path(n["path"]).is_file() for n in neighbours)
    assert [n["class_name"] for n in neighbours] == [r.class_name for r in rows]


def test_candidate_detail_gives_probabilities_and_nearest_real_train_cells(home: dict) -> None:
    detail = cell_detail.candidate_detail(home["fresh"], k=4)
    _check_shape(detail, home["classes"], 4)
    assert cell_detail.candidate_detail(home["fresh"], k=4) == detail  # cached, and a copy each time


def test_a_copy_of_a_train_cell_has_that_cell_nearest_at_distance_zero(home: dict) -> None:
    detail = cell_detail.candidate_detail(home["copy"])
    _check_shape(detail, home["classes"], 5)
    assert detail["neighbours"][0]["image_id"] == home["original"]
    assert detail["neighbours"][0]["distance"] == pytest.approx(0.0, abs=1e-3)


def test_a_real_val_cell_gets_the_same_kind_of_answer(home: dict) -> None:
    val = ds_db.real_images(home["dataset_id"], split="val")[0]
    _check_shape(cell_detail.candidate_detail(val.id), home["classes"], 5)


def test_no_judge_cached_means_no_detail(wbc_home: Path, tiny_folder: Path) -> None:
    from wbc_core import importing

    dataset_id = importing.import_folder(tiny_folder, "uncached", size=32, user=account()).dataset_id
    image = ds_db.real_images(dataset_id, split="train")[0]
    assert cell_detail.candidate_detail(image.id) is None
    assert not (wbc_home / "cache" / "judges").exists()  # and none was trained on the way
    assert cell_detail.candidate_detail(10**9) is None  # unknown image


def test_review_page_shows_probabilities_and_nearest_real_cells(home: dict) -> None:
    at = AppTest.from_file(str(ROOT / "pages/review.py"), default_timeout=60)
    at.session_state["user"] = auth.get_user("rita")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    captions = "\n".join(str(c.value) for c in at.caption)
    assert "Nearest real train cells" in captions
    shown = [c for el in at.get("image") for c in el.captions if c]
    assert len(shown) == 5 and all(" · " in c and "#" not in c for c in shown)  # class · distance, no ids
    assert shown[0].endswith(" · 0.00")  # the cursor cell is the copy of a train cell

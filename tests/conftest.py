"""Shared fixtures: a fresh WBC_HOME (SQLite database, images, runs) per test, and tiny image folders."""

from __future__ import annotations

import os
from pathlib import Path

# Set before torch starts its OpenMP pool: idle threads then sleep instead of spinning, which keeps
# in-process training in tests fast while worker processes train beside it on the same two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from PIL import Image

from db.engine import dispose_all
from db.migrate import ensure_schema, forget_schema_cache


@pytest.fixture()
def wbc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty WBC_HOME with the schema applied; engines are reset around the test."""
    home = tmp_path / "wbc_home"
    monkeypatch.setenv("WBC_HOME", str(home))
    monkeypatch.delenv("WBC_DB_URL", raising=False)
    dispose_all()
    forget_schema_cache()
    ensure_schema()
    yield home
    dispose_all()
    forget_schema_cache()


def draw_cell(rng: np.random.Generator, size: int, colour: tuple[int, int, int]) -> Image.Image:
    """A tiny cell-like picture: a coloured disc with noise on a pale background."""
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
    radius = rng.uniform(size * 0.2, size * 0.3)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    img = np.full((size, size, 3), 230, dtype=np.float64)
    img[inside] = colour
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


TINY_CLASSES = {"lymphocyte": (120, 60, 160), "neutrophil": (200, 120, 170), "platelet": (90, 40, 110)}


@pytest.fixture()
def tiny_folder(tmp_path: Path) -> Path:
    """A folder of 3 classes x 12 JPEG cells at 32 px, one subfolder per class."""
    root = tmp_path / "tiny_cells"
    rng = np.random.default_rng(0)
    for name, colour in TINY_CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(12):
            draw_cell(rng, 32, colour).save(root / name / f"{name}_{i:02d}.jpg", quality=95)
    return root


def copy_home(source: Path, target: Path) -> Path:
    """Copy a prepared WBC_HOME; the SQLite database goes through the backup API.

    A plain file copy can catch a worker process still closing its connection (the -wal file
    vanishing mid-copy); the backup API reads one consistent snapshot instead.
    """
    import shutil
    import sqlite3

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("wbc.db", "wbc.db-wal", "wbc.db-shm"))
    if (source / "wbc.db").exists():
        src = sqlite3.connect(source / "wbc.db", timeout=30)
        dst = sqlite3.connect(target / "wbc.db")
        with dst:
            src.backup(dst)
        src.close()
        dst.close()
    return target

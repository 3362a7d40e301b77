"""Shared fixtures: a fresh WBC_HOME (SQLite database, images, runs) per test, and tiny image folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Set before torch starts its OpenMP pool: idle threads then sleep instead of spinning, which keeps
# in-process training in tests fast while worker processes train beside it on the same two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from support import TINY_CLASSES, active_home, draw_cell


@pytest.fixture()
def wbc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty WBC_HOME with the schema applied; engines are reset around the test."""
    with active_home(tmp_path / "wbc_home", monkeypatch) as home:
        yield home


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



@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Run a test single-threaded (tiny nets gain nothing from two threads), restoring torch's setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

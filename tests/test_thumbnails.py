"""Thumbnails at each display size: crisp enlargement (NEAREST for whole factors, LANCZOS otherwise), made once."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from wbc_core import thumbnails
from wbc_core.thumbnails import native_size, resample_for, thumbnail_path

pytestmark = pytest.mark.databases("sqlite")  # files only


@pytest.fixture()
def cell(wbc_home):  # noqa: ANN201
    """A 64 px noise image (every pixel differs from its neighbours, so any smoothing shows)."""
    path = wbc_home / "images" / "cell.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_filter_choice():
    assert resample_for(64, 128) == resample_for(64, 192) == resample_for(32, 320) == Image.Resampling.NEAREST
    assert resample_for(64, 96) == resample_for(128, 192) == Image.Resampling.LANCZOS  # no whole block size
    assert resample_for(128, 96) == resample_for(128, 64) == Image.Resampling.LANCZOS  # shrinking


def test_whole_factor_enlargement_keeps_every_stored_pixel_as_a_block(cell):
    path, pixels = cell
    for size, k in ((128, 2), (192, 3)):
        with Image.open(thumbnail_path(path, size)) as im:
            assert im.size == (size, size)
            assert np.array_equal(np.asarray(im.convert("RGB")), pixels.repeat(k, axis=0).repeat(k, axis=1))


def test_other_sizes_are_exact_size_and_the_stored_size_is_a_lossless_copy(cell):
    path, pixels = cell
    with Image.open(thumbnail_path(path, 96)) as im:
        assert im.size == (96, 96)  # enlarged (the older code left a 64 px cell at 64 px, for the browser to blur)
    assert native_size(path) == 64
    with Image.open(thumbnail_path(path, native_size(path))) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), pixels)


def test_made_once_per_size_and_older_unenlarged_files_are_not_reused(cell, wbc_home):
    path, _ = cell
    first = thumbnail_path(path, 128)
    os.utime(first, (1_000_000, 1_000_000))
    assert thumbnail_path(path, 128) == first and first.stat().st_mtime == 1_000_000
    stale = first.with_name(first.name.replace("_128px", "_192"))  # the older code's name for a 192 px thumbnail
    Image.new("RGB", (64, 64)).save(stale)
    made = thumbnail_path(path, 192)
    assert made != stale and Image.open(made).size == (192, 192)
    assert sorted(f.name.split("_", 1)[1] for f in (wbc_home / "cache" / "thumbs").rglob("*px.png")) == [
        "128px.png", "192px.png"]


def test_non_square_cells_keep_their_aspect(wbc_home):
    path = wbc_home / "images" / "wide.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 32), (200, 10, 10)).save(path)
    with Image.open(thumbnails.thumbnail_path(path, 128)) as im:
        assert im.size == (128, 64)

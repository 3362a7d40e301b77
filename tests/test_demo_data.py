"""The built-in demo dataset: deterministic, cell-like, clearly labelled as not real, and importable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wbc_core.data.demo import DEMO_CLASSES, README_NAME, make_demo_cells, write_demo_folder
from wbc_core.data.ingest import ingest


@pytest.fixture(scope="module")
def cells() -> dict[str, np.ndarray]:
    """Class -> uint8 array [N, 64, 64, 3] of the default demo images (20 per class)."""
    return {name: np.stack([np.asarray(im) for im in ims]) for name, ims in make_demo_cells(per_class=20).items()}


def test_classes_counts_and_format() -> None:
    drawn = make_demo_cells(per_class=3, size=48, seed=1)
    assert list(drawn) == DEMO_CLASSES == ["eosinophil", "lymphocyte", "monocyte", "neutrophil", "platelet"]
    for images in drawn.values():
        assert len(images) == 3
        assert all(im.mode == "RGB" and im.size == (48, 48) for im in images)
    with pytest.raises(ValueError):
        make_demo_cells(per_class=1, size=8)


def test_deterministic_per_seed_and_independent_of_count() -> None:
    a = make_demo_cells(per_class=4, size=32, seed=5)
    b = make_demo_cells(per_class=4, size=32, seed=5)
    c = make_demo_cells(per_class=4, size=32, seed=6)
    d = make_demo_cells(per_class=2, size=32, seed=5)
    for name in DEMO_CLASSES:
        assert [im.tobytes() for im in a[name]] == [im.tobytes() for im in b[name]]
        assert [im.tobytes() for im in a[name]] != [im.tobytes() for im in c[name]]
        assert [im.tobytes() for im in a[name][:2]] == [im.tobytes() for im in d[name]]


def _fraction(pixels: np.ndarray, mask_fn) -> np.ndarray:
    """Per-image share of pixels matching a colour rule."""
    p = pixels.astype(np.int32)
    return mask_fn(p[..., 0], p[..., 1], p[..., 2]).mean(axis=(1, 2))


def test_images_look_like_stained_smears(cells: dict[str, np.ndarray]) -> None:
    def purple(r, g, b):
        return (b > g + 30) & (r < 170)

    def orange(r, g, b):
        return (r > 180) & (g < 150) & (b < 120)

    for name, pixels in cells.items():
        corners = np.concatenate([pixels[:, :4, :4], pixels[:, -4:, -4:]], axis=1)
        assert corners.mean(axis=(1, 2, 3)).min() > 150, f"{name}: background should be pale"
        assert _fraction(pixels, purple).min() > 0.003, f"{name}: every image needs purple (nucleus or platelets)"
        assert len({im.tobytes() for im in pixels}) == len(pixels), f"{name}: images must differ"
        has_orange = _fraction(pixels, orange).mean() > 0.03
        assert has_orange == (name == "eosinophil"), f"{name}: only eosinophils carry orange granules"
    # Whole nuclei dwarf a few platelet fragments.
    purple_mean = {name: _fraction(p, purple).mean() for name, p in cells.items()}
    assert min(purple_mean["lymphocyte"], purple_mean["monocyte"]) > 2 * purple_mean["platelet"]


def test_write_demo_folder_is_importable_and_says_it_is_not_real(tmp_path: Path) -> None:
    dest = write_demo_folder(tmp_path / "demo", per_class=4, size=32, seed=2)
    assert dest == tmp_path / "demo"
    readme = (dest / README_NAME).read_text()
    assert "NOT REAL CELLS" in readme and "procedurally" in readme
    assert sorted(p.name for p in dest.iterdir()) == sorted([*DEMO_CLASSES, README_NAME])
    images, report = ingest(dest)
    assert report.classes == {name: 4 for name in DEMO_CLASSES}
    assert [(s.source, s.reason) for s in report.skipped] == [(README_NAME, "unsupported_extension")]
    assert report.converted == [] and all(i.extension == ".png" and i.width == 32 for i in images)

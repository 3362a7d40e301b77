"""The embedding map you can act on, in a real browser against `streamlit run app.py`: clicking a point opens that
cell (image, class, origin); dragging a box round some candidates offers "Review these N cells", which opens the
Review page showing exactly those candidates (per class), until "Show the whole queue" lifts the filter.

The map is prepared as the embedding job leaves it (its cached table), so no training runs in this test."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
from browser_support import choose
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from db import datasets as ds_db
from db import runs as runs_db
from db.migrate import ensure_schema
from wbc_core.embedding_cache import cache_path

CLASSES = ["a", "b"]


def _images(home, origin: str, classes: list[str], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    folder = home / "images" / f"e2e_{origin}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, class_name in enumerate(classes):
        path = folder / f"{seed}_{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append(dict(origin=origin, class_name=class_name, split="train" if origin == "real" else None,
                         sha256=hashlib.sha256(path.read_bytes()).hexdigest(), path=str(path.relative_to(home)),
                         width=32, height=32))
    return rows


def _report() -> dict:
    support = {c: 30 for c in CLASSES}
    return {"test": {"accuracy": 0.8, "macro_f1": 0.8, "num_samples": 60, "per_class_f1": {c: 0.8 for c in CLASSES},
                     "per_class_support": support, "class_names": CLASSES, "confusion": [[24, 6], [6, 24]],
                     "ci": {"macro_f1": [0.7, 0.9], "accuracy": [0.7, 0.9]}}, "test_size": 60}


def _plot_xy(plot: Locator, x: float, y: float) -> tuple[float, float]:
    """Where a data point of the map is on the screen."""
    return tuple(plot.evaluate(
        """(gd, [x, y]) => { const L = gd._fullLayout, r = gd.getBoundingClientRect();
               return [r.left + L._size.l + L.xaxis.l2p(x), r.top + L._size.t + L.yaxis.l2p(y)]; }""", [x, y]))


def test_click_a_cell_then_review_a_box_of_candidates(e2e_home, streamlit_server, browser_page: Page):
    ensure_schema()
    home = e2e_home
    real_rows = _images(home, "real", ["a", "a", "b", "b"], seed=1)
    ds = ds_db.create_dataset("cells", "real", "src", CLASSES, {}, "h", {}, real_rows, image_size=32)
    real = [r.id for r in ds_db.real_images(ds)]
    inside = ds_db.add_images(ds, _images(home, "synthetic", ["a", "a", "a", "b"], seed=2))  # the box takes these
    outside = ds_db.add_images(ds, _images(home, "synthetic", ["a", "a"], seed=3))  # and not these
    run_id = runs_db.create_run("classifier", ds, {"model": "small_cnn"}, 0, recipe="real")
    runs_db.finish_run(run_id, "succeeded", _report())
    points = ([(i, 0.5 + k, 0.5 + k % 2, "real train") for k, i in enumerate(real)]
              + [(i, 8.0 + 0.4 * k, 8.0 + 0.3 * k, "synthetic") for k, i in enumerate(inside)]
              + [(i, 0.5 + k, 8.5, "synthetic") for k, i in enumerate(outside)])
    classes = {r.id: r.class_name for r in ds_db.images_by_ids([p[0] for p in points])}
    path = cache_path(run_id, 1500, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "model.pt").write_bytes(b"not read here")  # the Dashboard lists the run's downloads
    pd.DataFrame([{"image_id": i, "x": x, "y": y, "class": classes[i], "origin": o, "in_train_set": o != "synthetic"}
                  for i, x, y, o in points]).to_csv(path, index=False)

    page = browser_page
    page.goto(f"{streamlit_server.url}/dashboard")
    expect(page.get_by_role("heading", name="Embedding map")).to_be_visible()
    plot = page.locator(".js-plotly-plot").filter(has_text="t-SNE of classifier features").first
    plot.scroll_into_view_if_needed()
    expect(plot).to_be_visible()
    page.wait_for_function("document.querySelector('.js-plotly-plot') && "
                           "[...document.querySelectorAll('.js-plotly-plot')].some(g => g._fullLayout)")

    # A click on one real cell opens it: its image, class and origin.
    page.mouse.click(*_plot_xy(plot, 0.5 + 2, 0.5 + 2 % 2))
    detail = page.get_by_test_id("stMain").get_by_text(f"Cell {real[2]}")
    expect(detail).to_be_visible()
    expect(page.get_by_test_id("stMain").get_by_text("real train", exact=False).first).to_be_visible()

    # A box round the four candidates top right (and nothing else) offers exactly them to the Review page.
    plot.hover()
    plot.get_by_role("button", name="Box Select").click()
    start, end = _plot_xy(plot, 7.5, 7.5), _plot_xy(plot, 9.8, 9.2)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=5)
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    review = page.get_by_role("button", name="Review these 4 cells")
    expect(review).to_be_visible()
    review.click()

    main = page.get_by_test_id("stMain")
    expect(page.get_by_role("heading", name="Review", level=1)).to_be_visible()
    expect(main.get_by_text(f"Showing only the 4 cells selected on the embedding map of run {run_id} (3 a, 1 b)")) \
        .to_be_visible()
    expect(main.get_by_text("3 pending candidates of a", exact=False)).to_be_visible()
    grid = main.locator(".st-key-review_grid")
    expect(grid.locator("img")).to_have_count(3)
    shown = {int(n) for t in grid.locator("[class*='st-key-rv_go_']").all_text_contents()
             for n in re.findall(r"#(\d+)", t)}
    assert shown == set(inside[:3]), shown

    # The other class holds the fourth one.
    choose(page, main, "Class", "b")
    expect(main.get_by_text("1 pending candidates of b", exact=False)).to_be_visible()
    expect(grid.locator("[class*='st-key-rv_go_']")).to_have_count(1)
    expect(grid.locator("[class*='st-key-rv_go_']").first).to_contain_text(f"#{inside[3]}")

    # Lifting the filter brings back the whole queue of the class.
    main.get_by_role("button", name="Show the whole queue").click()
    expect(main.get_by_text("Showing only the")).to_have_count(0)
    choose(page, main, "Class", "a")
    expect(main.get_by_text("5 pending candidates of a", exact=False)).to_be_visible()

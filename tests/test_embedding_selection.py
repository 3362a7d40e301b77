"""The embedding map you can act on: a click or a box/lasso selection maps back to image ids (pure), and the Review
queue filtered to exactly the selected candidates. The browser part is tests/e2e/test_embedding_journey.py."""

from __future__ import annotations

import pandas as pd
import pytest
from support import account

from db import datasets
from db import decisions as decisions_db
from wbc_core import review_model, views
from wbc_core.embedding_selection import (
    MapSelection,
    ReviewFilter,
    handed_over,
    map_selection,
    review_filter,
)

FRAME = pd.DataFrame({
    "image_id": [10, 11, 12, 20, 21, 22],
    "x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    "y": [0.0, 1.0, 0.5, 2.0, 3.0, 1.5],
    "class": ["a", "b", "a", "a", "b", "b"],
    "origin": ["real train", "real test", "real train", "synthetic", "synthetic", "synthetic"],
    "in_train_set": [True, False, True, False, False, False],
})


def _point(image_id: object, origin: str = "synthetic", curve: int = 0, index: int = 0) -> dict:
    return {"curve_number": curve, "point_number": index, "point_index": index, "x": 0.0, "y": 0.0,
            "customdata": [image_id, origin]}


def test_a_box_of_cells_gives_their_ids_and_the_candidates_among_them():
    event = {"selection": {"points": [_point(10, "real train"), _point(20), _point(21), _point(22)],
                           "point_indices": [0, 0, 1, 2], "box": [{"x": [0, 5], "y": [0, 3]}], "lasso": []}}
    chosen = map_selection(event, FRAME)
    assert chosen.image_ids == (10, 20, 21, 22)
    assert chosen.candidate_ids == (20, 21, 22)
    assert chosen.per_class == {"a": 1, "b": 2}
    assert chosen.area and chosen.clicked is None
    # The selection part alone (what session state holds) means the same.
    assert map_selection(event["selection"], FRAME) == chosen


def test_a_lasso_counts_as_an_area_even_round_one_cell():
    chosen = map_selection({"points": [_point(21)], "box": [], "lasso": [{"x": [1, 2, 3], "y": [1, 2, 1]}]}, FRAME)
    assert chosen.image_ids == (21,) and chosen.area and chosen.clicked is None


def test_a_click_opens_exactly_that_cell():
    chosen = map_selection({"points": [_point(11, "real test")], "box": [], "lasso": []}, FRAME)
    assert chosen.clicked == 11 and chosen.candidate_ids == () and not chosen.area


def test_ids_not_on_the_map_repeats_and_garbage_select_nothing():
    points = [_point(99), _point(20), _point(20), _point("21"), _point(True), _point(21.5), _point(None),
              {"customdata": []}, {"x": 1}, "not a point", {"customdata": 22}]
    chosen = map_selection({"points": points}, FRAME)
    assert chosen.image_ids == (20, 21, 22)  # "21" as text still names cell 21; a bare id (no list) works too
    for empty in (None, {}, {"selection": None}, {"selection": {"points": []}}):
        assert map_selection(empty, FRAME) == MapSelection() and not map_selection(empty, FRAME)
    assert map_selection({"points": [_point(20)]}, None) == MapSelection()
    assert map_selection({"points": [_point(20)]}, FRAME.iloc[0:0]) == MapSelection()


def test_the_origin_comes_from_the_map_not_from_the_point():
    """A point claiming to be synthetic is still the real cell the map says it is."""
    chosen = map_selection({"points": [_point(10, "synthetic")], "box": [{}]}, FRAME)
    assert chosen.image_ids == (10,) and chosen.candidate_ids == ()


def test_the_figure_carries_each_points_image_id_in_every_trace():
    """px.scatter splits the map into one trace per class and origin; the customdata of point k of trace t must be
    the id of the cell drawn there, which is what a selection hands back."""
    fig = views.embedding_figure(FRAME, 1)
    # No dragmode of its own: Streamlit's default (pan) keeps a click selecting one point; box and lasso are tools.
    assert len(fig.data) > 1 and fig.layout.dragmode is None
    where = {(row.x, row.y): (row.image_id, row.origin) for row in FRAME.itertuples()}
    seen = []
    for trace in fig.data:
        for x, y, data in zip(trace.x, trace.y, trace.customdata, strict=True):
            assert (int(data[0]), data[1]) == where[(x, y)]
            seen.append(int(data[0]))
    assert sorted(seen) == sorted(FRAME["image_id"])


def test_the_review_filter_holds_the_candidates_only():
    chosen = map_selection({"points": [_point(10, "real train"), _point(22), _point(20)], "box": [{}]}, FRAME)
    handed = review_filter(7, chosen, "the embedding map of run 3")
    assert handed == ReviewFilter(7, (22, 20), {"b": 1, "a": 1}, "the embedding map of run 3")
    assert handed.first_class(["a", "b"]) == "a" and handed.first_class(["b", "a"]) == "b"
    assert handed.first_class(["c"]) is None
    assert handed.describe() == "2 cells selected on the embedding map of run 3 (1 a, 1 b)"
    assert handed_over(handed, 7) is handed
    assert handed_over(handed, 8) is None and handed_over({"image_ids": [1]}, 7) is None
    with pytest.raises(ValueError, match="no synthetic cell"):
        review_filter(7, map_selection({"points": [_point(10)], "box": [{}]}, FRAME), "x")


@pytest.mark.databases("sqlite", "postgresql")
def test_the_review_queue_shows_exactly_the_handed_over_candidates(wbc_home):
    rows = [dict(origin="real", class_name="a", split="val", sha256=f"r{i}", path=f"p{i}", width=8, height=8)
            for i in range(3)]
    dataset_id = datasets.create_dataset("d", "real", "src", ["a", "b"], {}, "h", {}, rows)
    real_ids = [r.id for r in datasets.real_images(dataset_id, split="val", class_name="a")]
    ids = datasets.add_images(dataset_id, [dict(origin="synthetic", class_name="a" if i < 6 else "b", split=None,
                                                sha256=f"s{i}", path=f"q{i}", width=8, height=8) for i in range(9)])
    decisions_db.add_blind_items(dataset_id, "ann", [(real_ids[0], 0.5)])  # ann is in a blinded realism test
    picked = [ids[4], ids[1], ids[7]]  # two of class a, one of class b
    full, n_full = review_model.queue_page(dataset_id, "a", "ann", page_size=100)
    assert n_full == 7 and real_ids[0] in {r["id"] for r in full}
    rows_a, n_a = review_model.queue_page(dataset_id, "a", "ann", page_size=100, image_ids=picked)
    assert n_a == 2 and [r["id"] for r in rows_a] == [ids[1], ids[4]]  # no blind real cell in a hand-picked queue
    rows_b, n_b = review_model.queue_page(dataset_id, "b", "ann", page_size=100, image_ids=picked)
    assert n_b == 1 and [r["id"] for r in rows_b] == [ids[7]]
    review_model.decide([ids[1]], "ann", "accept", user=account("reviewer", "ann"))
    pending, n = review_model.queue_page(dataset_id, "a", "ann", image_ids=picked)
    assert n == 1 and [r["id"] for r in pending] == [ids[4]]
    decided, n = review_model.queue_page(dataset_id, "a", "ann", state="decided", image_ids=picked)
    assert n == 1 and decided[0]["id"] == ids[1]
    assert review_model.queue_page(dataset_id, "a", "ann", image_ids=[])[1] == 0
    assert review_model.queue_page(dataset_id, "a", "ann", image_ids=[real_ids[1]])[1] == 0  # real: never a candidate

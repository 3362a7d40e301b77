"""What a selection on the embedding map means, and the cells it hands to the Review page. No torch, no streamlit.

The Dashboard's map (wbc_core.views.embedding_figure) carries each point's image id and origin as Plotly
customdata. st.plotly_chart(on_select=...) hands back the selection: the points (with their customdata), and for a
box or lasso the area drawn. `map_selection` turns that into image ids, pure and checked against the map's own
frame, so a stale selection (the map recomputed meanwhile) or a forged one selects nothing that is not on it.
`review_filter` is what the Review page is then given: exactly those candidates of one dataset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

SYNTHETIC = "synthetic"  # the map's origin label of generated candidates (real cells: "real train", "real test")
# Where the pages hand a ReviewFilter over (st.session_state), and the flag saying it has just arrived.
HANDOVER_KEY = "review_filter"
HANDOVER_NEW_KEY = "review_filter_new"
CUSTOM_DATA = ("image_id", "origin")  # the customdata of every point of the map, in this order


@dataclass(frozen=True)
class MapSelection:
    """The cells selected on one embedding map."""

    image_ids: tuple[int, ...] = ()  # every selected cell that is on the map, in selection order, no repeats
    candidate_ids: tuple[int, ...] = ()  # the synthetic ones among them (what the Review page can take)
    per_class: dict[str, int] = field(default_factory=dict)  # candidates per class
    area: bool = False  # a box or lasso was drawn (else points were clicked)

    @property
    def clicked(self) -> int | None:
        """The one cell a click picked (None for an area, several points, or nothing)."""
        return self.image_ids[0] if len(self.image_ids) == 1 and not self.area else None

    def __bool__(self) -> bool:
        return bool(self.image_ids)


def _point_id(point: Mapping[str, Any]) -> int | None:
    data = point.get("customdata")
    if isinstance(data, (list, tuple)):
        data = data[0] if data else None
    if isinstance(data, bool):
        return None
    try:
        number = float(data)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def map_selection(selection: Mapping[str, Any] | None, frame: pd.DataFrame | None) -> MapSelection:
    """The cells of a plotly selection (st.plotly_chart's event, or its "selection" part) that are on the map.

    frame is the map's own table (image_id, class, origin, ...); points whose id is not in it are ignored.
    """
    if not selection or frame is None or frame.empty:
        return MapSelection()
    if "selection" in selection:  # the whole event
        selection = selection.get("selection") or {}
    points: Iterable[Mapping[str, Any]] = selection.get("points") or []
    on_map = {int(i): (str(c), str(o)) for i, c, o in zip(frame["image_id"], frame["class"], frame["origin"],
                                                            strict=True)}
    ids: list[int] = []
    seen: set[int] = set()
    for point in points:
        image_id = _point_id(point) if isinstance(point, Mapping) else None
        if image_id is not None and image_id in on_map and image_id not in seen:
            seen.add(image_id)
            ids.append(image_id)
    candidates = tuple(i for i in ids if on_map[i][1] == SYNTHETIC)
    per_class = dict(Counter(on_map[i][0] for i in candidates))
    area = bool(selection.get("box") or selection.get("lasso"))
    return MapSelection(tuple(ids), candidates, per_class, area)


@dataclass(frozen=True)
class ReviewFilter:
    """Candidates handed from the embedding map to the Review page: its queue then shows exactly these."""

    dataset_id: int
    image_ids: tuple[int, ...]
    per_class: dict[str, int]
    source: str  # where they come from, in words ("the embedding map of run 7")

    def first_class(self, class_names: Sequence[str]) -> str | None:
        """The dataset's first class (in its own order) that has selected candidates."""
        return next((c for c in class_names if self.per_class.get(c)), None)

    def describe(self) -> str:
        """One line for the Review page: how many cells, of which classes, from where."""
        classes = ", ".join(f"{n} {c}" for c, n in sorted(self.per_class.items()))
        n = len(self.image_ids)
        return f"{n} cell{'s' if n != 1 else ''} selected on {self.source} ({classes})"


def review_filter(dataset_id: int, selection: MapSelection, source: str) -> ReviewFilter:
    """The Review page's filter for the selection's candidates; ValueError when it holds none."""
    if not selection.candidate_ids:
        raise ValueError("the selection holds no synthetic cell: select candidates (the × marks) to review them")
    return ReviewFilter(int(dataset_id), selection.candidate_ids, dict(selection.per_class), source)


def handed_over(value: object, dataset_id: int) -> ReviewFilter | None:
    """The filter handed to the Review page, if it is one and belongs to the dataset shown there (else None)."""
    return value if isinstance(value, ReviewFilter) and value.dataset_id == dataset_id else None


def cell_summary(image_id: int) -> dict[str, Any] | None:
    """What the Dashboard shows for one clicked cell: its image file, class, origin and split; None when it is gone."""
    from db import datasets as ds_db
    from wbc_core.context import current

    rows = ds_db.images_by_ids([int(image_id)])
    if not rows:
        return None
    row = rows[0]
    return {"image_id": row.id, "path": current().absolute(row.path), "class_name": row.class_name,
            "origin": row.origin, "split": row.split}

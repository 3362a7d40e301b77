"""How the Review page looks: its sizes, keyboard legend, layout CSS, cached thumbnails, cell marks and highlights.

Kept apart from pages/review.py so the page holds only its widgets and flow. Widget keys used here are grid
positions, never image ids (keys end up in the page, and the blind realism test hides which cells are real).
"""

from __future__ import annotations

import os
import time

import streamlit as st

from wbc_core import context
from wbc_core.thumbnails import MAX_SIZE, native_size, thumbnail_path

PAGE_SIZE = 48
CELL_SIZES = (96, 128, 192)  # display size of a grid cell, px (Cell size control)
DEFAULT_CELL_SIZE = 128
# 8 columns x 6 rows of 128 px fit beside the detail view at 1920x1080; 192 px cells need a narrower grid.
GRID_COLUMNS = {96: 8, 128: 8, 192: 6}
GRID_GAP_PX = 6
DETAIL_MIN_PX = 320  # the detail view is a whole multiple of the stored size, at least this large ...
DETAIL_MAX_PX = 448  # ... and at most this (larger stored cells are shown shrunk)
ZOOMS = (1, 2, 4)  # detail zoom on top of that, native pixels unsmoothed
DETAIL_NEIGHBOURS = 5  # nearest real train cells shown next to the cursor cell
# Their thumbnails are made at the size they are shown: a larger one made Streamlit resize and re-encode every
# neighbour on every key press.
NEIGHBOUR_PX = 72
# The quota gauge's consensus counts are shared by all sessions and refreshed in the background at most this often:
# class_summary costs ~0.3 s at 100k candidates and 20k decisions, too much for every key press.
SUMMARY_MAX_AGE_S = 10.0
ORDER_LABELS = {
    "id": "Oldest first",
    "judge_prob_desc": "Classifier agrees most",
    "judge_prob_asc": "Classifier agrees least",
    "nearest_real_desc": "Farthest from real cells",
    "nearest_real_asc": "Closest to real cells (possible copies)",
    "p_accept_desc": "Most likely accepted (acceptance model)",
    "p_accept_uncertain": "Most uncertain (teaches the model most)",
}
REASON_LABELS = ("morphology", "nucleus/granules", "stain", "GAN texture", "broken", "too close to real")
VERDICT_MARKS = {"accept": "✓ accepted", "reject": "✗ rejected", "relabel": "↦ relabelled"}


KEY_LEGEND = (
    "| key | action |\n|---|---|\n"
    "| ← → ↑ ↓ | move the cursor (past the page edge turns the page) |\n"
    "| a / x | accept / reject the cursor cell |\n"
    "| 1 - 6 | reject the cursor cell with reason 1-6 |\n"
    "| Shift+1..9 | relabel the cursor cell to class 1..9 |\n"
    "| s / Shift+S | toggle selection of the cursor cell / clear the selection |\n"
    "| Shift+A / Shift+X | accept / reject the selected cells |\n"
    "| Alt+A / Alt+X | accept / reject every cell on the page |\n"
    "| n / p | next / previous page |\n"
    "| u | undo the last action (a whole bulk action at once) |\n"
    "\nShortcuts pause while a text field or select box has the focus: click the page background first."
)

# Page layout. Why in the main flow, in a hidden container, and not in a style-only st.html: Streamlit sends
# style-only HTML to the "event" container, which st.toast shares and which a fragment rerun does not clear;
# whether a toast came first shifted the style's slot there, and the old rules stayed (the stale cursor outline
# on a second cell after a bulk action). An element in the main flow sits in one fixed slot and is replaced.
PAGE_CSS = """
.st-key-rv_css, .st-key-rv_styles {display: none}
[data-testid="stMainBlockContainer"] {padding: 4rem 2rem 2rem 2rem}
[data-testid="stMainBlockContainer"] h1 {font-size: 1.6rem; padding: 0}
.st-key-rv_grid_col {max-width: 100%}
.st-key-review_grid .rv-row, .st-key-review_grid [class*="st-key-rv_row_"] {flex-wrap: nowrap}
.st-key-review_grid [class*="st-key-rv_cell_"] {position: relative}
/* narrower screens: the cells (and the atlas under them) shrink with the width, 8 to a row as the arrows expect */
.st-key-review_grid [class*="st-key-rv_row_"] > div {flex: 0 1 auto; min-width: 0}
.st-key-review_grid [class*="st-key-rv_cell_"] img {width: 100%; height: auto; display: block}
.st-key-review_grid [class*="st-key-rv_go_"] {position: absolute; inset: 0; z-index: 1}
.st-key-review_grid [class*="st-key-rv_go_"] button {width: 100%; height: 100%; min-height: 0; padding: 3px;
  align-items: flex-end; justify-content: flex-start; background: transparent; border: none}
.st-key-review_grid [class*="st-key-rv_go_"] button p {visibility: hidden; font-size: 0.72rem; font-weight: 600;
  line-height: 1.25; padding: 1px 5px; border-radius: 4px; text-align: left; white-space: normal}
.st-key-rv_side {min-width: 340px}
.st-key-rv_toolbar button {min-height: 1.9rem; padding: 0.1rem 0.5rem}
.st-key-rv_toolbar button p {font-size: 0.82rem}
.st-key-rv_detail_img {overflow: auto}
.st-key-rv_detail_img img {image-rendering: pixelated; max-width: none !important}
@media (max-width: 1599px) {  /* the side column wraps under the grid: the toolbar floats at the bottom */
  .st-key-rv_toolbar {position: fixed; bottom: 0; right: 1rem; z-index: 100; max-width: 760px; padding: 0.4rem;
    background: var(--st-background-color, #fff); border: 1px solid #ddd; border-radius: 8px 8px 0 0;
    box-shadow: 0 -2px 8px rgba(0, 0, 0, 0.15)}
  [data-testid="stMainBlockContainer"] {padding-bottom: 12rem}
}
"""


def page_css() -> None:
    with st.container(key="rv_css"):
        st.html('<span hidden></span><style>' + PAGE_CSS + '</style>')


@st.cache_resource
def _thumb_paths() -> dict:
    return {}


def thumb(item, size: int, home: str | None = None) -> str | None:  # noqa: ANN001
    """The cached thumbnail file of an image (queue row or path), or None when its file is missing.

    Thumbnails are named by content hash and never change, so their paths are remembered per server process:
    looking them up again costs ~1 ms per cell (WBC_HOME is resolved on every call), 48 times per click.
    """
    key = (home or str(context.current().home), str(item["path"] if isinstance(item, dict) else item),
           item.get("sha256") if isinstance(item, dict) else None, size)
    known = _thumb_paths()
    path, checked = known.get(key, (None, 0.0))
    # Re-checked once a minute: a cleared thumbnail cache then heals without a server restart.
    if path is None or (time.monotonic() - checked > 60 and not os.path.isfile(path)):
        try:
            path = str(thumbnail_path(item, size))
        except (OSError, ValueError):  # a missing or unreadable file: show the rest
            return None
        if len(known) > 200_000:
            known.clear()
    if path is not None and (time.monotonic() - checked > 60):
        known[key] = (path, time.monotonic())
    return path


def native(item, home: str) -> tuple[str, int] | None:  # noqa: ANN001
    """A lossless PNG of the stored pixels of an image and its stored size (px), or None when the file is missing."""
    key = ("native", home, str(item["path"]), item.get("sha256"))
    known = _thumb_paths()
    if key not in known:
        try:
            size = native_size(item)
        except (OSError, ValueError):
            return None
        known[key] = min(size, MAX_SIZE)  # a huge stored cell: its largest thumbnail
    path = thumb(item, known[key], home)
    return (path, known[key]) if path else None


def mark(item: dict) -> str:
    verdict = item.get("verdict")
    if verdict in (None, "undo"):
        return ""
    if verdict == "relabel":
        return f"↦ {item['new_class']}"
    if verdict == "reject" and item.get("reason"):
        return f"✗ {item['reason']}"
    return VERDICT_MARKS[verdict]


MARK_COLOURS = {"accept": "#1e7e34", "reject": "#c62828", "relabel": "#1565c0"}


def _badge(i: int) -> str:
    """The selector of cell i's mark (its cursor button's label): more specific than PAGE_CSS's hidden default."""
    return f".st-key-review_grid .st-key-rv_cell_{i} .st-key-rv_go_{i} button p"


def highlight(cursor: int | None, chosen_positions: list[int], verdicts: dict[int, str]) -> None:
    """Outline the cursor cell (solid red) and the selected cells (blue), and show each decided cell's mark as a
    coloured badge on the cell, by position keys (never image ids). One element in one fixed slot of the
    work area, replaced on every rerun (see PAGE_CSS for why not a style-only st.html)."""
    rules = [] if cursor is None else [
        f".st-key-rv_cell_{cursor} img {{outline: 4px solid #ff4b4b; outline-offset: 2px;}}",
        f"{_badge(cursor)} {{visibility: visible; background: #ff4b4b; color: #fff;}}"]
    rules += [f".st-key-rv_cell_{i} img {{box-shadow: 0 0 0 4px #1c83e1;}}" for i in chosen_positions]
    rules += [f"{_badge(i)} {{visibility: visible; background: #1c83e1; color: #fff;}}" for i in chosen_positions]
    rules += [f"{_badge(i)} {{visibility: visible; background: {MARK_COLOURS[v]}; color: #fff;}}"
              for i, v in sorted(verdicts.items())]
    with st.container(key="rv_styles"):
        st.html('<span hidden></span><style class="rv-highlight">' + "\n".join(rules) + "</style>")

"""The Review page's layout in a real browser (`streamlit run app.py`, headless Chromium), signed in as a reviewer:

what fits on the screen at 1920x1080 and 1280x800 (screenshots saved, small copies under docs/), one cursor outline
after moves and bulk actions, the decided view's marks, and the cell size / detail zoom controls.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_support import choose, settle
from layout_support import VIEWPORTS, populate, sign_in_and_open_review, small_png
from playwright.sync_api import Page, expect
from support import wait_for

from db import decisions as decisions_db

ROOT = Path(__file__).resolve().parents[2]
# The small copies go to docs/review_after_*.png only when asked (REVIEW_DOCS_SHOTS=1): a test run leaves the
# tree as it found it.
DOCS = ROOT / "docs" if os.environ.get("REVIEW_DOCS_SHOTS") == "1" else None
# Outline of the cursor cell (the page's _highlight rule): counted on every grid image's computed style.
OUTLINED = """() => [...document.querySelectorAll('.st-key-review_grid [class*="st-key-rv_cell_"] img')]
  .filter(img => getComputedStyle(img).outlineStyle === 'solid').length"""
# Style rules on the page that outline a grid cell, wherever they sit in the document.
CURSOR_RULES = """() => [...document.querySelectorAll('style')]
  .map(s => (s.textContent.match(/\\.st-key-rv_cell_\\d+ img \\{outline/g) || []).length)
  .reduce((a, b) => a + b, 0)"""


@pytest.fixture()
def review_server(e2e_home, start_streamlit, tmp_path):  # noqa: ANN201
    dataset_id = populate(e2e_home, tmp_path / "scratch")
    return start_streamlit(), dataset_id


def box(page: Page, selector: str) -> dict:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not on the page"
    return found


def inside(b: dict, width: int, height: int) -> bool:
    return b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["width"] <= width and b["y"] + b["height"] <= height


def press(page: Page, key: str) -> None:
    settle(page)
    page.keyboard.press(key)


def focus_page(page: Page) -> None:
    page.get_by_role("heading", name="Review", level=1).click()


@pytest.mark.e2e
@pytest.mark.slow
def test_grid_detail_and_toolbar_fit_the_screen(browser_page: Page, review_server, tmp_path):
    server, _ = review_server
    page = browser_page
    for name, (width, height) in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        sign_in_and_open_review(page, server.url) if name == "1920x1080" else page.reload()
        expect(page.locator(".st-key-review_grid img")).to_have_count(48, timeout=60_000)
        settle(page)
        full = tmp_path / f"review_{name}.png"
        page.screenshot(path=str(full))
        small = small_png(full, (DOCS or tmp_path) / f"review_after_{name}.png")
        assert small.stat().st_size < 200_000
        grid, accept = box(page, ".st-key-review_grid"), box(page, ".st-key-rv_accept button")
        detail = box(page, ".st-key-rv_detail_img img")
        cells = page.locator('.st-key-review_grid [class*="st-key-rv_cell_"] img')
        first = cells.first.bounding_box()
        if name == "1920x1080":
            # Everything a decision needs, without scrolling: all 48 cells at 128 px, the 320+ px detail, the toolbar.
            assert inside(grid, width, height), (grid, "grid")
            assert inside(detail, width, height) and detail["width"] >= 320, (detail, "detail image")
            assert inside(accept, width, height), (accept, "Accept button")
            assert round(first["width"]) == 128, first
            assert page.evaluate("() => window.scrollY + document.querySelector('[data-testid=stMain]').scrollTop") == 0
        else:
            # 1280x800: the grid's cells shrink to the width (8 columns) and its first rows show; the toolbar
            # floats at the bottom of the screen, so Accept is always in reach.
            assert inside(accept, width, height), (accept, "Accept button")
            assert inside(first, width, height), (first, "first grid cell")
            assert grid["x"] + grid["width"] <= width, (grid, "grid wider than the screen")
    # The Class select box opens again after a switch to a full grid (a layout rule once kept it shut).
    for name in ("lymphocyte", "eosinophil", "lymphocyte", "eosinophil"):
        choose(page, page.get_by_test_id("stMain"), "Class", name)
        expect(page.locator(".st-key-review_grid img")).to_have_count(0 if name == "lymphocyte" else 48)
        settle(page)


@pytest.mark.e2e
@pytest.mark.slow
def test_one_cursor_outline_after_moves_and_bulk_actions(browser_page: Page, review_server):
    """Issue 16: a stale outline stayed on a second cell after moving and bulk actions (two cursor style rules)."""
    server, dataset_id = review_server
    page = browser_page
    page.set_viewport_size({"width": 1920, "height": 1080})
    sign_in_and_open_review(page, server.url)
    focus_page(page)
    assert page.evaluate(OUTLINED) == 1
    # Each key's result is awaited on the page: a key pressed before the rerun it follows has drawn its buttons
    # finds them still disabled (Shift+A before the selection shows).
    steps = [("ArrowRight", 1, ""), ("ArrowRight", 2, ""), ("s", 2, "☑"), ("ArrowRight", 3, ""), ("s", 3, "☑")]
    for key, position, mark in steps:  # move, select two
        press(page, key)
        expect(page.locator(f".st-key-rv_go_{position}")).to_contain_text(f"▶ {mark}".strip())
    press(page, "Shift+A")  # accept the selection (both leave the grid), then move again and decide one
    wait_for(lambda: len(decisions_db.current_decisions(dataset_id, "rita")) == 2, what="bulk accept of 2 cells")
    expect(page.locator(".st-key-rv_go_2")).not_to_contain_text("☑")
    for key, position in (("ArrowDown", 11), ("ArrowLeft", 10), ("a", 10), ("ArrowRight", 11), ("ArrowRight", 12)):
        press(page, key)
        expect(page.locator(f".st-key-rv_go_{position}")).to_contain_text("▶")
    wait_for(lambda: len(decisions_db.current_decisions(dataset_id, "rita")) == 3, what="accept of one cell")
    settle(page)
    assert page.evaluate(OUTLINED) == 1, "more than one cell outlined as the cursor"
    assert page.evaluate(CURSOR_RULES) == 1, "stale cursor style rules left on the page"
    press(page, "Alt+X")  # reject the page (bulk), then move
    wait_for(lambda: len(decisions_db.current_decisions(dataset_id, "rita")) == 3 + 48, what="page reject")
    press(page, "ArrowRight")
    settle(page)
    assert page.evaluate(OUTLINED) == 1 and page.evaluate(CURSOR_RULES) == 1


@pytest.mark.e2e
@pytest.mark.slow
def test_decided_view_marks_each_cell_and_sizes_change(browser_page: Page, review_server):
    server, dataset_id = review_server
    page = browser_page
    page.set_viewport_size({"width": 1920, "height": 1080})
    sign_in_and_open_review(page, server.url)
    focus_page(page)
    for key in ("a", "3", "Shift+2"):  # accept, reject with reason 3, relabel to class 2 (cells 1-3 in id order)
        press(page, key)
    wait_for(lambda: len(decisions_db.current_decisions(dataset_id, "rita")) == 3, what="three decisions")
    settle(page)
    page.get_by_test_id("stMain").get_by_text("decided", exact=True).click()
    expect(page.locator(".st-key-review_grid img")).to_have_count(3)
    settle(page)
    marks = [page.locator(f".st-key-rv_go_{i} button p").first for i in range(3)]
    expect(marks[0]).to_have_text("▶ ✓ accepted")
    expect(marks[1]).to_have_text("✗ stain or colour artefact")
    expect(marks[2]).to_have_text("↦ lymphocyte")
    colours = [m.evaluate("p => getComputedStyle(p).backgroundColor") for m in marks]
    assert colours == ["rgb(30, 126, 52)", "rgb(198, 40, 40)", "rgb(21, 101, 192)"]
    for i, mark in enumerate(marks):  # the badge sits on its cell's image, and shows
        cell, badge = box(page, f".st-key-rv_cell_{i} img"), mark.bounding_box()
        assert mark.is_visible() and cell["x"] <= badge["x"] and badge["y"] + badge["height"] <= cell["y"] + \
            cell["height"] + 1, (cell, badge)

    # Cell size 192 px: thumbnails made at that size (crisp, not stretched), 6 columns.
    page.get_by_test_id("stMain").get_by_text("192 px", exact=True).click()
    settle(page)
    img = page.locator(".st-key-rv_cell_0 img")
    expect(img).to_have_js_property("naturalWidth", 192)
    assert round(img.bounding_box()["width"]) == 192
    # Detail view: stored 64 px cell at 5x = 320 px, unsmoothed; zoom 4x shows native pixels 20x in the same frame.
    detail = page.locator(".st-key-rv_detail_img img")
    assert detail.evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
    assert round(detail.bounding_box()["width"]) == 320
    frame = box(page, ".st-key-rv_detail_img")
    page.get_by_test_id("stMain").get_by_text("4×", exact=True).click()
    settle(page)
    assert round(detail.bounding_box()["width"]) == 1280
    assert abs(box(page, ".st-key-rv_detail_img")["width"] - frame["width"]) <= 1  # the frame scrolls, not grows

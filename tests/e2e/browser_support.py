"""Browser steps every journey shares: wait for Streamlit to finish a script run, and pick a select box option."""

from __future__ import annotations

from playwright.sync_api import Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHOOSE_TRIES = 3


def settle(page: Page) -> None:
    """Wait until no script run is in progress and every image on the page has loaded."""
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=30_000)
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=30_000)
    page.wait_for_timeout(300)  # layout settles (no timing is asserted)


def choose(page: Page, scope: Locator, label: str, option: str) -> None:
    """Pick `option` of the select box labelled `label` inside `scope`.

    A click that lands while Streamlit re-renders the box is lost and its list never opens (seen with two test
    workers on two cores), so the page is let settle first and an unopened list is clicked again."""
    box = scope.get_by_test_id("stSelectbox").filter(has_text=label).locator("input")
    wanted = page.get_by_role("option", name=option, exact=True)
    for attempt in range(CHOOSE_TRIES):
        settle(page)
        box.click()
        try:
            wanted.wait_for(state="visible", timeout=5_000)
            break
        except PlaywrightTimeout:
            if attempt == CHOOSE_TRIES - 1:
                raise
    wanted.click()

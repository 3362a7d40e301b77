"""One expert's whole journey in a real browser against `streamlit run app.py`:
demo data -> tiny GAN run (watched live) -> candidates -> review with the keyboard -> retrain -> dashboard.

Every step is driven through the UI; the database is checked where the UI's word is not enough.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import choose
from playwright.sync_api import Locator, Page, expect
from support import wait_for

from db import datasets as ds_db
from db import decisions as decisions_db
from db import runs as runs_db
from wbc_core.jobs import run_dir
from wbc_core.jobs.warm import WARM_LOG_LINE

REVIEW_SCREENSHOT = Path("/tmp/review_page.png")
RUN_TIMEOUT_MS = 120_000  # a tiny GAN or classifier run on CPU, worker start (torch import) included
DEMO_CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def go_to(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible()


def main(page: Page) -> Locator:
    return page.get_by_test_id("stMain")


def fill_number(scope: Locator, label: str, value: int) -> None:
    field = scope.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Tab")  # commit the value (Streamlit reads number inputs on blur or Enter)


def progress_text(page: Page) -> Locator:
    return main(page).get_by_test_id("stProgress").first


def idle(page: Page) -> None:
    """Wait until no script run is in progress (the 'Running...' status widget is gone)."""
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=30_000)



@pytest.mark.e2e
@pytest.mark.slow
def test_expert_journey(browser_page: Page, streamlit_server, tmp_path):
    page = browser_page
    page.goto(streamlit_server.url)

    # Data: an empty home offers the demo; create it at 32 px and see its classes.
    expect(page.get_by_role("heading", name="Data", level=1)).to_be_visible()
    expect(main(page).get_by_text("No dataset yet")).to_be_visible()
    page.get_by_role("tab", name="Demo").click()
    demo_panel = main(page).get_by_role("tabpanel", name="Demo")
    choose(page, demo_panel, "Working size (px)", "32")
    demo_panel.get_by_role("button", name="Create demo dataset").click()
    expect(main(page).get_by_role("heading", name="demo · demo · 5 classes · 32 px")).to_be_visible()
    class_table = main(page).get_by_test_id("stDataFrame").first
    for class_name in DEMO_CLASSES:
        expect(class_table).to_contain_text(class_name)
    expect(page.get_by_test_id("stSidebar").get_by_role("combobox", name="Dataset")).to_have_value("demo")
    info = ds_db.get_dataset("demo")
    assert (info.kind, info.image_size) == ("demo", 32)

    # Generate: a tiny GAN run, watched live until it succeeds, then candidates from its checkpoint.
    go_to(page, "Generate")
    form = main(page).get_by_test_id("stForm")
    fill_number(form, "Steps", 20)
    fill_number(form, "Batch", 8)
    fill_number(form, "Width", 8)
    form.get_by_role("button", name="Start GAN training").click()
    [gan] = wait_for(lambda: runs_db.list_runs(kind="gan"), what="the GAN run row")
    assert (gan.config["steps"], gan.config["batch_size"], gan.config["g_width"], gan.config["image_size"]) == (
        20, 8, 8, 32)
    expect(progress_text(page)).to_contain_text("succeeded", timeout=RUN_TIMEOUT_MS)
    main(page).get_by_label("Candidates per class").fill("4")
    main(page).get_by_label("Candidates per class").press("Tab")
    main(page).get_by_role("button", name="Generate candidates").click()
    # The click only queues a job: close the tab at once, mid-generation, and come back in a new one.
    [job] = wait_for(lambda: runs_db.list_runs(kind="generate"), what="the candidate generation job")
    assert runs_db.get_run(job.id).active  # its worker is still importing torch or sampling
    page.close()
    page = page.context.new_page()
    page.goto(streamlit_server.url)
    go_to(page, "Generate")
    expect(main(page).get_by_text("added 20 candidates")).to_be_visible(timeout=RUN_TIMEOUT_MS)
    assert runs_db.get_run(job.id).status == "succeeded"
    assert len(ds_db.candidates(info.id)) == 20

    # Review: as the local user eve (sign-in off, see the streamlit_server fixture), the keyboard shortcut
    # Alt+A accepts the page of the first class.
    go_to(page, "Review")
    expect(main(page).get_by_text("4 pending candidates of eosinophil for eve")).to_be_visible()
    accept = main(page).get_by_role("button", name="Accept page")
    expect(accept).to_be_enabled()
    expect(main(page).locator(".st-key-review_grid img")).to_have_count(4)
    idle(page)
    main(page).get_by_role("heading", name="Review", level=1).click()  # focus leaves any select box
    page.screenshot(path=str(REVIEW_SCREENSHOT), full_page=True)
    page.keyboard.press("Alt+a")
    decided = wait_for(lambda: decisions_db.current_decisions(info.id, "eve"), what="decisions from the 'a' shortcut")
    assert len(decided) == 4
    assert {(d["verdict"], d["class_name"]) for d in decided} == {("accept", "eosinophil")}
    expect(main(page).get_by_text("0 pending candidates of eosinophil for eve")).to_be_visible()

    # Train: one small_cnn epoch on the curated recipe, watched until it succeeds.
    go_to(page, "Train")
    form = main(page).get_by_test_id("stForm")
    form.get_by_text("curated", exact=True).click()
    choose(page, form, "Model", "small_cnn")
    fill_number(form, "Epochs", 1)
    form.get_by_role("button", name="Retrain").click()
    [clf] = wait_for(lambda: runs_db.list_runs(kind="classifier"), what="the classifier run row")
    assert (clf.recipe, clf.config["model"], clf.config["epochs"]) == ("curated", "small_cnn", 1)
    expect(progress_text(page)).to_contain_text("succeeded", timeout=RUN_TIMEOUT_MS)
    expect(main(page).get_by_text("Test macro-F1 (real test cells)")).to_be_visible()
    assert runs_db.get_run(clf.id).train_set_size == len(ds_db.real_images(info.id, split="train")) + 4
    # The server started its warm starter with its context; by now (its imports take seconds, the journey a minute)
    # the retrain's worker was forked from it, torch already imported.
    assert WARM_LOG_LINE in (run_dir(clf.id) / "worker.log").read_text()

    # Dashboard: the finished run with its per-class test F1.
    go_to(page, "Dashboard")
    expect(main(page).get_by_role("heading", name="Test F1 per class")).to_be_visible()
    expect(main(page).get_by_test_id("stDataFrame").first).to_contain_text("succeeded")
    expect(main(page).get_by_text(f"run {clf.id}: confusion on real test cells").first).to_be_visible()
    idle(page)
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

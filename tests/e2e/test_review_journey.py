"""Review journey in a real browser against `streamlit run app.py` with sign-in on:

a reviewer (created with the CLI) signs in and reviews with the keyboard only (cursor, accept, reject with a
reason number, relabel, next page, undo); then an admin signs in, resolves a disagreement seeded through the
domain API under a 2-of-2 rule, and downloads the curated zip. The database is checked after each step.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from support import account, wait_for

from db import datasets as ds_db
from db import decisions as decisions_db
from db.migrate import ensure_schema
from wbc_core import review_model

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-password"
BIG_CLASS = "eosinophil"
N_BIG = 60  # two grid pages of 48


def cli(home: Path, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "WBC_HOME": str(home)}
    env.pop("WBC_DB_URL", None)
    out = subprocess.run([sys.executable, "-m", "wbc_core", *args], cwd=ROOT, env=env, input=stdin,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
    return out.stdout


def add_candidates(home: Path, dataset_id: int, class_name: str, n: int, seed: int) -> list[int]:
    """n distinct PNG candidates of a class (distinct bytes, so each grid cell has its own image)."""
    rng = np.random.default_rng(seed)
    folder = home / "images" / "e2e_candidates" / class_name
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append(dict(origin="synthetic", class_name=class_name, split=None,
                         sha256=hashlib.sha256(path.read_bytes()).hexdigest(), path=str(path.relative_to(home)),
                         width=32, height=32, checkpoint_step=10, seed=seed * 1000 + i))
    return ds_db.add_images(dataset_id, rows)



def main(page: Page):  # noqa: ANN201
    return page.get_by_test_id("stMain")


def go_to(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible()


def idle(page: Page) -> None:
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=30_000)


def sign_in(page: Page, username: str) -> None:
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    main(page).get_by_role("textbox", name="User name").fill(username)
    main(page).get_by_role("textbox", name="Password").fill(PASSWORD)
    main(page).get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("stSidebar").get_by_text(f"Signed in as {username}")).to_be_visible()


def press(page: Page, key: str) -> None:
    """Press a key once the previous run is done (a key pressed mid-run is still handled, but the checks
    below want to see each step's result on its own)."""
    idle(page)
    page.keyboard.press(key)


def cursor_at(page: Page, position: int) -> None:
    expect(main(page).locator(f".st-key-rv_go_{position}")).to_contain_text("▶")


@pytest.mark.e2e
@pytest.mark.slow
def test_reviewer_keyboard_then_admin_adjudicates_and_exports(browser_page: Page, start_streamlit, e2e_home, tmp_path):
    from wbc_core import importing
    from wbc_core.data.demo import write_demo_folder

    # Prepared before the server starts: a dataset, candidates, users (CLI), and a disagreement (domain API).
    ensure_schema()
    folder = write_demo_folder(tmp_path / "folder", per_class=8, size=32, seed=1)
    ds = importing.import_folder(folder, "cells", size=32, user=account()).dataset_id
    big = add_candidates(e2e_home, ds, BIG_CLASS, N_BIG, seed=1)
    disputed, agreed = add_candidates(e2e_home, ds, "lymphocyte", 2, seed=2)
    cli(e2e_home, "--as", "admin", "user", "add", "rita", "--role", "reviewer", "--password-stdin",
        stdin=PASSWORD + "\n")
    cli(e2e_home, "--as", "admin", "user", "add", "ada", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    two_of_two = review_model.ReviewSettings(review_model.ConsensusRule(min_agreeing=2, min_votes=2))
    review_model.set_review_settings(ds, two_of_two, account())
    review_model.decide([disputed, agreed], "rob", "accept", user=account("reviewer", "rob"))
    review_model.decide([disputed], "sam", "reject", reason=review_model.reject_reason(4),
                        user=account("reviewer", "sam"))
    review_model.decide([agreed], "sam", "accept", user=account("reviewer", "sam"))
    server = start_streamlit()
    page = browser_page

    def rita() -> dict[int, tuple]:
        return {d["image_id"]: (d["verdict"], d["reason"], d["new_class"])
                for d in decisions_db.current_decisions(ds, "rita")}

    # The reviewer signs in and opens the review queue.
    page.goto(server.url)
    sign_in(page, "rita")
    go_to(page, "Review")
    expect(main(page).get_by_text(f"{N_BIG} pending candidates of {BIG_CLASS} for rita · page 1 of 2")).to_be_visible()
    expect(main(page).locator(".st-key-review_grid img")).to_have_count(48)
    assert not main(page).get_by_text("#").count(), "a reviewer's grid must not show image ids"
    cursor_at(page, 0)
    main(page).get_by_role("heading", name="Review", level=1).click()  # focus on the page, not a widget

    # Keyboard only from here: move right, accept; reject with reason 3; relabel with Shift+2; down a row.
    press(page, "ArrowRight")
    cursor_at(page, 1)
    press(page, "a")
    wait_for(lambda: rita() == {big[1]: ("accept", None, None)}, what="accept of cell 2")
    expect(main(page).get_by_text(f"{N_BIG - 1} pending candidates")).to_be_visible()
    cursor_at(page, 1)  # the next candidate slid under the cursor
    press(page, "3")
    wait_for(lambda: rita().get(big[2]) == ("reject", review_model.reject_reason(3), None), what="reject with reason 3")
    press(page, "Shift+2")
    wait_for(lambda: rita().get(big[3]) == ("relabel", None, "lymphocyte"), what="relabel to class 2")
    press(page, "ArrowDown")
    cursor_at(page, 9)

    # Next page, accept its first cell, then undo that.
    press(page, "n")
    expect(main(page).get_by_text("page 2 of 2")).to_be_visible()
    cursor_at(page, 0)
    press(page, "a")
    # 57 pending after three decisions: page 2 starts at the 49th of them, the original 52nd candidate
    wait_for(lambda: rita().get(big[51]) == ("accept", None, None), what="accept on page 2")
    press(page, "u")
    wait_for(lambda: big[51] not in rita(), what="undo")
    assert rita() == {big[1]: ("accept", None, None), big[2]: ("reject", review_model.reject_reason(3), None),
                      big[3]: ("relabel", None, "lymphocyte")}
    assert [h["verdict"] for h in decisions_db.decision_history(big[51])] == ["accept", "undo"]
    assert {d["reviewer"] for d in decisions_db.current_decisions(ds)} == {"rita", "rob", "sam"}

    # The reviewer has no admin page; sign out, and the admin signs in.
    expect(page.get_by_test_id("stSidebarNav").get_by_role("link", name="Admin")).to_have_count(0)
    idle(page)
    page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
    sign_in(page, "ada")
    go_to(page, "Admin")

    # Adjudication: the one disputed candidate (rob accept / sam reject under 2-of-2), accepted by the admin.
    page.get_by_role("tab", name="Adjudication").click()
    panel = main(page).get_by_role("tabpanel", name="Adjudication")
    expect(panel.get_by_text("1 disputed candidates")).to_be_visible()
    dispute = panel.locator(f".st-key-dispute_{disputed}")
    expect(dispute).to_contain_text("GAN texture artefact")
    dispute.get_by_role("button", name="Accept").click()
    wait_for(lambda: decisions_db.current_adjudications(ds), what="the adjudication row")
    [ruling] = decisions_db.current_adjudications(ds)
    assert (ruling["image_id"], ruling["reviewer"], ruling["verdict"]) == (disputed, "ada", "accept")
    expect(panel.get_by_text("Nothing to adjudicate.")).to_be_visible()

    # Export: build the zip, download it, and read its manifest.
    page.get_by_role("tab", name="Export").click()
    panel = main(page).get_by_role("tabpanel", name="Export")
    panel.get_by_role("button", name="Build curated zip").click()
    expect(panel.get_by_text("2 accepted candidates")).to_be_visible()
    with page.expect_download() as download:
        panel.get_by_role("button", name="Download").click()
    saved = tmp_path / "curated.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        manifest = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        assert len(zf.namelist()) == len(manifest) + 1
    synthetic = {row["path"]: row for row in manifest if row["origin"] == "synthetic"}
    assert {row["split"] for row in synthetic.values()} == {"train"}
    assert sorted(row["adjudicated"] for row in synthetic.values()) == ["", "ada:accept"]
    assert {row["class"] for row in synthetic.values()} == {"lymphocyte"}  # rita's lone votes are not 2 of 2
    assert {row["split"] for row in manifest if row["origin"] == "real"} == {"train", "val", "test"}

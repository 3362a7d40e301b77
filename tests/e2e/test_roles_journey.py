"""Roles in a real browser against `streamlit run app.py` with sign-in on: a viewer finds no way to start GAN
training, generate candidates, score quality or cancel a run (every such button is disabled and the Generate page
says which role is needed), and nothing changes in the database; then an admin, on the same pages, finds the
buttons enabled and cancels the run, which records who cancelled it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from db import runs as runs_db
from db.migrate import ensure_schema
from wbc_core import auth

PASSWORD = "s3cret-password"
GAN = {"steps": 100, "batch_size": 8, "g_width": 8, "d_width": 8, "checkpoint_every": 50, "device": "cpu",
       "num_threads": 1}


def main(page: Page):  # noqa: ANN201
    return page.get_by_test_id("stMain")


def go_to(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible()


def sign_in(page: Page, username: str) -> None:
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    main(page).get_by_role("textbox", name="User name").fill(username)
    main(page).get_by_role("textbox", name="Password").fill(PASSWORD)
    main(page).get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("stSidebar").get_by_text(f"Signed in as {username}")).to_be_visible()


@contextmanager
def kept_alive(run_id: int) -> Iterator[None]:
    """Heartbeats for a queued run that no worker executes, so the server's reconcile never marks it failed."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(2.0):
            runs_db.heartbeat(run_id, 0.0, "queued: waits for a worker")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def _buttons(page: Page, step: int) -> dict[str, object]:
    m = main(page)
    return {"start": m.get_by_role("button", name="Start GAN training"),
            "cancel": m.get_by_role("button", name="Cancel run"),
            "generate": m.get_by_role("button", name="Generate candidates"),
            "score": m.get_by_role("button", name=f"Score quality for step {step}")}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_viewer_cannot_start_generate_or_cancel_but_an_admin_can(browser_page: Page, start_streamlit, e2e_home,
                                                                    tmp_path: Path) -> None:
    from wbc_core import gan_runs, importing
    from wbc_core.data.demo import write_demo_folder

    # Prepared before the server starts: accounts, a dataset, and an active GAN run (queued, no worker) that the
    # admin started and that has a checkpoint, so every action of the Generate page is on screen.
    ensure_schema()
    ada = auth.create_first_admin("ada", PASSWORD)
    auth.create_user("vic", PASSWORD, "viewer", user=ada)
    folder = write_demo_folder(tmp_path / "folder", per_class=8, size=32, seed=1)
    for note in folder.glob("*.txt"):
        note.unlink()
    importing.import_folder(folder, "cells", size=32, user=ada)
    run_id = gan_runs.start_gan_run("cells", GAN, launch=False, user=ada)
    runs_db.add_checkpoint(run_id, 50, f"runs/run_{run_id:05d}/ckpt_step50.pt", None)
    before = [(r.id, r.status) for r in runs_db.list_runs(limit=100)]

    with kept_alive(run_id):
        server = start_streamlit()
        page = browser_page
        page.goto(server.url)
        sign_in(page, "vic")
        go_to(page, "Generate")
        expect(main(page).get_by_text(re.compile(
            r"viewer 'vic' cannot train GANs, generate candidates or score quality: that needs the admin role"))
        ).to_be_visible()
        expect(main(page).get_by_text("started by ada")).to_be_visible()
        for name, button in _buttons(page, 50).items():
            expect(button, f"{name} is shown but disabled for a viewer").to_be_disabled()
        go_to(page, "Train")
        expect(main(page).get_by_role("button", name="Retrain")).to_be_disabled()
        # Nothing was started or cancelled.
        assert [(r.id, r.status) for r in runs_db.list_runs(limit=100)] == before
        assert runs_db.get_run(run_id).cancelled_by is None

        # The admin, on the same page, has every action and cancels the run.
        page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
        sign_in(page, "ada")
        go_to(page, "Generate")
        expect(main(page).get_by_text(re.compile("cannot train GANs"))).to_have_count(0)
        buttons = _buttons(page, 50)
        for name, button in buttons.items():
            expect(button, f"{name} is enabled for an admin").to_be_enabled()
        buttons["cancel"].click()
        expect(main(page).get_by_text("cancelled by ada")).to_be_visible()
    info = runs_db.get_run(run_id)
    assert (info.status, info.started_by, info.cancelled_by) == ("cancelled", "ada", "ada")

"""A review queue for the layout tests and the before/after screenshots: 64 px demo cells (stored smaller than
they are shown, so the upscaling is exercised), 60 candidates of one class, and a reviewer with a password.

Also run on its own against an older checkout (docs/review_before_*.png):
`PYTHONPATH=<checkout> python tests/e2e/layout_support.py <checkout> <out folder>`; the after shots come from
`REVIEW_DOCS_SHOTS=1 pytest tests/e2e/test_review_layout.py -k fit`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLASS = "eosinophil"
N_CANDIDATES = 60
REVIEWER, PASSWORD = "rita", "s3cret-password"
VIEWPORTS = {"1920x1080": (1920, 1080), "1280x800": (1280, 800)}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def populate(home: Path, scratch: Path) -> int:
    """Dataset 'cells' (demo cells at 64 px), N_CANDIDATES demo cells of CLASS as candidates (half scored), and the
    reviewer account; the current context must be on home. Returns the dataset id."""
    import random

    from db import datasets as ds_db
    from db import users as users_db
    from db.migrate import ensure_schema
    from wbc_core import auth, importing
    from wbc_core.data.demo import write_demo_folder

    ensure_schema()
    admin = users_db.get_user("admin") or users_db.insert_user("admin", "", "admin", None, "local")
    real = write_demo_folder(scratch / "real", per_class=12, size=64, seed=1)
    dataset_id = importing.import_folder(real, "cells", size=64, user=admin).dataset_id
    fake = write_demo_folder(scratch / "fake", per_class=N_CANDIDATES, size=64, seed=7)
    folder = home / "images" / "layout_candidates"
    folder.mkdir(parents=True, exist_ok=True)
    pick = random.Random(0)
    rows = []
    for i, source in enumerate(sorted((fake / CLASS).glob("*.png"))):
        path = folder / source.name
        shutil.copyfile(source, path)
        scored = i % 2 == 0
        rows.append(dict(origin="synthetic", class_name=CLASS, split=None,
                         sha256=hashlib.sha256(path.read_bytes()).hexdigest(), path=str(path.relative_to(home)),
                         width=64, height=64, checkpoint_step=1000, seed=i,
                         judge_prob=pick.random() if scored else None,
                         nearest_real_distance=pick.random() * 20 if scored else None))
    ds_db.add_images(dataset_id, rows)
    auth.create_user(REVIEWER, PASSWORD, "reviewer", user=admin)
    return dataset_id


def sign_in_and_open_review(page, url: str) -> None:  # noqa: ANN001 - a Playwright Page
    from browser_support import settle
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_role("textbox", name="User name").fill(REVIEWER)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Review").click()
    expect(page.get_by_role("heading", name="Review", level=1)).to_be_visible()
    expect(page.locator(".st-key-review_grid img")).to_have_count(48, timeout=60_000)
    settle(page)


def small_png(source: Path, target: Path, width: int = 960) -> Path:
    """A copy of a screenshot at most `width` px wide, palette-quantised: a few tens of kB for docs/."""
    from PIL import Image

    with Image.open(source) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
        im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _before(checkout: Path, out: Path) -> None:
    """Screenshots of the Review page of another checkout (its own server, a throw-away WBC_HOME)."""
    from playwright.sync_api import sync_playwright

    from wbc_core import context

    scratch = Path(tempfile.mkdtemp(prefix="wbc-layout-before-"))
    home = scratch / "home"
    ctx = context.build("test", home=home, db_url=f"sqlite:///{home / 'wbc.db'}")
    context.activate(ctx)
    populate(home, scratch)
    ctx.database.dispose()
    port = _free_port()
    env = {**os.environ, "WBC_HOME": str(home), "WBC_AUTH": "on", "PYTHONPATH": str(checkout)}
    env.pop("WBC_DB_URL", None)
    env.pop("WBC_USER", None)
    with open(scratch / "streamlit.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1"], cwd=checkout, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, (w, h) in VIEWPORTS.items():
                page = browser.new_page(viewport={"width": w, "height": h})
                sign_in_and_open_review(page, url)
                full = scratch / f"before_{name}.png"
                page.screenshot(path=str(full))
                small_png(full, out / f"review_before_{name}.png")
                page.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    _before(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())

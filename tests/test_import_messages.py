"""Messages of an uploaded zip's import name the user's file, never the server's temporary copy; a zip whose
entries are all unsafe says so; unsafe entries of an otherwise good zip come back as a warning."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from support import TINY_CLASSES, account, draw_cell, use_settings

from db import runs as runs_db
from wbc_core import import_jobs, worker


def _png(rng: np.random.Generator, colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    draw_cell(rng, 32, colour).save(out, format="PNG")
    return out.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def _run_upload(data: bytes, name: str = "my cells.zip") -> runs_db.RunInfo:
    run_id = import_jobs.start_import("upload", "cells", upload=data, upload_name=name, size=32, user=account(),
                                      launch=False)
    worker.main(run_id)
    return runs_db.get_run(run_id)


def test_unsafe_entries_are_a_warning_naming_the_users_file(wbc_home):
    rng = np.random.default_rng(0)
    entries = {f"{c}/{c}_{i}.png": _png(rng, colour) for c, colour in TINY_CLASSES.items() for i in range(6)}
    entries["../escape.png"] = _png(rng, (1, 2, 3))
    info = _run_upload(_zip(entries))
    assert info.status == "succeeded", info.error
    result = info.result
    assert result["unsafe"] == 1
    assert result["warning"].startswith("1 entry of my cells.zip had unsafe paths")
    assert "escape.png" in result["warning"]
    temp = info.config["source"]
    assert temp not in result["summary"] and temp not in result["warning"]
    assert all(temp not in s["source"] and temp not in s["message"] for s in result["skipped"])


def test_a_zip_of_only_unsafe_entries_says_so(wbc_home):
    rng = np.random.default_rng(1)
    info = _run_upload(_zip({"../a/x.png": _png(rng, (1, 2, 3)), "/abs/y.png": _png(rng, (4, 5, 6))}),
                       name="lab.zip")
    assert info.status == "failed"
    assert "every entry of lab.zip" in info.error and "unsafe path" in info.error
    assert info.config["source"] not in info.error  # the server's temporary path never shows


def test_data_page_shows_unsafe_entries_as_a_warning_not_in_the_green_box(wbc_home):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from wbc_core.context import current

    me = account("admin", current().settings.local_user)  # the implicit local admin of WBC_AUTH=off
    rng = np.random.default_rng(2)
    entries = {f"{c}/{c}_{i}.png": _png(rng, colour) for c, colour in TINY_CLASSES.items() for i in range(6)}
    entries["../escape.png"] = _png(rng, (1, 2, 3))
    run_id = import_jobs.start_import("upload", "cells", upload=_zip(entries), upload_name="my cells.zip", size=32,
                                      user=me, launch=False)
    worker.main(run_id)
    root = Path(__file__).resolve().parent.parent
    with use_settings(auth_off=True):
        at = AppTest.from_file(str(root / "pages/data.py"), default_timeout=60)
        at.session_state["import_job"] = run_id  # as if this session had queued it
        at.run()
        for _ in range(3):  # the polling panel sees the finished job and asks for a rerun, which shows the outcome
            if at.success:
                break
            at.run()
    assert not at.exception, [e.value for e in at.exception]
    green = "\n".join(str(s.value) for s in at.success).replace("\\", "")  # names are shown as text (escaped)
    warned = "\n".join(str(w.value) for w in at.warning).replace("\\", "")
    assert green.startswith("Imported 18 images") and "escape" not in green and "Skipped" not in green
    assert "unsafe paths" in warned and "my cells.zip" in warned

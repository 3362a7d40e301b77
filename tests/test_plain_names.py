"""Names are shown as text, never as Markdown: a hostile dataset or class name cannot make a link or bold text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest
from support import draw_cell, use_settings

from pages.ui.widgets import plain

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "[click](javascript:alert(1)) **bold** :red[x] $x$"


def test_plain_escapes_every_markdown_construct():
    escaped = plain(HOSTILE)
    for construct in ("[click]", "(javascript:", "**bold**", ":red[", "$x$"):
        assert construct not in escaped
    assert escaped.replace("\\", "") == HOSTILE  # only backslashes were added


def test_the_data_page_shows_a_hostile_dataset_and_class_name_as_text(wbc_home, tmp_path):
    from db import datasets as ds_db
    from wbc_core import auth
    from wbc_core.importing import import_folder
    from wbc_core.vocabulary import ROLES

    folder = tmp_path / "src" / "[evil](javascript:x)"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        draw_cell(rng, 32, (120, 60, 160)).save(folder / f"{i}.png")
    admin = auth.ensure_local_admin("local")
    assert admin.role in ROLES
    import_folder(folder.parent, "**bold** [x](javascript:y)", size=32, user=admin)
    with use_settings(auth_off=True):
        at = AppTest.from_file(str(ROOT / "pages/data.py"), default_timeout=60).run()
    assert not at.exception
    heading = at.subheader[0]
    assert heading.value.startswith(plain("**bold** [x](javascript:y)"))
    assert ds_db.get_dataset("**bold** [x](javascript:y)").class_names == ["[evil](javascript:x)"]

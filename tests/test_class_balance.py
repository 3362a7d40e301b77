"""Balanced sampling is recommended, and on by default in the Train page and the CLI, when a class is rare
(wbc_core.retrain.class_balance_advice): the rare-regime finding of bench/product_loop.py made a product default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from support import account, active_home, draw_cell

from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import jobs, retrain

COLOURS = {"common": (200, 40, 40), "other": (40, 200, 40), "rare": (40, 40, 200)}


def write_folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            draw_cell(rng, 32, COLOURS[name]).save(root / name / f"{i}.png")
    return root


def imported(tmp_path: Path, name: str, counts: dict[str, int]) -> int:
    from wbc_core import importing

    folder = write_folder(tmp_path / name, counts)
    return importing.import_folder(folder, name, size=32, user=account()).dataset_id


def test_a_rare_class_is_named_with_its_count_and_balanced_classes_get_no_advice(wbc_home, tmp_path):
    rare = imported(tmp_path, "skewed", {"common": 60, "other": 60, "rare": 5})
    train = {c: sum(r.class_name == c for r in ds_db.real_images(rare, split="train")) for c in COLOURS}
    advice = retrain.class_balance_advice(rare)
    assert advice is not None and f"rare ({train['rare']})" in advice and "common" not in advice.split(":")[1]
    assert f"against {max(train.values())}" in advice
    assert retrain.class_balance_advice(imported(tmp_path, "even", {"common": 20, "other": 20, "rare": 20})) is None


def test_cli_train_turns_balanced_sampling_on_for_a_rare_class_unless_told_not_to(wbc_home, tmp_path, monkeypatch,
                                                                                   capsys):
    from wbc_core.cli.main import main

    imported(tmp_path, "skewed", {"common": 60, "other": 60, "rare": 5})
    monkeypatch.setattr(jobs, "launch", lambda run_id: None)
    base = ["train", "--dataset", "skewed", "--epochs", "1", "--detach", "--json", "--as", "admin"]
    assert main(base) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["balanced_sampling"] is True and "Rare classes" in out["advice"]
    assert runs_db.get_run(out["run_id"]).config["balanced_sampling"] is True
    assert main([*base, "--no-balanced"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "advice" not in out and runs_db.get_run(out["run_id"]).config["balanced_sampling"] is False


def test_train_page_recommends_balanced_sampling_and_checks_it_for_a_rare_class(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("WBC_AUTH", "off")  # before the home's context is built: it reads the settings once
    with active_home(tmp_path / "home", monkeypatch):
        imported(tmp_path, "skewed", {"common": 60, "other": 60, "rare": 5})  # the newest dataset: the page's
        at = AppTest.from_file(str(root / "pages/train.py"), default_timeout=60).run()
        assert not at.exception
        assert any("Rare classes: rare" in str(i.value) for i in at.info)
        [balanced] = [c for c in at.checkbox if c.label == "Balanced sampling"]
        assert balanced.value is True

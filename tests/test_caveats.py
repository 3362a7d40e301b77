"""Numbers with their caveats: test-set size and CI beside headline test numbers, a warning for classes with few
test cells, chance-level runs flagged (runs table, CLI), the Dashboard's default baseline and the sentence
saying which it is, the quality verdict, and `runs | head` ending without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from support import account

from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import quality_views, results, views
from wbc_core.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["a", "b", "c", "d"]


def _test_report(macro_f1: float, support: dict[str, int], ci: tuple[float, float] = (0.5, 0.7)) -> dict:
    return {"test": {"accuracy": macro_f1, "macro_f1": macro_f1, "num_samples": sum(support.values()),
                     "per_class_f1": {c: macro_f1 for c in support}, "per_class_support": support,
                     "ci": {"macro_f1": list(ci), "accuracy": list(ci)}},
            "test_size": sum(support.values())}


def _run(dataset_id: int, result: dict, recipe: str = "real", group: str | None = None, model: str = "resnet18",
         seed: int = 0) -> int:
    run_id = runs_db.create_run("classifier", dataset_id, {"model": model}, seed, recipe=recipe, group_name=group)
    runs_db.finish_run(run_id, "succeeded", result)
    return run_id


@pytest.fixture()
def dataset(wbc_home) -> int:
    return ds_db.create_dataset("cells", "real", "src", CLASSES, {}, "h", {}, [])


def test_caveats_count_test_cells_and_warn_for_small_classes_and_chance():
    healthy = results.test_caveats(_test_report(0.8, {c: 40 for c in CLASSES}))
    assert healthy["test_cells"] == 160 and healthy["warnings"] == [] and not healthy["near_chance"]
    small = results.test_caveats(_test_report(0.8, {"a": 40, "b": 40, "c": 40,
                                                    "d": results.SMALL_CLASS_TEST_CELLS - 1}))
    assert small["small_classes"] == {"d": results.SMALL_CLASS_TEST_CELLS - 1}
    assert any("few test cells" in w and "d 19" in w for w in small["warnings"])
    edge = results.test_caveats(_test_report(0.8, {c: results.SMALL_CLASS_TEST_CELLS for c in CLASSES}))
    assert edge["small_classes"] == {}  # exactly the threshold is enough
    # 4 classes: guessing scores 0.25; within CHANCE_MARGIN of it is flagged, clearly above is not.
    assert results.chance_macro_f1(4) == 0.25
    near = results.test_caveats(_test_report(0.25 + results.CHANCE_MARGIN, {c: 40 for c in CLASSES}))
    assert near["near_chance"] and "chance level" in near["warnings"][0]
    assert not results.test_caveats(_test_report(0.25 + results.CHANCE_MARGIN + 0.01,
                                                 {c: 40 for c in CLASSES}))["near_chance"]
    assert results.test_caveats({})["warnings"] == []


def test_headline_names_the_ci_and_the_test_set_size():
    text = results.headline(_test_report(0.8123, {"a": 1}, ci=(0.61, 0.93)))
    assert text == "macro-F1 0.8123 [95% CI 0.610–0.930], accuracy 0.8123 on 1 real test cell"
    assert results.headline({}) == ""


def test_runs_table_and_cli_flag_chance_level_and_show_test_cells(dataset, capsys):
    account("admin")
    good = _run(dataset, _test_report(0.9, {c: 40 for c in CLASSES}))
    chance = _run(dataset, _test_report(0.028, {c: 5 for c in CLASSES}))
    frame = views.runs_frame(dataset, kind="classifier").set_index("run")
    assert frame.loc[good, "test cells"] == 160 and frame.loc[good, "caveat"] == ""
    assert "chance level" in frame.loc[chance, "caveat"] and "few test cells" in frame.loc[chance, "caveat"]
    caveats = views.run_caveats(chance)
    assert caveats["headline"].endswith("on 20 real test cells") and caveats["near_chance"]
    metrics = views.test_metrics_frame([good, chance]).set_index("run")
    assert metrics.loc[chance, "test cells"] == 20 and "chance" in metrics.loc[chance, "caveat"]
    assert cli.main(["runs"]) == 0
    lines = {int(line.split()[0]): line for line in capsys.readouterr().out.splitlines()}
    assert "NEAR CHANCE" in lines[chance] and "on 20 test cells" in lines[chance]
    assert "NEAR CHANCE" not in lines[good] and "on 160 test cells" in lines[good]


def test_default_baseline_is_the_groups_real_arm_else_the_same_models_newest_real_run(dataset):
    report = _test_report(0.8, {c: 40 for c in CLASSES})
    own_real = _run(dataset, report, group="ablation-1", seed=1)
    own_curated = _run(dataset, report, recipe="curated", group="ablation-1", seed=1)
    other_model = _run(dataset, report, model="small_cnn")  # newest real run, but another model and no group
    baseline, why = results.default_baseline([own_curated])
    assert baseline == own_real and "real arm of group ablation-1" in why
    lone = _run(dataset, report, recipe="curated", model="resnet18")
    same_model = _run(dataset, report, model="resnet18")
    baseline, why = results.default_baseline([lone])
    assert baseline == same_model != other_model and "same model (resnet18)" in why
    baseline, why = results.default_baseline([_run(dataset, report, recipe="curated", model="vit")])
    assert baseline is None and "no succeeded real run of vit" in why


def test_quality_verdict_has_one_threshold_per_word():
    close = quality_views.verdict({"quality/fd_ratio": quality_views.FD_RATIO_CLOSE})
    assert close.startswith("Close to real")
    middle = quality_views.verdict({"fd_ratio": quality_views.FD_RATIO_FAR})
    assert middle.startswith("Noticeably different")
    far = quality_views.verdict({"fd_ratio": 319.8, "memorised": 0.2, "coverage": 0.1})
    assert far.startswith("Far from the real cells") and "20% look like copies" in far and "cover only 10%" in far
    assert quality_views.verdict({}).startswith("No verdict")


def test_labelled_grid_writes_one_label_per_row(tmp_path):
    path = tmp_path / "grid.png"
    Image.new("RGB", (2 + 3 * 34, 2 + 2 * 34), "black").save(path)
    out = views.labelled_grid(str(path), ["lymphocyte", "platelet"])
    assert out.height == 70 and out.width > 104
    label_column = out.crop((0, 0, out.width - 104, out.height)).convert("L")
    dark_rows = [y for y in range(out.height) if min(label_column.getpixel((x, y)) for x in range(label_column.width))
                 < 128]
    assert dark_rows and min(dark_rows) < 35 < max(dark_rows)  # text in the first and in the second row


def test_gan_progress_is_full_when_finished_and_has_an_eta_while_running(dataset):
    run_id = runs_db.create_run("gan", dataset, {"steps": 100}, 0)
    runs_db.add_metrics(run_id, 10, {"sec_per_step": 0.5})
    runs_db.add_metrics(run_id, 20, {"sec_per_step": 0.3})
    runs_db.mark_started(run_id, os.getpid(), "host")
    live = views.run_status(run_id)["live"]
    assert live["steps_done"] == 20 and live["sec_per_step"] == pytest.approx(0.4)
    assert live["eta_seconds"] == pytest.approx(80 * 0.4)
    runs_db.finish_run(run_id, "succeeded", {"steps_done": 100})
    state = views.run_status(run_id)
    assert state["progress"] == 1.0 and state["live"]["eta_seconds"] is None
    assert views.runs_frame(dataset, kind="gan")["progress"].tolist() == [1.0]
    assert views.grid_row_labels(run_id) == CLASSES


def test_runs_piped_into_head_ends_without_a_traceback(dataset, wbc_home):
    for _ in range(3):
        _run(dataset, _test_report(0.9, {c: 40 for c in CLASSES}))
    env = {**os.environ, "WBC_HOME": str(wbc_home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "wbc_core", "runs"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written, as `| head` leaves
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err

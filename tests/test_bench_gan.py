"""bench/gan.py and bench/cuda_check.py: config assembly, reports, and tiny end-to-end runs on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import account

from wbc_core.gan import CUDA_PRESET, GanConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def load_bench(name: str):  # noqa: ANN201
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gan_bench():  # noqa: ANN201
    return load_bench("gan")


def test_cpu_config_is_the_app_default_with_bench_cadence(gan_bench):
    config = gan_bench.bench_config(gan_bench.parse_args([]))
    default = GanConfig()
    assert (config.g_width, config.batch_size, config.aux_weight) == (default.g_width, default.batch_size,
                                                                     default.aux_weight)
    assert (config.device, config.checkpoint_every, config.image_size) == ("cpu", 500, 64)


def test_cuda_preset_keeps_the_bench_size_and_lets_flags_override(gan_bench):
    args = gan_bench.parse_args(["--preset", "cuda", "--device", "cuda", "--size", "64", "--aux-weight", "1.0",
                                 "--checkpoint-every", "1000"])
    config = gan_bench.bench_config(args)
    assert config.image_size == 64  # not the preset's 128: the goals table is at 64 px
    assert (config.g_width, config.batch_size) == (CUDA_PRESET["g_width"], CUDA_PRESET["batch_size"])
    assert (config.aux_weight, config.checkpoint_every, config.device) == (1.0, 1000, "cuda")
    assert config.quality_every_checkpoint is False  # the bench scores checkpoints itself (--score-checkpoints)
    assert gan_bench.overrides_from(args) == {"aux_weight": 1.0, "checkpoint_every": 1000}


def test_markdown_shows_goals_the_real_ceiling_and_the_curve(gan_bench):
    classes = ["a", "b"]
    table = {"density": {"all": 0.9, "a": 0.85, "b": 0.5}, "acceptance": {"all": 0.6, "a": 0.9, "b": 0.1}}
    ceiling = {"density": {"all": 1.0, "a": 1.0, "b": 1.0}, "acceptance": {"all": 0.5, "a": 0.95, "b": 0.05}}
    judge = {"model": "small_cnn", "epochs": 5, "max_per_class": 400, "val_accuracy": 0.9}
    result = {"when": "now", "load_average": "0", "overrides": {}, "steps_done": 10, "train_seconds": 1.0,
              "device": "cpu", "threads": 1, "per_class": 4, "classes": classes, "judge": judge,
              "accept_judge": {**judge, "model": "resnet18", "val_accuracy": 0.97},
              "judge_val_accuracy": 0.9, "metrics": {}, "table": table, "baseline_table": ceiling,
              "speed": {"trainer_sec_per_step": 0.2, "trainer_steady_sec_per_step": 0.2,
                        "compute_limit_sec_per_step": 0.19, "ratio": 1.05},
              "curve": [{"step": 5, "density": 0.4, "coverage": None}, {"step": 10, "density": 0.9}]}
    md = gan_bench.markdown(result)
    assert "| a | 0.850 ✅ |" in md and "| b | 0.500 ❌ |" in md
    assert "held-out real *test* cells" in md
    assert "acceptance judge resnet18 (val accuracy 0.970)" in md
    assert "| b | 1.000 | – | – | – | 0.050 |" in md  # the ceiling row carries no goal marks
    assert "| 5 | 0.400 | – |" in md and "| 10 | 0.900 |" in md


def test_a_budget_spent_before_the_first_step_reports_no_trainer_speed(gan_bench):
    # Seen on a loaded CI box: a 3 s budget ran out before the first step, and the speed record divided by zero.
    ceiling = {"matmul_fp32": 100.0}
    none_ran = gan_bench.speed_record(0.0, 0.5, [], 2e9, ceiling)
    assert math.isnan(none_ran["trainer_sec_per_step"]) and math.isnan(none_ran["ratio"])
    assert "achieved_trainer" not in none_ran and none_ran["achieved_limit"]["gflops"] == 4.0
    ran = gan_bench.speed_record(1.0, 0.5, [1.2, 1.0, 0.9], 2e9, ceiling)
    assert ran["ratio"] == 2.0 and ran["achieved_trainer"] == {"gflops": 2.0, "of_matmul_fp32": 0.02}
    assert ran["trainer_steady_sec_per_step"] == 1.0


def test_gan_train_and_gain_benches_get_the_app_split_of_a_folder(gan_bench, tiny_folder, wbc_home, tmp_path):
    from bench import gain_data
    from db import datasets as ds_db
    from wbc_core.importing import import_folder

    # A second copy of one cell: the app's import keeps one of them, and so must every bench.
    shutil.copy(tiny_folder / "platelet" / "platelet_03.jpg", tiny_folder / "platelet" / "platelet_99_copy.jpg")
    classes, gan_parts, digest = gan_bench.load_split(tiny_folder, 32)
    train_cells = load_bench("train").load_store(tiny_folder, 32, tmp_path / "train_cache")
    gain_cells = gain_data.load_folder(tiny_folder, 32)
    assert classes == train_cells.class_names == gain_cells.class_names == ["lymphocyte", "neutrophil", "platelet"]
    for split in ("train", "val", "test"):
        for cells in (train_cells, gain_cells):
            part = cells.part(split)
            assert torch.equal(part.images, gan_parts[split].images), split
            assert torch.equal(part.labels, gan_parts[split].labels), split
    assert len(gan_parts["train"]) + len(gan_parts["val"]) + len(gan_parts["test"]) == 36  # the copy is skipped
    assert len(gan_parts["test"]) == 6 and gan_parts["test"].labels.bincount().tolist() == [2, 2, 2]

    # ... and it is the split the app's import makes of the same folder with its default settings.
    app = ds_db.get_dataset(import_folder(tiny_folder, "tiny", size=32, user=account()).dataset_id)
    assert train_cells.split_hash == gain_cells.split_hash == app.split_hash and digest == app.split_hash[:12]
    for split in ("train", "val", "test"):
        in_app = {row.sha256 for row in ds_db.real_images(app.id, split=split)}
        assert {sha for sha, s in zip(gain_cells.sha256, gain_cells.splits, strict=True) if s == split} == in_app


def test_real_baseline_draws_each_class_at_random_not_by_file_name(gan_bench, monkeypatch):
    from wbc_core.types import LabelledImages

    # Cells come in file-name order; pixel value = position, so the pick shows which positions were measured.
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 3, 2, 2).clone()
    labels = torch.tensor([0] * 30 + [1] * 10)
    seen = []
    monkeypatch.setattr(gan_bench, "measure", lambda judges, cells, labs, qcfg: seen.append((cells, labs)) or {})
    gan_bench.real_baseline(None, LabelledImages(images, labels), ["a", "b"], 5, None)
    cells, labs = seen[0]
    assert labs.bincount().tolist() == [5, 5]
    picked = cells[:, 0, 0, 0][labs == 0].tolist()
    assert all(p < 30 for p in picked) and sorted(picked) != [0, 1, 2, 3, 4]  # not the first five names
    gan_bench.real_baseline(None, LabelledImages(images, labels), ["a", "b"], 5, None)
    assert torch.equal(seen[1][0], cells)  # seeded: every run measures the same cells


def test_cell_cache_is_reused_and_renewed_when_a_file_changes(tiny_folder, tmp_path, monkeypatch):
    from bench import cells as bench_cells

    cache = tmp_path / "cache"
    first = bench_cells.load_cells(tiny_folder, 32, cache_dir=cache)
    assert len(list(cache.glob("cells_*.pt"))) == 1

    def no_reading(*_args, **_kwargs):  # noqa: ANN202
        raise AssertionError("the folder was read again although its cache is valid")

    monkeypatch.setattr(bench_cells, "ingest", no_reading)
    again = bench_cells.load_cells(tiny_folder, 32, cache_dir=cache)
    assert torch.equal(again.images, first.images) and again.keys == first.keys and again.splits == first.splits
    assert again.split_hash == first.split_hash
    monkeypatch.undo()
    (tiny_folder / "neutrophil" / "neutrophil_00.jpg").unlink()  # one cell fewer: the cache must not serve it
    fewer = bench_cells.load_cells(tiny_folder, 32, cache_dir=cache)
    assert len(fewer.keys) == len(first.keys) - 1 and "neutrophil/neutrophil_00.jpg" not in fewer.keys
    assert len(list(cache.glob("cells_*.pt"))) == 2


@pytest.mark.slow
def test_tiny_bench_run_end_to_end(tiny_folder, tmp_path):
    env = {**os.environ, "WBC_HOME": str(tmp_path / "home"), "WBC_PBC128": str(tiny_folder),
           "OMP_NUM_THREADS": "1"}
    common = ["--size", "32", "--threads", "1", "--per-class", "4", "--judge-per-class", "8", "--judge-epochs", "1",
              "--accept-judge-model", "small_cnn", "--accept-judge-per-class", "12", "--accept-judge-epochs", "2",
              "--out", str(tmp_path / "out")]
    run = subprocess.run([sys.executable, "bench/gan.py", *common, "--baseline-only", "--tag", "t"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    baseline = json.loads((tmp_path / "out" / "gan_baseline_t.json").read_text())
    assert baseline["judge"]["model"] == "small_cnn" and "acceptance" in baseline["baseline_table"]
    # A second judge decides acceptance; the feature judge's own acceptance is kept under another name.
    assert baseline["accept_judge"]["max_per_class"] == 12
    assert {"acceptance", "real_acceptance", "feature_judge_acceptance"} <= baseline["baseline_table"].keys()
    run = subprocess.run([sys.executable, "bench/gan.py", *common, "--budget-minutes", "0.05", "--width", "16",
                          "--batch", "8", "--checkpoint-every", "3", "--score-checkpoints", "--tag", "t"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads((tmp_path / "out" / "gan_t.json").read_text())
    assert out["steps_done"] >= 1 and out["config"]["g_width"] == 16
    assert [row["step"] for row in out["curve"]][-1] == out["steps_done"]  # the final checkpoint closes the curve
    assert out["baseline_table"]["acceptance"].keys() == baseline["baseline_table"]["acceptance"].keys()
    assert not (ROOT / "bench" / "results" / "gan_t.json").exists()  # --out, not the repo's results
    run = subprocess.run([sys.executable, "bench/gan.py", *common, "--rescore", "t"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    again = json.loads((tmp_path / "out" / "gan_t_rescored.json").read_text())
    assert again["rescored_from"] == "t" and again["steps_done"] == out["steps_done"]
    assert again["speed"] == out["speed"] and again["curve"] == out["curve"]  # kept from the run it rescored
    assert again["metrics"]["quality/acceptance"] == pytest.approx(out["metrics"]["quality/acceptance"])
    assert "scored again with this judge" in (tmp_path / "out" / "gan_t_rescored.md").read_text()
    run = subprocess.run([sys.executable, "bench/gan.py", *common, "--rescore", "nothing-here"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "no checkpoints under" in run.stderr


@pytest.mark.slow
def test_cuda_check_smoke_passes_on_cpu(tiny_folder, tmp_path):
    out = tmp_path / "check.json"
    run = subprocess.run([sys.executable, "bench/cuda_check.py", "--data", str(tiny_folder), "--device", "cpu",
                          "--tiny", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "WBC_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["all_ok"] is True
    assert {"precision", "gan_native", "gan_resume", "gan_fp16", "portable", "classifier"} <= report.keys()
    assert report["gan_resume"]["steps_done"] == 8 and report["gan_native"]["steps_done"] == 4


def test_cuda_check_says_plainly_when_there_is_no_gpu(tiny_folder):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this runs (and can fail) on GPU machines too.
    run = subprocess.run([sys.executable, "bench/cuda_check.py", "--data", str(tiny_folder)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode != 0
    assert "CUDA is not available here" in run.stderr

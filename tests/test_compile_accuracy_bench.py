"""bench/compile_accuracy.py's reading: per-mode means and spreads, the paired compiled - eager difference against
the issue's +-0.5 points, and the wall-time ratio (on fabricated runs, so it needs neither data nor minutes)."""

from __future__ import annotations

import pytest

from bench import compile_accuracy as ca


def run(mode: str, seed: int, f1: float, wall: float) -> dict:
    return {"compile": mode, "seed": seed, "epochs": 1, "wall_s": wall, "train_seconds": wall, "best_epoch": 1,
            "speed": {"compiled": mode == "on", "channels_last": False, "notes": [], "reason": f"{mode} reason"},
            "val_macro_f1": f1, "test_accuracy": f1, "test_macro_f1": f1}


def test_summary_pairs_seeds_and_judges_the_difference_against_half_a_point():
    runs = [run("off", 0, 0.970, 100.0), run("on", 0, 0.972, 80.0), run("off", 1, 0.966, 100.0),
            run("on", 1, 0.970, 80.0)]
    s = ca.summarise(runs)
    assert s["modes"]["off"] == {"runs": 2, "test_macro_f1_mean": 96.8, "spread_points": 0.4, "wall_s_mean": 100.0}
    assert s["delta_per_seed"] == [0.2, 0.4] and s["delta_mean_points"] == pytest.approx(0.3)
    assert s["within_goal"] is True and s["wall_ratio_eager_over_compiled"] == 1.25
    far = ca.summarise([run("off", 0, 0.97, 1.0), run("on", 0, 0.96, 1.0)])
    assert far["delta_mean_points"] == pytest.approx(-1.0) and far["within_goal"] is False


def test_a_partial_run_has_no_difference_yet_and_still_renders():
    s = ca.summarise([run("off", 0, 0.97, 10.0)])
    assert "delta_mean_points" not in s and s["modes"]["off"]["runs"] == 1
    text = ca.markdown({"summary": s, "machine": {"cpu": {"model": "X", "torch_cpu_capability": "AVX2",
                                                          "avx512_bf16": False, "torch": "2"}},
                        "date": "d", "size": 64, "epochs": 1, "seeds": [0], "loads": [0.1], "partial": True,
                        "runs": [run("off", 0, 0.97, 10.0)]})
    assert "**Partial.**" in text and "| off | 0 | 97.00 |" in text


def test_the_layout_arm_is_judged_against_the_default_eager_one():
    runs = [run("nchw", 0, 0.960, 120.0), run("off", 0, 0.966, 100.0), run("nchw", 1, 0.962, 120.0),
            run("off", 1, 0.958, 100.0)]
    s = ca.summarise(runs)
    lay = s["layout"]
    assert lay["delta_per_seed"] == [0.6, -0.4] and lay["delta_mean_points"] == pytest.approx(0.1)
    assert lay["within_goal"] is True and lay["wall_ratio_nchw_over_default"] == 1.2
    assert lay["run_to_run_spread_points"] == 0.8 and "delta_mean_points" not in s  # no compiled arm ran
    assert "default layout - NCHW (eager both): **+0.10 points**" in ca.markdown(
        {"summary": s, "machine": {"cpu": {"model": "X", "torch_cpu_capability": "AVX2", "avx512_bf16": False,
                                           "torch": "2"}},
         "date": "d", "size": 64, "epochs": 1, "seeds": [0, 1], "loads": [0.1], "partial": False, "runs": runs})


def test_the_nchw_arm_trains_in_nchw_and_says_so_then_restores_the_measured_plan():
    import torch

    from wbc_core.classifier import ClassifierConfig
    from wbc_core.classifier import train as classifier_train

    measured = classifier_train.speed_plan
    config = ClassifierConfig(compile="off")
    with ca.nchw_plans(True):
        forced = classifier_train.speed_plan(config, torch.device("cpu"), True, 10)
    assert forced.channels_last is False and "NCHW forced" in forced.notes[0]
    assert classifier_train.speed_plan is measured
    # amp plans are NHWC by rule, so the unforced plan here is NHWC: the arm really changed the layout
    assert measured(config, torch.device("cpu"), True, 10).channels_last is True
    with ca.nchw_plans(False):
        assert classifier_train.speed_plan is measured

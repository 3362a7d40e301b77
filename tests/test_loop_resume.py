"""Resuming a stopped product-loop run (bench/loop_resume.py): what is kept, what is redone, what is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench import loop_resume as lr
from bench import product_loop as pl


def stopped_results(cfg: pl.LoopConfig) -> dict:
    """A results file as a run stopped during the all-data regime writes it: rare finished, all begun."""
    stages = {"import": 15.0, "reference": 800.0, "rare: GAN": 700.0,
              **{f"rare: {arm} share seed {s}": 100.0 for arm in ("real", "curated", "unfiltered", "matched")
                 for s in range(cfg.seeds)}, "all: GAN": 650.0}
    audit = {"test_cells_hash": "abc", "train_cells_hash": "t", "test_cells": 10, "test_cells_in_train": 0}
    return {"benchmark": "product_loop", "partial": True, "config": dataclasses.asdict(cfg), "machine": {"cpus": 2},
            "stages": stages, "wall_minutes": 140.0, "reference": {"run_id": 1, "val_macro_f1": 0.9},
            "strategy": {"chosen": "share"}, "goals": [],
            "regimes": {"rare": {"audit": audit, "best_strategy": "share", "runs": [{"arm": "real"}]},
                        "all": {"audit": audit, "gan": {"run_id": 9}}}}


def write(tmp_path, results: dict):
    path = tmp_path / "product_loop_t.json"
    path.write_text(json.dumps(results))
    return path


def test_a_stopped_run_keeps_its_finished_regimes_and_redoes_the_unfinished_one(tmp_path):
    cfg = pl.LoopConfig(out=str(tmp_path), tag="t", resume=True)
    previous = lr.load_partial(write(tmp_path, stopped_results(cfg)), cfg)
    assert lr.finished_regimes(previous, cfg.seeds) == ["rare"]
    state = lr.resumed_state(previous, cfg.seeds)
    assert list(state["regimes"]) == ["rare"] and state["regimes"]["rare"]["runs"] == [{"arm": "real"}]
    assert "all: GAN" not in state["stages"] and "rare: matched share seed 2" in state["stages"]
    assert state["reference"]["run_id"] == 1 and state["strategy"]["chosen"] == "share"
    assert state["sessions"] == [{"machine": {"cpus": 2}, "wall_minutes": 140.0, "stages": list(previous["stages"])}]
    # a regime whose last matched seed is missing is not finished
    short = stopped_results(cfg)
    del short["stages"]["rare: matched share seed 2"]
    assert lr.finished_regimes(short, cfg.seeds) == []


def test_the_plan_of_a_resumed_run_leaves_out_the_kept_regimes_and_reference(tmp_path):
    cfg = pl.LoopConfig(regimes=("rare", "all"))
    full = pl.planned_seconds(cfg)
    rest = pl.planned_seconds(cfg, ("rare",), reference=False)
    assert 0 < rest < full - pl.plan(cfg)["reference"]
    assert pl.planned_seconds(cfg, ("rare", "all"), reference=False) == pytest.approx(pl.plan(cfg)["import"])


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(partial=False), "finished run"),
    (lambda r: r["config"].update(gan_steps=99), "gan_steps: 99 then, 1800 now"),
    (lambda r: r.update(benchmark="gain"), "not a product-loop results file"),
])
def test_a_run_that_cannot_be_resumed_is_refused_with_the_reason(tmp_path, change, message):
    cfg = pl.LoopConfig(out=str(tmp_path), tag="t", resume=True)
    results = stopped_results(cfg)
    change(results)
    with pytest.raises(lr.ResumeError, match=message):
        lr.load_partial(write(tmp_path, results), cfg)


def test_missing_or_corrupt_results_are_refused_and_the_cli_says_so(tmp_path, capsys):
    cfg = pl.LoopConfig(out=str(tmp_path), tag="t", resume=True)
    with pytest.raises(lr.ResumeError, match="does not exist"):
        lr.load_partial(tmp_path / "product_loop_t.json", cfg)
    (tmp_path / "product_loop_t.json").write_text("{not json")
    with pytest.raises(lr.ResumeError, match="cannot read"):
        lr.load_partial(tmp_path / "product_loop_t.json", cfg)
    assert pl.main(["--out", str(tmp_path), "--tag", "t", "--resume"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_other_test_cells_are_refused(tmp_path):
    cfg = pl.LoopConfig(out=str(tmp_path), tag="t", resume=True)
    previous = stopped_results(cfg)
    lr.check_test_cells(previous, "abc")
    with pytest.raises(lr.ResumeError, match="data folder changed"):
        lr.check_test_cells(previous, "xyz")


def test_the_reference_checkpoint_is_kept_beside_the_results_without_a_partial_file(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    results = tmp_path / "out" / "product_loop_t.json"
    results.parent.mkdir()
    kept = lr.keep_reference(model, results)
    assert kept == tmp_path / "out" / "product_loop_t.reference.pt" and kept.read_bytes() == b"weights"
    assert not list(results.parent.glob("*.tmp"))

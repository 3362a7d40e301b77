"""The augmentation-gain benchmark end to end on a tiny generated ImageFolder: outputs, arms and data hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import write_cell_folder

from bench import augmentation_gain as ag
from bench import gain_data as gd
from bench import gain_report as gr

COLOURS = {"basophil": (90, 40, 110), "ig": (200, 120, 170), "lymphocyte": (120, 60, 160)}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return write_cell_folder(tmp_path / "cells", COLOURS, per_class=30, seed=1, suffix=".png")


def _bytes(images: torch.Tensor) -> list[bytes]:
    return [im.numpy().tobytes() for im in images]


@pytest.mark.slow
def test_pipeline_writes_results_and_keeps_sets_clean(folder, tmp_path, monkeypatch):
    seen_gan: list[torch.Tensor] = []
    seen_cls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_train_gan, real_train_cls = ag.train_gan, ag.train_classifier

    gan_configs = []

    def spy_gan(data, names, config, out_dir, *args, **kwargs):
        seen_gan.append(data.images.clone())
        gan_configs.append(config)
        return real_train_gan(data, names, config, out_dir, *args, **kwargs)

    def spy_cls(train, val, names, config, out_dir, *args, **kwargs):
        seen_cls.append((train.images.clone(), val.images.clone()))
        return real_train_cls(train, val, names, config, out_dir, *args, **kwargs)

    written: list[tuple[bool, set[str]]] = []
    real_write = ag.write_outputs

    def spy_write(results, sets, cfg):
        written.append((results["partial"], set(results["regimes"])))
        return real_write(results, sets, cfg)

    monkeypatch.setattr(ag, "train_gan", spy_gan)
    monkeypatch.setattr(ag, "train_classifier", spy_cls)
    monkeypatch.setattr(ag, "write_outputs", spy_write)
    out = tmp_path / "out"
    cfg = ag.parse_args(["--data", str(folder), "--out", str(out), "--regimes", "n8,rare", "--rare-n", "4",
                         "--shares", "0.5,1.0", "--seeds", "1", "--gan-steps", "12", "--gan-width", "16",
                         "--gan-batch", "16", "--ref-epochs", "2", "--cls-epochs", "2", "--bootstrap", "50",
                         "--min-confidence", "0.4", "--val-per-class", "3", "--gan-aux-weight", "0.2",
                         "--gan-lr-d", "4e-4"])
    results = ag.run_benchmark(cfg, progress=False)

    # A finished regime is on disk before the next one starts (marked partial); the final write is complete.
    assert written == [(True, {"n8"}), (False, {"n8", "rare"})]
    # Files and keys.
    for suffix in (".json", ".md", ".png", "_sets.json", "_gan_n8.png", "_gan_rare.png"):
        assert (out / f"augmentation_gain{suffix}").stat().st_size > 0
    on_disk = json.loads((out / "augmentation_gain.json").read_text())
    assert set(on_disk) >= {"benchmark", "quick", "config", "machine", "data", "reference", "regimes", "goals",
                            "seconds", "classifier_runs"}
    assert set(on_disk["regimes"]) == {"n8", "rare"}
    regime = on_disk["regimes"]["n8"]
    assert set(regime) >= {"real_train_per_class", "gan", "audit", "curation", "acceptance", "absolute", "gains",
                           "runs"}
    gain = regime["gains"]["0.5"]
    assert set(gain) == {"unfiltered", "curated", "matched", "curated_vs_unfiltered", "curated_vs_matched"}
    assert set(gain["curated"]) == {"macro_f1", "accuracy", "f1_basophil", "f1_ig", "f1_lymphocyte"}
    assert set(gain["curated"]["macro_f1"]) == {"mean", "low", "high"}
    md = (out / "augmentation_gain.md").read_text()
    assert "| n8 |" in md and "AC-GAN weight 0.2" in md and "lr G/D 0.0002/0.0004" in md
    assert [(c.aux_weight, c.lr_g, c.lr_d) for c in gan_configs] == [(0.2, 2e-4, 4e-4)] * 2

    # Arms as specified: arm 4 has arm 3's count per class, arm 3 never exceeds arm 2's target.
    for name, r in results["regimes"].items():
        runs = {(x["arm"], x["share"], x["seed"]): x for x in r["runs"]}
        for share in (0.5, 1.0):
            unfiltered, curated, matched = (runs[(arm, share, 0)]["synthetic_per_class"]
                                            for arm in ("unfiltered", "curated", "matched"))
            assert matched == curated, name
            assert all(curated[c] <= unfiltered[c] for c in unfiltered)
            assert unfiltered == {c: max(1, round(share * n)) for c, n in r["real_train_per_class"].items()}
        assert runs[("real", None, 0)]["synthetic_per_class"] == {c: 0 for c in COLOURS}
        assert r["audit"]["test_cells_in_train"] == 0 and r["audit"]["val_cells_in_train"] == 0
    assert results["regimes"]["rare"]["real_train_per_class"]["basophil"] == 4
    assert results["regimes"]["n8"]["real_train_per_class"] == {c: 8 for c in COLOURS}

    # Hygiene, checked on the tensors actually passed to the trainers.
    data = gd.load_folder(folder, 32, 0)
    by_key = dict(zip(data.keys, _bytes(data.images), strict=True))
    test_bytes = {by_key[k] for k, s in zip(data.keys, data.splits, strict=True) if s == "test"}
    sets = json.loads((out / "augmentation_gain_sets.json").read_text())
    assert set(sets["test_keys"]) == {k for k, s in zip(data.keys, data.splits, strict=True) if s == "test"}
    assert len(seen_gan) == 2
    for name, images in zip(("n8", "rare"), seen_gan, strict=True):
        keys = sets[name]["train_keys"]
        assert all(data.splits[data.keys.index(k)] == "train" for k in keys)
        assert sorted(_bytes(images)) == sorted(by_key[k] for k in keys)  # the regime's train cells, nothing else
    assert len(seen_cls) == 1 + results["classifier_runs"]
    train_split = sorted(by_key[k] for k, s in zip(data.keys, data.splits, strict=True) if s == "train")
    assert sorted(_bytes(seen_cls[0][0])) == train_split  # the reference trains on the full real train split
    for train, val in seen_cls:
        assert not test_bytes & set(_bytes(train)) and not test_bytes & set(_bytes(val))


def test_arm_sets_curated_is_arm2_minus_rejected_and_matched_is_blind():
    labels = torch.tensor([0] * 6 + [1] * 6)
    accepted = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    sets = gd.arm_sets(labels, accepted, {0: 4, 1: 3}, seed=0)
    assert sets.unfiltered.tolist() == [0, 1, 2, 3, 6, 7, 8]
    assert sets.curated.tolist() == [0, 2]
    assert len(sets.matched) == 2 and set(sets.matched.tolist()) <= {0, 1, 2, 3}


def test_paired_gain_is_zero_for_identical_arms_and_signed_otherwise():
    y = np.array([0, 0, 1, 1, 2, 2] * 10)
    good, bad = y.copy(), y.copy()
    bad[:20] = (bad[:20] + 1) % 3
    index = gr.boot_index(len(y), 200, 0)
    names = gr.metric_names(["a", "b", "c"])
    same = gr.paired_gain([gr.scores(y, good, 3, index)], [gr.scores(y, good, 3, index)], names)
    assert same["macro_f1"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    better = gr.paired_gain([gr.scores(y, good, 3, index)], [gr.scores(y, bad, 3, index)], names)
    assert better["accuracy"]["mean"] == pytest.approx(100 * 20 / 60, abs=1e-3)
    assert 0 < better["accuracy"]["low"] <= better["accuracy"]["mean"] <= better["accuracy"]["high"]


def test_quick_flag_sets_smoke_budgets_and_options_override():
    cfg = ag.parse_args(["--quick", "--seeds", "2"])
    assert cfg.quick and cfg.regimes == ("n50",) and cfg.seeds == 2 and cfg.gan_steps == ag.QUICK["gan_steps"]
    assert not ag.parse_args([]).quick
    assert ag.parse_args([]).amp is True and ag.parse_args(["--no-amp"]).amp is False
    assert ag.parse_args([]).regimes[:3] == ("n50", "rare", "all")  # the goals' regimes first

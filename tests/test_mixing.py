"""Mixing strategies: the options themselves, the cells and weights each strategy gives the trainer (the pure
mix and, through a real classifier job, what train_classifier receives), their record in the run config and the
training-set hash, and the CLI."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from support import TINY_CLASSES, account, draw_cell
from test_results import FAST, add_candidates, run_in_process

import wbc_core.classifier as classifier_pkg
from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import jobs, mixing, retrain, review_model, store
from wbc_core.cli import main as cli_main
from wbc_core.importing import import_folder
from wbc_core.jobs import groups
from wbc_core.mixing import MIX_STRATEGIES, MixConfig, mix_cells, mix_from_options
from wbc_core.provenance import image_set_hash, read_train_set, training_set_record

# -- the pure mix -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: int
    class_name: str
    origin: str = "real"
    sha256: str = "h"


REAL_COUNTS = {"a": 10, "b": 4, "c": 1}


def real_rows() -> list[Row]:
    rows, next_id = [], 1
    for name, n in REAL_COUNTS.items():
        for _ in range(n):
            rows.append(Row(next_id, name))
            next_id += 1
    return rows


def synthetic_pairs(per_class: int = 20) -> list[tuple[Row, str]]:
    return [(Row(1000 + 100 * k + i, name, "synthetic"), name)
            for k, name in enumerate(REAL_COUNTS) for i in range(per_class)]


def synthetic_per_class(mixed: mixing.Mixed) -> dict[str, int]:
    return dict(Counter(label for row, label in zip(mixed.rows, mixed.labels, strict=True) if row.origin != "real"))


def test_share_keeps_share_times_the_real_count_of_each_class_deterministically():
    real, syn = real_rows(), synthetic_pairs()
    mixed = mix_cells(real, syn, MixConfig("share", share=0.5), seed=3)
    assert synthetic_per_class(mixed) == {"a": 5, "b": 2}  # c: floor(0.5 x 1) = 0
    assert mixed.rows[:len(real)] == real and mixed.weights is None
    assert mix_cells(real, syn, MixConfig("share", share=0.5), seed=3) == mixed  # same seed, same cells
    assert mix_cells(real, syn, MixConfig("share", share=0.5), seed=4).rows != mixed.rows
    # Floats do not lose a cell: 0.29 x 100 is 28.999999999999996.
    hundred = [Row(i, "a") for i in range(100)]
    assert synthetic_per_class(mix_cells(hundred, synthetic_pairs(40)[:40], MixConfig("share", share=0.29))) == {
        "a": 29}


def test_the_older_synthetic_cap_is_the_share_strategy(wbc_home, tiny_folder):
    dataset_id = import_folder(tiny_folder, "tiny", size=32, user=account()).dataset_id
    add_candidates(dataset_id, per_class=4)
    rows, labels = retrain.build_training_set(dataset_id, "all-synthetic", synthetic_cap=0.25, seed=1)
    mixed = retrain.mixed_training_set(dataset_id, "all-synthetic", mix=MixConfig("share", share=0.25), seed=1)
    assert (rows, labels) == (mixed.rows, mixed.labels) and mixed.weights is None
    assert sum(r.origin == "synthetic" for r in rows) == 3 * 2  # 8 real train cells per class x 0.25


def test_fill_tops_up_each_class_to_the_target_and_gives_common_classes_none():
    mixed = mix_cells(real_rows(), synthetic_pairs(), MixConfig("fill", target=6), seed=0)
    assert synthetic_per_class(mixed) == {"b": 2, "c": 5}  # a has 10 >= 6 real cells: no synthetic ones
    assert Counter(mixed.labels) == {"a": 10, "b": 6, "c": 6} and mixed.weights is None
    # A target beyond what was accepted takes every accepted cell of that class.
    few = mix_cells(real_rows(), synthetic_pairs(3), MixConfig("fill", target=50), seed=0)
    assert synthetic_per_class(few) == {"a": 3, "b": 3, "c": 3}


def test_weight_gives_every_synthetic_cell_the_weight_and_real_cells_one():
    real, syn = real_rows(), synthetic_pairs()
    mixed = mix_cells(real, syn, MixConfig("weight", synthetic_weight=0.4), seed=0)
    assert len(mixed.rows) == len(real) + len(syn)
    assert mixed.weights == [1.0] * len(real) + [0.4] * len(syn)
    assert [w for r, w in zip(mixed.rows, mixed.weights, strict=True) if r.origin == "synthetic"] == [0.4] * len(syn)
    capped = mix_cells(real, syn, MixConfig("weight", synthetic_weight=0.4, share=1.0), seed=0)
    assert synthetic_per_class(capped) == REAL_COUNTS
    # Weight 1 is no weighting: no weights at all, so the set (and its hash) is the unweighted one.
    assert mix_cells(real, syn, MixConfig("weight", synthetic_weight=1.0), seed=0).weights is None


def test_two_stage_keeps_the_cells_and_splits_the_epochs():
    real, syn = real_rows(), synthetic_pairs()
    mix = MixConfig("two-stage", finetune_epochs=3)
    assert mix_cells(real, syn, mix) == mix_cells(real, syn, None)
    assert mix.stage_epochs(10) == (7, 3) and MixConfig("share", share=1).stage_epochs(10) == (10, 0)
    with pytest.raises(ValueError, match=r"fine-tune epochs \(3\) must be fewer than the run's epochs \(3\)"):
        mix.stage_epochs(3)
    assert mix.schedule() == {"finetune_real_epochs": 3} and MixConfig("fill", target=5).schedule() is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"strategy": "blend"}, "the mixing strategy must be one of share, fill, weight, two-stage, got 'blend'"),
    ({"strategy": "share"}, "the share strategy needs a synthetic share"),
    ({"strategy": "share", "share": math.nan}, "synthetic share (times the real cells per class) must be a number "
                                               "from 0 to 100, got nan"),
    ({"strategy": "share", "share": -1}, "synthetic share (times the real cells per class) must be a number"),
    ({"strategy": "fill", "target": 10**9}, "fill target (cells per class) must be a whole number from 1 to"),
    ({"strategy": "fill", "target": 2.5}, "fill target (cells per class) must be a whole number"),
    ({"strategy": "weight", "synthetic_weight": 0}, "synthetic weight must be a number above 0 and at most 1"),
    ({"strategy": "weight", "synthetic_weight": 3}, "synthetic weight must be a number above 0 and at most 1"),
    ({"strategy": "weight", "synthetic_weight": math.inf}, "synthetic weight must be a number above 0"),
    ({"strategy": "two-stage", "finetune_epochs": 0}, "fine-tune epochs must be a whole number from 1 to 1,000"),
    ({"strategy": "share", "share": 1, "target": 5}, "a fill target (cells per class) applies to the fill strategy "
                                                     "only, not to share"),
    ({"strategy": "fill", "target": 5, "share": 1}, "a synthetic share (times the real cells per class) applies to "
                                                    "the share, weight, two-stage strategies only, not to fill"),
])
def test_mix_options_are_refused_in_plain_words(kwargs, message):
    with pytest.raises(ValueError) as info:
        MixConfig(**kwargs)
    assert message in str(info.value)


def test_mix_round_trips_through_a_dict_and_the_options_mapping():
    for mix in (MixConfig("share", share=0.5), MixConfig("fill", target=40), MixConfig("weight", synthetic_weight=0.3,
                share=2.0), MixConfig("two-stage", finetune_epochs=2)):
        assert MixConfig.from_dict(json.loads(json.dumps(mix.to_dict()))) == mix
        assert mix.strategy in MIX_STRATEGIES and mix.describe().startswith(mix.strategy)
    with pytest.raises(ValueError, match="unknown mix fields: colour"):
        MixConfig.from_dict({"strategy": "share", "share": 1.0, "colour": "red"})
    assert MixConfig("fill", target=40.0).target == 40 and isinstance(MixConfig("fill", target=40.0).target, int)
    # A form shows every number: the ones a strategy does not use are dropped, and share 0 is "no cap" there.
    form = {"share": 0.0, "target": 100, "synthetic_weight": 0.4, "finetune_epochs": 2}
    assert mix_from_options("weight", **form, drop_unused=True) == MixConfig("weight", synthetic_weight=0.4)
    assert mix_from_options("fill", **form, drop_unused=True) == MixConfig("fill", target=100)
    assert mix_from_options("share", **form, drop_unused=True) == MixConfig("share", share=0.0)
    assert mix_from_options(mixing.NO_MIX, **form, drop_unused=True) is None
    with pytest.raises(ValueError, match="a fill target .* needs a mixing strategy"):
        mix_from_options(None, target=5)


def test_weights_and_the_fine_tune_schedule_enter_the_training_set_hash():
    rows = [Row(1, "a"), Row(2, "b", "synthetic")]
    labels = ["a", "b"]
    plain, summary = training_set_record(rows, labels)
    assert plain == image_set_hash([(1, "h", "a"), (2, "h", "b")]) and "weights_digest" not in summary
    weighted, summary = training_set_record(rows, labels, [1.0, 0.4])
    lighter, _ = training_set_record(rows, labels, [1.0, 0.3])
    staged, staged_summary = training_set_record(rows, labels, schedule={"finetune_real_epochs": 2})
    later, _ = training_set_record(rows, labels, schedule={"finetune_real_epochs": 3})
    assert len({plain, weighted, lighter, staged, later}) == 5
    assert len(summary["weights_digest"]) == 64 and staged_summary["schedule"] == {"finetune_real_epochs": 2}
    assert training_set_record(rows[::-1], labels[::-1], [0.4, 1.0])[0] == weighted  # order does not matter


# -- what the trainer receives, through the classifier job -------------------------------------------------------

COUNTS = {"lymphocyte": 20, "neutrophil": 10, "platelet": 6}  # real cells per class before the split
CANDIDATES = 8  # accepted candidates per class


@pytest.fixture()
def skewed(wbc_home: Path, tmp_path: Path) -> int:
    """A dataset with unequal classes and CANDIDATES accepted candidates per class."""
    rng = np.random.default_rng(0)
    root = tmp_path / "skewed"
    for name, n in COUNTS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            draw_cell(rng, 32, TINY_CLASSES[name]).save(root / name / f"{name}_{i:02d}.jpg", quality=95)
    dataset_id = import_folder(root, "skewed", size=32, user=account()).dataset_id
    review_model.decide(add_candidates(dataset_id, per_class=CANDIDATES), "ann", "accept",
                        user=account("reviewer", "ann"))
    return dataset_id


class Recorder:
    """Stands in for train_classifier in the job: records each call's inputs, then trains for real."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.real = classifier_pkg.train_classifier

    def __call__(self, train, val, class_names, config, out_dir, progress=None, should_stop=None,  # noqa: ANN001
                 train_weights=None):  # noqa: ANN001, ANN204
        self.calls.append({"train": train, "config": config, "out_dir": Path(out_dir),
                           "weights": None if train_weights is None else train_weights.clone()})
        return self.real(train, val, class_names, config, out_dir, progress=progress, should_stop=should_stop,
                         train_weights=train_weights)


def run_recorded(monkeypatch: pytest.MonkeyPatch, dataset_id: int, mix: MixConfig | None, epochs: int = 1
                 ) -> tuple[runs_db.RunInfo, list[dict], list[dict]]:
    recorder = Recorder()
    monkeypatch.setattr(classifier_pkg, "train_classifier", recorder)
    monkeypatch.setattr(retrain, "_write_exports", lambda *args: "skipped in tests")
    run_id = retrain.start_classifier_run(dataset_id, "curated", {**FAST, "epochs": epochs}, launch=False, mix=mix,
                                          user=account())
    manifest = read_train_set(jobs.run_dir(run_id))
    return run_in_process(run_id), recorder.calls, manifest


def real_train_counts(dataset_id: int) -> dict[str, int]:
    return dict(Counter(r.class_name for r in ds_db.real_images(dataset_id, split="train")))


def received(call: dict, class_names: list[str]) -> dict[str, int]:
    return {class_names[i]: n for i, n in enumerate(torch.bincount(call["train"].labels, minlength=3).tolist()) if n}


def test_share_job_trains_on_share_times_real_synthetic_cells_per_class(skewed, monkeypatch):
    names = ds_db.get_dataset(skewed).class_names
    real = real_train_counts(skewed)
    run, calls, manifest = run_recorded(monkeypatch, skewed, MixConfig("share", share=0.5))
    (call,) = calls
    syn = {c: min(CANDIDATES, math.floor(0.5 * real[c])) for c in names}
    assert received(call, names) == {c: real[c] + syn[c] for c in names}
    assert call["weights"] is None and "weight" not in manifest[0]
    assert run.config["mix"] == {"strategy": "share", "share": 0.5, "target": None, "synthetic_weight": None,
                                 "finetune_epochs": None} and run.config["synthetic_cap"] == 0.5
    # The trainer got exactly the frozen cells, in their frozen order.
    frozen = store.labelled(skewed, ds_db.images_by_ids([m["id"] for m in manifest]), names, 32,
                            [m["label"] for m in manifest])
    assert torch.equal(call["train"].images, frozen.images) and torch.equal(call["train"].labels, frozen.labels)


def test_fill_job_tops_up_rare_classes_only(skewed, monkeypatch):
    names = ds_db.get_dataset(skewed).class_names
    real = real_train_counts(skewed)
    target = max(real.values())  # the largest class is at the target: it gets no synthetic cells
    run, calls, manifest = run_recorded(monkeypatch, skewed, MixConfig("fill", target=target))
    (call,) = calls
    syn = Counter(m["label"] for m in manifest if m["origin"] == "synthetic")
    assert syn == {c: min(CANDIDATES, target - real[c]) for c in names if real[c] < target}
    assert received(call, names) == {c: real[c] + syn[c] for c in names}
    assert call["weights"] is None and run.config["mix"]["target"] == target


def test_weight_job_hands_the_trainer_the_synthetic_weight(skewed, monkeypatch):
    names = ds_db.get_dataset(skewed).class_names
    real = real_train_counts(skewed)
    run, calls, manifest = run_recorded(monkeypatch, skewed, MixConfig("weight", synthetic_weight=0.4))
    (call,) = calls
    assert received(call, names) == {c: real[c] + CANDIDATES for c in names}
    expected = [0.4 if m["origin"] == "synthetic" else 1.0 for m in manifest]
    assert call["weights"].tolist() == expected and [m["weight"] for m in manifest] == expected
    assert run.train_set_summary["weights_digest"]
    plain = retrain.start_classifier_run(skewed, "curated", FAST, launch=False, user=account())
    lighter = retrain.start_classifier_run(skewed, "curated", FAST, launch=False, user=account(),
                                           mix=MixConfig("weight", synthetic_weight=0.3))
    hashes = {run.train_set_hash, runs_db.get_run(plain).train_set_hash, runs_db.get_run(lighter).train_set_hash}
    assert len(hashes) == 3  # same cells, other weights: another training set


def test_two_stage_job_fine_tunes_on_real_train_cells_from_the_first_stage(skewed, monkeypatch):
    names = ds_db.get_dataset(skewed).class_names
    real = real_train_counts(skewed)
    run, calls, manifest = run_recorded(monkeypatch, skewed, MixConfig("two-stage", finetune_epochs=1), epochs=3)
    first, second = calls
    assert received(first, names) == {c: real[c] + CANDIDATES for c in names}
    assert first["config"].epochs == 2 and first["out_dir"].name == "stage1" and first["weights"] is None
    # Stage 2: real train cells only (the same pixels stage 1 saw for them), starting from stage 1's weights.
    is_real = torch.tensor([m["origin"] == "real" for m in manifest])
    assert received(second, names) == real
    assert torch.equal(second["train"].images, first["train"].images[is_real])
    assert second["config"].epochs == 1 and second["config"].pretrained_path == str(first["out_dir"] / "model.pt")
    assert second["config"].lr == pytest.approx(first["config"].lr * mixing.FINETUNE_LR_SCALE)
    assert second["out_dir"] == jobs.run_dir(run.id)
    stages = run.result["stages"]
    assert [s["cells"] for s in stages] == ["real + synthetic", "real only"]
    assert [s["train_size"] for s in stages] == [len(manifest), sum(real.values())]
    assert run.result["epochs_done"] == 3 and run.train_set_summary["schedule"] == {"finetune_real_epochs": 1}
    assert Path(run.result["model_path"]).parent.name == jobs.run_dir(run.id).name  # stage 2's, not stage1/
    # The run's epoch axis continues across the stages: stage 2's epoch 1 is the run's epoch 3.
    steps = {row["step"] for row in runs_db.metrics([run.id], ["val_macro_f1"])}
    assert steps == {1, 2, 3}


def test_every_strategy_is_recorded_in_the_run_config_and_gives_its_own_training_set_hash(skewed):
    mixes = [None, MixConfig("share", share=0.5), MixConfig("fill", target=10),
             MixConfig("weight", synthetic_weight=0.5), MixConfig("two-stage", finetune_epochs=1)]
    runs = [runs_db.get_run(retrain.start_classifier_run(skewed, "curated", {**FAST, "epochs": 2}, launch=False,
                                                         mix=mix, user=account())) for mix in mixes]
    assert [r.config["mix"] for r in runs] == [None if m is None else m.to_dict() for m in mixes]
    assert len({r.train_set_hash for r in runs}) == len(mixes)
    again = retrain.start_classifier_run(skewed, "curated", {**FAST, "epochs": 2}, launch=False, mix=mixes[2],
                                         user=account())
    assert runs_db.get_run(again).train_set_hash == runs[2].train_set_hash  # same mix, same set


def test_a_run_refuses_mixes_that_cannot_apply(skewed):
    with pytest.raises(retrain.RetrainError, match="the real recipe has no synthetic cells to mix"):
        retrain.start_classifier_run(skewed, "real", FAST, launch=False, mix=MixConfig("share", share=1.0),
                                     user=account())
    with pytest.raises(retrain.RetrainError, match="not both"):
        retrain.start_classifier_run(skewed, "curated", FAST, launch=False, user=account(), synthetic_cap=1.0,
                                     mix=MixConfig("share", share=1.0))
    with pytest.raises(retrain.RetrainError, match="fewer than the run's epochs"):
        retrain.start_classifier_run(skewed, "curated", {**FAST, "epochs": 2}, launch=False, user=account(),
                                     mix=MixConfig("two-stage", finetune_epochs=2))
    assert runs_db.list_runs(kind="classifier") == []


def test_an_ablation_mixes_its_synthetic_arms_and_keeps_the_real_baseline_plain(skewed):
    mix = MixConfig("fill", target=12)
    launched = groups.start_ablation(skewed, FAST, seeds="0 1", mix=mix, launch=False, user=account())
    runs = [runs_db.get_run(r) for r in launched.run_ids]
    assert [(r.recipe, r.config["mix"]) for r in runs] == [
        (recipe, None if recipe == "real" else mix.to_dict()) for _ in (0, 1) for recipe in retrain.RECIPES]
    seeds = groups.start_seeds(skewed, "curated", "0 1", FAST, mix=mix, launch=False, user=account())
    assert all(runs_db.get_run(r).config["mix"] == mix.to_dict() for r in seeds.run_ids)
    with pytest.raises(retrain.RetrainError, match="real recipe"):
        groups.start_seeds(skewed, "real", "0 1", FAST, mix=mix, launch=False, user=account())


# -- CLI ------------------------------------------------------------------------------------------------------


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = cli_main.main([*argv, "--as", account().username, "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_cli_train_takes_each_mixing_strategy(skewed, capsys, monkeypatch):
    monkeypatch.setattr(jobs, "launch", lambda run_id: 0)  # queued, not trained: the config is what is checked
    cases = {("--mix", "share", "--mix-share", "0.5"): MixConfig("share", share=0.5),
             ("--mix", "fill", "--mix-target", "12"): MixConfig("fill", target=12),
             ("--mix", "weight", "--mix-weight", "0.3", "--mix-share", "1"): MixConfig("weight", share=1.0,
                                                                                       synthetic_weight=0.3),
             ("--mix", "two-stage", "--finetune-epochs", "1", "--epochs", "3"): MixConfig("two-stage",
                                                                                          finetune_epochs=1)}
    for flags, mix in cases.items():
        code, out = cli(capsys, "train", "--dataset", "skewed", "--recipe", "curated", "--model", "small_cnn",
                        *flags, "--detach")
        assert code == 0, out
        assert runs_db.get_run(out["run_id"]).config["mix"] == mix.to_dict()
    for flags, message in [(("--mix-target", "5"), "--mix-target needs --mix"),
                           (("--mix", "share", "--mix-share", "nan"), "synthetic share (times the real cells per "
                                                                       "class) must be a number from 0 to 100"),
                           (("--mix", "share", "--mix-share", "1", "--mix-target", "5"), "applies to the fill "
                                                                                         "strategy only"),
                           (("--mix", "weight", "--mix-weight", "0"), "synthetic weight must be a number above 0"),
                           (("--mix", "blend"), "invalid choice")]:
        code, out = cli(capsys, "train", "--dataset", "skewed", "--recipe", "curated", *flags, "--detach")
        assert code == cli_main.EXIT_ERROR and message in out["error"], (flags, out)

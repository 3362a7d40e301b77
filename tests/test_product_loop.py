"""The product-loop benchmark (bench/product_loop.py): regimes, arms, budgets, expert policy, and the --quick run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import augmentation_gain as ag
from bench import loop_arms as la
from bench import loop_plan as lp
from bench import loop_support as ls
from bench import product_loop as pl


def fake_rows(per_class: dict[str, dict[str, int]]) -> list[SimpleNamespace]:
    """Rows with ids, classes, splits and sha256s: per_class = {class: {split: count}}."""
    rows, i = [], 0
    for name, splits in per_class.items():
        for split, n in splits.items():
            for _ in range(n):
                i += 1
                rows.append(SimpleNamespace(id=i, class_name=name, split=split, origin="real",
                                            sha256=f"{(i * 7919) % 10007:08d}{i:056d}", path=f"x/{i}.png"))
    return rows


ROWS = {"basophil": {"train": 20, "val": 3, "test": 4}, "ig": {"train": 15, "val": 2, "test": 3},
        "neutrophil": {"train": 25, "val": 3, "test": 4}}


def test_regime_rows_cut_train_cells_only_and_keep_every_held_out_row_in_order():
    rows = fake_rows(ROWS)
    caps = ls.regime_caps("rare", ["basophil", "ig", "neutrophil"], ("basophil", "ig"), 5)
    kept = ls.regime_rows(rows, caps, seed=0)
    train = [r for r in kept if r.split == "train"]
    assert {c: sum(r.class_name == c for r in train) for c in ROWS} == {"basophil": 5, "ig": 5, "neutrophil": 25}
    held = [r.id for r in rows if r.split != "train"]
    assert [r.id for r in kept if r.split != "train"] == held  # same val/test cells, same order, every regime
    chosen = {r.sha256 for r in train}
    assert {r.sha256 for r in ls.regime_rows(list(reversed(rows)), caps, seed=0) if r.split == "train"} == chosen
    n10 = ls.regime_rows(rows, ls.regime_caps("n10", list(ROWS), (), 0), seed=0)
    assert all(sum(r.class_name == c and r.split == "train" for r in n10) == 10 for c in ROWS)
    assert ls.regime_rows(rows, ls.regime_caps("all", list(ROWS), (), 0), seed=0) == rows
    with pytest.raises(ValueError, match="unknown regime"):
        ls.regime_caps("few", list(ROWS), (), 0)
    with pytest.raises(ValueError, match="not classes"):
        ls.regime_caps("rare", list(ROWS), ("lymphocyte",), 5)


def test_cut_cells_never_reach_the_regimes_gan_or_classifier(wbc_home):
    """A regime is a derived dataset: the app's GAN and classifier training rows are its kept train cells only."""
    from db import datasets as ds_db
    from wbc_core.gan_runs import gan_training_rows
    from wbc_core.retrain import mixed_training_set

    rows = fake_rows(ROWS)
    base = ds_db.create_dataset("base", "real", "test", list(ROWS), {}, "h", {},
                                [{"origin": "real", "class_name": r.class_name, "split": r.split, "sha256": r.sha256,
                                  "path": r.path, "width": 8, "height": 8} for r in rows], image_size=8)
    stored = ds_db.real_images(base)
    kept = ls.regime_rows(stored, ls.regime_caps("rare", list(ROWS), ("basophil", "ig"), 4), seed=1)
    derived = ls.derive_dataset(base, "base-rare", kept, {"regime": "rare"})
    cut = {r.sha256 for r in stored if r.split == "train"} - {r.sha256 for r in kept}
    assert len(cut) == (20 - 4) + (15 - 4)
    gan_rows = gan_training_rows(derived)
    cls_rows = mixed_training_set(derived, "real").rows
    for used in (gan_rows, cls_rows):
        assert not {r.sha256 for r in used} & cut
        assert len(used) == 4 + 4 + 25
    same = [r.sha256 for r in ds_db.real_images(derived, split="test")]
    assert same == [r.sha256 for r in ds_db.real_images(base, split="test")]


def test_matched_subset_has_the_curated_counts_and_is_a_seeded_subset():
    cands = [(SimpleNamespace(id=i), "a" if i % 3 else "b") for i in range(1, 31)]
    counts = {"a": 7, "b": 4}
    pick = la.matched_subset(cands, counts, seed=3)
    assert {c: sum(label == c for _, label in pick) for c in counts} == counts
    assert len({row.id for row, _ in pick}) == 11 and all(item in cands for item in pick)
    assert la.matched_subset(list(reversed(cands)), counts, seed=3) == pick  # order-free
    assert la.matched_subset(cands, counts, seed=4) != pick
    with pytest.raises(ValueError, match="only 10 candidates"):
        la.matched_subset(cands, {"b": 11}, seed=0)


def test_budget_and_epoch_arithmetic():
    assert ls.budget_epochs(30_000, 10_000, 128) == 3
    assert ls.budget_epochs(30_000, 400, 128) == 75
    assert ls.budget_epochs(100, 400, 128) == 2  # at least 8 optimiser steps: 4 per epoch, so 2 epochs
    assert ls.budget_epochs(100, 400, 128) * -(-400 // 128) >= ls.MIN_STEPS
    assert ls.finetune_epochs(8) == 2 and ls.finetune_epochs(2) == 1 and ls.finetune_epochs(1) == 0
    assert [ls.validation_interval(e) for e in (1, 3, 4, 5, 16, 25)] == [1, 1, 1, 2, 4, 7]  # ~4 val passes
    assert la.arm_epochs(30_000, 10_000, 6_000, 128, two_stage=False) == (3, 0)
    epochs, f = la.arm_epochs(40_000, 4_000, 2_000, 128, two_stage=True)  # 10 epochs -> fine-tune 2 (real only)
    assert f == 2 and (epochs - f) * 4_000 + f * 2_000 == 40_000
    with pytest.raises(ValueError, match="at least 2 epochs"):
        la.arm_epochs(10_000, 10_000, 5_000, 128, two_stage=True)  # one epoch: nothing left for stage 1
    assert la.strategy_mix("none", la.StrategyParams()) is None
    assert la.strategy_mix("two-stage", la.StrategyParams(), finetune=3).finetune_epochs == 3
    assert la.strategy_mix("fill", la.StrategyParams(target=50)).target == 50


def test_each_regime_gets_its_own_clipped_image_budget_and_the_plan_counts_every_arm(tmp_path):
    for name, n in {"basophil": 100, "ig": 50, "neutrophil": 200}.items():
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.jpg").touch()
    cfg = pl.parse_args(["--data", str(tmp_path), "--regimes", "rare,n10", "--rare-n", "5", "--cls-epochs", "4",
                         "--cls-min-images", "100", "--cls-images", "500", "--seeds", "3", "--strategy-seeds", "1",
                         "--strategies", ",".join(la.STRATEGIES)])
    assert pl.train_estimate(cfg, "rare") == 5 + 5 + 140 and pl.train_estimate(cfg, "n10") == 30
    assert pl.arm_budget(cfg, 150) == 500  # 4 x 150 = 600, capped
    assert pl.arm_budget(cfg, 30) == 120 and pl.arm_budget(cfg, 10) == 100  # 40 is below the floor
    # rare: 3 real + 5 strategies on 1 seed + 2 more seeds of the chosen one + 3 unfiltered + 3 matched = 16 arms;
    # n10: 3 x 4 = 12 arms, each at its own budget.
    p = pl.plan(cfg)
    arms = (16 * pl.arm_seconds(cfg, 500) + 12 * pl.arm_seconds(cfg, 120))
    expected = p["import"] + p["reference"] + 2 * (p["gan"] + p["review"]) + arms
    assert pl.planned_seconds(cfg) == pytest.approx(expected)
    assert p["reference"] == pytest.approx(cfg.reference_epochs * 245 / pl.SPEED["reference_images_per_s"])


def test_the_default_full_run_is_planned_within_the_issues_120_minutes():
    if not DATA.is_dir():
        pytest.fail(f"real data missing at {DATA}")
    cfg = pl.parse_args(["--data", str(DATA)])
    assert cfg.regimes == ("rare", "n50", "all") and cfg.seeds >= 3
    assert pl.planned_seconds(cfg) <= 120 * 60


def test_best_strategy_is_chosen_on_val_never_test():
    absolute = {"curated@none": {"val_macro_f1": 0.80, "test_macro_f1": 0.99},
                "curated@fill": {"val_macro_f1": 0.85, "test_macro_f1": 0.10}, "real": {"val_macro_f1": 0.9}}
    assert la.best_strategy(absolute, ["none", "fill"]) == "fill"
    with pytest.raises(ValueError):
        la.best_strategy({"real": {}}, ["none"])


def test_expert_decisions_plug_in_as_the_curation_policy(wbc_home, tiny_folder):
    from bench.loop_report import expert_curation
    from db import datasets as ds_db
    from db import users as users_db
    from wbc_core import importing, review_model

    admin = users_db.insert_user("admin", "", "admin", None, "local")
    expert = users_db.insert_user("expert", "", "reviewer", None, "local")
    info = importing.import_folder(tiny_folder, "tiny", size=32, user=admin)
    real = ds_db.real_images(info.dataset_id, split="train")
    names = ds_db.get_dataset(info.dataset_id).class_names
    cand = [{"origin": "synthetic", "class_name": names[i % 2], "split": None, "sha256": f"{i:064d}",
             "path": real[i].path, "width": 32, "height": 32} for i in range(6)]
    ids = ds_db.add_images(info.dataset_id, cand)
    review_model.decide(ids[:2], "expert", "accept", user=expert)  # classes 0, 1
    review_model.decide([ids[2]], "expert", "reject", reason="blurry", user=expert)  # class 0
    review_model.decide([ids[3]], "expert", "relabel", new_class=names[2], user=expert)  # class 1 -> 2
    out = expert_curation(info.dataset_id)
    assert out["candidates"] == 6 and out["accepted"] == 2
    assert out["accepted_per_class"] == {names[0]: 1, names[1]: 1, names[2]: 0}
    assert out["rejections"][names[0]] == {"rejected": 1, "relabelled": 0, "disputed": 0, "undecided": 1}
    assert out["rejections"][names[1]] == {"rejected": 0, "relabelled": 1, "disputed": 0, "undecided": 1}


def test_one_entry_point_dispatches_proxy_and_product(monkeypatch):
    called = []

    class Proxy(Exception):
        pass

    def proxy(cfg):
        called.append(("proxy", cfg.quick))
        raise Proxy

    monkeypatch.setattr(pl, "main", lambda argv: called.append(("product", argv)) or 0)
    monkeypatch.setattr(ag, "run_benchmark", proxy)
    assert ag.main(["--quick"]) == 0
    with pytest.raises(Proxy):
        ag.main(["--proxy", "--quick"])
    assert called == [("product", ["--quick"]), ("proxy", True)]
    cfg = pl.parse_args(["--quick", "--seeds", "2", "--regimes", "rare,n50"])
    assert cfg.quick and cfg.seeds == 2 and cfg.regimes == ("rare", "n50")
    assert pl.parse_args([]).regimes == ("rare", "n50", "all") and pl.parse_args([]).seeds >= 3


DATA = Path(os.environ.get("WBC_PBC128", Path(__file__).resolve().parents[2] / "shared" / "data" / "pbc128"))


BUDGET = ("--budget-minutes", "0.01")


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_product_loop_writes_every_regime_arm_and_audit(tmp_path):
    if not DATA.is_dir():
        pytest.fail(f"real data missing at {DATA}")
    out = tmp_path / "out"
    # A budget no run can meet: every regime is fitted at the floor, so its GAN and arms show the fitted sizes.
    assert pl.main(["--quick", "--data", str(DATA), "--out", str(out), "--tag", "t", *BUDGET]) == 0
    res = json.loads((out / "product_loop_quick_t.json").read_text())
    assert not res["partial"] and set(res["regimes"]) == set(pl.QUICK["regimes"])
    # The scripted reviewer's reference: one classifier job on the import's full real train split.
    assert res["reference"]["arm"] == "real" and res["reference"]["train_cells"] == sum(
        res["data"]["splits"][c]["train"] for c in res["data"]["class_names"])
    assert all(r["curation"]["reference_run"] == res["reference"]["run_id"] for r in res["regimes"].values())
    assert res["strategy"]["chosen"] in pl.QUICK["strategies"]
    test_hashes = set()
    for r in res["regimes"].values():
        assert r["audit"]["test_cells_in_train"] == 0
        assert r["test_cells_identical"]
        arms = {run["arm"] for run in r["runs"]}
        assert arms == set(la.ARMS)
        assert all(len(run["training_set_hash"]) == 64 and run["test_cells"] == r["audit"]["test_cells"]
                   for run in r["runs"])
        test_hashes |= {run["test_cells_hash"] for run in r["runs"]} | {r["audit"]["test_cells_hash"]}
        rej = r["curation"]["rejections"]
        assert set(rej) == set(res["data"]["class_names"])
        assert all(set(v) == {"disagree", "unrealistic", "memorised", "duplicate"} for v in rej.values())
        assert sum(sum(v.values()) for v in rej.values()) + r["curation"]["accepted"] == r["curation"]["candidates"]
        budget = {run["images_seen"] for run in r["runs"]}
        assert r["gains"] and r["best_strategy"] and budget
        fitted = r["budget"]
        assert fitted["scale"] == lp.MIN_SCALE and "overrun" in fitted["note"]
        assert r["gan"]["steps"] == fitted["gan_steps"] == round(pl.QUICK["gan_steps"] * lp.MIN_SCALE)
        assert r["image_budget_per_arm"] == fitted["arm_images"] < pl.QUICK["cls_images"]
    assert len(test_hashes) == 1  # the same real test cells for every regime and arm
    strategies = {run["strategy"] for run in res["regimes"]["rare"]["runs"] if run["arm"] == "curated"}
    assert strategies == set(pl.QUICK["strategies"])
    report = (out / "product_loop_quick_t.md").read_text()
    assert "| goal |" in report and "Budget 0 min: rare x0.25" in report
    # Every arm's own saved run config samples classes evenly (--balanced, the default); the reference does not.
    assert all(run["balanced_sampling"] for r in res["regimes"].values() for run in r["runs"])
    assert res["reference"]["balanced_sampling"] is False
    check_resume_redoes_only_the_unfinished_regime(out, res)


def check_resume_redoes_only_the_unfinished_regime(out: Path, finished: dict) -> None:
    """Stop the run as a killed session leaves it (partial, the all-data regime's last arm missing), resume it:
    rare is kept as it was, all is redone, and the kept reference model is reused, not retrained."""
    path = out / "product_loop_quick_t.json"
    stopped = json.loads(path.read_text())
    best = stopped["regimes"]["all"]["best_strategy"]
    del stopped["stages"][f"all: matched {best} seed 0"]
    stopped["partial"] = True
    path.write_text(json.dumps(stopped))
    assert (out / "product_loop_quick_t.reference.pt").is_file()
    assert pl.main(["--quick", "--data", str(DATA), "--out", str(out), "--tag", "t", *BUDGET, "--resume"]) == 0
    res = json.loads(path.read_text())
    assert not res["partial"] and len(res["sessions"]) == 2 and res["sessions"][-1]["kept_regimes"] == ["rare"]
    assert res["regimes"]["rare"] == finished["regimes"]["rare"]
    assert f"all: matched {best} seed 0" in res["stages"]  # written again: the all-data regime ran again
    assert "resume: reference retrained" not in res["stages"]
    assert res["reference"]["run_id"] == finished["reference"]["run_id"]
    assert res["wall_minutes"] > finished["wall_minutes"]


def test_balanced_and_tag_flags_parse_as_booleans_and_names():
    assert pl.parse_args([]).balanced is True and pl.parse_args(["--no-balanced"]).balanced is False
    assert pl.parse_args(["--balanced"]).balanced is True and pl.parse_args(["--tag", "x"]).tag == "x"


def test_expert_policy_runs_every_arm_on_the_experts_decisions(wbc_home, tiny_folder, tmp_path):
    """--policy expert: the arms of a dataset whose candidates experts decided, through the same ArmRunner."""
    from db import datasets as ds_db
    from db import users as users_db
    from wbc_core import importing, review_model

    admin = users_db.insert_user("admin", "", "admin", None, "local")
    expert = users_db.insert_user("expert", "", "reviewer", None, "local")
    info = importing.import_folder(tiny_folder, "tiny", size=32, user=admin)
    real = ds_db.real_images(info.dataset_id, split="train")
    cand = [{"origin": "synthetic", "class_name": r.class_name, "split": None, "sha256": f"{i:064d}",
             "path": r.path, "width": 32, "height": 32} for i, r in enumerate(real[:12])]
    ids = ds_db.add_images(info.dataset_id, cand)
    review_model.decide(ids[::2], "expert", "accept", user=expert)
    cfg = pl.parse_args(["--policy", "expert", "--expert-home", str(wbc_home), "--expert-dataset", "tiny",
                         "--seeds", "1", "--cls-images", "40", "--cls-batch", "8", "--threads", "1",
                         "--bootstrap", "20", "--out", str(tmp_path / "out")])
    assert pl.main_config(cfg) == 0
    res = json.loads((tmp_path / "out" / "product_loop_expert.json").read_text())
    assert res["curation"]["policy"] == "expert" and res["curation"]["accepted"] == 6
    runs = {r["arm"]: r for r in res["runs"]}
    assert set(runs) == set(la.ARMS)
    assert runs["curated"]["synthetic"] == runs["matched"]["synthetic"] == 6 and runs["unfiltered"]["synthetic"] == 12
    assert runs["curated"]["training_set_hash"] != runs["matched"]["training_set_hash"]

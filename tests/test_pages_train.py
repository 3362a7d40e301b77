"""Train and Dashboard pages under AppTest: starting an ablation from the form (with advanced options), the
live panel of a running run, comparing runs against a baseline with CIs and groups, the embedding map
button, and the model download buttons. Sign-in is switched off (WBC_AUTH=off) where the app has it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from support import account, active_home, copy_home, module_home
from test_results import FAST, build_home

from db import runs as runs_db
from wbc_core import jobs, retrain
from wbc_core.jobs import groups, launcher

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("pages_train")
    with module_home(root / "home"):
        made = build_home(root)
    yield root / "home", made


@pytest.fixture()
def home(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A private copy of the built home, active for this test, sign-in off."""
    src, made = built
    monkeypatch.setenv("WBC_AUTH", "off")
    with active_home(copy_home(src, tmp_path / "home"), monkeypatch):
        yield made


def page(script: str) -> AppTest:
    return ok(AppTest.from_file(str(ROOT / script), default_timeout=TIMEOUT).run())


def ok(at: AppTest) -> AppTest:
    assert not at.exception, "\n\n".join(e.value + "\n" + "\n".join(e.stack_trace) for e in at.exception)
    assert not at.error, "\n".join(str(e.value) for e in at.error)
    return at


def by_label(elements, label: str):  # noqa: ANN001, ANN201
    found = [e for e in elements if e.label == label]
    assert found, f"no widget labelled {label!r}; have {[e.label for e in elements]}"
    return found[0]


def _stop_group(group: str) -> None:
    """Cancel a group started by a test and wait until its chain and workers are gone."""
    groups.cancel_group(group, account())
    runs = groups.group_runs(group)
    for run in runs:
        assert not jobs.wait(run.id, timeout=120).active
    for proc in list(launcher._children.values()):  # the chain (and any worker) started by this process
        proc.wait(timeout=60)
    for run in runs:
        pid = runs_db.get_run(run.id).pid
        deadline = time.monotonic() + 60
        while pid and jobs.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)


# -- Train ------------------------------------------------------------------------------------------------


def test_train_form_starts_an_ablation_with_the_advanced_options(home):
    before = {r.id for r in runs_db.list_runs(kind="classifier")}
    at = page("pages/train.py")
    by_label(at.radio, "Recipe").set_value("ablation")
    by_label(at.selectbox, "Model").set_value("small_cnn")
    by_label(at.number_input, "Epochs").set_value(2)
    by_label(at.text_input, "Seeds").set_value("7")
    by_label(at.selectbox, "Optimizer").set_value("sgd")
    by_label(at.number_input, "Label smoothing").set_value(0.0)
    by_label(at.number_input, "Early stopping patience").set_value(3)
    by_label(at.checkbox, "Balanced sampling").uncheck()
    by_label(at.selectbox, "Mixing").set_value("share")
    by_label(at.number_input, "Share (× real per class)").set_value(0.5)
    by_label(at.selectbox, "Device").set_value("cpu")
    by_label(at.selectbox, "Compile (torch.compile)").set_value("off")
    by_label(at.number_input, "Validate every (epochs)").set_value(2)
    ok(at.form_submit_button[0].click().run())
    new = sorted(r.id for r in runs_db.list_runs(kind="classifier") if r.id not in before)
    runs = [runs_db.get_run(r) for r in new]
    try:
        assert [r.recipe for r in runs] == list(retrain.RECIPES)
        assert len({r.group_name for r in runs}) == 1 and runs[0].group_name.startswith("ablation-")
        c = runs[0].config
        assert (c["model"], c["epochs"], c["seed"], c["optimizer"], c["label_smoothing"],
                c["early_stopping_patience"], c["balanced_sampling"], c["device"], c["compile"], c["val_every"]) == (
            "small_cnn", 2, 7, "sgd", 0.0, 3, False, "cpu", "off", 2)
        # The mix applies to the arms with synthetic cells; the real arm stays the plain baseline.
        assert [r.config["mix"] for r in runs] == [None] + [
            {"strategy": "share", "share": 0.5, "target": None, "synthetic_weight": None, "finetune_epochs": None}] * 2
        other = ("recipe", "mix", "synthetic_cap")
        assert all({k: v for k, v in r.config.items() if k not in other} ==
                   {k: v for k, v in c.items() if k not in other} for r in runs)
        assert by_label(at.selectbox, "Run").value == new[0]  # the page follows the first arm
    finally:
        _stop_group(runs[0].group_name)


def test_train_form_defaults_are_the_classifier_config_defaults(home):
    from wbc_core.classifier import ClassifierConfig
    from wbc_core.classifier.presets import PRESETS

    at = page("pages/train.py")
    d = ClassifierConfig()
    shown = (by_label(at.number_input, "Epochs").value, by_label(at.number_input, "Batch size").value,
             by_label(at.selectbox, "Optimizer").value, by_label(at.number_input, "Peak learning rate").value,
             by_label(at.number_input, "Weight decay").value, by_label(at.number_input, "Label smoothing").value,
             by_label(at.selectbox, "LR schedule").value, by_label(at.selectbox, "Augmentation").value,
             by_label(at.checkbox, "Balanced sampling").value, by_label(at.checkbox, "Mixed precision").value,
             by_label(at.selectbox, "Compile (torch.compile)").value,
             by_label(at.number_input, "Validate every (epochs)").value)
    assert shown == (d.epochs, d.batch_size, d.optimizer, d.lr, d.weight_decay, d.label_smoothing, d.schedule,
                     d.augment, d.balanced_sampling, d.amp, d.compile, d.val_every)
    assert list(by_label(at.selectbox, "Augmentation").options) == list(PRESETS)


def test_train_form_shows_a_plain_error_for_bad_seeds(home):
    at = page("pages/train.py")
    by_label(at.text_input, "Seeds").set_value("1 1")
    at.form_submit_button[0].click().run()
    assert len(at.error) == 1 and "distinct" in at.error[0].value


def test_train_page_shows_live_metrics_eta_and_cancels(home):
    run_id = retrain.start_classifier_run("cells", "real", {**FAST, "epochs": 4}, launch=False, user=account())
    assert runs_db.mark_started(run_id, os.getpid(), socket.gethostname())
    runs_db.add_metrics(run_id, 0, {"train_loss_running": 1.5, "images_per_sec": 250.0, "epoch_fraction": 0.5,
                                    "lr": 1e-3})
    runs_db.add_metrics(run_id, 1, {"train_loss": 1.2, "val_loss": 1.1, "val_accuracy": 0.6, "val_macro_f1": 0.55,
                                    "images_per_sec": 240.0, "lr": 1e-3, "epoch_seconds": 30.0})
    runs_db.add_metrics(run_id, 1, {"train_loss_running": 0.9, "images_per_sec": 260.0, "epoch_fraction": 0.5,
                                    "lr": 1e-3})
    try:
        at = page("pages/train.py")
        assert by_label(at.selectbox, "Run").value == run_id
        [bar] = at.get("progress")
        assert bar.proto.text.startswith("**running** on ") and "epoch 1.50/4" in bar.proto.text
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Val macro-F1"] == "0.5500" and metrics["Val accuracy"] == "0.6000"
        assert metrics["Train loss"] == "0.9000" and metrics["Images / s"] == "260"
        assert metrics["ETA"] == "1 min 15 s"  # 2.5 epochs left x 30 s
        assert len(at.get("plotly_chart")) == 2
        ok(by_label(at.button, "Cancel run").click().run())
        assert runs_db.get_run(run_id).cancel_requested
    finally:
        runs_db.finish_run(run_id, "cancelled")


def test_train_page_shows_a_finished_group_run_with_its_traceability(home):
    at = page("pages/train.py")
    run_id = home["seeds"].run_ids[-1]
    assert by_label(at.selectbox, "Run").value == run_id
    [bar] = at.get("progress")
    assert bar.proto.text.startswith("**succeeded** on ") and "·" not in bar.proto.text
    assert "Cancel group" not in [b.label for b in at.button]
    caption = "\n".join(c.value for c in at.caption)
    info = runs_db.get_run(run_id)
    assert info.train_set_hash[:16] in caption and f"group {home['seeds'].group_name}" in caption
    assert info.train_set_summary["decisions_snapshot"][:16] in caption


# -- Dashboard --------------------------------------------------------------------------------------------


def test_dashboard_compares_runs_against_the_baseline_with_cis_and_groups(home):
    real, curated, allsyn = home["ablation"].run_ids
    at = page("pages/dashboard.py")
    by_label(at.multiselect, "Runs to compare").set_value([real, curated, allsyn])
    by_label(at.selectbox, "Baseline (real only)").set_value(real)
    ok(at.run())
    runs = at.dataframe[0].value
    assert {"train set hash", "decisions hash", "macro-F1 95% CI"} <= set(runs.columns)
    per_class = at.dataframe[1].value
    assert list(per_class.columns) == [f"run {real}", f"run {curated}", f"run {allsyn}",
                                       f"Δ run {curated} vs baseline", f"Δ run {allsyn} vs baseline"]
    assert (per_class[f"Δ run {curated} vs baseline"] == per_class[f"run {curated}"] - per_class[f"run {real}"]).all()
    metrics = at.dataframe[2].value.set_index("run")
    assert metrics.loc[real, "macro-F1 95% CI"].startswith("[") and metrics.loc[curated, "Δ 95% CI (paired)"]
    assert metrics.loc[real, "Δ 95% CI (paired)"] == ""
    groups = at.dataframe[3].value
    arms = groups[groups["group"] == home["ablation"].group_name]
    assert sorted(arms["arm"]) == sorted(retrain.RECIPES)
    seeds = groups[groups["group"] == home["seeds"].group_name]
    assert seeds["n"].tolist() == [2] and "±" in seeds["macro-F1"].iloc[0]
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert sum("confusion on real test cells" in t for t in titles) == 6  # counts + row-normalised per run
    assert sum("row-normalised" in t for t in titles) == 3
    assert any("test F1 per class" in t for t in titles)


def test_dashboard_filters_by_recipe_and_status(home):
    at = page("pages/dashboard.py")
    by_label(at.multiselect, "Filter by recipe").set_value(["curated"])
    ok(at.run())
    assert at.dataframe[0].value["recipe"].tolist() == ["curated"]
    assert by_label(at.multiselect, "Runs to compare").options == [f"run {home['ablation'].run_ids[1]} · curated · "
                                                                   "seed 0"]
    by_label(at.multiselect, "Filter by recipe").set_value(["real"])
    by_label(at.multiselect, "Filter by status").set_value(["succeeded"])
    ok(at.run())
    expected = sorted([home["ablation"].run_ids[0], *home["seeds"].run_ids], reverse=True)
    assert at.dataframe[0].value["run"].tolist() == expected
    by_label(at.multiselect, "Filter by status").set_value(["failed"])
    ok(at.run())
    assert at.dataframe[0].value.empty and by_label(at.multiselect, "Runs to compare").options == []


def test_dashboard_embedding_button_and_downloads(home):
    at = page("pages/dashboard.py")
    run_id = by_label(at.selectbox, "Run for the embedding map").value
    assert not any("t-SNE" in c.proto.spec for c in at.get("plotly_chart"))
    by_label(at.number_input, "Max cells").set_value(200)
    started = time.monotonic()
    ok(at.button(key="compute_embedding").click().run())
    assert time.monotonic() - started < 30  # the click only queued a job (no t-SNE in the page)
    [job] = [r for r in runs_db.list_runs(kind="embedding") if r.config["classifier_run_id"] == run_id]
    assert jobs.wait(job.id, timeout=240).status == "succeeded", job.error
    assert (jobs.run_dir(run_id) / "embedding_200_0.csv").exists()
    ok(at.run())
    ok(at.run())  # cached: still shown without pressing the button again
    assert any("t-SNE of classifier features" in c.proto.spec for c in at.get("plotly_chart"))
    downloads = {d.proto.label for d in at.get("download_button")}
    assert {"Download checkpoint (model.pt)", "Download TorchScript", "Download class map (JSON)"} <= downloads

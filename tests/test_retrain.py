"""Retrain orchestration: curated-set traceability, seeds, live status with ETA, and groups trained one after
another by the chain process (real worker processes), including cancelling a group."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator

import pytest
from support import account
from test_results import FAST, add_candidates

from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import context, jobs, results, retrain, review_model, views
from wbc_core.classifier import BATCH_METRICS, EPOCH_METRICS
from wbc_core.cli import main as cli
from wbc_core.context import current
from wbc_core.importing import import_folder
from wbc_core.jobs import groups, launcher


@pytest.fixture()
def dataset(wbc_home, tiny_folder) -> tuple[int, list[int]]:
    """The tiny 3-class dataset with 2 candidates per class (with image files); nothing decided yet."""
    dataset_id = import_folder(tiny_folder, "tiny", size=32, user=account()).dataset_id
    return dataset_id, add_candidates(dataset_id, per_class=2)


def _wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while jobs.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not jobs.pid_alive(pid), f"process {pid} still alive"


# -- traceability -----------------------------------------------------------------------------------------


def test_curated_set_version_changes_exactly_when_accepted_images_change(dataset):
    dataset_id, cand = dataset
    review_model.decide(cand[:1], "ann", "accept", user=account("reviewer", "ann"))
    first = retrain.start_classifier_run(dataset_id, "curated", FAST, launch=False, user=account())
    again = retrain.start_classifier_run(dataset_id, "curated", FAST, launch=False, user=account())
    review_model.decide(cand[1:2], "ann", "accept", user=account("reviewer", "ann"))
    more = retrain.start_classifier_run(dataset_id, "curated", FAST, launch=False, user=account())
    other = next(c for c in ds_db.get_dataset(dataset_id).class_names
                 if c != ds_db.images_by_ids(cand[1:2])[0].class_name)
    review_model.decide(cand[1:2], "ann", "relabel", new_class=other, user=account("reviewer", "ann"))
    relabelled = retrain.start_classifier_run(dataset_id, "curated", FAST, launch=False, user=account())
    info = {r: runs_db.get_run(r) for r in (first, again, more, relabelled)}
    snap = {r: i.train_set_summary["decisions_snapshot"] for r, i in info.items()}
    assert info[first].train_set_hash == info[again].train_set_hash and snap[first] == snap[again]
    assert info[more].train_set_hash != info[first].train_set_hash and snap[more] != snap[first]
    assert info[more].train_set_size == info[first].train_set_size + 1
    # Same images, another label: a different training set, so a different version.
    assert info[relabelled].train_set_hash != info[more].train_set_hash
    frame = views.runs_frame(dataset_id, kind="classifier").set_index("run")
    for run_id, run in info.items():
        assert frame.loc[run_id, "train set hash"] == run.train_set_hash[:12]
        assert frame.loc[run_id, "decisions hash"] == snap[run_id][:12]


def test_parse_seeds_accepts_lists_and_text_and_refuses_nonsense():
    assert groups.parse_seeds("0 1, 2") == [0, 1, 2]
    assert groups.parse_seeds(None, default=7) == [7] and groups.parse_seeds("") == [0]
    assert groups.parse_seeds([3, 1]) == [3, 1] and groups.parse_seeds(5) == [5]
    for bad in ("1 1", "a", "-1", [2, -2]):
        with pytest.raises(retrain.RetrainError):
            groups.parse_seeds(bad)


# -- live status ------------------------------------------------------------------------------------------


def test_run_status_reports_live_metrics_fractional_epochs_and_eta(dataset):
    dataset_id, _ = dataset
    run_id = retrain.start_classifier_run(dataset_id, "real", {**FAST, "epochs": 4}, launch=False, user=account())
    assert runs_db.mark_started(run_id, os.getpid(), socket.gethostname())
    # The event shapes train_classifier emits (checked against its own constants just below).
    batch = {"train_loss_running": 1.5, "images_per_sec": 100.0, "epoch_fraction": 0.5, "lr": 1e-3}
    epoch = {"train_loss": 1.2, "val_loss": 1.1, "val_accuracy": 0.6, "val_macro_f1": 0.55, "images_per_sec": 120.0,
             "lr": 1e-3, "epoch_seconds": 10.0, "best_val_macro_f1": 0.55}
    assert set(batch) == set(BATCH_METRICS) and set(EPOCH_METRICS) <= set(epoch)
    for step, metrics in [(0, {"epoch_fraction": 0.0}), (0, batch), (0, {"epoch_fraction": 1.0}), (1, epoch),
                          (1, {**batch, "train_loss_running": 0.9, "images_per_sec": 130.0, "epoch_fraction": 0.25})]:
        runs_db.add_metrics(run_id, step, metrics)
    live = views.run_status(run_id)["live"]
    assert live["epochs_done"] == pytest.approx(1.25) and live["epochs"] == 4
    assert (live["train_loss"], live["val_accuracy"], live["val_macro_f1"], live["images_per_sec"]) == (
        0.9, 0.6, 0.55, 130.0)
    assert live["eta_seconds"] == pytest.approx((4 - 1.25) * 10.0)
    curves = views.training_curves_frame([run_id], ["train_loss_running", "val_macro_f1"])
    assert sorted(curves[curves["name"] == "train_loss_running"]["epoch"]) == [0.5, 1.25]
    assert curves[curves["name"] == "val_macro_f1"]["epoch"].tolist() == [1.0]
    assert views.format_seconds(27.5) == "28 s" and views.format_seconds(3725) == "1 h 02 min"
    runs_db.finish_run(run_id, "cancelled")
    assert views.run_status(run_id)["live"]["eta_seconds"] is None


# -- groups trained in sequence by real processes ---------------------------------------------------------


@pytest.fixture()
def cold_jobs(dataset) -> Iterator[None]:
    """Jobs start cold: these tests read the chain's exit code from its Popen handle (a forked one has none)."""
    with context.using(context.with_settings(current(), warm_jobs=False)):
        yield


def test_group_runs_train_one_after_another(dataset, cold_jobs):
    # Two runs of a multi-seed group: the same chain as an ablation's three arms, one worker start cheaper.
    dataset_id, _ = dataset
    launched = groups.start_training(dataset_id, "real", FAST, seeds="1 2", user=account())
    chain = launcher._children[max(launcher._children)]  # the newest child: the chain process
    assert launched.group_name.startswith("seeds-real-")
    assert [runs_db.get_run(r).status for r in launched.run_ids] == ["queued", "queued"]
    infos = [jobs.wait(r, timeout=240) for r in launched.run_ids]
    assert [i.status for i in infos] == ["succeeded"] * 2, [i.error for i in infos]
    assert [i.seed for i in infos] == [1, 2]
    # The job writes its downloads itself (it once asked for a finished run's checkpoint while still running).
    assert infos[0].result["exports"] == "written"
    model = current().absolute(infos[0].result["model_path"])
    card = json.loads(model.with_name(results.MODEL_CARD_FILE).read_text())
    assert model.with_name(results.TORCHSCRIPT_FILE).is_file()
    assert card["run"] == launched.run_ids[0] and card["test"]["macro_f1"] == infos[0].result["test"]["macro_f1"]
    for before, after in zip(infos, infos[1:], strict=False):
        assert after.started_at >= before.finished_at, "two arms trained at the same time"
    assert chain.wait(timeout=60) == 0
    log = (jobs.run_dir(launched.run_ids[0]) / "chain.log").read_text()
    assert all(f"run {r} succeeded" in log for r in launched.run_ids)


def test_cancel_group_stops_the_running_arm_and_the_queued_ones(dataset, cold_jobs, capsys):
    dataset_id, _ = dataset
    assert cli.main(["--json", "--as", "admin", "ablation", "--dataset", "tiny", "--model", "small_cnn", "--epochs",
                     "300", "--batch", "8", "--threads", "1", "--device", "cpu", "--schedule", "cosine",
                     "--detach"]) == 0
    out = json.loads(capsys.readouterr().out)
    group, run_ids = out["group"], out["run_ids"]
    assert group.startswith("ablation-") and len(run_ids) == 3
    assert [runs_db.get_run(r).config["epochs"] for r in run_ids] == [300] * 3
    chain = launcher._children[max(launcher._children)]  # the newest child: the chain process
    deadline = time.monotonic() + 120
    while not runs_db.metrics([run_ids[0]], ["train_loss_running", "train_loss"]) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert runs_db.get_run(run_ids[0]).status == "running"
    assert runs_db.get_run(run_ids[1]).status == "queued"
    assert cli.main(["--json", "--as", "admin", "cancel-group", group]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["cancel_requested"]) == run_ids
    infos = [jobs.wait(r, timeout=120) for r in run_ids]
    assert [i.status for i in infos] == ["cancelled"] * 3
    assert infos[1].started_at is None and infos[2].started_at is None  # the queued arms never started
    assert chain.wait(timeout=60) == 0
    _wait_gone(runs_db.get_run(run_ids[0]).pid)
    assert groups.cancel_group(group, account()) == []

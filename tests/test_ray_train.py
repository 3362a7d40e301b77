"""Data-parallel classifier training (wbc_core.classifier.distributed) and the Train page on a real local Ray head.

workers=1 keeps the single-process trainer exactly as it was; workers=2 trains with DistributedDataParallel over
gloo on the CPU, rank 0 in the job's process. The cluster tests use tests/ray_support.py's head (2 CPUs) and skip
where Ray is not installed (CI=true fails instead).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from support import account, use_settings
from test_classifier import CLASSES, SIZE, make_blobs
from test_ray import _cli, _tiny_dataset, ray_home  # noqa: F401 - ray_home is a fixture used below

from db import datasets as ds_db
from db import runs
from wbc_core import context, jobs, retrain, store
from wbc_core.classifier import ClassifierConfig, load_classifier, predict_proba, train_classifier
from wbc_core.classifier import distributed as ddp

ROOT = Path(__file__).resolve().parents[1]
FAST = ClassifierConfig(model="small_cnn", image_size=SIZE, epochs=2, batch_size=16, device="cpu", num_threads=1,
                        augment="none")


def test_one_worker_trains_in_this_process_without_ddp(tmp_path, monkeypatch, one_thread):
    def refuse(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("workers=1 must not start the DDP path")

    monkeypatch.setattr(ddp, "train_distributed", refuse)
    train, val = make_blobs(48, 0), make_blobs(15, 1)
    events = []
    result = train_classifier(train, val, CLASSES, FAST, tmp_path / "one", progress=events.append)
    assert FAST.workers == 1 and result.world_size == 1 and result.epochs_done == 2
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "one" / ddp.SHARD_FILE).exists()
    assert all("world_size" not in e.metrics for e in events)
    # The same run from a config without the new key (an older run's stored config) trains to the same weights.
    older = ClassifierConfig.from_dict({k: v for k, v in FAST.to_dict().items() if k != "workers"})
    again = train_classifier(train, val, CLASSES, older, tmp_path / "older")
    first, second = load_classifier(result.checkpoint), load_classifier(again.checkpoint)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_worker_options_are_checked_in_plain_words():
    with pytest.raises(ValueError, match="workers must be a whole number from 1 to 64, got 0"):
        replace(FAST, workers=0)
    with pytest.raises(ValueError, match="batch of 4 cannot be split over 3 workers"):
        replace(FAST, workers=3, batch_size=4)
    with pytest.raises(ValueError, match="one CUDA GPU each"):
        replace(FAST, workers=2, device="cuda:1")
    with pytest.raises(ValueError, match="give batches of 2"):
        ddp.check_world(replace(FAST, workers=2, batch_size=4), 5)


@pytest.mark.slow
def test_two_ddp_workers_stop_together_when_rank_0_is_cancelled(tmp_path):
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    config = replace(FAST, workers=2, epochs=50)
    events = []
    result = train_classifier(make_blobs(64, 0), make_blobs(15, 1), CLASSES, config, tmp_path, progress=events.append,
                              should_stop=stop_after_three)
    assert result.stopped and result.world_size == 2 and result.epochs_done < 50
    assert len(calls) == 4  # asked once per step, by rank 0 only; the other rank got the answer by broadcast
    assert events[0].metrics["world_size"] == 2.0
    assert load_classifier(result.checkpoint).class_names == CLASSES  # rank 0 still left a usable checkpoint
    assert not (tmp_path / ddp.SHARD_FILE).exists()
    assert (tmp_path / ddp.RANK_LOG.format(rank=1)).exists()  # rank 1 wrote its output there, not into the job log


@pytest.mark.slow
def test_two_ddp_workers_skip_the_same_validations_and_finish_together(tmp_path):
    # Rank 0 validates every 2nd epoch and the last; after the others it still tells the waiting rank to go on
    # (without that word the ranks' collectives would not match and the run would hang or fail).
    config = replace(FAST, workers=2, epochs=3, val_every=2)
    result = train_classifier(make_blobs(64, 0), make_blobs(15, 1), CLASSES, config, tmp_path)
    assert result.world_size == 2 and result.epochs_done == 3 and not result.stopped
    assert [int(h["epoch"]) for h in result.history if "val_macro_f1" in h] == [2, 3]
    assert result.best_epoch in (2, 3)


@pytest.mark.slow
def test_a_two_worker_ddp_classifier_job_runs_on_ray_from_the_cli(ray_home, tiny_folder):  # noqa: F811
    dataset_id = _tiny_dataset(tiny_folder)
    started = _cli("train", "--dataset", "tiny", "--model", "small_cnn", "--epochs", "2", "--batch", "16",
                   "--device", "cpu", "--workers", "2", "--detach")
    run_id = started["run_id"]
    queued = runs.get_run(run_id)
    assert queued.executor == "ray" and queued.external_id.startswith(f"wbc-run{run_id}-")
    assert queued.config["workers"] == 2  # recorded in the run's config
    info = jobs.wait(run_id, timeout=300)
    assert info.status == "succeeded", info.error
    assert info.result["world_size"] == 2 and info.result["epochs_done"] == 2
    assert [m["value"] for m in runs.metrics([run_id], ["world_size"])] == [2.0]
    assert len(runs.metrics([run_id], ["val_macro_f1"])) == 2  # one row per epoch, from rank 0 only
    # The same frozen training set as a one-process run of the same recipe: the hash does not depend on workers.
    single = retrain.start_classifier_run(dataset_id, "real", {**FAST.to_dict(), "image_size": 32}, launch=False,
                                          user=account())
    assert runs.get_run(single).train_set_hash == info.train_set_hash
    model = load_classifier(context.current().absolute(info.result["model_path"]))
    test_rows = ds_db.real_images(dataset_id, split="test")
    cells = store.labelled(dataset_id, test_rows, model.class_names, 32)
    probs = predict_proba(model, cells.images)
    assert probs.shape == (len(test_rows), 3) and torch.allclose(probs.sum(1), torch.ones(len(test_rows)), atol=1e-4)
    assert "accuracy" in info.result["test"]


@pytest.mark.slow
def test_the_train_page_starts_a_classifier_run_as_a_ray_job(ray_home, tiny_folder):  # noqa: F811
    _tiny_dataset(tiny_folder)
    before = {r.id for r in runs.list_runs(kind="classifier")}
    with use_settings(auth_off=True, local_user="admin"):
        at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60).run()
        assert not at.exception, at.exception
        _by_label(at.selectbox, "Model").set_value("small_cnn")
        _by_label(at.number_input, "Epochs").set_value(1)
        _by_label(at.number_input, "Batch size").set_value(16)
        _by_label(at.selectbox, "Device").set_value("cpu")
        at.form_submit_button[0].click().run()
        assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    new = [r for r in runs.list_runs(kind="classifier") if r.id not in before]
    assert len(new) == 1
    run = runs.get_run(new[0].id)
    assert run.executor == "ray" and run.external_id.startswith(f"wbc-run{run.id}-")
    assert run.started_by == "admin"
    info = jobs.wait(run.id, timeout=300)
    assert info.status == "succeeded", info.error
    assert info.result["world_size"] == 1 and "accuracy" in info.result["test"]


def _by_label(elements, label: str):  # noqa: ANN001, ANN202
    found = [e for e in elements if e.label == label]
    assert found, f"no widget labelled {label!r}; have {[e.label for e in elements]}"
    return found[0]


def test_rank_0_stops_waiting_with_a_plain_error_when_a_spawned_rank_died():
    """A rank that could not start must not leave rank 0 blocked in the rendezvous for the whole group timeout."""
    port = ddp._free_port()
    with pytest.raises(ddp.RankDied, match="training rank 1 of 2 ended .exit code 1. before it joined"):
        ddp._join(0, 2, port, dead_rank=lambda: "training rank 1 of 2 ended (exit code 1) before it joined")


def test_rank_0_passes_the_rendezvous_once_every_rank_checked_in():
    import threading

    port = ddp._free_port()
    joined = {}
    thread = threading.Thread(target=lambda: joined.setdefault("store", ddp._join(1, 2, port, None)))
    thread.start()
    store = ddp._join(0, 2, port, dead_rank=lambda: None)
    thread.join(timeout=30)
    assert store.check(["joined/0", "joined/1"]) and "store" in joined


def test_ranks_spawn_even_when_main_is_a_script_that_must_not_rerun(tmp_path, monkeypatch):
    """AppTest (and other runners) leave a page script as __main__; spawn would re-run it in every rank."""
    import sys
    import types

    script = tmp_path / "page.py"
    script.write_text("raise SystemExit('this script must not run in a training rank')\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    config = replace(FAST, workers=2, epochs=1)
    result = train_classifier(make_blobs(64, 0), make_blobs(15, 1), CLASSES, config, tmp_path / "out")
    assert result.world_size == 2 and result.epochs_done == 1
    assert sys.modules["__main__"] is fake_main  # put back after the spawn

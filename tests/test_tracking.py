"""MLflow tracking of finished runs (wbc_core.tracking) against a local file store in a temporary folder."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from support import account, draw_cell, require_module

from db import datasets as ds_db
from db import runs as runs_db
from wbc_core import context, tracking
from wbc_core.context import current

require_module("mlflow", "the MLflow tracking tests need its client")


@pytest.fixture()
def finished(wbc_home: Path, tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A dataset with one finished classifier run (real model.pt) and one finished GAN run (stand-in files)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores behind this switch
    from test_classifier import fast_config

    from wbc_core.classifier import classification_report, train_classifier
    from wbc_core.importing import import_folder
    from wbc_core.types import LabelledImages

    import_folder(tiny_folder, "cells", size=32, user=account())
    info = ds_db.get_dataset("cells")
    names = info.class_names
    rng = np.random.default_rng(0)

    cls_id = runs_db.create_run("classifier", info.id, {"model": "small_cnn", "epochs": 1, "augment": {"p": 0.5}},
                                seed=3, recipe="curated")
    runs_db.mark_started(cls_id, 1, "host")
    for step in (1, 2, 3):
        runs_db.add_metrics(cls_id, step, {"train_loss": 1.0 / step, "val_macro_f1": 0.2 * step})
    images = np.stack([np.asarray(draw_cell(rng, 32, (60 * k, 90, 160))) for k in range(30)])
    import torch

    data = LabelledImages(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.arange(30) % len(names))
    trained = train_classifier(data, data, names, fast_config(epochs=1, image_size=32),
                               current().paths.run_dir(cls_id))
    test = classification_report([0, 1, 2, 2], [0, 1, 1, 2], len(names), names)
    test["class_names"] = names
    runs_db.finish_run(cls_id, "succeeded", result={"model_path": current().relative(trained.checkpoint),
                                                    "test": test, "val": {"accuracy": 0.5, "macro_f1": 0.4}})

    gan_id = runs_db.create_run("gan", info.id, {"steps": 20, "batch_size": 8}, seed=1)
    runs_db.mark_started(gan_id, 1, "host")
    runs_db.add_metrics(gan_id, 10, {"loss_d": 1.2, "loss_g": 0.8})
    runs_db.add_metrics(gan_id, 20, {"loss_d": 1.1, "loss_g": 0.9})
    gan_dir = current().paths.run_dir(gan_id)
    (gan_dir / "ckpt_000020.pt").write_bytes(b"generator weights")
    draw_cell(rng, 32, (90, 40, 110)).save(gan_dir / "grid_000020.png")
    runs_db.add_checkpoint(gan_id, 20, current().relative(gan_dir / "ckpt_000020.pt"),
                           current().relative(gan_dir / "grid_000020.png"))
    runs_db.finish_run(gan_id, "succeeded", result={"steps_done": 20, "sec_per_step": 0.1,
                                                    "last_checkpoint": current().relative(gan_dir / "ckpt_000020.pt")})
    uri = (tmp_path / "mlruns").as_uri()  # file:///...: MLflow's local file store
    return {"classifier": cls_id, "gan": gan_id, "uri": uri, "checkpoint": trained.checkpoint, "names": names}


def _tracked(uri: str):  # noqa: ANN202 - a context whose settings carry the tracking URI
    return context.using(context.with_settings(current(), mlflow_tracking_uri=uri))


def _runs(uri: str) -> dict[str, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("wbc-curate/cells")
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    return {r.data.tags[tracking.RUN_TAG]: r for r in found}


def test_settings_read_the_tracking_uri_from_the_environment():
    settings = context.Settings.from_environ({"MLFLOW_TRACKING_URI": " file:/tmp/x "}, home="/tmp/h")
    assert settings.mlflow_tracking_uri == "file:/tmp/x"
    assert settings.child_environ()["MLFLOW_TRACKING_URI"] == "file:/tmp/x"
    assert context.Settings.from_environ({}, home="/tmp/h").mlflow_tracking_uri is None


def test_a_finished_classifier_run_is_logged_with_params_metrics_confusion_and_model(finished, tmp_path):
    from mlflow.tracking import MlflowClient

    with _tracked(finished["uri"]):
        tracking.log_finished_run(finished["classifier"])
    run = _runs(finished["uri"])[str(finished["classifier"])]
    client = MlflowClient(tracking_uri=finished["uri"])
    assert run.info.status == "FINISHED" and run.data.tags["wbc.kind"] == "classifier"
    params = run.data.params
    assert params["seed"] == "3" and params["recipe"] == "curated" and params["model"] == "small_cnn"
    assert params["augment.p"] == "0.5" and params["dataset"] == "cells"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert run.data.metrics["test_macro_f1_final"] == pytest.approx(runs_db.get_run(finished["classifier"])
                                                                   .result["test"]["macro_f1"])
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    confusion = json.loads((local / "confusion_test.json").read_text())
    assert confusion["class_names"] == finished["names"] and confusion["matrix"][2] == [0, 1, 1]
    assert (local / "model" / "model.pt").read_bytes() == Path(finished["checkpoint"]).read_bytes()
    assert json.loads((local / "model" / "classes.json").read_text())["class_names"] == finished["names"]
    assert json.loads((local / "result.json").read_text())["test"]["confusion"] == confusion["matrix"]


def test_a_finished_gan_run_is_logged_once_with_its_checkpoint_and_samples(finished, tmp_path):
    from mlflow.tracking import MlflowClient

    with _tracked(finished["uri"]):
        tracking.log_finished_run(finished["gan"])
        tracking.log_finished_run(finished["gan"])  # a second call finds the first copy and adds nothing
    runs = _runs(finished["uri"])
    assert list(runs) == [str(finished["gan"])]
    run = runs[str(finished["gan"])]
    client = MlflowClient(tracking_uri=finished["uri"])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss_d")] == [1.2, 1.1]
    assert run.data.metrics["steps_done"] == 20 and run.data.params["steps"] == "20"
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    assert (local / "model" / "ckpt_000020.pt").read_bytes() == b"generator weights"
    assert (local / "samples" / "grid_000020.png").is_file()


def test_nothing_is_logged_without_a_uri_or_for_other_kinds(finished, tmp_path):
    tracking.log_finished_run(finished["classifier"])  # the fixture's context has no tracking URI
    assert not (tmp_path / "mlruns").exists()
    other = runs_db.create_run("selftest", None, {}, seed=0)
    runs_db.mark_started(other, 1, "host")
    runs_db.finish_run(other, "succeeded", result={})
    with _tracked(finished["uri"]):
        tracking.log_finished_run(other)
    assert not (tmp_path / "mlruns").exists()


def test_tracking_failures_warn_and_never_raise(finished, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="wbc_core.tracking")
    with _tracked("bogus-scheme://nowhere"):
        tracking.log_finished_run(finished["classifier"])
    assert "logging run" in caplog.text and "the run itself is unaffected" in caplog.text
    caplog.clear()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow were not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with _tracked(finished["uri"]):
        tracking.log_finished_run(finished["classifier"])
    assert "mlflow is not installed" in caplog.text and "requirements-mlflow.txt" in caplog.text
    with _tracked(finished["uri"]):
        tracking.log_finished_run(987654)  # no such run: still only a warning
    assert "987654" in caplog.text


def test_the_worker_hands_succeeded_runs_to_tracking(wbc_home, monkeypatch):
    from wbc_core import jobs
    from wbc_core.jobs import worker

    logged: list[int] = []
    monkeypatch.setattr(worker, "log_finished_run", logged.append)
    ok = jobs.submit("selftest", None, {"steps": 2, "sleep": 0.0}, launch=False)
    failing = jobs.submit("selftest", None, {"steps": 2, "sleep": 0.0, "raise_at": 1}, launch=False)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert worker.main(ok) == 0
        assert worker.main(failing) == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert logged == [ok]

"""Experiment tracking: a finished classifier or GAN run is also logged to MLflow when MLFLOW_TRACKING_URI is set.

The database stays the source of truth. This module only copies a run that has ended (its row, its metric
rows and the files in its run folder) into an MLflow run, after the fact, so training code knows nothing of
MLflow and a tracking server that is down or slow never costs a run. One MLflow experiment per dataset
("wbc-curate/<dataset>"); the MLflow run carries the tag `wbc.run_id`, and a run that is already there is not
logged twice. What is logged:
- params: the run's config (flattened), seed, recipe, kind, dataset, training-set and split hashes;
- metrics: every metric row at its step, and the final test/val headline numbers;
- artifacts: the confusion matrix (JSON with class names), the result JSON, and the model: model.pt with its
  class map for a classifier, the last checkpoint and sample grid for a GAN.
Needs the optional `mlflow-skinny` (requirements-mlflow.txt).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from db import runs as runs_db
from wbc_core.context import current

TRACKED_KINDS = ("classifier", "gan")  # run kinds that are logged; the others are short helper jobs
EXPERIMENT_PREFIX = "wbc-curate/"
RUN_TAG = "wbc.run_id"
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
PARAM_VALUE_LIMIT = 500  # the smallest limit of the MLflow versions in the supported range
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits per call

log = logging.getLogger(__name__)


def log_finished_run(run_id: int) -> None:
    """Copy a finished classifier or GAN run into MLflow when tracking is configured; warns, never raises."""
    try:
        uri = current().settings.mlflow_tracking_uri
        if not uri:
            return
        run = runs_db.get_run(run_id)
        if run.kind not in TRACKED_KINDS or run.status not in MLFLOW_STATUS:
            return
        _log(uri, run)
    except ImportError:
        log.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed; run %s was not logged to MLflow "
                    "(pip install -r requirements-mlflow.txt)", run_id)
    except Exception as exc:  # noqa: BLE001 - tracking is a copy: its failure must never reach the run
        log.warning("logging run %s to MLflow failed (%s: %s); the run itself is unaffected", run_id,
                    type(exc).__name__, exc)


def _log(uri: str, run: runs_db.RunInfo) -> str | None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment(client, f"{EXPERIMENT_PREFIX}{run.dataset_name or 'no dataset'}")
    if client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run.id}'", max_results=1):
        return None  # logged before (a worker retried, or someone called it twice)
    start = _millis(run.started_at or run.created_at)
    end = _millis(run.finished_at) if run.finished_at else None
    tags = {RUN_TAG: str(run.id), "wbc.kind": run.kind, "wbc.status": run.status,
            "wbc.dataset": run.dataset_name or "", "wbc.group": run.group_name or "",
            "wbc.started_by": run.started_by or "", "wbc.device": run.device or ""}
    mlflow_run = client.create_run(experiment_id, start_time=start, tags=tags,
                                   run_name=f"run {run.id} {run.kind}" + (f" {run.recipe}" if run.recipe else ""))
    mlflow_id = mlflow_run.info.run_id
    params = {**_flatten(run.config), "seed": run.seed, "recipe": run.recipe, "kind": run.kind,
              "dataset": run.dataset_name, "train_set_hash": run.train_set_hash,
              "train_set_size": run.train_set_size, "split_hash": run.split_hash}
    stamp = end or start
    metrics = [Metric(_key(m["name"]), float(m["value"]), stamp, int(m["step"]))
               for m in runs_db.metrics([run.id])]
    last_step = max((m.step for m in metrics), default=0)
    metrics += [Metric(_key(name), value, stamp, last_step) for name, value in _headline(run.result).items()]
    _batched(client, mlflow_id, "metrics", metrics)
    _batched(client, mlflow_id, "params", [Param(_key(k), _param(v)) for k, v in params.items() if v is not None])
    client.log_dict(mlflow_id, run.result, "result.json")
    for artifact_file, payload in _confusions(run.result).items():
        client.log_dict(mlflow_id, payload, artifact_file)
    with tempfile.TemporaryDirectory() as scratch:
        for folder, path in _model_files(run, Path(scratch)):
            client.log_artifact(mlflow_id, str(path), artifact_path=folder)
    client.set_terminated(mlflow_id, MLFLOW_STATUS[run.status], end_time=end)
    return mlflow_id


def _experiment(client: Any, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # a concurrent worker created it between the two calls
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _batched(client: Any, run_id: str, what: str, items: list[Any]) -> None:
    size = BATCH_LIMITS[what]
    for start in range(0, len(items), size):
        client.log_batch(run_id, **{what: items[start:start + size]})


def _millis(when: Any) -> int:
    return int(when.timestamp() * 1000)


def _key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", str(name))[:250] or "_"


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:PARAM_VALUE_LIMIT]


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _headline(result: dict[str, Any]) -> dict[str, float]:
    """Final numbers of the result JSON as metrics: test_/val_ accuracy, macro-F1 and per-class F1."""
    out: dict[str, float] = {}
    for split in ("test", "val"):
        report = result.get(split) or {}
        for name in ("accuracy", "macro_f1"):
            if isinstance(report.get(name), (int, float)):
                out[f"{split}_{name}_final"] = float(report[name])
        for cls, value in (report.get("per_class_f1") or {}).items():
            out[f"{split}_f1_final/{cls}"] = float(value)
    for name in ("steps_done", "sec_per_step", "train_seconds", "images_per_sec"):
        if isinstance(result.get(name), (int, float)):
            out[name] = float(result[name])
    return out


def _confusions(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """confusion_<split>.json with rows = true class, columns = predicted class, for each split that has one."""
    out = {}
    for split in ("test", "val"):
        report = result.get(split) or {}
        if report.get("confusion") is not None:
            names = report.get("class_names") or list((report.get("per_class_f1") or {}).keys())
            out[f"confusion_{split}.json"] = {"rows": "true class", "columns": "predicted class",
                                              "class_names": names, "matrix": report["confusion"]}
    return out


def _model_files(run: runs_db.RunInfo, scratch: Path) -> list[tuple[str, Path]]:
    """(artifact folder, file) pairs of the run's model files that exist (a classifier's class map in scratch)."""
    ctx = current()
    files: list[tuple[str, Path]] = []
    if run.kind == "classifier":
        stored = run.result.get("model_path")
        model = ctx.absolute(stored) if stored else ctx.paths.run_dir(run.id) / "model.pt"
        files.append(("model", model))
        card = scratch / "classes.json"
        if model.is_file():
            _write_card(model, card)
            files.append(("model", card))
    else:
        stored = run.result.get("last_checkpoint")
        if stored:
            files.append(("model", ctx.absolute(stored)))
        grids = [c["grid_path"] for c in runs_db.checkpoints(run.id) if c.get("grid_path")]
        if grids:
            files.append(("samples", ctx.absolute(grids[-1])))
    return [(folder, path) for folder, path in files if path.is_file()]


def _write_card(model: Path, card: Path) -> None:
    """The class map and preprocessing next to model.pt, so the MLflow copy is usable on its own."""
    from wbc_core.classifier import load_classifier

    loaded = load_classifier(model)
    card.write_text(json.dumps({"class_names": loaded.class_names, "image_size": loaded.image_size,
                                "normalization": loaded.normalization, "model": loaded.config.model,
                                "input": "uint8 RGB [N,3,S,S] 0..255, divided by 255, then (x - mean) / std"},
                               indent=2))

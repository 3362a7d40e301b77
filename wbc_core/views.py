"""Read models for the UI and the CLI: runs, metrics and results as pandas frames and Plotly figures.

Pages call one function here and render what it returns; nothing here knows about Streamlit.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from db import runs as runs_db
from wbc_core import jobs
from wbc_core.settings import wbc_home


def runs_frame(dataset_id: int | None = None, kind: str | None = None) -> pd.DataFrame:
    """One row per run with status, recipe, device, progress and headline test metrics."""
    jobs.reconcile()  # every poll of the runs list also notices dead workers
    rows: list[dict[str, Any]] = []
    for r in runs_db.list_runs(dataset_id=dataset_id, kind=kind):
        test = r.result.get("test") or {}
        rows.append({
            "run": r.id, "kind": r.kind, "dataset": r.dataset_name, "status": r.status, "recipe": r.recipe,
            "group": r.group_name, "progress": round(r.progress_fraction, 3), "device": r.device, "seed": r.seed,
            "created": r.created_at, "train set": r.train_set_size,
            "train set hash": (r.train_set_hash or "")[:12], "test accuracy": test.get("accuracy"),
            "test macro-F1": test.get("macro_f1"), "message": r.progress_message,
        })
    return pd.DataFrame(rows)


def metrics_frame(run_ids: list[int], names: list[str] | None = None) -> pd.DataFrame:
    """Long frame of metric rows: run, step, name, value."""
    rows = runs_db.metrics(run_ids, names)
    frame = pd.DataFrame(rows, columns=["id", "run_id", "step", "name", "value"])
    return frame.rename(columns={"run_id": "run"})


def curves_figure(run_ids: list[int], names: list[str], title: str = "") -> go.Figure:
    """Line chart of the named metrics over steps, one line per run and metric."""
    frame = metrics_frame(run_ids, names)
    if frame.empty:
        fig = go.Figure()
        fig.update_layout(title=title or "no metrics yet", height=320)
        return fig
    frame["series"] = "run " + frame["run"].astype(str) + " · " + frame["name"]
    fig = px.line(frame, x="step", y="value", color="series", markers=len(frame) < 60, title=title)
    fig.update_layout(height=340, legend_title_text="", margin={"t": 40, "b": 10})
    return fig


def run_status(run_id: int) -> dict[str, Any]:
    """A run's live state for a polling panel: status, progress, message, error, latest grid and result."""
    jobs.reconcile()
    r = runs_db.get_run(run_id)
    checkpoints = runs_db.checkpoints(run_id)
    grids = [c for c in checkpoints if c["grid_path"]]
    return {
        "id": r.id, "kind": r.kind, "status": r.status, "active": r.active, "progress": r.progress_fraction,
        "message": r.progress_message, "error": r.error, "device": r.device, "result": r.result,
        "config": r.config, "recipe": r.recipe, "train_set_hash": r.train_set_hash,
        "train_set_size": r.train_set_size, "train_set_summary": r.train_set_summary,
        "heartbeat_at": r.heartbeat_at, "started_at": r.started_at, "finished_at": r.finished_at,
        "latest_grid": str(wbc_home() / grids[-1]["grid_path"]) if grids else None,
        "latest_grid_step": grids[-1]["step"] if grids else None,
        "checkpoints": [{"step": c["step"], "has_weights": bool(c["path"]),
                         "grid": str(wbc_home() / c["grid_path"]) if c["grid_path"] else None} for c in checkpoints],
    }


def per_class_f1_frame(run_ids: list[int], baseline_run: int | None = None) -> pd.DataFrame:
    """Test F1 per class (rows) for each run (columns), plus deltas against a baseline run."""
    columns: dict[str, dict[str, float]] = {}
    for run_id in run_ids:
        result = runs_db.get_run(run_id).result
        per_class = (result.get("test") or {}).get("per_class_f1") or {}
        if per_class:
            columns[f"run {run_id}"] = per_class
    frame = pd.DataFrame(columns)
    if baseline_run is not None and f"run {baseline_run}" in frame:
        base = frame[f"run {baseline_run}"]
        for name in list(frame.columns):
            if name != f"run {baseline_run}" and not name.startswith("Δ"):
                frame[f"Δ {name} vs baseline"] = frame[name] - base
    return frame


def confusion_figure(run_id: int, normalised: bool = False) -> go.Figure | None:
    """Heatmap of a classifier run's confusion matrix on real test cells (rows = true class)."""
    result = runs_db.get_run(run_id).result
    test = result.get("test") or {}
    matrix = test.get("confusion")
    names = test.get("class_names") or list((test.get("per_class_f1") or {}).keys())
    if not matrix or not names:
        return None
    frame = pd.DataFrame(matrix, index=names, columns=names, dtype=float)
    if normalised:
        frame = frame.div(frame.sum(axis=1).replace(0, 1), axis=0).round(3)
    fig = px.imshow(frame, text_auto=True, color_continuous_scale="Blues", labels={"x": "predicted", "y": "true"},
                    title=f"run {run_id}: confusion on real test cells" + (" (row-normalised)" if normalised else ""))
    fig.update_layout(height=420, margin={"t": 50, "b": 10})
    return fig


def class_counts_frame(counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """class -> split counts as a frame with a total column."""
    frame = pd.DataFrame(counts).T.fillna(0).astype(int)
    if not frame.empty:
        frame["total real"] = frame[[c for c in ("train", "val", "test") if c in frame]].sum(axis=1)
    return frame

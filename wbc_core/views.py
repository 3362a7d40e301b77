"""Read models for the UI and the CLI: runs, metrics and results as pandas frames and Plotly figures.

Pages call one function here and render what it returns; nothing here knows about Streamlit.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from db import runs as runs_db
from db.models import utcnow
from db.vocabulary import TRAINING_KINDS
from wbc_core import results
from wbc_core.context import current

LIVE_METRICS = ("train_loss_running", "epoch_fraction", "images_per_sec", "train_loss", "val_loss", "val_accuracy",
                "val_macro_f1", "epoch_seconds")


def runs_frame(dataset_id: int | None = None, kind: str | None = None, recipes: Sequence[str] | None = None,
               statuses: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per training run (or runs of one kind) with status, recipe, group, device, progress, who started
    and who cancelled it, curated-set version and test metrics. Reads only: dead workers are reconciled by the
    frame and the CLI (jobs.reconcile_if_due), never here."""
    rows: list[dict[str, Any]] = []
    for r in runs_db.list_runs(dataset_id=dataset_id, kind=kind):
        if kind is None and r.kind not in TRAINING_KINDS:
            continue
        if (recipes and r.recipe not in recipes) or (statuses and r.status not in statuses):
            continue
        test = r.result.get("test") or {}
        ci = (test.get("ci") or {}).get("macro_f1")
        caveats = results.test_caveats(r.result)
        rows.append({
            "run": r.id, "kind": r.kind, "dataset": r.dataset_name, "status": r.status, "recipe": r.recipe,
            "group": r.group_name, "progress": round(_progress(r), 3), "device": r.device, "seed": r.seed,
            "model": r.config.get("model"), "created": r.created_at, "train set": r.train_set_size,
            "train set hash": (r.train_set_hash or "")[:12],
            "decisions hash": (r.train_set_summary.get("decisions_snapshot") or "")[:12],
            "test accuracy": test.get("accuracy"), "test macro-F1": test.get("macro_f1"),
            "macro-F1 95% CI": _ci_text(ci), "test cells": caveats["test_cells"] if test else None,
            "caveat": "; ".join(caveats["warnings"]), "message": r.progress_message,
            "started by": r.started_by, "cancelled by": r.cancelled_by,
        })
    return pd.DataFrame(rows)


def run_caveats(run_id: int) -> dict[str, Any]:
    """A run's headline test numbers with test-cell count and 95% CI, and its caveats as sentences."""
    result = runs_db.get_run(run_id).result
    return {**results.test_caveats(result), "headline": results.headline(result)}


def filter_runs(frame: pd.DataFrame, recipes: Sequence[str] | None = None,
                statuses: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows of a runs_frame with one of the recipes and statuses (an empty filter keeps everything)."""
    if frame.empty:
        return frame
    keep = frame["recipe"].isin(recipes) if recipes else pd.Series(True, index=frame.index)
    if statuses:
        keep &= frame["status"].isin(statuses)
    return frame[keep]


def _ci_text(ci: Sequence[float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def metrics_frame(run_ids: list[int], names: list[str] | None = None) -> pd.DataFrame:
    """Long frame of metric rows: run, step, name, value."""
    rows = runs_db.metrics(run_ids, names)
    frame = pd.DataFrame(rows, columns=["id", "run_id", "step", "name", "value"])
    return frame.rename(columns={"run_id": "run"})


def training_curves_frame(run_ids: list[int], names: Sequence[str]) -> pd.DataFrame:
    """Metric rows with a fractional epoch axis: within-epoch rows sit at step + epoch_fraction."""
    frame = metrics_frame(run_ids, sorted({*names, "epoch_fraction"}))
    frame["epoch"] = frame["step"].astype(float)
    fractions = frame[frame["name"] == "epoch_fraction"][["id", "run", "value"]].rename(columns={"value": "fraction"})
    running = frame[frame["name"] == "train_loss_running"]
    if not running.empty and not fractions.empty:
        # A progress event stores train_loss_running just before its epoch_fraction (consecutive ids).
        matched = pd.merge_asof(running.sort_values("id"), fractions.sort_values("id"), on="id", by="run",
                                direction="forward")
        frame.loc[running.index, "epoch"] = (matched["step"] + matched["fraction"].fillna(0.0)).to_numpy()
    return frame[frame["name"].isin(names)].reset_index(drop=True)


def curves_figure(run_ids: list[int], names: list[str], title: str = "", x: str = "step") -> go.Figure:
    """Line chart of the named metrics over steps (x="step") or fractional epochs (x="epoch", classifiers)."""
    frame = training_curves_frame(run_ids, names) if x == "epoch" else metrics_frame(run_ids, names)
    if frame.empty:
        fig = go.Figure()
        fig.update_layout(title=title or "no metrics yet", height=320)
        return fig
    frame["series"] = "run " + frame["run"].astype(str) + " · " + frame["name"]
    fig = px.line(frame, x=x, y="value", color="series", markers=len(frame) < 60, title=title)
    fig.update_layout(height=340, legend_title_text="", margin={"t": 40, "b": 10})
    return fig


def run_status(run_id: int) -> dict[str, Any]:
    """A run's live state for a polling panel: status, progress, live metrics with ETA, error, result (reads only)."""
    r = runs_db.get_run(run_id)
    checkpoints = runs_db.checkpoints(run_id)
    grids = [c for c in checkpoints if c["grid_path"]]
    return {
        "id": r.id, "kind": r.kind, "status": r.status, "active": r.active, "progress": _progress(r),
        "message": r.progress_message, "error": r.error, "device": r.device, "result": r.result,
        "config": r.config, "recipe": r.recipe, "group": r.group_name, "seed": r.seed,
        "train_set_hash": r.train_set_hash, "train_set_size": r.train_set_size,
        "train_set_summary": r.train_set_summary, "heartbeat_at": r.heartbeat_at, "started_at": r.started_at,
        "finished_at": r.finished_at, "started_by": r.started_by, "cancelled_by": r.cancelled_by,
        "live": _live(r) if r.kind == "classifier" else _gan_live(r) if r.kind == "gan" else {},
        "group_active": bool(r.group_name) and any(
            x.active for x in runs_db.list_runs(dataset_id=r.dataset_id, kind=r.kind) if x.group_name == r.group_name),
        "latest_grid": str(current().home / grids[-1]["grid_path"]) if grids else None,
        "latest_grid_step": grids[-1]["step"] if grids else None,
        "checkpoints": [{"step": c["step"], "has_weights": bool(c["path"]),
                         "grid": str(current().home / c["grid_path"]) if c["grid_path"] else None}
                        for c in checkpoints],
    }


def _progress(r: runs_db.RunInfo) -> float:
    """The run's progress fraction; a run that succeeded is done, whatever its last progress event said."""
    return 1.0 if r.status == "succeeded" else min(1.0, r.progress_fraction)


GAN_RATE_WINDOW = 5  # ETA of a GAN run: mean seconds per step over its last this many logged windows


def _gan_live(r: runs_db.RunInfo) -> dict[str, Any]:
    """Steps done, seconds per step (from the run's metrics) and the ETA of a GAN run."""
    total = int(r.config.get("steps") or 0)
    rates = runs_db.metrics([r.id], ["sec_per_step"])
    done = max((row["step"] for row in rates), default=0)
    if r.status == "succeeded":
        done = max(done, int(r.result.get("steps_done") or total))
    recent = [row["value"] for row in rates[-GAN_RATE_WINDOW:]]
    sec_per_step = statistics.fmean(recent) if recent else None
    eta = (total - done) * sec_per_step if r.active and sec_per_step is not None and total > done else None
    return {"steps_done": done, "steps": total, "sec_per_step": sec_per_step, "eta_seconds": eta}


def grid_row_labels(run_id: int) -> list[str]:
    """Class names in the row order of a GAN run's sample grids (one row per class, in the dataset's order)."""
    r = runs_db.get_run(run_id)
    from db.datasets import get_dataset

    return list(r.config.get("class_names") or (get_dataset(r.dataset_id).class_names if r.dataset_id else []))


def labelled_grid(path: str, labels: Sequence[str], pad: int = 2) -> Any:  # noqa: ANN401 - a PIL image
    """A sample grid PNG with each row's class written once, in a white column on its left."""
    from PIL import Image, ImageDraw

    grid = Image.open(path).convert("RGB")
    rows = len(labels)
    if not rows:
        return grid
    row_h = (grid.height - pad) / rows
    draw_probe = ImageDraw.Draw(grid)
    width = max(int(draw_probe.textlength(str(name))) for name in labels) + 10
    out = Image.new("RGB", (grid.width + width, grid.height), "white")
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(labels):
        y = pad + i * row_h + row_h / 2
        draw.text((width - 6, y), str(name), fill=(20, 20, 20), anchor="rm")
    return out


def _live(r: runs_db.RunInfo) -> dict[str, Any]:
    """Latest loss / val metrics / throughput, epochs done (fractional) and the ETA of a classifier run."""
    latest: dict[str, tuple[int, float]] = {}
    epoch_seconds: list[float] = []
    for row in runs_db.metrics([r.id], list(LIVE_METRICS)):
        latest[row["name"]] = (row["step"], row["value"])
        if row["name"] == "epoch_seconds":
            epoch_seconds.append(row["value"])
    total = int(r.config.get("epochs") or 0)
    step, fraction = latest.get("epoch_fraction", (0, 0.0))
    done = min(float(total), step + fraction) if total else 0.0
    ips = latest.get("images_per_sec", (0, 0.0))[1]
    eta: float | None = None
    if r.active and total and done > 0:
        if epoch_seconds:  # measured epochs include validation, so they predict the rest best
            eta = (total - done) * statistics.fmean(epoch_seconds)
        elif ips > 0 and r.train_set_size:
            eta = (total - done) * r.train_set_size / ips
    elapsed = (utcnow() - r.started_at).total_seconds() if r.started_at else None
    if elapsed is not None and r.finished_at is not None:
        elapsed = (r.finished_at - r.started_at).total_seconds()
    return {"epochs_done": round(done, 3), "epochs": total, "fraction": done / total if total else 0.0,
            "train_loss": latest.get("train_loss_running", latest.get("train_loss", (0, None)))[1],
            "val_accuracy": latest.get("val_accuracy", (0, None))[1],
            "val_macro_f1": latest.get("val_macro_f1", (0, None))[1], "images_per_sec": ips or None,
            "eta_seconds": eta, "elapsed_seconds": elapsed}


def format_seconds(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s', '12 s' or '–'."""
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


# -- comparison ---------------------------------------------------------------------------------------

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


def per_class_f1_figure(run_ids: list[int], baseline_run: int | None = None) -> go.Figure | None:
    """Grouped bars of test F1 per class and run; a second row shows deltas against the baseline."""
    frame = per_class_f1_frame(run_ids, baseline_run)
    if frame.empty:
        return None
    long = frame.reset_index(names="class").melt(id_vars="class", var_name="series", value_name="F1")
    long["panel"] = long["series"].map(lambda s: "Δ vs baseline" if s.startswith("Δ") else "F1")
    long["series"] = long["series"].str.replace("Δ ", "").str.replace(" vs baseline", "")
    fig = px.bar(long, x="class", y="F1", color="series", barmode="group", facet_row="panel",
                 title="test F1 per class" + (f" (Δ against run {baseline_run})" if baseline_run else ""))
    fig.update_yaxes(matches=None)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    fig.update_layout(height=520 if long["panel"].nunique() > 1 else 340, legend_title_text="",
                      margin={"t": 50, "b": 10})
    return fig


def test_metrics_frame(run_ids: list[int], baseline_run: int | None = None) -> pd.DataFrame:
    """Test accuracy and macro-F1 with bootstrap 95% CIs, test-cell counts, caveats, paired deltas vs baseline."""
    rows = []
    for row in results.compare_runs(run_ids, baseline_run)["runs"]:
        delta = (row.get("delta_vs_baseline") or {}).get("macro_f1") or {}
        rows.append({"run": row["run"], "recipe": row["recipe"], "seed": row["seed"], "group": row["group"],
                     "accuracy": row["accuracy"], "accuracy 95% CI": _ci_text(row["accuracy_ci"]),
                     "macro-F1": row["macro_f1"], "macro-F1 95% CI": _ci_text(row["macro_f1_ci"]),
                     "test cells": row["test_size"], "caveat": "; ".join(row["warnings"]),
                     "Δ macro-F1 vs baseline": delta.get("delta"), "Δ 95% CI (paired)": _ci_text(delta.get("ci"))})
    return pd.DataFrame(rows)


def groups_frame(dataset_id: int | None = None) -> pd.DataFrame:
    """Ablation and multi-seed groups: mean ± std over seeds of test accuracy and macro-F1 per arm."""
    rows = []
    for g in results.group_summary(dataset_id):
        rows.append({"group": g["group"], "arm": g["recipe"], "runs": ", ".join(map(str, g["runs"])), "n": g["n"],
                     "accuracy": _mean_std(g["accuracy_mean"], g["accuracy_std"]),
                     "macro-F1": _mean_std(g["macro_f1_mean"], g["macro_f1_std"]),
                     "macro-F1 mean": g["macro_f1_mean"], "macro-F1 std": g["macro_f1_std"]})
    return pd.DataFrame(rows)


def _mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f} (1 seed)"


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


def embedding_figure(frame: pd.DataFrame, run_id: int) -> go.Figure:
    """Scatter of an embedding map: colour = class, symbol = origin (real train, real test, synthetic).

    Every point carries its image id and origin as customdata (wbc_core.embedding_selection.CUSTOM_DATA), so a
    click or a box/lasso selection maps back to cells. No dragmode is set: Streamlit then lets a click select one
    point (a drag pans), and the chart's toolbar switches to box or lasso selection (where a click only hovers)."""
    from wbc_core.embedding_selection import CUSTOM_DATA

    fig = px.scatter(frame, x="x", y="y", color="class", symbol="origin", hover_data=["image_id", "in_train_set"],
                     custom_data=list(CUSTOM_DATA),
                     symbol_map={"real train": "circle", "real test": "diamond", "synthetic": "x"},
                     title=f"run {run_id}: t-SNE of classifier features ({len(frame)} cells)")
    fig.update_traces(marker={"size": 6, "opacity": 0.75})
    fig.update_layout(height=560, xaxis={"visible": False}, yaxis={"visible": False}, margin={"t": 50, "b": 10})
    return fig


def embedding_map_figure(run_id: int, max_points: int = 1500) -> go.Figure | None:
    """The run's cached embedding map figure, or None until an "embedding" job has computed it."""
    from wbc_core.embedding_cache import cached_embedding

    frame = cached_embedding(run_id, max_points)
    return None if frame is None else embedding_figure(frame, run_id)


def embedding_map(run_id: int, max_points: int = 1500) -> tuple[pd.DataFrame, go.Figure] | None:
    """The run's cached embedding map (its table, to map a selection back to cells, and its figure), or None."""
    from wbc_core.embedding_cache import cached_embedding

    frame = cached_embedding(run_id, max_points)
    return None if frame is None else (frame, embedding_figure(frame, run_id))


def latest_embedding_job(dataset_id: int, classifier_run_id: int) -> dict[str, Any] | None:
    """job_summary of the newest embedding job for a classifier run, or None."""
    for r in runs_db.list_runs(dataset_id=dataset_id, kind="embedding", limit=50):
        if r.config.get("classifier_run_id") == classifier_run_id:
            return job_summary(r.id)
    return None


def class_counts_frame(counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """class -> split counts as a frame with a total column."""
    frame = pd.DataFrame(counts).T.fillna(0).astype(int)
    if not frame.empty:
        frame["total real"] = frame[[c for c in ("train", "val", "test") if c in frame]].sum(axis=1)
    return frame


def job_summary(run_id: int) -> dict[str, Any]:
    """A short job's state in one line for a polling panel (generate, score, quality, judge, embedding)."""
    r = runs_db.get_run(run_id)
    result = r.result or {}
    summary = ""
    if r.kind == "generate" and "candidates" in result:
        scoring = result.get("scoring") or {}
        summary = f"added {result['candidates']} candidates (seed {result.get('seed')}) to the review queue"
        if scoring.get("scored"):
            summary += f"; scored {scoring['scored']} ({scoring.get('memorised', 0)} look memorised)"
        elif scoring.get("reason"):
            summary += f"; not scored: {scoring['reason']}"
    elif r.kind == "quality" and "step" in result:
        summary = f"measured checkpoint {result['step']} on {result.get('per_class')} cells per class"
    elif r.kind == "score":
        summary = f"scored {result.get('scored', 0)} candidates"
    elif r.kind == "embedding":
        summary = f"mapped {result.get('points', 0)} cells"
    elif r.kind == "import" and "name" in result:
        summary = f"imported {sum(sum(v.values()) for v in result['classes'].values()):,} cells as {result['name']!r}"
    elif r.kind == "judge":
        summary = f"judge ready at {result.get('image_size')} px"
    return {"id": r.id, "kind": r.kind, "status": r.status, "active": r.active, "progress": r.progress_fraction,
            "message": r.progress_message, "error_line": (r.error or "").split("\n")[0], "summary": summary,
            "result": result, "started_by": r.started_by}

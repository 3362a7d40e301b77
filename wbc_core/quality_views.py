"""Frames and Plotly figures of a GAN run's quality metrics over checkpoints (for the Generate page)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from db import runs as runs_db
from wbc_core.quality import METRICS, PREFIX

# Goals shown as dashed lines (the bench's goals): (value, "above" or "below" is good).
GOALS = {"density": 0.8, "coverage": 0.7, "fd_ratio": 3.0, "memorised": 0.01, "acceptance": 0.5}
# The plain-language verdict: FD ratio up to CLOSE reads "close to real", above FAR "far from the real cells".
FD_RATIO_CLOSE = GOALS["fd_ratio"]
FD_RATIO_FAR = 10.0


def verdict(values: dict[str, float]) -> str:
    """One line a lab can act on, from overall metrics (fd_ratio, memorised, coverage as compute_metrics names
    them): "close to real" (FD ratio <= FD_RATIO_CLOSE), "noticeably different", or "far from the real cells"."""
    values = {k.removeprefix(PREFIX): v for k, v in values.items()}  # compute_metrics' names carry the prefix
    ratio = values.get("fd_ratio")
    if ratio is None or ratio != ratio:  # missing or NaN
        return "No verdict: the FD ratio could not be measured (too few cells in a class?)."
    scale = f"FD ratio {ratio:.1f}; 1 = as close as two halves of the real cells, close ≤ {FD_RATIO_CLOSE:g}"
    if ratio <= FD_RATIO_CLOSE:
        line = f"Close to real: to the judge they differ from real cells about as much as real cells do ({scale})."
    elif ratio <= FD_RATIO_FAR:
        line = f"Noticeably different from the real cells: usable with care, review closely ({scale})."
    else:
        line = (f"Far from the real cells: do not train on them as they are; train the GAN longer or check the "
                f"input ({scale}, far > {FD_RATIO_FAR:g}).")
    memorised = values.get("memorised")
    if memorised is not None and memorised == memorised and memorised > GOALS["memorised"]:
        line += f" {memorised:.0%} look like copies of training cells."
    coverage = values.get("coverage")
    if coverage is not None and coverage == coverage and coverage < GOALS["coverage"]:
        line += f" They cover only {coverage:.0%} of the real cells' variety (goal {GOALS['coverage']:.0%})."
    return line


def step_verdict(frame: pd.DataFrame, step: int) -> str:
    """verdict() of the overall metrics of one checkpoint step in a quality_frame ('' when none were measured)."""
    data = frame[(frame["step"] == step) & (frame["group"] == "all")]
    return verdict(dict(zip(data["metric"], data["value"].astype(float), strict=True))) if not data.empty else ""


def quality_frame(run_id: int) -> pd.DataFrame:
    """Columns step, metric, group ("all" or a class), value: the latest value per (step, metric, group)."""
    rows = [r for r in runs_db.metrics([run_id]) if r["name"].startswith(PREFIX)]
    if not rows:
        return pd.DataFrame(columns=["step", "metric", "group", "value"])
    frame = pd.DataFrame(rows)
    parts = frame["name"].str[len(PREFIX):].str.split("/", n=1, expand=True)
    frame["metric"] = parts[0]
    frame["group"] = parts[1].fillna("all") if parts.shape[1] > 1 else "all"
    # Scoring a checkpoint twice appends rows; the newest measurement wins.
    frame = frame.sort_values("id").drop_duplicates(["step", "metric", "group"], keep="last")
    return frame[["step", "metric", "group", "value"]].sort_values(["metric", "group", "step"]).reset_index(drop=True)


def quality_metric_names(frame: pd.DataFrame) -> list[str]:
    """Metrics present in frame, in the display order of METRICS."""
    present = set(frame["metric"])
    return [m for m in METRICS if m in present]


def quality_figure(frame: pd.DataFrame, metric: str, groups: list[str]) -> go.Figure:
    """Line chart of one metric over checkpoint steps, one line per group (overall and/or classes)."""
    data = frame[(frame["metric"] == metric) & frame["group"].isin(groups)]
    if data.empty:
        fig = go.Figure()
        fig.update_layout(title=f"{metric}: no values yet", height=320)
        return fig
    fig = px.line(data, x="step", y="value", color="group", markers=True, title=metric)
    if metric in GOALS:
        fig.add_hline(y=GOALS[metric], line_dash="dash", line_color="grey", annotation_text="goal")
    fig.update_layout(height=340, legend_title_text="", margin={"t": 40, "b": 10})
    return fig


def quality_table(frame: pd.DataFrame, step: int) -> pd.DataFrame:
    """Metrics (rows) by group (columns) at one checkpoint step."""
    data = frame[frame["step"] == step]
    if data.empty:
        return pd.DataFrame()
    table = data.pivot(index="metric", columns="group", values="value")
    order = [m for m in METRICS if m in table.index]
    cols = ["all", *sorted(c for c in table.columns if c != "all")] if "all" in table.columns else list(table.columns)
    return table.loc[order, cols]

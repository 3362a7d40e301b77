"""Frames and Plotly figures of a GAN run's quality metrics over checkpoints (for the Generate page)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from db import runs as runs_db
from wbc_core.quality import METRICS, PREFIX

# Goals shown as dashed lines (the bench's goals): (value, "above" or "below" is good).
GOALS = {"density": 0.8, "coverage": 0.7, "fd_ratio": 3.0, "memorised": 0.01, "acceptance": 0.5}


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

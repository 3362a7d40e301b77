"""Dashboard: compare classifier runs per class against a real-only baseline, on real test cells only."""

import streamlit as st

from pages import common
from wbc_core import views

common.ensure_frame()
st.title("Dashboard")
info = common.require_dataset()
st.caption("Every score here is computed on the dataset's real test cells, which no model or GAN trained on.")

table = views.runs_frame(info.id, kind="classifier")
if table.empty:
    st.info("No classifier run yet. Start one on the **Train** page.")
    st.stop()

ACTIVE = ("queued", "running")
any_active = bool(table["status"].isin(ACTIVE).any())


@st.fragment(run_every=2 if any_active else None)
def runs_table(was_active: bool) -> None:
    """Live list of runs (status and progress refresh every 2 s while jobs train)."""
    runs = views.runs_frame(info.id, kind="classifier")
    if was_active and not runs["status"].isin(ACTIVE).any():
        st.rerun()  # every run has ended: redraw the whole page (baselines, per-class table, confusion)
    st.dataframe(runs, width="stretch", hide_index=True,
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})


runs_table(any_active)
done = table[table["status"] == "succeeded"]
choices = table["run"].tolist()
picked = st.multiselect("Runs to compare", choices, default=choices[: min(3, len(choices))])
baselines = done[done["recipe"] == "real"]["run"].tolist()
baseline = st.selectbox("Baseline (real only)", baselines or [None],
                        format_func=lambda r: "none yet" if r is None else f"run {r}")


@st.fragment(run_every=2 if any_active else None)
def curves(picked: list[int]) -> None:
    """Live validation curves of the picked runs."""
    st.plotly_chart(views.curves_figure(picked, ["val_macro_f1"], "val macro-F1 per epoch"), width="stretch")


if picked:
    curves(picked)
    per_class = views.per_class_f1_frame(picked, baseline)
    if not per_class.empty:
        st.subheader("Test F1 per class")
        st.dataframe(per_class.style.format("{:.3f}"), width="stretch")
    for run_id in picked:
        fig = views.confusion_figure(run_id)
        if fig is not None:
            st.plotly_chart(fig, width="stretch")

"""Dashboard: compare classifier runs per class against a real-only baseline, on real test cells only."""

from functools import partial

import streamlit as st

from pages.ui import frame, widgets
from wbc_core import embedding_jobs, results, views
from wbc_core.vocabulary import ACTIVE_STATUSES, RUN_STATUSES

user = frame.ensure_frame()
st.title("Dashboard")
info = frame.require_dataset()
st.caption("Every score here is computed on the dataset's real test cells, which no model or GAN trained on.")

table = views.runs_frame(info.id, kind="classifier")
if table.empty:
    st.info("No classifier run yet. Start one on the **Train** page.")
    st.stop()

ACTIVE = ACTIVE_STATUSES
any_active = bool(table["status"].isin(ACTIVE).any())
filters = st.columns(2)
recipes = filters[0].multiselect("Filter by recipe", sorted(table["recipe"].dropna().unique()),
                                 placeholder="all recipes")
statuses = filters[1].multiselect("Filter by status", list(RUN_STATUSES),
                                  placeholder="all statuses")


@st.fragment(run_every=2 if any_active else None)
def runs_table(was_active: bool) -> None:
    """Live list of runs (status and progress refresh every 2 s while jobs train)."""
    runs = views.runs_frame(info.id, kind="classifier")
    if was_active and not runs["status"].isin(ACTIVE).any():
        st.rerun()  # every run has ended: redraw the whole page (baselines, per-class table, confusion)
    st.dataframe(views.filter_runs(runs, recipes, statuses), width="stretch", hide_index=True,
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})


runs_table(any_active)
shown = views.filter_runs(table, recipes, statuses)
labels = {r: f"run {r} · {rec} · seed {s}" for r, rec, s in zip(table["run"], table["recipe"], table["seed"],
                                                                 strict=True)}
choices = shown["run"].tolist()
picked = st.multiselect("Runs to compare", choices, default=choices[: min(3, len(choices))], format_func=labels.get)
done = table[table["status"] == "succeeded"]
baselines = done[done["recipe"] == "real"]["run"].tolist()
# Default: the picked run's own group's real arm, else the newest real run of the same model; never silently a
# real run of another model or group (its Δ would mean nothing). "none" stays available.
suggested, why = results.default_baseline(picked)
options = [None, *baselines]
baseline = st.selectbox("Baseline (real only)", options, index=options.index(suggested) if suggested in options else 0,
                        key=f"baseline_for_{picked[0] if picked else 'none'}",
                        format_func=lambda r: "none" if r is None else labels[r])
if baseline == suggested:
    st.caption(f"Baseline in use: {why}." if baseline is not None else f"No baseline: {why}.")
else:
    st.caption(f"Baseline in use: {'none' if baseline is None else labels[baseline]}, chosen by hand "
               f"(suggested: {why}).")
for run_id in picked:
    caveats = views.run_caveats(run_id)
    if caveats["headline"]:
        st.markdown(f"**Run {run_id}:** {caveats['headline']}")
    for warning in caveats["warnings"]:
        st.warning(f"Run {run_id}: {widgets.plain(warning)}.", icon="⚠️")


@st.fragment(run_every=2 if any_active else None)
def curves(picked: list[int]) -> None:
    """Live training curves of the picked runs, overlaid."""
    left, right = st.columns(2)
    left.plotly_chart(views.curves_figure(picked, ["val_macro_f1", "val_accuracy"], "validation", x="epoch"),
                      width="stretch")
    right.plotly_chart(views.curves_figure(picked, ["train_loss", "val_loss"], "loss per epoch", x="epoch"),
                       width="stretch")


if picked:
    curves(picked)
    per_class = views.per_class_f1_frame(picked, baseline)
    if not per_class.empty:
        st.subheader("Test F1 per class")
        st.dataframe(per_class.style.format("{:.3f}"), width="stretch")
        st.plotly_chart(views.per_class_f1_figure(picked, baseline), width="stretch")
        st.subheader("Test metrics with bootstrap 95% CIs")
        st.caption("CIs resample the real test cells (1000×); Δ CIs are paired: both models on the same resamples.")
        st.dataframe(views.test_metrics_frame(picked, baseline), width="stretch", hide_index=True)
        st.subheader("Confusion matrices")
        for run_id in picked:
            counts, rates = views.confusion_figure(run_id), views.confusion_figure(run_id, normalised=True)
            if counts is not None:
                left, right = st.columns(2)
                left.plotly_chart(counts, width="stretch")
                right.plotly_chart(rates, width="stretch")

groups = views.groups_frame(info.id)
if not groups.empty:
    st.subheader("Groups: mean ± std over seeds per arm")
    st.dataframe(groups, width="stretch", hide_index=True)

finished = done["run"].tolist()
if finished:
    st.subheader("Embedding map")
    st.caption("Real train, real test and synthetic cells in the classifier's feature space (t-SNE of its "
               "penultimate features); colour = class, symbol = origin. Computed on demand, cached per run.")
    cols = st.columns([2, 1, 1])
    emb_run = cols[0].selectbox("Run for the embedding map", finished, format_func=labels.get)
    max_points = cols[1].number_input("Max cells", 100, 3000, 1500, step=100)
    if cols[2].button("Compute embedding map", key="compute_embedding"):
        try:  # queues a job: feature extraction and the map run in their own process
            embedding_jobs.start_embedding(emb_run, int(max_points), user=user)
        except (ValueError, LookupError, PermissionError) as exc:
            widgets.show_error(exc)

    @st.fragment(run_every=2)
    def embedding_panel(run_id: int, max_points: int) -> None:
        """The map once computed; the running job's progress meanwhile (polled, never computed here)."""
        job = views.latest_embedding_job(info.id, run_id)
        if job is not None and job["active"]:
            st.progress(job["progress"], text=f"Embedding map (job {job['id']}): {job['message'] or job['status']}")
        elif job is not None and job["status"] == "failed":
            st.error(f"The embedding map failed: {job['error_line']}", icon="🚫")
        figure = views.embedding_map_figure(run_id, max_points)
        if figure is not None:
            st.plotly_chart(figure, width="stretch", key=f"embedding_{run_id}_{max_points}")

    embedding_panel(emb_run, int(max_points))

    st.subheader("Download a model")
    dl_run = st.selectbox("Run to download", finished, format_func=labels.get)
    d = st.columns(4)
    # Callables: the bytes are read only when clicked; the classifier job wrote the files, nothing is exported here.
    d[0].download_button("Download checkpoint (model.pt)", partial(results.model_bytes, dl_run, "checkpoint"),
                         file_name=f"run_{dl_run}_model.pt", mime="application/octet-stream", key="dl_checkpoint",
                         help="state dict + class names + normalisation + config; load with "
                              "wbc_core.classifier.load_classifier")
    d[1].download_button("Download TorchScript", partial(results.model_bytes, dl_run, "torchscript"),
                         file_name=f"run_{dl_run}_model.torchscript.pt", mime="application/octet-stream",
                         key="dl_torchscript", help="torch.jit.load; uint8 [N,3,S,S] in, probabilities out")
    d[2].download_button("Download class map (JSON)", partial(results.model_bytes, dl_run, "card"),
                         file_name=f"run_{dl_run}_classes.json", mime="application/json", key="dl_card")
    if results.onnx_ready(dl_run):
        d[3].download_button("Download ONNX", partial(results.model_bytes, dl_run, "onnx"),
                             file_name=f"run_{dl_run}_model.onnx", mime="application/octet-stream", key="dl_onnx",
                             help="onnxruntime; uint8 [N,3,S,S] in, probabilities out")
    else:
        d[3].caption(f"ONNX: `python -m wbc_core export-model --run {dl_run} --out DIR` writes it (about 10 s), "
                     "then it can be downloaded here too.")
    st.caption(f"`python -m wbc_core predict --model run_{dl_run}_model.pt IMAGE...` works with any of the three "
               "model files (checkpoint, TorchScript, ONNX).")

"""Dashboard: compare classifier runs per class against a real-only baseline, on real test cells only."""

from functools import partial

import streamlit as st

from pages.ui import frame, widgets
from wbc_core import auth, catalog, embedding_jobs, embedding_selection, ood, results, views
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

    def clicked_cell(image_id: int) -> None:
        """The one cell clicked on the map: its image, class and origin."""
        cell = embedding_selection.cell_summary(image_id)
        if cell is None:
            st.info("That cell is no longer in the dataset.")
            return
        left, right = st.columns([1, 3])
        if cell["path"].exists():
            left.image(str(cell["path"]), width=192)
        split = f" ({cell['split']})" if cell["split"] else ""
        right.markdown(f"**Cell {cell['image_id']}** · class **{widgets.plain(cell['class_name'])}** · "
                       f"{cell['origin']}{split}")

    def review_selection(run_id: int, chosen: embedding_selection.MapSelection) -> None:
        """Offer the selected candidates to the Review page, filtered to exactly them."""
        n = len(chosen.candidate_ids)
        if not n:
            st.caption(f"{len(chosen.image_ids)} real cells selected; select candidates (×) to review them.")
            return
        may_review = auth.can(user, "review")
        if st.button(f"Review these {n} cells", key="emb_review", type="primary", icon=":material/checklist:",
                     disabled=not may_review, help=None if may_review else "needs the reviewer role"):
            st.session_state[embedding_selection.HANDOVER_KEY] = embedding_selection.review_filter(
                info.id, chosen, f"the embedding map of run {run_id}")
            st.session_state[embedding_selection.HANDOVER_NEW_KEY] = True
            st.switch_page("pages/review.py")

    emb_job = views.latest_embedding_job(info.id, emb_run)

    @st.fragment(run_every=2 if emb_job is not None and emb_job["active"] else None)
    def embedding_panel(run_id: int, max_points: int, was_active: bool) -> None:
        """The map once computed; the running job's progress meanwhile (polled while it runs, never computed here).
        Click a cell to see it; draw a box or lasso round candidates to review exactly those."""
        job = views.latest_embedding_job(info.id, run_id)
        if was_active and not (job is not None and job["active"]):
            st.rerun()  # the job has ended: redraw once, and stop polling
        if job is not None and job["active"]:
            st.progress(job["progress"], text=f"Embedding map (job {job['id']}): {job['message'] or job['status']}")
        elif job is not None and job["status"] == "failed":
            st.error(f"The embedding map failed: {job['error_line']}", icon="🚫")
        shown = views.embedding_map(run_id, max_points)
        if shown is None:
            return
        cells, figure = shown
        st.caption("Click a cell to see it. To review some candidates (×), pick **Box Select** or **Lasso Select** "
                   "in the chart's toolbar and draw round them.")
        event = st.plotly_chart(figure, width="stretch", key=f"embedding_{run_id}_{max_points}", on_select="rerun",
                                selection_mode=("points", "box", "lasso"))
        chosen = embedding_selection.map_selection(event, cells)
        if chosen.clicked is not None:
            clicked_cell(chosen.clicked)
        elif chosen:
            review_selection(run_id, chosen)

    embedding_panel(emb_run, int(max_points), emb_job is not None and emb_job["active"])

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


def _evaluation_panel() -> None:
    """Evaluate a model on another dataset: pick a finished run and a dataset, queue the job, show its result."""
    st.subheader("Evaluate a model on another dataset")
    st.caption("Scores a finished run on another dataset's real cells (its own test cells if you pick the run's "
               "dataset) and flags cells far from the cells it was trained on: feature distance beyond the 95th "
               "percentile of its own real val cells. A model from one lab answers confidently on another lab's "
               "cells; this says when not to trust it. Runs as a job.")
    cols = st.columns([2, 2, 1, 1])
    run_id = cols[0].selectbox("Model to evaluate", finished, format_func=labels.get, key="eval_run")
    names = [d.name for d in catalog.list_datasets()]
    target = cols[1].selectbox("Dataset to evaluate on", names, key="eval_dataset")
    abstain = cols[2].number_input("Abstain above (0 = off)", 0.0, 100.0, 0.0, step=0.5, key="eval_abstain",
                                   help="also score without the cells whose distance exceeds this many times the "
                                        "far threshold (1 = abstain on every far cell)")
    if cols[3].button("Evaluate", key="start_evaluation"):
        try:  # a job: features, predictions and the calibration run in their own process
            ood.start_evaluation(run_id, target, abstain or None, user=user)
        except (ValueError, LookupError, PermissionError) as exc:
            widgets.show_error(exc)
    jobs_now = ood.evaluation_jobs(run_id, limit=1)
    active = bool(jobs_now and jobs_now[0]["active"])

    @st.fragment(run_every=2 if active else None)
    def evaluation_result(run_id: int, was_active: bool) -> None:
        """The newest evaluation of the run: progress while it runs (polled), then its numbers."""
        found = ood.evaluation_jobs(run_id, limit=1)
        if not found:
            return
        job = found[0]
        if job["active"]:
            st.progress(job["progress"], text=f"Evaluation (job {job['id']}): {job['message'] or job['status']}")
            return
        if was_active:
            st.rerun()  # finished since the page was drawn: redraw without polling
        if job["status"] != "succeeded":
            st.error(f"The evaluation failed: {widgets.plain(job['error_line'] or job['status'])}", icon="🚫")
            return
        result = job["result"]
        st.markdown(widgets.plain(ood.evaluation_text({**result, "warnings": []})).replace("\n", "  \n"))
        for warning in result.get("warnings", []):
            st.warning(widgets.plain(warning) + ".", icon="⚠️")
        st.metric("Flagged out-of-distribution", f"{result['far_share']:.0%}",
                  help="share of the cells beyond the far threshold of the model's real val cells")
        st.dataframe(result["per_class"], width="stretch", hide_index=True)

    evaluation_result(run_id, active)


if finished:
    _evaluation_panel()


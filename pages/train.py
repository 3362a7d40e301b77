"""Train: one click retrains the classifier on a recipe's training set, as a background job."""

import streamlit as st

from pages import common
from wbc_core import jobs, retrain, views

common.ensure_frame()
st.title("Train")
info = common.require_dataset()

with st.form("train_classifier"):
    cols = st.columns(4)
    recipe = cols[0].radio("Recipe", retrain.RECIPES, help="real: real train cells only (baseline); curated: plus "
                           "accepted candidates; all-synthetic: plus every candidate, unfiltered")
    model = cols[1].selectbox("Model", ["resnet18", "small_cnn"], help="small_cnn is fast on CPU")
    epochs = cols[2].number_input("Epochs", 1, 500, 15)
    seed = cols[3].number_input("Seed", 0, 10**6, 0)
    if st.form_submit_button("Retrain", type="primary"):
        try:
            run_id = retrain.start_classifier_run(info.id, recipe, {"model": model, "epochs": int(epochs),
                                                                    "seed": int(seed)})
        except (ValueError, LookupError) as exc:
            common.show_error(exc)
        else:
            st.session_state["classifier_run"] = run_id
            st.toast(f"classifier run {run_id} started ({recipe})")

table = views.runs_frame(info.id, kind="classifier")
if table.empty:
    st.info("No classifier run yet. Start one above; the real-only recipe is the baseline to compare against.")
    st.stop()
run_ids = table["run"].tolist()
if st.session_state.get("classifier_run") not in run_ids:  # first visit, or another dataset was chosen
    st.session_state["classifier_run"] = run_ids[0]
recipes = dict(zip(run_ids, table["recipe"].tolist(), strict=True))
# Keyed, with labels that never change (no live status in them), so the choice survives a run ending.
run_id = st.selectbox("Run", run_ids, key="classifier_run", format_func=lambda r: f"run {r} · {recipes[r]}")

active = views.run_status(run_id)["active"]


@st.fragment(run_every=2 if active else None)
def live_panel(run_id: int, was_active: bool) -> None:
    """Polls the database every 2 s while the run is active: progress, loss and validation curves, test results."""
    state = views.run_status(run_id)
    if was_active and not state["active"]:
        st.rerun()  # the run just ended: redraw the whole page (run list with its status)
    head = st.columns([3, 1])
    # The worker's last progress line is stale once the run has ended, so it is shown only while it runs.
    message = f" · {state['message']}" if state["active"] and state["message"] else ""
    head[0].progress(state["progress"], text=f"**{state['status']}** on {state['device'] or '…'}{message}")
    if state["active"] and head[1].button("Cancel run", key=f"cancel_{run_id}"):
        jobs.cancel(run_id)
        st.toast("Cancel requested.")
    if state["error"]:
        st.error(state["error"].split("\n\n")[0])
    left, right = st.columns(2)
    left.plotly_chart(views.curves_figure([run_id], ["train_loss", "val_loss"], "loss"), width="stretch")
    right.plotly_chart(views.curves_figure([run_id], ["val_accuracy", "val_macro_f1"], "validation"),
                       width="stretch")
    test = state["result"].get("test")
    if test:
        st.metric("Test macro-F1 (real test cells)", f"{test['macro_f1']:.4f}")
        st.dataframe({"class": list(test["per_class_f1"]), "F1": list(test["per_class_f1"].values())},
                     hide_index=True)
    st.caption(f"training set: {state['train_set_size']} images · hash {(state['train_set_hash'] or '')[:16]}")


live_panel(run_id, active)

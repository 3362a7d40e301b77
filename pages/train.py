"""Train: one click retrains the classifier on a recipe (or an ablation over all recipes) as background jobs."""

import streamlit as st

from pages.ui import frame, signin, widgets
from wbc_core import jobs, limits, mixing, retrain, views
from wbc_core.compile import REQUESTS as COMPILE_CHOICES
from wbc_core.jobs import groups

user = frame.ensure_frame()
st.title("Train")
info = frame.require_dataset()
can_train = signin.require_permission("train", "retrain classifiers")

defaults = retrain.form_defaults()
balance_advice = retrain.class_balance_advice(info.id)
if balance_advice:
    st.info(balance_advice)
with st.form("train_classifier"):
    cols = st.columns(4)
    recipe = cols[0].radio("Recipe", retrain.LAUNCH_CHOICES, help="real: real train cells only (baseline); curated: "
                           "plus accepted candidates; all-synthetic: plus every candidate, unfiltered; ablation: all "
                           "three with the same seed and settings, trained one after another and grouped")
    model = cols[1].selectbox("Model", retrain.MODEL_CHOICES, help="small_cnn is fast on CPU")
    epochs = cols[2].number_input("Epochs", 1, 500, defaults["epochs"])
    seeds = cols[3].text_input("Seeds", "0", help="one seed, or several (e.g. `0 1 2`): one run per seed, grouped, "
                               "reported as mean ± std")
    with st.expander("Advanced"):
        a = st.columns(4)
        other_model = a[0].text_input("Other torchvision model", "", help="any torchvision classification model "
                                      "name, e.g. densenet121; overrides Model")
        batch = a[1].number_input("Batch size", 2, 4096, defaults["batch_size"])
        optimizer = a[2].selectbox("Optimizer", ["adamw", "sgd"], index=["adamw", "sgd"].index(defaults["optimizer"]),
                                   help="sgd = nesterov, momentum 0.9 (lr ~0.1)")
        lr = a[3].number_input("Peak learning rate", 1e-5, 5.0, defaults["lr"], format="%.5f")
        b = st.columns(4)
        weight_decay = b[0].number_input("Weight decay", 0.0, 0.9, defaults["weight_decay"], format="%.4f")
        smoothing = b[1].number_input("Label smoothing", 0.0, 0.5, defaults["label_smoothing"])
        schedule = b[2].selectbox("LR schedule", ["onecycle", "cosine"],
                                  index=["onecycle", "cosine"].index(defaults["schedule"]))
        choices = list(defaults["augment_choices"])
        augment = b[3].selectbox("Augmentation", choices, index=choices.index(defaults["augment"]),
                                 help="cell: flips, 90° rotations, mild colour jitter; geometric: flips and 90° "
                                 "rotations only; none: no augmentation")
        c = st.columns(4)
        balanced = c[0].checkbox("Balanced sampling", defaults["balanced_sampling"] or bool(balance_advice),
                                 help="draw every class equally often")
        patience = c[1].number_input("Early stopping patience", 0, 100, defaults["early_stopping_patience"],
                                     help="epochs without val macro-F1 "
                                     "improvement before stopping; 0 = off")
        device = c[2].selectbox("Device", ["auto", "cpu", "cuda", "mps"])
        strategy = c[3].selectbox("Mixing", mixing.MIX_CHOICES,
                                  help="how synthetic cells join the real ones (curated and all-synthetic): none = "
                                  "all of them; share = up to Share × the real cells of each class; fill = top every "
                                  "class up to Fill target; weight = synthetic cells count Synthetic weight of a "
                                  "real one; two-stage = then the last Fine-tune epochs on real cells only")
        e = st.columns(4)
        share_limit, target_limit = limits.bound("synthetic_cap"), limits.bound("mix_target")
        weight_limit, finetune_limit = limits.bound("synthetic_weight"), limits.bound("classifier_epochs")
        share = e[0].number_input("Share (× real per class)", share_limit.widget_min, share_limit.widget_max,
                                  mixing.DEFAULTS["share"], help="share; for weight and two-stage a cap, 0 = none")
        target = e[1].number_input("Fill target (cells per class)", target_limit.widget_min, target_limit.widget_max,
                                   mixing.DEFAULTS["target"], help="fill: cells per class after topping up")
        weight = e[2].number_input("Synthetic weight", weight_limit.widget_min, weight_limit.widget_max,
                                   mixing.DEFAULTS["synthetic_weight"], help="weight: 0.3–0.5 is typical")
        finetune = e[3].number_input("Fine-tune epochs (real only)", finetune_limit.widget_min,
                                     finetune_limit.widget_max, mixing.DEFAULTS["finetune_epochs"],
                                     help="two-stage: the last epochs of the run, on real cells only")
        d = st.columns(4)
        amp = d[0].checkbox("Mixed precision", defaults["amp"], help="AMP + channels_last on CUDA; bf16 on CPUs "
                            "with native bf16 (AVX512-BF16/AMX), about 1.7× faster there; fp32 elsewhere")
        threads = d[1].number_input("CPU threads (0 = default)", 0, 256, 0)
        pretrained = d[2].text_input("Pretrained weights (local file)", "", help="a state dict or model.pt on this "
                                     "machine; nothing is downloaded")
        workers_limit = limits.bound("classifier_workers")
        workers = d[3].number_input("Workers (DDP)", workers_limit.widget_min, workers_limit.widget_max,
                                    defaults["workers"],
                                    help="data-parallel training processes: one GPU each on CUDA, a share of the "
                                    "cores each on CPU; the batch is split between them")
        f = st.columns(4)
        compiled = f[0].selectbox("Compile (torch.compile)", COMPILE_CHOICES, key="train_compile",
                                  help="auto: compile the training step where it measured faster on this kind of "
                                  "device and the run is long enough to win back the warm-up (a minute or more on a "
                                  "CPU); on / off force it. Each run records which it did and why.")
        val_limit = limits.bound("classifier_val_every")
        val_every = f[1].number_input("Validate every (epochs)", val_limit.widget_min, val_limit.widget_max,
                                      defaults["val_every"], help="val passes every N epochs and after the last; "
                                      "the best weights are chosen among those. Raise it for many short epochs on "
                                      "a small set, where validating can take more time than training")
    if st.form_submit_button("Retrain", type="primary", disabled=not can_train):
        overrides = {"model": other_model.strip() or model, "epochs": int(epochs), "batch_size": int(batch),
                     "optimizer": optimizer, "lr": float(lr), "weight_decay": float(weight_decay),
                     "label_smoothing": float(smoothing), "schedule": schedule, "augment": augment,
                     "balanced_sampling": bool(balanced), "early_stopping_patience": int(patience),
                     "device": device, "amp": bool(amp), "num_threads": int(threads),
                     "pretrained_path": pretrained.strip() or None, "workers": int(workers),
                     "compile": compiled, "val_every": int(val_every)}
        try:
            mix = mixing.mix_from_options(strategy, float(share), int(target), float(weight), int(finetune),
                                          drop_unused=True)
            launched = groups.start_training(info.id, recipe, overrides, seeds, mix=mix, user=user)
        except (ValueError, LookupError, PermissionError) as exc:
            widgets.show_error(exc)
        else:
            st.session_state["classifier_run"] = launched.run_ids[0]
            group = f" as group {launched.group_name}, one after another" if launched.group_name else ""
            st.toast(f"started {len(launched.run_ids)} classifier run(s){group}")

table = views.runs_frame(info.id, kind="classifier")
if table.empty:
    st.info("No classifier run yet. Start one above; the real-only recipe is the baseline to compare against.")
    st.stop()
with st.expander("All classifier runs of this dataset"):
    st.dataframe(table[["run", "status", "recipe", "group", "seed", "created", "test macro-F1", "test cells",
                        "caveat", "started by", "cancelled by"]], width="stretch", hide_index=True)
run_ids = table["run"].tolist()
if st.session_state.get("classifier_run") not in run_ids:  # first visit, or another dataset was chosen
    st.session_state["classifier_run"] = run_ids[0]
labels = {r: f"run {r} · {rec}" + (f" · {g}" if g else "")
          for r, rec, g in zip(run_ids, table["recipe"], table["group"], strict=True)}
# Keyed, with labels that never change (no live status in them), so the choice survives a run ending.
run_id = st.selectbox("Run", run_ids, key="classifier_run", format_func=labels.get)

active = views.run_status(run_id)["active"]


@st.fragment(run_every=2 if active else None)
def live_panel(run_id: int, was_active: bool) -> None:
    """Polls the database every 2 s while the run is active: progress, live metrics, curves, test results."""
    state = views.run_status(run_id)
    if was_active and not state["active"]:
        st.rerun()  # the run just ended: redraw the whole page (run list with its status)
    live = state["live"]
    head = st.columns([3, 1, 1])
    # The worker's last progress line is stale once the run has ended, so it is shown only while it runs.
    detail = ""
    if state["active"]:
        detail = f" · epoch {live['epochs_done']:.2f}/{live['epochs']}" if state["status"] == "running" else ""
        detail += f" · {state['message']}" if state["message"] else ""
    bar = live["fraction"] if state["active"] else state["progress"]
    head[0].progress(min(1.0, bar), text=f"**{state['status']}** on {state['device'] or '…'}{detail}")
    who = f"started by {state['started_by'] or 'unknown'}"
    st.caption(who + (f" · cancelled by {state['cancelled_by']}" if state["cancelled_by"] else ""))
    own = state["started_by"] is not None and state["started_by"] == user.username
    try:
        if state["active"] and head[1].button("Cancel run", key=f"cancel_{run_id}", disabled=not (can_train or own)):
            jobs.cancel(run_id, user)
            st.toast("Cancel requested.")
        if state["group_active"] and head[2].button("Cancel group", key=f"cancel_group_{run_id}",
                                                    help=f"stop every queued or running run of {state['group']}",
                                                    disabled=not can_train):
            st.toast(f"Cancel requested for runs {groups.cancel_group(state['group'], user)}.")
    except (PermissionError, LookupError) as exc:
        widgets.show_error(exc)
    if state["active"]:
        m = st.columns(5)
        m[0].metric("Train loss", "–" if live["train_loss"] is None else f"{live['train_loss']:.4f}")
        m[1].metric("Val accuracy", "–" if live["val_accuracy"] is None else f"{live['val_accuracy']:.4f}")
        m[2].metric("Val macro-F1", "–" if live["val_macro_f1"] is None else f"{live['val_macro_f1']:.4f}")
        m[3].metric("Images / s", "–" if live["images_per_sec"] is None else f"{live['images_per_sec']:.0f}")
        m[4].metric("ETA", views.format_seconds(live["eta_seconds"]), help="at most: early stopping may end sooner")
    if state["error"]:
        st.error(state["error"].split("\n\n")[0])
    left, right = st.columns(2)
    left.plotly_chart(views.curves_figure([run_id], ["train_loss_running", "train_loss", "val_loss"], "loss",
                                          x="epoch"), width="stretch")
    right.plotly_chart(views.curves_figure([run_id], ["val_accuracy", "val_macro_f1"], "validation", x="epoch"),
                       width="stretch")
    test = state["result"].get("test")
    if test:
        ci = test.get("ci") or {}
        span = f"95% CI {ci['macro_f1'][0]:.4f}–{ci['macro_f1'][1]:.4f}" if ci.get("macro_f1") else None
        caveats = views.run_caveats(run_id)
        st.metric("Test macro-F1 (real test cells)", f"{test['macro_f1']:.4f}", help=span)
        st.caption(caveats["headline"])
        for warning in caveats["warnings"]:
            st.warning(widgets.plain(f"{warning[0].upper()}{warning[1:]}."), icon="⚠️")
        support = test.get("per_class_support") or {}
        st.dataframe({"class": list(test["per_class_f1"]), "F1": list(test["per_class_f1"].values()),
                      "test cells": [support.get(c) for c in test["per_class_f1"]]}, hide_index=True)
    summary = state["train_set_summary"] or {}
    st.caption(f"training set: {state['train_set_size']} images · hash {(state['train_set_hash'] or '')[:16]} · "
               f"decisions snapshot {(summary.get('decisions_snapshot') or '')[:16]} · seed {state['seed']}"
               + (f" · group {state['group']}" if state["group"] else ""))


live_panel(run_id, active)

"""Generate: train a class-conditional GAN as a background job, watch it live, create candidates."""

import streamlit as st

from pages.ui import frame, signin, widgets
from wbc_core import gan_finetune, gan_runs, generation, jobs, limits, quality_views, views
from wbc_core.compile import REQUESTS as COMPILE_CHOICES
from wbc_core.steering import DEFAULT_STEER_GUARD, STEER_GUARD_LABELS, STEER_GUARDS

user = frame.ensure_frame()
st.title("Generate")
info = frame.require_dataset()
# Training GANs, generating and scoring candidates decide what reviewers see: the train permission. The domain
# checks again on every call; here the buttons are disabled and the page says which role is needed.
can_train = signin.require_permission("train", "train GANs, generate candidates or score quality")


def may_cancel(started_by: str | None) -> bool:
    """Whether the signed-in user may stop a run: the train permission, or it is their own run."""
    return can_train or (started_by is not None and started_by == user.username)


def cancel(run_id: int) -> None:
    try:
        jobs.cancel(run_id, user)
    except (PermissionError, LookupError) as exc:
        widgets.show_error(exc)
    else:
        st.toast("Cancel requested; the run saves a checkpoint and stops.")


with st.expander("Train a new GAN", expanded=True):
    # Outside the form, so picking a preset refills the fields below at once.
    presets = list(gan_runs.GAN_PRESETS)
    preset = st.radio("Preset", presets, index=presets.index(gan_runs.suggested_preset()), horizontal=True,
                      format_func=gan_runs.GAN_PRESETS.get, key="gan_preset")
    defaults = gan_runs.preset_values(preset, info.image_size)
    sizes = [32, 64, 128]
    with st.form("train_gan"):
        cols = st.columns(6)
        steps = cols[0].number_input("Steps", 10, 200_000, defaults["steps"], 100)
        batch = cols[1].number_input("Batch", 8, 512, defaults["batch_size"], 8)
        width = cols[2].number_input("Width", 8, 256, defaults["g_width"], 8)
        size = cols[3].selectbox("Size (px)", sizes, index=sizes.index(defaults["image_size"]))
        aux = cols[4].number_input("Class head (AC-GAN)", 0.0, 10.0, float(defaults["aux_weight"]), 0.1,
                                   help="weight of the discriminator's class loss; 0 = projection only")
        seed = cols[5].number_input("Seed", 0, 10**6, 0)
        compiled = st.columns(6)[0].selectbox("Compile (torch.compile)", COMPILE_CHOICES, key="gan_compile",
                                              help="auto: compile G and D where it measured faster on this kind of "
                                              "device and the planned steps win back the warm-up; on / off force it")
        if st.form_submit_button("Start GAN training", type="primary", disabled=not can_train):
            chosen = {"steps": int(steps), "batch_size": int(batch), "g_width": int(width), "d_width": int(width),
                      "image_size": int(size), "aux_weight": float(aux), "seed": int(seed),
                      "compile": compiled}
            try:
                run_id = gan_runs.start_gan_run(info.id, {**defaults, **chosen}, user=user)
            except (ValueError, LookupError, PermissionError) as exc:
                widgets.show_error(exc)
            else:
                st.session_state["gan_run"] = run_id
                st.toast(f"GAN run {run_id} started in the background")

table = views.runs_frame(info.id, kind="gan")
if table.empty:
    st.info("No GAN run yet for this dataset. Start one above; it trains in the background.")
    st.stop()
with st.expander("All GAN runs of this dataset"):
    st.dataframe(table[["run", "status", "progress", "device", "seed", "created", "started by", "cancelled by"]],
                 width="stretch", hide_index=True)
run_ids = table["run"].tolist()
if st.session_state.get("gan_run_next") in run_ids:  # a run started below (after the list was drawn) is shown next
    st.session_state["gan_run"] = st.session_state.pop("gan_run_next")
if st.session_state.get("gan_run") not in run_ids:  # first visit, or another dataset was chosen
    st.session_state["gan_run"] = run_ids[0]
# Keyed, with labels that never change: a label carrying the live status would change when the run ends,
# and Streamlit would then drop the user's choice.
run_id = st.selectbox("GAN run", run_ids, key="gan_run", format_func=lambda r: f"run {r}")

state = views.run_status(run_id)


@st.fragment(run_every=2 if state["active"] else None)
def live_panel(run_id: int, was_active: bool) -> None:
    """Polls the database every 2 s while the run is active: status, progress, loss curves, latest sample grid."""
    state = views.run_status(run_id)
    if was_active and not state["active"]:
        st.rerun()  # the run just ended: redraw the whole page (run list, checkpoints, candidate button)
    head = st.columns([3, 1])
    # The worker's last progress line is stale once the run has ended, so it is shown only while it runs.
    message = f" · {state['message']}" if state["active"] and state["message"] else ""
    live = state["live"]
    if state["active"] and live.get("steps"):
        rate = f" · {live['sec_per_step']:.3f} s/step" if live["sec_per_step"] is not None else ""
        message = (f" · step {live['steps_done']:,}/{live['steps']:,}{rate} · ETA "
                   f"{views.format_seconds(live['eta_seconds'])}") + message
    head[0].progress(state["progress"], text=f"**{state['status']}**{message}")
    who = f"started by {state['started_by'] or 'unknown'}"
    st.caption(who + (f" · cancelled by {state['cancelled_by']}" if state["cancelled_by"] else ""))
    if state["active"] and head[1].button("Cancel run", key=f"cancel_{run_id}",
                                          disabled=not may_cancel(state["started_by"])):
        cancel(run_id)
    if state["error"]:
        st.error(state["error"].split("\n\n")[0])
    left, right = st.columns(2)
    left.plotly_chart(views.curves_figure([run_id], ["loss_d", "loss_g"], "losses"), width="stretch")
    # The live grid only while training; once the run has ended the checkpoint's grid below is the one shown.
    if state["active"] and state["latest_grid"]:
        right.image(views.labelled_grid(state["latest_grid"], row_labels),
                    caption=f"fixed-noise samples at step {state['latest_grid_step']}, one row per class")
    elif state["active"]:
        right.info("The first sample grid appears after the first sampling interval.")


row_labels = views.grid_row_labels(run_id)
live_panel(run_id, state["active"])
tuned_from = gan_finetune.describe(state["config"])
if tuned_from:
    st.caption(tuned_from)

with st.expander("Fine-tune with the acceptance model"):
    st.caption("Continues this run's newest checkpoint with the dataset's acceptance model (learnt from review "
               "decisions) as an extra reward for the generator; the discriminator keeps training, so the cells stay "
               "realistic. It runs as a new GAN run whose checkpoints show here like any other; candidates from it "
               "are recorded as steered by that model.")
    ft_cols = st.columns([1, 1, 1, 2])
    lim_steps, lim_weight = limits.bound("finetune_steps"), limits.bound("finetune_reward_weight")
    lim_anchor = limits.bound("finetune_anchor_weight")
    ft_steps = ft_cols[0].number_input("Fine-tuning steps", int(lim_steps.min), int(lim_steps.max), 500, 50,
                                       key="ft_steps")
    ft_weight = ft_cols[1].number_input("Reward weight", 0.001, float(lim_weight.max), 0.01, 0.005, format="%.3f",
                                        key="ft_weight",
                                        help="weight of -log p(accepted) in the generator's loss, next to the "
                                             "adversarial loss (weight 1); large weights (0.1 and more on PBC) let "
                                             "the generator fool the acceptance model at the cost of realism")
    ft_anchor = ft_cols[2].number_input("Anchor weight", 0.0, float(lim_anchor.max),
                                        float(gan_finetune.DEFAULT_ANCHOR_WEIGHT), 0.5, key="ft_anchor",
                                        help="keeps each cell close to what the parent generator drew from the same "
                                             "latent code, so the reward cannot pull every cell to one look; 0 "
                                             "turns it off")
    if ft_cols[3].button("Start fine-tuning", key="finetune", disabled=not can_train or state["active"]):
        try:
            tuned = gan_finetune.start_finetune(run_id, int(ft_steps), float(ft_weight), user=user,
                                                anchor_weight=float(ft_anchor))
        except (ValueError, LookupError, PermissionError) as exc:
            widgets.show_error(exc)
        else:
            st.session_state["gan_run_next"] = tuned
            st.toast(f"Fine-tuning run {tuned} started in the background; it is selected in the run list next.")

st.subheader("Create candidates for review")
steps_saved = [c["step"] for c in state["checkpoints"] if c["has_weights"]]
if not steps_saved:
    st.info("This run has saved no checkpoint yet.")
    st.stop()
cols = st.columns([2, 1, 1])
step = cols[0].select_slider("Checkpoint (step)", steps_saved, value=steps_saved[-1])
grid = next((c["grid"] for c in state["checkpoints"] if c["step"] == step and c["grid"]), None)
if grid and not (state["active"] and step == state["latest_grid_step"]):  # the live panel shows that one
    st.image(views.labelled_grid(grid, row_labels), caption=f"fixed-noise samples at step {step}, one row per class "
             f"(top to bottom: {widgets.plain(', '.join(row_labels))})", width=560)
per_class = cols[1].number_input("Candidates per class", 1, 5000, 48, key="per_class")
steer = cols[1].number_input("Steer: sample K x, keep the best (1 = off)", 1, 50, 1, key="steer",
                             help="Uses the dataset's acceptance model (learnt from review decisions) to keep the "
                                  "most likely accepted of K x as many samples, as varied as the guard below keeps "
                                  "them.")
guard = cols[1].selectbox("Steering guard", STEER_GUARDS, key="steer_guard", disabled=steer <= 1,
                          index=STEER_GUARDS.index(DEFAULT_STEER_GUARD), format_func=STEER_GUARD_LABELS.get,
                          help="How steering keeps the kept cells varied: keep as many real cells covered as plain "
                               "sampling would (coverage, the default: measured to keep coverage), skip near-copies "
                               "of kept cells (radius), or keep the best of each region of the sample (clusters).")
if cols[2].button("Generate candidates", type="primary", key="generate", disabled=not can_train):
    try:  # only queues the job: sampling and scoring run in their own process
        generation.start_generation(run_id, int(per_class), step=int(step), user=user,
                                    steer=int(steer) if steer > 1 else None, steer_guard=guard)
    except (ValueError, LookupError, PermissionError) as exc:
        widgets.show_error(exc)
    else:
        st.toast("Candidate generation started in the background; you may leave this page.")


@st.fragment(run_every=2)
def job_panel(kind: str, gan_run_id: int, what: str) -> None:
    """The newest job of a kind for this GAN run: live progress while it runs, its outcome once done."""
    job = generation.latest_job(info.id, kind, gan_run_id)
    if job is None:
        return
    state = views.job_summary(job.id)
    if state["active"]:
        st.progress(state["progress"], text=f"{what} (job {job.id}): {state['message'] or state['status']}")
        if st.button("Cancel", key=f"cancel_job_{job.id}", disabled=not may_cancel(job.started_by)):
            cancel(job.id)
    elif state["status"] == "failed":
        st.error(f"{what} (job {job.id}) failed: {state['error_line']}", icon="🚫")
    elif state["status"] == "succeeded":
        st.success(f"{what} (job {job.id}): {state['summary']}", icon="✅")
    else:
        st.info(f"{what} (job {job.id}) was {state['status']}.")


job_panel("generate", run_id, "Candidate generation")

st.subheader("Quality over checkpoints")
st.caption("Measured offline against the dataset's real cells with a real-only judge classifier: FD ratio "
           "(1 = as close as two halves of the real val cells), density/coverage, precision/recall, memorised "
           "share, the data-copying score C_T (below -3 = copying), acceptance (judge p ≥ 0.9 for the intended "
           "class; real_acceptance is the same judge on real val cells, the most a class can reach) and "
           "train-on-synthetic accuracy on real val cells.")
qcols = st.columns([1, 3])
quality_n = qcols[0].number_input("Cells per class to score", 8, 1000, 64, key="quality_per_class")
if qcols[1].button(f"Score quality for step {step}", key="score_quality", disabled=not can_train):
    try:
        generation.start_quality(run_id, step=int(step), per_class=int(quality_n), user=user)
    except (ValueError, LookupError, PermissionError) as exc:
        widgets.show_error(exc)
    else:
        st.toast(f"Scoring checkpoint {step} in the background (the first time also trains the judge).")
job_panel("quality", run_id, "Quality scoring")
frame = quality_views.quality_frame(run_id)
if frame.empty:
    st.info("No quality metrics yet for this run: score a checkpoint above.")
else:
    names = quality_views.quality_metric_names(frame)
    groups = ["all", *sorted(g for g in frame["group"].unique() if g != "all")]
    pick = st.columns([1, 3])
    metric = pick[0].selectbox("Metric", names, key="quality_metric")
    shown = pick[1].multiselect("Classes", groups, default=["all"], key="quality_groups")
    st.plotly_chart(quality_views.quality_figure(frame, metric, shown), width="stretch")
    table = quality_views.quality_table(frame, int(step))
    step_verdict = quality_views.step_verdict(frame, int(step))
    if step_verdict:
        st.markdown(f"**Verdict for step {step}:** {step_verdict}")
    if not table.empty:
        st.dataframe(table.style.format("{:.3f}"), width="stretch")

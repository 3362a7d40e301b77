"""Admin: users and roles, review settings (consensus rule, quotas), the blinded realism test, adjudication of
disputed candidates, and the curated set as a zip. Admins only; every action is checked again on the server."""

from pathlib import Path

import streamlit as st

from pages.ui import frame, refresh, signin, widgets
from wbc_core import archive, auth, catalog, context, limits, review_model, views
from wbc_core.export import export_curated_zip, safe_name
from wbc_core.thumbnails import thumbnail_path
from wbc_core.vocabulary import ROLE_ORDER

ADJUDICATION_PAGE = 12
ROLES = ROLE_ORDER  # least privileged first in the role pickers


def _flash(message: str) -> None:
    st.session_state["admin_msg"] = message


def _fail(exc: Exception) -> None:
    st.session_state["admin_err"] = str(exc)


def _as_admin(action, *args, **kwargs) -> bool:  # noqa: ANN001
    """Run a user-management call as the signed-in user; wbc_core.auth checks (in the database) that they may."""
    try:
        action(*args, user=st.session_state[signin.USER_KEY], **kwargs)
    except (PermissionError, ValueError, LookupError) as exc:
        widgets.show_error(exc)
        return False
    return True


def _adjudicate(image_id: int, verdict: str, new_class: str | None = None, reason: str | None = None) -> None:
    try:
        review_model.adjudicate([image_id], st.session_state[signin.USER_KEY], verdict, new_class=new_class,
                                reason=reason)
    except (PermissionError, ValueError) as exc:
        _fail(exc)
        return
    refresh.forget_recent()
    _flash(f"adjudicated: {verdict}" + (f" to {new_class}" if new_class else ""))


user = frame.ensure_frame()
st.title("Admin")
if not signin.require_permission("manage_users", "open the admin page"):
    st.stop()
notice = st.container()  # always there, so a message never moves the tabs (that would reset the open tab)
if st.session_state.get("admin_err"):
    notice.error(st.session_state.pop("admin_err"), icon="🚫")
if st.session_state.get("admin_msg"):
    notice.success(st.session_state.pop("admin_msg"))
info = frame.current_dataset()
users_tab, settings_tab, blind_tab, adjudication_tab, export_tab, manage_tab = st.tabs(
    ["Users", "Review settings", "Blind test", "Adjudication", "Export", "Datasets & runs"])

with users_tab:
    users = auth.list_users()
    st.dataframe([{"user": u.username, "name": u.display_name, "role": u.role, "sign-in": u.source,
                   "disabled": u.disabled, "created": u.created_at} for u in users], width="stretch", hide_index=True)
    with st.form("create_user", clear_on_submit=True):
        st.markdown("**New local user**")
        cols = st.columns(4)
        new_name = cols[0].text_input("User name", key="new_user_name")
        new_display = cols[1].text_input("Display name", key="new_user_display")
        new_role = cols[2].selectbox("Role", ROLES, index=1, key="new_user_role")
        new_password = cols[3].text_input("Password", type="password", key="new_user_password")
        if st.form_submit_button("Create user", type="primary") and _as_admin(
                auth.create_user, new_name, new_password, new_role, new_display or None):
            _flash(f"created {new_role} {new_name.strip()!r}")
            st.rerun()

    names = [u.username for u in users]
    st.markdown("**Change a user**")
    who = st.selectbox("User", names, key="manage_user")
    target = next(u for u in users if u.username == who)
    cols = st.columns([2, 1, 1])
    role = cols[0].selectbox("Role", ROLES, index=ROLES.index(target.role), key=f"role_of_{who}")
    if cols[1].button("Save role", key="save_role", disabled=role == target.role) and _as_admin(
            auth.set_role, who, role):
        _flash(f"{who!r} is now {role}")
        st.rerun()
    toggle = "Enable" if target.disabled else "Disable"
    if cols[2].button(toggle, key="toggle_user") and _as_admin(auth.disable_user, who, not target.disabled):
        _flash(f"{who!r} {'disabled' if not target.disabled else 'enabled'}")
        st.rerun()
    locked = auth.locked_until(who)
    if locked is not None:
        st.warning(f"{widgets.plain(who)} is locked out after failed sign-ins until {locked:%H:%M:%S} UTC.", icon="🔒")
        if st.button("Unlock now", key="unlock_user") and _as_admin(auth.unlock_user, who):
            _flash(f"unlocked {who!r}")
            st.rerun()
    if target.source == "local":
        with st.form("reset_password", clear_on_submit=True):
            password = st.text_input(f"New password for {who}", type="password", key="reset_password_value")
            if st.form_submit_button("Reset password") and _as_admin(auth.set_password, who, password):
                _flash(f"changed the password of {who!r}")
                st.rerun()
    else:
        st.caption(f"{who} signs in through the identity provider: no local password to reset.")

if info is None:
    for tab in (settings_tab, blind_tab, adjudication_tab, export_tab):
        tab.info("No dataset yet. Go to **Data** to import cells or create the demo dataset.")
    st.stop()

with settings_tab:
    current = review_model.get_review_settings(info.id)
    with st.form("review_settings"):
        st.markdown(f"**{widgets.plain(info.name)}**: when is a candidate accepted?")
        cols = st.columns(2)
        votes_limit, quota_limit = limits.bound("consensus_votes"), limits.bound("quota")
        agreeing = cols[0].number_input("Reviewers who must agree", votes_limit.widget_min, votes_limit.widget_max,
                                        current.rule.min_agreeing, key="min_agreeing")
        votes = cols[1].number_input("Votes needed before anything counts", votes_limit.widget_min,
                                     votes_limit.widget_max, current.rule.min_votes, key="min_votes")
        st.markdown("**Quotas**: accepted candidates wanted per class (0 = no quota)")
        qcols = st.columns(min(len(info.class_names), 4) or 1)
        quotas = {c: qcols[i % len(qcols)].number_input(c, quota_limit.widget_min, quota_limit.widget_max,
                                                         current.quotas.get(c, 0), key=f"quota_{c}")
                  for i, c in enumerate(info.class_names)}
        retrain_limit = limits.bound("retrain_every")
        retrain = st.number_input("Retrain the acceptance model after this many new decisions (0 = never)",
                                  retrain_limit.widget_min, retrain_limit.widget_max, current.retrain_every,
                                  key="retrain_every")
        if st.form_submit_button("Save review settings", type="primary"):
            try:
                saved = review_model.set_review_settings(
                    info.id, review_model.ReviewSettings(review_model.ConsensusRule(int(agreeing), int(votes)),
                                                   {c: int(n) for c, n in quotas.items()}, int(retrain)), user)
            except (PermissionError, ValueError) as exc:
                widgets.show_error(exc)
            else:
                refresh.forget_recent()  # the review page's quota gauges show the new quotas at once
                st.success(f"Saved: accepted when {saved.rule.min_agreeing} agree out of at least "
                           f"{saved.rule.min_votes} votes; quotas: "
                           + (", ".join(f"{c} {n}" for c, n in saved.quotas.items()) or "none"))

with blind_tab:
    st.markdown("Mix real **val** cells, unannounced, into one reviewer's queue. How often they reject real cells as "
                "fake, next to how often candidates pass as real, is on the Agreement page (admins only).")
    reviewers = [u.username for u in auth.list_users() if auth.can(u, "review")]
    with st.form("blind_test"):
        cols = st.columns(3)
        blind_reviewer = cols[0].selectbox("Reviewer", reviewers, key="blind_reviewer")
        fraction = cols[1].slider("Share of real cells in their queue", 0.05, review_model.MAX_BLIND_FRACTION, 0.1,
                                  0.05, key="blind_fraction")
        seed = cols[2].number_input("Seed", 0, 10**6, 0, key="blind_seed")
        if st.form_submit_button("Start or top up the blind test") and blind_reviewer:
            try:
                added = review_model.enable_blind_test(info.id, blind_reviewer, float(fraction), int(seed), user=user)
            except (PermissionError, ValueError) as exc:
                widgets.show_error(exc)
            else:
                st.success(f"Mixed {sum(added.values())} real val cells into {widgets.plain(blind_reviewer)}'s queue: "
                           + ", ".join(f"{c} {n}" for c, n in added.items()))

with adjudication_tab:
    disputed = review_model.disputed_candidates(info.id)
    rule = review_model.get_review_settings(info.id).rule
    st.markdown(f"**{len(disputed)}** disputed candidates (rule: {rule.min_agreeing} agree of at least "
                f"{rule.min_votes} votes). Your ruling overrides the votes; it can be withdrawn with the CLI "
                "(`adjudicate --withdraw`).")
    pages = max(1, -(-len(disputed) // ADJUDICATION_PAGE))
    page = int(st.number_input("Page", 1, pages, 1, key="adjudication_page")) - 1 if pages > 1 else 0
    for item in disputed[page * ADJUDICATION_PAGE:(page + 1) * ADJUDICATION_PAGE]:
        image_id = item["image_id"]
        with st.container(border=True, key=f"dispute_{image_id}"):
            cols = st.columns([1, 3, 3])
            try:
                cols[0].image(str(thumbnail_path(item, 128)), width=128)
            except (OSError, ValueError):
                cols[0].caption("image file missing")
            cols[1].markdown(f"**#{image_id}** · intended **{item['class_name']}**")
            cols[1].dataframe([{"reviewer": r, "vote": v, "reason": item["reasons"].get(r, "")}
                               for r, v in sorted(item["votes"].items())], hide_index=True, width="stretch")
            with cols[2]:
                row = st.container(horizontal=True, gap="small")
                row.button("Accept", key=f"adj_accept_{image_id}", type="primary", on_click=_adjudicate,
                           args=(image_id, "accept"))
                reason = st.selectbox("Reject reason", [None, *review_model.REJECT_REASONS],
                                      key=f"adj_reason_{image_id}",
                                      format_func=lambda r: "no reason" if r is None else r)
                row.button("Reject", key=f"adj_reject_{image_id}", on_click=_adjudicate,
                           args=(image_id, "reject"), kwargs={"reason": reason})
                others = [c for c in info.class_names if c != item["class_name"]]
                target_class = st.selectbox("Relabel to", others, key=f"adj_class_{image_id}")
                row.button("Relabel", key=f"adj_relabel_{image_id}", on_click=_adjudicate,
                           args=(image_id, "relabel"), kwargs={"new_class": target_class})
    if not disputed:
        st.success("Nothing to adjudicate.")

with export_tab:
    st.markdown("The curated set as an ImageFolder zip: `train/<class>/` holds real train cells plus candidates "
                "accepted by consensus or adjudication (under their final class); `val/` and `test/` hold real cells "
                "only; `manifest.csv` records every file's provenance and votes.")
    out = context.current().paths.cache / "exports" / f"{safe_name(info.name)}-curated-{user.username}.zip"
    if st.button("Build curated zip", key="build_export", type="primary",
                 disabled=not auth.can(user, "export")):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with st.spinner("Writing the zip"):
                summary = export_curated_zip(info.id, out, user=user)
        except (PermissionError, ValueError, OSError) as exc:
            widgets.show_error(exc)
        else:
            st.session_state["export_summary"] = {"dataset": info.id, "path": str(summary.path),
                                                  "files": summary.files, "candidates": summary.candidates,
                                                  "counts": summary.counts, "bytes": summary.size_bytes}
    done = st.session_state.get("export_summary")
    if done and done["dataset"] == info.id and Path(done["path"]).is_file():
        per_split = ", ".join(f"{split} {sum(c.values())}" for split, c in done["counts"].items())
        st.success(f"{done['files']} images ({done['candidates']} accepted candidates; {per_split}), "
                   f"{done['bytes'] / 1e6:.1f} MB")
        path = Path(done["path"])
        st.download_button(f"Download {path.name}", data=path.read_bytes, file_name=path.name,
                           mime="application/zip", key="download_export", on_click="ignore", type="primary")

with manage_tab:
    st.markdown("Rename or delete a dataset, or delete a run. Deleting **archives**: it disappears from every list "
                "and picker, while its cells, runs, metrics and every review decision stay in the audit; a deleted "
                "dataset's name is free again.")
    names = [d.name for d in catalog.list_datasets()]
    target = st.selectbox("Dataset", names, key="manage_dataset") if names else None
    if target is not None:
        cols = st.columns(2)
        new_name = cols[0].text_input("New name", key="rename_to")
        if (cols[0].button("Rename dataset", key="rename_dataset", disabled=not new_name.strip())
                and _as_admin(archive.rename_dataset, target, new_name)):
            frame.select_dataset(new_name.strip())
            _flash(widgets.plain(f"dataset {target!r} is now {new_name.strip()!r}"))
            st.rerun()
        typed = cols[1].text_input(f"Type {widgets.plain(repr(target))} to delete it", key="delete_dataset_confirm")
        if (cols[1].button("Delete dataset", key="delete_dataset", type="primary", disabled=typed != target,
                           help="archives the dataset and its runs; its review decisions are kept")
                and _as_admin(archive.delete_dataset, target)):
            _flash(widgets.plain(f"deleted dataset {target!r} (archived; its decisions are kept)"))
            st.rerun()
        runs_table = views.runs_frame(catalog.get_dataset(target).id) if target else None
        if runs_table is not None and not runs_table.empty:
            run_labels = {r: f"run {r} · {k} · {rec or ''} · {st_}" for r, k, rec, st_ in
                          zip(runs_table["run"], runs_table["kind"], runs_table["recipe"], runs_table["status"],
                              strict=True)}
            run_cols = st.columns(2)
            chosen_run = run_cols[0].selectbox("Run", list(run_labels), format_func=run_labels.get, key="manage_run")
            sure = run_cols[1].checkbox(f"Yes, delete run {chosen_run}", key="delete_run_confirm")
            if (run_cols[1].button("Delete run", key="delete_run", disabled=not sure,
                                   help="archives the run: hidden from lists, baselines and pickers; files kept")
                    and _as_admin(archive.delete_run, chosen_run)):
                _flash(f"deleted run {chosen_run} (archived)")
                st.rerun()
    gone = archive.archived_datasets()
    if gone:
        st.caption("Deleted (archived) datasets, kept for the audit")
        st.dataframe([{"id": d.id, "archived as": d.name, "deleted at": d.archived_at, "by": d.archived_by}
                      for d in gone], hide_index=True)
